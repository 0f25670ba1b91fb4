//! Recording: the engine writes what it saw — each call as it arrived, each observation of a
//! provider's answer, each provider signal, each call's result — as JSON lines through a
//! [`Recorder`], so a capacity event can be replayed later against a candidate policy
//! (`downshift replay`, [`sim::replay`](crate::sim::replay)).
//!
//! Prompts and outputs are never recorded: only ids, sizes, times, classes and costs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{Call, CallResult, Engine, EngineBuilder};
use crate::catalog::Requirements;
use crate::clock::Timestamp;
use crate::error::{Error, SimError};
use crate::id::{EndpointId, SessionId, TaskKind, TenantId};
use crate::policy::StatusPageState;
use crate::trigger::{Observation, OutcomeClass, ProviderSignal, RateLimitState};

/// One line of a recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Recorded {
    /// What the recording covers (written first by the simulator; optional for live engines).
    Header {
        /// Start of the recorded period.
        start: Timestamp,
        /// End of the recorded period.
        end: Timestamp,
        /// The orchestrator's tick, ms.
        tick_ms: u64,
        /// The engine's seed.
        seed: u64,
        /// The digest of the policy set in force.
        policy_digest: String,
    },
    /// A call as it arrived.
    Call {
        /// The call's number in this recording (its result carries the same).
        id: u64,
        /// When.
        at: Timestamp,
        /// The tenant.
        tenant: TenantId,
        /// The task kind.
        task: TaskKind,
        /// The session, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<SessionId>,
        /// The call's deadline, if it gave one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline: Option<Timestamp>,
        /// What it needed.
        requirements: Requirements,
        /// Whether it started a new step.
        new_step: bool,
    },
    /// How a call ended.
    Result {
        /// The number of the call this is the result of.
        id: u64,
        /// When.
        at: Timestamp,
        /// The tenant.
        tenant: TenantId,
        /// The task kind.
        task: TaskKind,
        /// The session, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<SessionId>,
        /// `completed`, `suspended`, `awaiting_approval` or `rejected`.
        outcome: String,
        /// The tier that served it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tier: Option<u32>,
        /// The endpoint that served it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<EndpointId>,
        /// Served below the tenant's top tier.
        #[serde(default)]
        degraded: bool,
    },
    /// A provider's answer to one attempt (or probe).
    Observation {
        /// The endpoint.
        endpoint: EndpointId,
        /// The tenant (`downshift-probe` for the platform's probes).
        tenant: TenantId,
        /// The session, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<SessionId>,
        /// When the attempt was sent.
        started: Timestamp,
        /// How long it took, ms.
        latency_ms: u64,
        /// The outcome class.
        outcome: OutcomeClass,
        /// The provider's retry-after, ms.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
        /// When the provider said its limit resets.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reset_at: Option<Timestamp>,
        /// Rate-limit headroom the provider reported.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate_limit: Option<RecordedRateLimit>,
        /// Input tokens.
        input_tokens: u64,
        /// Output tokens.
        output_tokens: u64,
        /// A half-open probe.
        #[serde(default)]
        probe: bool,
    },
    /// A provider signal.
    Signal {
        /// When.
        at: Timestamp,
        /// The endpoint.
        endpoint: EndpointId,
        /// The reported queue depth.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queue_depth: Option<u64>,
        /// The reported status-page state.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status_page: Option<StatusPageState>,
        /// A retry-after or not-before, as an absolute time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        not_before: Option<Timestamp>,
        /// Rate-limit headroom.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate_limit: Option<RecordedRateLimit>,
    },
    /// A human's answer to an approval request.
    Approval {
        /// When.
        at: Timestamp,
        /// The tenant.
        tenant: TenantId,
        /// Who answered.
        approver: String,
        /// Granted or denied.
        granted: bool,
        /// How long after the request.
        after_ms: u64,
    },
}

/// The rate-limit headroom kept in a recording (requests and tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedRateLimit {
    /// Request limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_limit: Option<u64>,
    /// Requests remaining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_remaining: Option<u64>,
    /// Token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_limit: Option<u64>,
    /// Tokens remaining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_remaining: Option<u64>,
}

impl RecordedRateLimit {
    /// The recorded subset of a provider's state.
    #[must_use]
    pub fn of(s: &RateLimitState) -> Self {
        RecordedRateLimit {
            requests_limit: s.requests_limit,
            requests_remaining: s.requests_remaining,
            tokens_limit: s.tokens_limit,
            tokens_remaining: s.tokens_remaining,
        }
    }

    /// Back to a provider state.
    #[must_use]
    pub fn state(&self) -> RateLimitState {
        RateLimitState {
            requests_limit: self.requests_limit,
            requests_remaining: self.requests_remaining,
            tokens_limit: self.tokens_limit,
            tokens_remaining: self.tokens_remaining,
            ..RateLimitState::default()
        }
    }
}

/// The engine's recorder and the numbering of its calls.
pub(super) struct RecorderSlot {
    recorder: Arc<dyn Recorder>,
    next: std::sync::atomic::AtomicU64,
}

impl RecorderSlot {
    pub(super) fn new(recorder: Arc<dyn Recorder>) -> Arc<Self> {
        Arc::new(RecorderSlot {
            recorder,
            next: std::sync::atomic::AtomicU64::new(0),
        })
    }
}

impl std::fmt::Debug for RecorderSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecorderSlot").finish_non_exhaustive()
    }
}

/// Receives what the engine records. It must not block: buffer, or hand the line to a writer.
pub trait Recorder: Send + Sync {
    /// Records one entry.
    fn record(&self, entry: Recorded);
}

/// Keeps a recording in memory.
#[derive(Debug, Default)]
pub struct MemoryRecorder {
    entries: Mutex<Vec<Recorded>>,
}

impl MemoryRecorder {
    /// An empty recording.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The entries so far.
    #[must_use]
    pub fn entries(&self) -> Vec<Recorded> {
        self.entries.lock().clone()
    }

    /// The recording as JSON lines.
    #[must_use]
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for e in self.entries.lock().iter() {
            if let Ok(line) = serde_json::to_string(e) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }
}

impl Recorder for MemoryRecorder {
    fn record(&self, entry: Recorded) {
        self.entries.lock().push(entry);
    }
}

/// Writes a recording as JSON lines to a file (buffered; flushed by [`JsonlRecorder::flush`]
/// and on drop).
#[derive(Debug)]
pub struct JsonlRecorder {
    path: PathBuf,
    out: Mutex<std::io::BufWriter<std::fs::File>>,
}

impl JsonlRecorder {
    /// Creates (or truncates) the file.
    ///
    /// # Errors
    /// [`SimError::Io`].
    pub fn create(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::create(&path).map_err(|source| SimError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(JsonlRecorder {
            path,
            out: Mutex::new(std::io::BufWriter::new(file)),
        })
    }

    /// Flushes buffered lines to the file.
    ///
    /// # Errors
    /// [`SimError::Io`].
    pub fn flush(&self) -> Result<(), Error> {
        self.out.lock().flush().map_err(|source| {
            Error::Sim(SimError::Io {
                path: self.path.clone(),
                source,
            })
        })
    }
}

impl Recorder for JsonlRecorder {
    fn record(&self, entry: Recorded) {
        if let Ok(line) = serde_json::to_string(&entry) {
            let mut out = self.out.lock();
            // A recording is diagnostic: a full disk must not fail the caller's call.
            let _ = out.write_all(line.as_bytes());
            let _ = out.write_all(b"\n");
        }
    }
}

impl<P, O> EngineBuilder<P, O> {
    /// Records observations, signals, calls and results through `recorder`.
    pub fn recorder(mut self, recorder: Arc<dyn Recorder>) -> Self {
        self.recorder = Some(recorder);
        self
    }
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl<P, O> Engine<P, O>
where
    P: Clone + Send + Sync + 'static,
    O: Send + Sync + 'static,
{
    /// Routes, calls, observes, and falls back or retries until the call ends in exactly one
    /// [`CallResult`]. In [`EngineMode::ObserveOnly`](super::EngineMode) and
    /// [`EngineMode::PlatformBreaker`](super::EngineMode) the call is routed as that mode says;
    /// every call is counted in [`Engine::stats`] and traced (feature `tracing`). With a
    /// [`Recorder`], the call and its result are recorded.
    pub async fn call(&self, call: Call<P>) -> CallResult<O> {
        let Some(slot) = self.inner.recorder.clone() else {
            return self.call_unrecorded(call).await;
        };
        let rec = &slot.recorder;
        let id = slot.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tenant, task, session) =
            (call.tenant.clone(), call.task.clone(), call.session.clone());
        rec.record(Recorded::Call {
            id,
            at: self.inner.clock.now(),
            tenant: tenant.clone(),
            task: task.clone(),
            session: session.clone(),
            deadline: call.deadline,
            requirements: call.requirements,
            new_step: call.new_step,
        });
        let result = self.call_unrecorded(call).await;
        let (tier, endpoint, degraded) = match &result {
            CallResult::Completed(c) => (
                Some(c.served_by.tier),
                Some(c.served_by.endpoint.clone()),
                c.degraded,
            ),
            _ => (None, None, false),
        };
        rec.record(Recorded::Result {
            id,
            at: self.inner.clock.now(),
            tenant,
            task,
            session,
            outcome: result.outcome().to_string(),
            tier,
            endpoint,
            degraded,
        });
        result
    }

    /// Now, by the engine's clock.
    #[must_use]
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// The recorder, if one was set.
    #[must_use]
    pub fn recorder(&self) -> Option<&Arc<dyn Recorder>> {
        self.inner.recorder.as_ref().map(|s| &s.recorder)
    }

    /// Pushes a provider signal to the evaluator (see
    /// [`TriggerEvaluator::signal`](crate::trigger::TriggerEvaluator::signal)), recording it.
    ///
    /// # Errors
    /// [`TriggerError::UnknownEndpoint`](crate::TriggerError::UnknownEndpoint).
    pub fn signal(&self, signal: &ProviderSignal, now: Timestamp) -> Result<(), Error> {
        self.inner.evaluator.signal(signal, now)?;
        if let Some(slot) = &self.inner.recorder {
            let rec = &slot.recorder;
            let set = self.inner.policies.current();
            let endpoint = set
                .catalog()
                .try_endpoint(signal.endpoint())
                .map_or_else(|| EndpointId::new("?"), |e| e.id.clone());
            let mut line = Recorded::Signal {
                at: now,
                endpoint,
                queue_depth: None,
                status_page: None,
                not_before: None,
                rate_limit: None,
            };
            if let Recorded::Signal {
                queue_depth,
                status_page,
                not_before,
                rate_limit,
                ..
            } = &mut line
            {
                match *signal {
                    ProviderSignal::QueueDepth { depth, .. } => *queue_depth = Some(depth),
                    ProviderSignal::StatusPage { state, .. } => *status_page = Some(state),
                    ProviderSignal::RateLimit { state, .. } => {
                        *rate_limit = Some(RecordedRateLimit::of(&state));
                    }
                    ProviderSignal::RetryAfter { after, .. } => {
                        *not_before = Some(now.saturating_add(after));
                    }
                    ProviderSignal::NotBefore { until, .. } => *not_before = Some(until),
                }
            }
            rec.record(line);
        }
        Ok(())
    }

    /// Records an observation, when a recorder is set (called where the engine observes).
    pub(super) fn record_observation(&self, obs: &Observation<'_>) {
        let Some(slot) = &self.inner.recorder else {
            return;
        };
        let rec = &slot.recorder;
        let set = self.inner.policies.current();
        let endpoint = set
            .catalog()
            .try_endpoint(obs.endpoint)
            .map_or_else(|| EndpointId::new("?"), |e| e.id.clone());
        rec.record(Recorded::Observation {
            endpoint,
            tenant: obs.tenant.clone(),
            session: obs.session.cloned(),
            started: obs.started,
            latency_ms: ms(obs.latency),
            outcome: obs.outcome,
            retry_after_ms: obs.retry_after.map(ms),
            reset_at: obs.reset_at,
            rate_limit: obs.rate_limit.as_ref().map(RecordedRateLimit::of),
            input_tokens: obs.usage.input_tokens,
            output_tokens: obs.usage.output_tokens,
            probe: obs.probe.is_some(),
        });
    }
}
