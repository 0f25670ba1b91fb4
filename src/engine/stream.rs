//! Streaming through the engine: [`Engine::call_stream`] routes like [`Engine::call`], forwards
//! the provider's chunks as they arrive, and ends every stream in exactly one
//! [`StreamOutcome`]. A stream that fails after output was forwarded is never passed off as a
//! clean answer: the policy's `continuity.mid_stream` either surfaces it (the end carries the
//! partial output, flagged `partial`) or has the next endpoint continue the answer from the
//! partial output (the end is flagged `continued`, and the tier change is audited).
//!
//! ```
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use downshift::engine::{
//!     Call, Chunk, ChunkStream, Engine, FinishReason, ModelClient, ModelError, ModelRequest,
//!     ModelResponse, StreamEvent, StreamOutcome, TokenUsage,
//! };
//! use downshift::policy::{PolicySet, Source};
//! use futures::StreamExt;
//! use serde_json::{json, Value};
//!
//! struct Words;
//! #[async_trait]
//! impl ModelClient for Words {
//!     async fn call(&self, _req: ModelRequest<Value>) -> Result<ModelResponse<Value>, ModelError> {
//!         Ok(ModelResponse::new(json!("Hello, world"), TokenUsage::default()))
//!     }
//!     async fn call_stream(&self, _req: ModelRequest<Value>) -> Result<ChunkStream<Value>, ModelError> {
//!         let chunks = vec![
//!             Ok(Chunk::delta("Hello, ")),
//!             Ok(Chunk::delta("world").finished(FinishReason::Stop)),
//!         ];
//!         Ok(futures::stream::iter(chunks).boxed())
//!     }
//! }
//!
//! # let catalog = r#"{"kind":"catalog","endpoints":[{"id":"big","provider":"a","model":"m-large","region":"eu-west-1",
//! #   "capabilities":{"context_window":200000,"max_output_tokens":8192},"pricing":{"input_per_mtok":3.0,"output_per_mtok":15.0}}]}"#;
//! # let platform = r#"{"kind":"policy","id":"platform","version":"1","level":"platform","tiers":[{"name":"primary","endpoints":["big"]}]}"#;
//! # let tenant = r#"{"kind":"policy","id":"acme","version":"1","level":"tenant","extends":"platform"}"#;
//! let set = PolicySet::from_sources(vec![
//!     Source::new("catalog.json", catalog), Source::new("platform.json", platform), Source::new("acme.json", tenant),
//! ])?;
//! let engine = Engine::builder(set, Arc::new(Words)).build()?;
//! let mut events = engine.call_stream(Call::new("acme", "summarization", json!({"messages": []})));
//! futures::executor::block_on(async {
//!     while let Some(event) = events.next().await {
//!         match event {
//!             StreamEvent::Chunk(c) => print!("{}", c.text), // forward to your user as it comes
//!             StreamEvent::Switched { from, to, .. } => eprintln!("continued on {} after {}", to.endpoint, from.endpoint),
//!             StreamEvent::End(end) => {
//!                 assert_eq!(end.text, "Hello, world");
//!                 assert!(matches!(end.outcome, StreamOutcome::Completed(_)));
//!                 assert!(!end.partial && !end.continued);
//!             }
//!         }
//!     }
//! });
//! # Ok::<(), downshift::Error>(())
//! ```

use std::sync::Arc;

use futures::future::{BoxFuture, Either, select};
use futures::stream::{BoxStream, StreamExt};
use serde::Serialize;

use super::client::{Chunk, ChunkStream, FinishReason, ModelError, ModelRequest, TokenUsage};
use super::result::{CallResult, OutputFlags, RejectKind, Rejection, ServedBy};
use super::{Call, Engine, Preflight, Routed, deadline_error, refused, served_by};
use crate::checkpoint::ResumeToken;
use crate::clock::Timestamp;
use crate::digest::ContentDigest;
use crate::id::EndpointId;
use crate::policy::{MidStream, PolicySet, Replay, ResolvedPolicy};
use crate::router::{ApprovalTicket, Attempt, Route};
use crate::trigger::OutcomeClass;

/// What the caller of [`Engine::call_stream`] receives, in order: chunks (with a
/// [`Switched`](StreamEvent::Switched) between two endpoints' chunks when an answer is
/// continued elsewhere), then exactly one [`End`](StreamEvent::End), always last.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent<O> {
    /// A piece of the answer, forwarded as it arrived. Provisional: only an end whose outcome
    /// is [`StreamOutcome::Completed`] makes the chunks a finished answer.
    Chunk(Chunk<O>),
    /// The endpoint streaming the answer failed mid-answer and the next endpoint continues it
    /// from the partial output (policy `continuity.mid_stream: continue`). The chunks after
    /// this come from `to`. `from` and `to` are the same endpoint when the policy allows
    /// more than one attempt per endpoint and the router retried it.
    Switched {
        /// Who streamed the answer until it failed.
        from: ServedBy,
        /// Who continues it.
        to: ServedBy,
        /// The class of the failure.
        class: OutcomeClass,
        /// The failure and the routing decision, in words.
        reason: String,
    },
    /// The stream's end, with its outcome. Always the last event, exactly once.
    End(Box<StreamEnd>),
}

/// The events of one streamed call (see [`Engine::call_stream`]).
pub type EventStream<O> = BoxStream<'static, StreamEvent<O>>;

/// Which endpoint produced which part of a streamed answer (for reviewers of a continued
/// answer: the text of segment *n* starts where segment *n − 1* ended).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Segment {
    /// Who produced it.
    pub served_by: ServedBy,
    /// Length of the text it produced, in bytes of [`StreamEnd::text`].
    pub bytes: usize,
    /// [`OutcomeClass::Ok`], or the failure that ended it.
    pub outcome: OutcomeClass,
    /// Produced below the tenant's top tier.
    pub degraded: bool,
}

/// How a streamed call ended: the outcome plus what the caller was sent.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEnd {
    /// The outcome.
    pub outcome: StreamOutcome,
    /// The text of every chunk forwarded, concatenated: the whole answer when completed, the
    /// partial output otherwise.
    pub text: String,
    /// Output was forwarded but the stream did not complete: what the caller received is not
    /// a finished answer. Never set together with a completed outcome.
    pub partial: bool,
    /// The answer was continued by another endpoint (or a retry) from a partial output.
    pub continued: bool,
    /// Who produced which part of [`text`](StreamEnd::text), in order.
    pub segments: Vec<Segment>,
    /// Tokens consumed, summed over every stream this call opened.
    pub usage: TokenUsage,
    /// Streams opened or tried (1 = served at the first try).
    pub attempts: u32,
}

impl StreamEnd {
    /// The completed outcome, if the answer is complete.
    #[must_use]
    pub fn completed(&self) -> Option<&StreamCompleted> {
        match &self.outcome {
            StreamOutcome::Completed(c) => Some(c),
            _ => None,
        }
    }

    /// A short name of the outcome: `completed`, `interrupted`, `suspended`,
    /// `awaiting_approval`, `rejected`.
    #[must_use]
    pub fn outcome_name(&self) -> &'static str {
        match &self.outcome {
            StreamOutcome::Completed(_) => "completed",
            StreamOutcome::Interrupted(_) => "interrupted",
            StreamOutcome::Suspended { .. } => "suspended",
            StreamOutcome::AwaitingApproval { .. } => "awaiting_approval",
            StreamOutcome::Rejected(_) => "rejected",
        }
    }
}

/// How a streamed call ended: exactly one of these. The variants other than `Completed` and
/// `Interrupted` mirror [`CallResult`]'s and mean the same.
// Returned once per stream; boxing the refusal would only make matching on it clumsier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum StreamOutcome {
    /// The answer is complete (possibly continued: see [`StreamEnd::continued`]).
    Completed(Box<StreamCompleted>),
    /// The stream failed after output was forwarded and was not continued (the policy
    /// surfaces mid-stream failures, or the failure is a request error that would happen
    /// elsewhere too). [`StreamEnd::partial`] is set and [`StreamEnd::text`] holds the
    /// partial output.
    Interrupted(Box<Interrupted>),
    /// The session is suspended; its checkpoint was saved first.
    Suspended {
        /// Quote it to [`Engine::resume`](super::Engine::resume).
        resume_token: ResumeToken,
        /// When something may be usable again, if known.
        retry_at: Option<Timestamp>,
        /// Why.
        reason: String,
    },
    /// A switch needs a human's approval first.
    AwaitingApproval {
        /// The ticket to approve or deny.
        ticket: ApprovalTicket,
        /// The proposed tier.
        proposed_tier: u32,
        /// The proposed endpoint.
        proposed_endpoint: EndpointId,
        /// Why.
        reason: String,
    },
    /// Refused.
    Rejected(Rejection),
}

/// A completed stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamCompleted {
    /// Who finished the answer.
    pub served_by: ServedBy,
    /// Some part of the answer was produced below the tenant's top tier.
    pub degraded: bool,
    /// Output flags (`degraded` and `needs_review` cover every segment of a continued answer).
    pub flags: OutputFlags,
    /// Why the provider ended the answer.
    pub finish: FinishReason,
    /// The digest of the resolved policy the decision cited.
    pub policy_digest: ContentDigest,
    /// Sequence numbers of the audit records this call wrote (tier changes).
    pub audit: Vec<u64>,
}

/// A stream that failed mid-answer and was not continued.
#[derive(Debug, Clone, PartialEq)]
pub struct Interrupted {
    /// Who was streaming when it failed.
    pub served_by: ServedBy,
    /// The failure.
    pub error: ModelError,
    /// Some part of the partial output was produced below the tenant's top tier.
    pub degraded: bool,
    /// The digest of the resolved policy the decision cited.
    pub policy_digest: ContentDigest,
    /// Why it was not continued, in words.
    pub message: String,
}

impl<P, O> Engine<P, O>
where
    P: Clone + Send + Sync + 'static,
    O: Send + Sync + 'static,
{
    /// Streams a call: routes it like [`Engine::call`] (falling back or retrying within the
    /// deadline and the retry budget while no chunk has been forwarded), calls
    /// [`ModelClient::call_stream`](super::ModelClient::call_stream), forwards each chunk as
    /// it arrives, observes the outcome into the [`TriggerEvaluator`](crate::TriggerEvaluator)
    /// when each stream ends, and ends with exactly one [`StreamEvent::End`].
    ///
    /// A stream is complete only when the provider sent a chunk with
    /// [`finish`](Chunk::finish) set. One that ends without it was cut (a failure of class
    /// [`OutcomeClass::ServerError`]); one still open at the deadline timed out
    /// ([`OutcomeClass::Timeout`], when the engine's [`Sleeper`](super::Sleeper) keeps time).
    /// After output was forwarded, the policy's `continuity.mid_stream` decides: `surface`
    /// ends with [`StreamOutcome::Interrupted`] and the partial output; `continue` routes again
    /// (the failed endpoint counts as an attempt) and calls the next endpoint with the partial
    /// output in [`ModelRequest::continue_from`], announcing it with
    /// [`StreamEvent::Switched`]. A request error (content filter...) mid-answer is always
    /// surfaced, as is a [`FinishReason::ContentFilter`] finish.
    ///
    /// The stream is lazy: nothing is routed until it is first polled. Dropping it mid-way
    /// abandons the call: the provider's stream is dropped and nothing is observed or audited
    /// for the abandoned attempt.
    pub fn call_stream(&self, mut call: Call<P>) -> EventStream<O> {
        self.prepare_call(&mut call);
        // Streams route by the tenant's policy whatever the mode; the span says which mode
        // the engine was in.
        #[cfg(feature = "tracing")]
        let span = super::visibility::call_span(&call, self.inner.visibility.mode.load().name());
        let driver = Driver {
            engine: self.clone(),
            call,
            start: Timestamp::from_millis(0),
            pre: None,
            attempts: Vec::new(),
            audit_seqs: Vec::new(),
            text: String::new(),
            segments: Vec::new(),
            usage: TokenUsage::default(),
            tries: 0,
            degraded: false,
            continued: false,
            switch: None,
            queued: None,
            phase: Phase::Start,
            #[cfg(feature = "tracing")]
            span,
        };
        futures::stream::unfold(Some(driver), |state| async move {
            let mut driver = state?;
            #[cfg(feature = "tracing")]
            let event = {
                use tracing::Instrument;
                let span = driver.span.clone();
                driver.step().instrument(span).await
            };
            #[cfg(not(feature = "tracing"))]
            let event = driver.step().await;
            let next = (!matches!(event, StreamEvent::End(_))).then_some(driver);
            Some((event, next))
        })
        .boxed()
    }
}

/// A continuation waiting for its first chunk, to be announced with it.
struct PendingSwitch {
    from: ServedBy,
    class: OutcomeClass,
    error: String,
}

/// One open provider stream.
struct Open<O> {
    chunks: ChunkStream<O>,
    route: Route,
    set: Arc<PolicySet>,
    view: Arc<ResolvedPolicy>,
    served: ServedBy,
    /// Fires at the deadline (only with a time-keeping sleeper).
    timer: Option<BoxFuture<'static, ()>>,
    started: Timestamp,
    /// Where this stream's text starts in the answer's text.
    text_start: usize,
    forwarded: u32,
    usage: Option<TokenUsage>,
    finish: Option<FinishReason>,
    continuing: bool,
}

enum Phase<O> {
    Start,
    Route,
    Streaming(Box<Open<O>>),
}

/// What ended one provider stream.
enum StreamStop {
    /// The provider finished the answer.
    Finished(FinishReason),
    /// It failed (error item, cut, deadline, filter).
    Failed(ModelError),
}

/// The state of one streamed call, advanced one event at a time.
struct Driver<P, O> {
    engine: Engine<P, O>,
    call: Call<P>,
    start: Timestamp,
    pre: Option<Preflight>,
    attempts: Vec<Attempt>,
    audit_seqs: Vec<u64>,
    text: String,
    segments: Vec<Segment>,
    usage: TokenUsage,
    tries: u32,
    degraded: bool,
    continued: bool,
    switch: Option<PendingSwitch>,
    queued: Option<Chunk<O>>,
    phase: Phase<O>,
    /// The call's `downshift.call` span, entered at every step.
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

impl<P, O> Driver<P, O>
where
    P: Clone + Send + Sync + 'static,
    O: Send + Sync + 'static,
{
    /// The next event. After an `End` it must not be called again.
    async fn step(&mut self) -> StreamEvent<O> {
        if let Some(c) = self.queued.take() {
            return StreamEvent::Chunk(c);
        }
        loop {
            match std::mem::replace(&mut self.phase, Phase::Route) {
                Phase::Start => {
                    if let Some(outcome) = self.begin().await {
                        return self.end(outcome);
                    }
                }
                Phase::Route => match self.open().await {
                    Ok(open) => self.phase = Phase::Streaming(open),
                    Err(outcome) => return self.end(outcome),
                },
                Phase::Streaming(mut open) => match next_item(&mut open).await {
                    Ok(chunk) => return self.forward(open, chunk),
                    Err(stop) => {
                        if let Some(outcome) = self.stop(*open, stop).await {
                            return self.end(outcome);
                        }
                    }
                },
            }
        }
    }

    /// The gates `call` applies before routing (see [`Engine::preflight`]).
    async fn begin(&mut self) -> Option<StreamOutcome> {
        self.start = self.engine.inner.clock.now();
        match self.engine.preflight(&self.call, self.start).await {
            Ok(pre) => {
                self.pre = Some(pre);
                None
            }
            Err(end) => Some(outcome_of(end, FinishReason::Stop, false)),
        }
    }

    /// Routes and opens a provider stream, falling back or retrying on failures before it
    /// opens, until one opens or the call ends.
    async fn open(&mut self) -> Result<Box<Open<O>>, StreamOutcome> {
        let engine = self.engine.clone();
        let inner = &*engine.inner;
        let call = &self.call;
        loop {
            let Some(pre) = self.pre.as_mut() else {
                return Err(StreamOutcome::Rejected(Rejection {
                    kind: RejectKind::Policy,
                    reason: None,
                    message: "the stream was routed before its gates ran".into(),
                }));
            };
            let routed = match engine.next_route(call, pre, &self.attempts).await {
                Ok(r) => r,
                Err(end) => return Err(outcome_of(end, FinishReason::Stop, self.degraded)),
            };
            // The context to send, fitted to the endpoint (or the stream ends here).
            let context = match engine
                .context_for(call, &routed, pre, &mut self.audit_seqs)
                .await
            {
                Ok(c) => c.map(|c| c.state),
                Err(end) => return Err(outcome_of(end, FinishReason::Stop, self.degraded)),
            };
            let Routed {
                route,
                view,
                set,
                deadline,
                now,
            } = routed;
            if let Some(wait) = engine.backoff(&view, &route, deadline, &self.attempts, now) {
                inner.sleeper.sleep(wait).await;
            }
            let catalog = set.catalog();
            let Some(ep) = catalog.try_endpoint(route.endpoint) else {
                return Err(StreamOutcome::Rejected(Rejection {
                    kind: RejectKind::Provider {
                        class: OutcomeClass::BadRequest,
                    },
                    reason: None,
                    message: "the routed endpoint is missing from the catalog".into(),
                }));
            };
            let continuing = !self.segments.is_empty();
            let request = ModelRequest {
                endpoint: ep.id.clone(),
                endpoint_idx: route.endpoint,
                model: ep.model.clone(),
                deadline,
                payload: call.payload.clone(),
                attempt: u32::try_from(self.attempts.len()).unwrap_or(u32::MAX),
                probe: route.probe.is_some(),
                fit_context: route.fit_context && context.is_none(),
                context_window: ep.capabilities.context_window,
                continue_from: continuing.then(|| self.text.clone()),
                context: context.clone(),
                purpose: super::Purpose::Step,
            };
            self.tries = self.tries.saturating_add(1);
            let started = inner.clock.now();
            let mut timer: Option<BoxFuture<'static, ()>> = match deadline {
                Some(d) if inner.sleeper.keeps_time() => {
                    let sleeper = Arc::clone(&inner.sleeper);
                    let left = d.duration_since(started);
                    Some(Box::pin(async move { sleeper.sleep(left).await }))
                }
                _ => None,
            };
            let opening = inner.client.call_stream(request);
            let opened = match timer.as_mut() {
                Some(t) => match select(opening, t).await {
                    Either::Left((r, _)) => r,
                    Either::Right(((), _)) => Err(deadline_error()),
                },
                None => opening.await,
            };
            match opened {
                Ok(chunks) => {
                    let served = served_by(&view, catalog, &route);
                    return Ok(Box::new(Open {
                        chunks,
                        route,
                        served,
                        timer,
                        started,
                        text_start: self.text.len(),
                        forwarded: 0,
                        usage: None,
                        finish: None,
                        continuing,
                        view,
                        set,
                    }));
                }
                Err(e) => {
                    engine.observe_attempt(
                        call,
                        &view,
                        &route,
                        ep,
                        e.class(),
                        e.usage,
                        Some(&*e.classification),
                        started,
                        None,
                    );
                    self.usage = add_usage(self.usage, e.usage);
                    if !e.class().is_capacity() {
                        return Err(StreamOutcome::Rejected(refused(
                            catalog,
                            route.endpoint,
                            &e,
                        )));
                    }
                    self.attempts.push(Attempt {
                        endpoint: route.endpoint,
                        outcome: e.class(),
                    });
                }
            }
        }
    }

    /// Forwards a chunk (announcing a continuation before its first chunk).
    fn forward(&mut self, mut open: Box<Open<O>>, chunk: Chunk<O>) -> StreamEvent<O> {
        if let Some(u) = chunk.usage {
            open.usage = Some(u);
        }
        if open.finish.is_none() {
            open.finish.clone_from(&chunk.finish);
        }
        self.text.push_str(&chunk.text);
        let first = open.forwarded == 0;
        open.forwarded = open.forwarded.saturating_add(1);
        if first {
            self.degraded |= open.route.degraded;
            self.continued |= open.continuing;
        }
        let switch = if first { self.switch.take() } else { None };
        let event = match switch {
            Some(sw) => {
                let reason = format!(
                    "{} failed mid-answer ({}); {} continues it: {}",
                    sw.from.endpoint, sw.error, open.served.endpoint, open.route.reason
                );
                self.queued = Some(chunk);
                StreamEvent::Switched {
                    from: sw.from,
                    to: open.served.clone(),
                    class: sw.class,
                    reason,
                }
            }
            None => StreamEvent::Chunk(chunk),
        };
        self.phase = Phase::Streaming(open);
        event
    }

    /// One provider stream ended: observe it, then complete, fall back, continue or surface.
    /// `None`: route again.
    async fn stop(&mut self, open: Open<O>, stop: StreamStop) -> Option<StreamOutcome> {
        let engine = self.engine.clone();
        let catalog = open.set.catalog();
        let Some(ep) = catalog.try_endpoint(open.route.endpoint) else {
            return Some(StreamOutcome::Rejected(Rejection {
                kind: RejectKind::Provider {
                    class: OutcomeClass::BadRequest,
                },
                reason: None,
                message: "the routed endpoint is missing from the catalog".into(),
            }));
        };
        let (class, err_usage) = match &stop {
            StreamStop::Finished(_) => (OutcomeClass::Ok, TokenUsage::default()),
            StreamStop::Failed(e) => (e.class(), e.usage),
        };
        let usage = match open.usage {
            Some(u)
                if u.input_tokens + u.output_tokens
                    >= err_usage.input_tokens + err_usage.output_tokens =>
            {
                u
            }
            _ => err_usage,
        };
        let classification = match &stop {
            StreamStop::Failed(e) => Some(&*e.classification),
            StreamStop::Finished(_) => None,
        };
        engine.observe_attempt(
            &self.call,
            &open.view,
            &open.route,
            ep,
            class,
            usage,
            classification,
            open.started,
            None,
        );
        self.usage = add_usage(self.usage, usage);
        if open.forwarded > 0 {
            self.segments.push(Segment {
                served_by: open.served.clone(),
                bytes: self.text.len().saturating_sub(open.text_start),
                outcome: class,
                degraded: open.route.degraded,
            });
        }
        let error = match stop {
            StreamStop::Finished(finish) => {
                let response = super::ModelResponse::new((), self.usage);
                let r = engine
                    .complete(
                        &self.call,
                        &open.view,
                        catalog,
                        &open.route,
                        response,
                        self.pre.as_ref(),
                        &self.attempts,
                        &mut self.audit_seqs,
                        None,
                    )
                    .await;
                return Some(outcome_of(r, finish, self.degraded));
            }
            StreamStop::Failed(e) => e,
        };
        if !error.class().is_capacity() {
            // A request error: it would fail the same way elsewhere.
            if open.forwarded == 0 {
                return Some(StreamOutcome::Rejected(refused(
                    catalog,
                    open.route.endpoint,
                    &error,
                )));
            }
            let message = format!(
                "{} refused the request mid-answer ({error}); it would fail the same way elsewhere, so it was not continued",
                ep.id
            );
            return Some(self.interrupted(&open, error, message));
        }
        self.attempts.push(Attempt {
            endpoint: open.route.endpoint,
            outcome: error.class(),
        });
        if open.forwarded == 0 {
            // Nothing of this stream reached the caller: an ordinary failed attempt.
            return None;
        }
        match open.view.continuity.mid_stream {
            MidStream::Surface => {
                let message = format!(
                    "{} failed mid-answer ({error}); the policy surfaces mid-stream failures (continuity.mid_stream: surface)",
                    ep.id
                );
                Some(self.interrupted(&open, error, message))
            }
            MidStream::Continue => {
                self.switch = Some(PendingSwitch {
                    from: open.served,
                    class: error.class(),
                    error: error.to_string(),
                });
                None
            }
        }
    }

    fn interrupted(&self, open: &Open<O>, error: ModelError, message: String) -> StreamOutcome {
        StreamOutcome::Interrupted(Box::new(Interrupted {
            served_by: open.served.clone(),
            error,
            degraded: self.degraded,
            policy_digest: open.view.digest.clone(),
            message,
        }))
    }

    /// The last event, counted in the stats and recorded on the span like a call's end.
    fn end(&mut self, outcome: StreamOutcome) -> StreamEvent<O> {
        let completed = matches!(outcome, StreamOutcome::Completed(_));
        let end = StreamEnd {
            outcome,
            text: std::mem::take(&mut self.text),
            partial: !completed && !self.segments.is_empty(),
            continued: self.continued,
            segments: std::mem::take(&mut self.segments),
            usage: self.usage,
            attempts: self.tries,
        };
        let now = self.engine.inner.clock.now();
        self.engine.record_stream(&self.call, &end, self.start, now);
        #[cfg(feature = "tracing")]
        super::visibility::record_stream_result(&self.span, &end);
        StreamEvent::End(Box::new(end))
    }
}

/// The next chunk of an open stream, or why it stopped.
async fn next_item<O>(open: &mut Open<O>) -> Result<Chunk<O>, StreamStop> {
    let item = match open.timer.as_mut() {
        Some(t) => match select(open.chunks.next(), t).await {
            Either::Left((item, _)) => Some(item),
            Either::Right(((), _)) => None,
        },
        None => Some(open.chunks.next().await),
    };
    let finished = |finish: &FinishReason| match finish {
        FinishReason::ContentFilter => StreamStop::Failed(ModelError::of(
            OutcomeClass::ContentFiltered,
            "the provider's filter stopped the answer",
        )),
        other => StreamStop::Finished(other.clone()),
    };
    match (item, &open.finish) {
        (Some(Some(Ok(chunk))), _) => Ok(chunk),
        // A failure, a cut or the deadline after the final chunk does not undo the answer.
        (_, Some(f)) => Err(finished(f)),
        (Some(Some(Err(e))), None) => Err(StreamStop::Failed(e)),
        (Some(None), None) => Err(StreamStop::Failed(ModelError::of(
            OutcomeClass::ServerError,
            "the stream ended without a final chunk (cut)",
        ))),
        (None, None) => Err(StreamStop::Failed(deadline_error())),
    }
}

fn add_usage(a: TokenUsage, b: TokenUsage) -> TokenUsage {
    TokenUsage {
        input_tokens: a.input_tokens.saturating_add(b.input_tokens),
        output_tokens: a.output_tokens.saturating_add(b.output_tokens),
    }
}

/// A call's outcome as a stream's; `degraded_before`: an earlier segment was degraded.
fn outcome_of<X>(r: CallResult<X>, finish: FinishReason, degraded_before: bool) -> StreamOutcome {
    match r {
        CallResult::Completed(c) => {
            let mut flags = c.flags;
            flags.degraded |= degraded_before;
            flags.needs_review = flags.degraded && flags.replay != Replay::None;
            StreamOutcome::Completed(Box::new(StreamCompleted {
                served_by: c.served_by,
                degraded: c.degraded || degraded_before,
                flags,
                finish,
                policy_digest: c.policy_digest,
                audit: c.audit,
            }))
        }
        CallResult::Suspended {
            resume_token,
            retry_at,
            reason,
        } => StreamOutcome::Suspended {
            resume_token,
            retry_at,
            reason,
        },
        CallResult::AwaitingApproval {
            ticket,
            proposed_tier,
            proposed_endpoint,
            reason,
        } => StreamOutcome::AwaitingApproval {
            ticket,
            proposed_tier,
            proposed_endpoint,
            reason,
        },
        CallResult::Rejected(r) => StreamOutcome::Rejected(r),
    }
}
