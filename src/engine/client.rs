//! The traits callers implement: [`ModelClient`] for their providers, [`Notifier`] for real-time
//! notices, and [`Sleeper`] for waiting without tying the crate to a runtime (with the `tokio`
//! feature, [`TokioSleeper`] is one).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Serialize;

use crate::catalog::EndpointIdx;
use crate::checkpoint::AgentState;
use crate::clock::Timestamp;
use crate::id::{EndpointId, SessionId, TaskKind, TenantId, WorkflowId};
use crate::router::ApprovalTicket;
use crate::trigger::{Classification, OutcomeClass};

/// One call the engine asks a [`ModelClient`] to make.
#[derive(Debug, Clone)]
pub struct ModelRequest<P> {
    /// The catalog endpoint to call (map it to your provider client, model name and region).
    pub endpoint: EndpointId,
    /// Its index in the engine's catalog.
    pub endpoint_idx: EndpointIdx,
    /// The provider's model name, from the catalog.
    pub model: Arc<str>,
    /// When the call must be finished. The engine stops waiting at this time either way; a
    /// client should pass it on (as a request timeout) so the provider stops working too.
    pub deadline: Option<Timestamp>,
    /// The request itself, in the caller's own type.
    pub payload: P,
    /// Attempt number within this call (0 = first).
    pub attempt: u32,
    /// This call is a half-open probe of a recovering endpoint.
    pub probe: bool,
    /// The payload does not fit this endpoint's context window as is and no
    /// [`context`](ModelRequest::context) was fitted for it. The engine does not send such a
    /// request (it ends the call per `continuity.on_unfittable`), so a client sees `false`;
    /// kept so a client may still assert it.
    pub fit_context: bool,
    /// The endpoint's context window, in tokens.
    pub context_window: u32,
    /// Set only on a streamed call that continues an answer another endpoint started and
    /// failed to finish (policy `continuity.mid_stream: continue`): the text streamed so far.
    /// Send the original payload plus this as the beginning of the assistant's reply (an
    /// assistant message to continue, or a provider's prefill), and stream only the new text:
    /// the caller already has the partial output. `None` on every other call.
    pub continue_from: Option<String>,
    /// The conversation to send, when the call carries an [`AgentState`]
    /// ([`Call::agent_state`](super::Call::agent_state)) or the engine makes the call itself (a
    /// summary, a replay): render its system prompt, goal, summary, messages (tool calls and
    /// results paired by id) and tools into the provider's format **instead of** the messages
    /// in the payload, and keep the payload's other settings. It is already fitted to this
    /// endpoint's window (and stripped of other providers' non-portable items): the engine
    /// never sends a state that does not fit. `None`: send the payload as it is.
    pub context: Option<Arc<AgentState>>,
    /// Why the engine makes this call.
    pub purpose: Purpose,
}

/// Why the engine makes a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// A step of the caller's agent (the caller's own call).
    #[default]
    Step,
    /// A summary of dropped messages, made by the engine while fitting a context to a smaller
    /// window: [`ModelRequest::context`] holds the instruction, the previous summary and the
    /// messages to summarize. The summary is read with [`ModelClient::output_text`].
    Summary,
    /// A re-run of a step served degraded, on the original tier
    /// ([`Engine::replay_degraded`](super::Engine::replay_degraded)).
    Replay,
    /// A half-open probe of a recovering endpoint ([`Engine::probe`](super::Engine::probe)).
    Probe,
}

/// Tokens a call consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct TokenUsage {
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
}

/// A provider's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelResponse<O> {
    /// The output, in the caller's own type.
    pub output: O,
    /// Tokens consumed.
    pub usage: TokenUsage,
    /// The provider's response headers (rate-limit state is read from them).
    pub headers: Vec<(String, String)>,
}

impl<O> ModelResponse<O> {
    /// A response with no headers.
    pub fn new(output: O, usage: TokenUsage) -> Self {
        ModelResponse {
            output,
            usage,
            headers: Vec::new(),
        }
    }
}

/// A failed call: what the provider said, classified.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelError {
    /// The classification (class, retryability, retry-after, rate-limit state). Boxed so a
    /// `Result<_, ModelError>` stays small.
    pub classification: Box<Classification>,
    /// A short description for logs (never the prompt).
    pub message: String,
    /// Tokens consumed before the failure, if the provider reports them.
    pub usage: TokenUsage,
}

impl ModelError {
    /// An error classified from a provider's HTTP status, headers and body (see
    /// [`classify_http`](crate::trigger::classify_http)): the class, whether a retry can help,
    /// the provider's retry-after and rate-limit state. Call it for a response that is not a
    /// success; for a `2xx` the class is [`OutcomeClass::Ok`] unless the body carries an error.
    ///
    /// ```
    /// use std::time::Duration;
    /// use downshift::engine::ModelError;
    /// use downshift::OutcomeClass;
    ///
    /// let headers = [("retry-after", "20"), ("x-ratelimit-remaining-requests", "0")];
    /// let body = br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
    /// let e = ModelError::from_http(429, &headers, body);
    /// assert_eq!(e.class(), OutcomeClass::RateLimited);
    /// assert_eq!(e.classification.retry_after, Some(Duration::from_secs(20)));
    /// assert!(e.to_string().starts_with("HTTP 429"));
    /// ```
    #[must_use]
    pub fn from_http(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Self {
        let classification = crate::trigger::classify_http(status, headers, body);
        ModelError {
            // `Display` adds the class.
            message: format!("HTTP {status}, rule {}", classification.rule),
            classification: Box::new(classification),
            usage: TokenUsage::default(),
        }
    }

    /// An error from a classification the caller already has: an error event in a stream
    /// ([`classify_stream_event`](crate::trigger::classify_stream_event)), a transport failure
    /// ([`classify_transport_timeout`](crate::trigger::classify_transport_timeout),
    /// [`classify_connection_failure`](crate::trigger::classify_connection_failure)).
    ///
    /// ```
    /// use downshift::engine::ModelError;
    /// use downshift::{OutcomeClass, classify_transport_timeout};
    /// let e = ModelError::classified(classify_transport_timeout(), "read timed out after 30s");
    /// assert_eq!(e.class(), OutcomeClass::Timeout);
    /// ```
    #[must_use]
    pub fn classified(classification: Classification, message: impl Into<String>) -> Self {
        ModelError {
            classification: Box::new(classification),
            message: message.into(),
            usage: TokenUsage::default(),
        }
    }

    /// An error of the given class with no provider detail.
    #[must_use]
    pub fn of(class: OutcomeClass, message: impl Into<String>) -> Self {
        ModelError {
            classification: Box::new(Classification {
                class,
                retryable: class.is_capacity(),
                rule: "caller",
                ..Classification::default()
            }),
            message: message.into(),
            usage: TokenUsage::default(),
        }
    }

    /// The outcome class.
    #[must_use]
    pub fn class(&self) -> OutcomeClass {
        self.classification.class
    }
}

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.classification.class)
    }
}

/// Why a provider ended a streamed answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model finished its answer (`stop`, `end_turn`, `stop_sequence`, `STOP`).
    Stop,
    /// The answer reached the output token limit (`length`, `max_tokens`, `MAX_TOKENS`): complete
    /// as far as the provider is concerned, but cut by the limit the request set.
    Length,
    /// The model stopped to call tools (`tool_calls`, `tool_use`, `function_call`).
    ToolCalls,
    /// The provider's safety filter stopped the answer (`content_filter`, `SAFETY`, `refusal`...).
    /// The engine does not treat this as a completion: it ends the stream as an interruption of
    /// class [`OutcomeClass::ContentFiltered`].
    ContentFilter,
    /// Any other reason, as the provider spelled it.
    Other(String),
}

impl FinishReason {
    /// Reads the finish reason of the common providers (OpenAI-compatible `finish_reason`,
    /// Anthropic `stop_reason`, Gemini `finishReason`).
    ///
    /// ```
    /// use downshift::engine::FinishReason;
    /// assert_eq!(FinishReason::parse("end_turn"), FinishReason::Stop);
    /// assert_eq!(FinishReason::parse("MAX_TOKENS"), FinishReason::Length);
    /// assert_eq!(FinishReason::parse("content_filter"), FinishReason::ContentFilter);
    /// assert_eq!(FinishReason::parse("pause_turn"), FinishReason::Other("pause_turn".into()));
    /// ```
    #[must_use]
    pub fn parse(s: &str) -> Self {
        match s.to_ascii_lowercase().as_str() {
            "stop" | "end_turn" | "stop_sequence" | "eos" => FinishReason::Stop,
            "length" | "max_tokens" | "model_length" => FinishReason::Length,
            "tool_calls" | "tool_use" | "function_call" => FinishReason::ToolCalls,
            "content_filter" | "safety" | "refusal" | "recitation" | "blocklist"
            | "prohibited_content" | "spii" => FinishReason::ContentFilter,
            _ => FinishReason::Other(s.to_string()),
        }
    }
}

/// One piece of a streamed answer.
///
/// A stream is complete only once a chunk with [`finish`](Chunk::finish) set has arrived: a
/// stream that ends without one was cut (the engine treats it as a failure of class
/// [`OutcomeClass::ServerError`] with the output so far as partial output). For an
/// OpenAI-compatible SSE client: one chunk per `data:` event, `text` from
/// `choices[0].delta.content`, `finish` from `choices[0].finish_reason`, `usage` from the
/// usage event, the raw event in `data` if the caller wants it; end the stream at `[DONE]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk<O> {
    /// The text delta. The engine concatenates the deltas into the answer's text (the partial
    /// output handed to [`ModelRequest::continue_from`] if the stream must be continued).
    pub text: String,
    /// Anything else the chunk carries, in the caller's own type (tool-call deltas, the raw
    /// event), forwarded untouched. The default [`ModelClient::call_stream`] puts the whole
    /// response here, in one final chunk.
    pub data: Option<O>,
    /// The call's token usage so far, when the provider reports it (cumulative: the last one
    /// seen counts).
    pub usage: Option<TokenUsage>,
    /// Set on the chunk that ends the answer. Chunks may follow it (a trailing usage event);
    /// a failure after it does not undo the completion.
    pub finish: Option<FinishReason>,
}

impl<O> Chunk<O> {
    /// A text delta.
    pub fn delta(text: impl Into<String>) -> Self {
        Chunk {
            text: text.into(),
            data: None,
            usage: None,
            finish: None,
        }
    }

    /// A chunk carrying `data` and no text.
    pub fn data(data: O) -> Self {
        Chunk {
            text: String::new(),
            data: Some(data),
            usage: None,
            finish: None,
        }
    }

    /// Marks this chunk as the end of the answer.
    #[must_use]
    pub fn finished(mut self, reason: FinishReason) -> Self {
        self.finish = Some(reason);
        self
    }

    /// With the usage so far.
    #[must_use]
    pub fn with_usage(mut self, usage: TokenUsage) -> Self {
        self.usage = Some(usage);
        self
    }
}

/// A stream of chunks from a provider. An `Err` item is a failure mid-answer (classify it as
/// for a call); the stream should end after it.
pub type ChunkStream<O> = BoxStream<'static, Result<Chunk<O>, ModelError>>;

/// A provider client. Implement it for each provider (or one HTTP client for all); the engine
/// decides which endpoint each call goes to and calls this.
///
/// `P` is your request type (messages, tools...), `O` your response type. Both default to
/// `serde_json::Value`. The trait is object-safe: the engine holds a `dyn ModelClient<P, O>`.
#[async_trait]
pub trait ModelClient<P = serde_json::Value, O = serde_json::Value>: Send + Sync {
    /// Makes one call. Return `Err` with a classification for every failure (use
    /// [`ModelError::from_http`] for HTTP providers).
    async fn call(&self, request: ModelRequest<P>) -> Result<ModelResponse<O>, ModelError>;

    /// The text of an output, for the engine's own uses: the summary a
    /// [`Purpose::Summary`] call wrote, and the outputs
    /// [`Engine::replay_degraded`](super::Engine::replay_degraded) compares. The default returns
    /// `None`: the engine then writes no summaries (fitting only drops, or fails when the
    /// policy requires a summary) and replays report no diff.
    fn output_text(&self, output: &O) -> Option<String> {
        let _ = output;
        None
    }

    /// Opens a streamed call (used by [`Engine::call_stream`](super::Engine::call_stream)).
    /// Return `Err` for a failure before the stream opens (an HTTP error status), as for
    /// [`call`](ModelClient::call); then yield chunks as they arrive, `Err` for a failure
    /// mid-answer, and [`Chunk::finish`] on the chunk that ends the answer.
    ///
    /// When [`ModelRequest::continue_from`] is set, the answer is being continued from another
    /// endpoint's partial output: stream only the continuation.
    ///
    /// The default calls [`call`](ModelClient::call) and yields its output as one final chunk
    /// (no text, the output in [`Chunk::data`], the usage, [`FinishReason::Stop`]), so a client
    /// without streaming works unchanged.
    ///
    /// # Errors
    /// A classified [`ModelError`] when the stream cannot be opened.
    async fn call_stream(&self, request: ModelRequest<P>) -> Result<ChunkStream<O>, ModelError>
    where
        P: Send + 'static,
        O: Send + 'static,
    {
        let response = self.call(request).await?;
        let chunk = Chunk {
            text: String::new(),
            data: Some(response.output),
            usage: Some(response.usage),
            finish: Some(FinishReason::Stop),
        };
        Ok(futures::stream::once(futures::future::ready(Ok(chunk))).boxed())
    }
}

/// What a [`Notifier`] is told.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NoticeKind {
    /// The session moved to another tier.
    TierChanged {
        /// From tier index.
        from: u32,
        /// To tier index.
        to: u32,
        /// The endpoint now serving.
        endpoint: EndpointId,
        /// Below the tenant's top tier.
        degraded: bool,
    },
    /// The session is suspended.
    Suspended {
        /// When a resume will be tried, if known.
        retry_at: Option<Timestamp>,
    },
    /// The session resumed.
    Resumed,
    /// The session stayed suspended longer than its policy's `suspension.max_duration` and was
    /// given up.
    SuspensionExpired {
        /// When it was suspended.
        suspended_at: Timestamp,
    },
    /// A switch awaits a human's approval.
    ApprovalRequested {
        /// The ticket to approve or deny.
        ticket: ApprovalTicket,
        /// The proposed tier.
        proposed_tier: u32,
    },
}

/// A real-time notice for a tenant's user.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notice {
    /// The tenant.
    pub tenant: TenantId,
    /// The session, if any.
    pub session: Option<SessionId>,
    /// The workflow, if any.
    pub workflow: Option<WorkflowId>,
    /// The task.
    pub task: TaskKind,
    /// What happened.
    pub kind: NoticeKind,
    /// Why, as the operator reads it.
    pub reason: String,
    /// When.
    pub at: Timestamp,
}

/// Receives real-time notices when a tenant's policy asks for them (caller-implemented: push
/// to a websocket, a queue, an email...). It must not block; queue the work if it is slow.
#[async_trait]
pub trait Notifier: Send + Sync {
    /// Delivers one notice.
    async fn notify(&self, notice: Notice);
}

/// Waits, without tying the crate to a runtime. The engine waits for backoff between attempts
/// and to stop waiting for a call at its deadline.
#[async_trait]
pub trait Sleeper: Send + Sync {
    /// Completes after `d`.
    async fn sleep(&self, d: Duration);

    /// Whether this sleeper measures real (or virtual) time, so the engine may race a call
    /// against its deadline. `false` for [`NoSleep`].
    fn keeps_time(&self) -> bool {
        true
    }
}

/// A [`Sleeper`] that does not wait: backoff is skipped, and the engine does not race calls
/// against their deadlines (the [`ModelClient`] must enforce the deadline it is given). For
/// callers without a timer and for tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSleep;

#[async_trait]
impl Sleeper for NoSleep {
    async fn sleep(&self, _d: Duration) {}

    fn keeps_time(&self) -> bool {
        false
    }
}

/// A [`Sleeper`] on Tokio's timer (feature `tokio`): backoff waits with `tokio::time::sleep`, and
/// the engine races each call against its deadline, so a call still running at its deadline
/// ends there as a [`OutcomeClass::Timeout`] failure (the provider's future is dropped).
///
/// The engine's futures must be polled inside a Tokio runtime with the time driver enabled
/// (`#[tokio::main]`, or a runtime built with `enable_time()` / `enable_all()`); Tokio panics
/// otherwise. Under paused time (`tokio::time::pause`, feature `test-util`) it sleeps in
/// virtual time. The engine's [`Clock`](crate::Clock) is separate: a deadline is measured
/// from the clock's `now`, then slept out on Tokio's timer.
///
/// ```
/// use std::sync::Arc;
/// use downshift::engine::{Sleeper, TokioSleeper};
///
/// let sleeper: Arc<dyn Sleeper> = Arc::new(TokioSleeper);
/// assert!(sleeper.keeps_time());
/// // Engine::builder(policies, client).sleeper(sleeper).build()
/// ```
#[cfg(feature = "tokio")]
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioSleeper;

#[cfg(feature = "tokio")]
#[async_trait]
impl Sleeper for TokioSleeper {
    async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }
}
