//! The traits callers implement: [`ModelClient`] for their providers, [`Notifier`] for real-time
//! notices, and [`Sleeper`] for waiting without tying the crate to a runtime.

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::catalog::EndpointIdx;
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
    pub model: String,
    /// When the call must be finished. The engine stops waiting at this time either way; a
    /// client should pass it on (as a request timeout) so the provider stops working too.
    pub deadline: Option<Timestamp>,
    /// The request itself, in the caller's own type.
    pub payload: P,
    /// Attempt number within this call (0 = first).
    pub attempt: u32,
    /// This call is a half-open probe of a recovering endpoint.
    pub probe: bool,
    /// The payload does not fit this endpoint's context window as is and the policy allows
    /// fitting it: the client (or a later continuity layer) must fit it to `context_window`.
    pub fit_context: bool,
    /// The endpoint's context window, in tokens.
    pub context_window: u32,
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
    /// The classification (class, retryability, retry-after, rate-limit state).
    pub classification: Classification,
    /// A short description for logs (never the prompt).
    pub message: String,
    /// Tokens consumed before the failure, if the provider reports them.
    pub usage: TokenUsage,
}

impl ModelError {
    /// An error classified from a provider's HTTP status, headers and body (see
    /// [`classify_http`](crate::trigger::classify_http)).
    #[must_use]
    pub fn from_http(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Self {
        let classification = crate::trigger::classify_http(status, headers, body);
        ModelError {
            message: format!(
                "HTTP {status}: {} ({})",
                classification.class, classification.rule
            ),
            classification,
            usage: TokenUsage::default(),
        }
    }

    /// An error of the given class with no provider detail.
    #[must_use]
    pub fn of(class: OutcomeClass, message: impl Into<String>) -> Self {
        ModelError {
            classification: Classification {
                class,
                retryable: class.is_capacity(),
                rule: "caller",
                ..Classification::default()
            },
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
