//! The async shell: the [`Engine`] routes each call, calls the caller's [`ModelClient`],
//! observes, falls back or retries within the deadline and the retry budget, writes every
//! transition to the audit log, saves checkpoints before suspending, and keeps sessions,
//! approvals and resumes.
//!
//! ```
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use downshift::engine::{Call, CallResult, Engine, ModelClient, ModelError, ModelRequest, ModelResponse, TokenUsage};
//! use downshift::policy::{PolicySet, Source};
//! use serde_json::{json, Value};
//!
//! struct Echo;
//! #[async_trait]
//! impl ModelClient for Echo {
//!     async fn call(&self, req: ModelRequest<Value>) -> Result<ModelResponse<Value>, ModelError> {
//!         Ok(ModelResponse::new(json!({"model": req.model}), TokenUsage { input_tokens: 10, output_tokens: 5 }))
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
//! let engine = Engine::builder(set, Arc::new(Echo)).build()?;
//! let result = futures::executor::block_on(engine.call(Call::new("acme", "summarization", json!({"messages": []}))));
//! match result {
//!     CallResult::Completed(done) => {
//!         assert_eq!(done.served_by.endpoint.as_str(), "big");
//!         assert!(!done.degraded);
//!     }
//!     other => panic!("{}", other.outcome()),
//! }
//! # Ok::<(), downshift::Error>(())
//! ```

mod attempts;
mod budget;
mod client;
mod continuity;
mod expiry;
mod ids;
mod mode;
mod record;
mod reload;
mod replay;
mod result;
mod sessionless;
mod shadow;
mod shared;
mod stream;
mod visibility;
mod workflow;

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{Either, select};
use parking_lot::Mutex;
use serde::Serialize;

pub use budget::{MemoryRetryBudget, RetryBudgetStore};
#[cfg(feature = "tokio")]
pub use client::TokioSleeper;
pub use client::{
    Chunk, ChunkStream, FinishReason, ModelClient, ModelError, ModelRequest, ModelResponse,
    NoSleep, Notice, NoticeKind, Notifier, Purpose, Sleeper, TokenUsage,
};
pub use expiry::GivenUp;
pub use ids::{IdSource, RandomIds, SeededIds};
pub use mode::EngineMode;
pub use record::{JsonlRecorder, MemoryRecorder, Recorded, RecordedRateLimit, Recorder};
pub use replay::{
    DEFAULT_DEGRADED_STEP_LIMIT, DegradedStep, ReplayOutcomeKind, ReplayReport, ReplayedStep,
};
pub use result::{CallResult, Completed, OutputFlags, RejectKind, Rejection, ServedBy};
pub use shadow::{SHADOW_EXAMPLES, ShadowDiff, ShadowReport};
pub use shared::{
    ApprovalState, ApprovalStore, HealthExchange, MemoryApprovalStore, MemoryHealthExchange,
    PendingApproval, SharedHealthRecord,
};
pub use stream::{
    EventStream, Interrupted, Segment, StreamCompleted, StreamEnd, StreamEvent, StreamOutcome,
};
pub use workflow::{MemoryWorkflowStore, WorkflowState, WorkflowStore, WorkflowSuspension};

use crate::audit::{AuditEvent, AuditEventKind, AuditSink, ConsentRef, MemoryAuditSink, PolicyRef};
use crate::catalog::{Catalog, Endpoint, Requirements};
use crate::checkpoint::{
    AgentState, Checkpoint, CheckpointStore, HeuristicCounter, ListFilter, MemoryCheckpointStore,
    ResumeToken, Suspended, TierAt, TokenCounter,
};
use crate::clock::{Clock, SystemClock, Timestamp};
use crate::error::{CheckpointError, EngineError, Error};
use crate::id::{EndpointId, SessionId, TaskKind, TenantId, WorkflowId};
use crate::policy::{
    ApprovalLifetime, Exhausted, Notification, PolicySet, PolicyStore, Replay, ResolvedPolicy,
    Source,
};
use crate::router::{
    ApprovalTicket, Attempt, CallContext, Decision, Reason, ReasonKind, Route, TierRouter,
};
use crate::trigger::{BudgetScope, Classification, Observation, OutcomeClass, TriggerEvaluator};

/// One call handed to the engine.
#[derive(Debug, Clone)]
#[must_use]
pub struct Call<P> {
    /// The tenant.
    pub tenant: TenantId,
    /// The agent session, if any (sessions stay on their tier between steps and can be
    /// suspended and resumed).
    pub session: Option<SessionId>,
    /// The workflow, if any.
    pub workflow: Option<WorkflowId>,
    /// The task kind.
    pub task: TaskKind,
    /// What the request needs from an endpoint.
    pub requirements: Requirements,
    /// When the call must be finished (absolute). Without one, the policy's default deadline
    /// applies.
    pub deadline: Option<Timestamp>,
    /// Whether this call starts a new step of the session (promotion happens only then).
    pub new_step: bool,
    /// The agent's state as free-form JSON, saved in the session's checkpoint before a tier
    /// change or a suspension. Prefer [`Call::agent_state`]: the engine can fit it.
    pub state: Option<serde_json::Value>,
    /// The agent's model-agnostic state: the engine derives the call's token and tool
    /// requirements from it, checkpoints it, fits it to a smaller window when the session
    /// moves, and hands the client the state to send in [`ModelRequest::context`].
    pub agent_state: Option<Arc<AgentState>>,
    /// The request.
    pub payload: P,
}

impl<P> Call<P> {
    /// A call of `tenant` for `task` with `payload`, starting a new step, no session.
    pub fn new(tenant: impl Into<TenantId>, task: impl Into<TaskKind>, payload: P) -> Self {
        Call {
            tenant: tenant.into(),
            session: None,
            workflow: None,
            task: task.into(),
            requirements: Requirements::default(),
            deadline: None,
            new_step: true,
            state: None,
            agent_state: None,
            payload,
        }
    }

    /// In a session.
    pub fn session(mut self, session: impl Into<SessionId>) -> Self {
        self.session = Some(session.into());
        self
    }

    /// In a workflow.
    pub fn workflow(mut self, workflow: impl Into<WorkflowId>) -> Self {
        self.workflow = Some(workflow.into());
        self
    }

    /// With requirements.
    pub fn requirements(mut self, requirements: Requirements) -> Self {
        self.requirements = requirements;
        self
    }

    /// With a deadline.
    pub fn deadline(mut self, deadline: Timestamp) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Within a step (`false`: no promotion on this call) or at a step boundary.
    pub fn new_step(mut self, yes: bool) -> Self {
        self.new_step = yes;
        self
    }

    /// With the agent's state to checkpoint.
    pub fn state(mut self, state: serde_json::Value) -> Self {
        self.state = Some(state);
        self
    }

    /// With the agent's model-agnostic state (see `docs/continuity.md`).
    pub fn agent_state(mut self, state: impl Into<Arc<AgentState>>) -> Self {
        self.agent_state = Some(state.into());
        self
    }

    /// The state a checkpoint of this call holds: the free-form state if given, else the
    /// agent state's JSON.
    fn checkpoint_state(&self) -> Option<serde_json::Value> {
        self.state.clone().or_else(|| {
            self.agent_state
                .as_ref()
                .and_then(|s| serde_json::to_value(&**s).ok())
        })
    }
}

/// A resumed session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resumed {
    /// The session.
    pub session: SessionId,
    /// The agent state saved at suspension.
    pub state: serde_json::Value,
    /// The checkpoint version written by the resume.
    pub version: u64,
}

/// A suspended session whose providers are back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReadyToResume {
    /// The tenant.
    pub tenant: TenantId,
    /// The session.
    pub session: SessionId,
    /// The workflow, if any.
    pub workflow: Option<WorkflowId>,
    /// The token to resume it with.
    pub resume_token: ResumeToken,
}

/// What the engine keeps per session.
#[derive(Debug, Clone, Default)]
struct SessionState {
    tier: Option<(u32, Timestamp)>,
    suspended: Option<(ResumeToken, Option<Timestamp>, String)>,
    /// When the suspension began (its checkpoint's time), for `suspension.max_duration`.
    suspended_at: Option<Timestamp>,
    version: Option<u64>,
    /// Steps completed on this replica (for the checkpoint cadence).
    steps: u64,
    /// A granted approval held while the session stays on this tier (`while_on_tier`).
    grant: Option<(ApprovalTicket, u32)>,
    /// The session's budget state, held so the budget check and charge skip the lookups by id
    /// (shared: copying the session state per call is one reference count, not three).
    budget: Option<Arc<crate::trigger::BudgetHandle>>,
}

const SHARDS: usize = 32;

/// One shard's sessions: hashbrown with its default hasher (foldhash, randomly seeded), several
/// times cheaper than std's SipHash on the per-call path.
type SessionMap = hashbrown::HashMap<SessionId, SessionState>;

/// Sessions, sharded so calls of different sessions do not contend.
#[derive(Debug)]
struct Sessions {
    shards: Box<[Mutex<SessionMap>]>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl Sessions {
    fn new() -> Self {
        Sessions {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(SessionMap::default()))
                .collect(),
            hasher: hashbrown::DefaultHashBuilder::default(),
        }
    }

    fn shard(&self, s: &SessionId) -> &Mutex<SessionMap> {
        &self.shards[(self.hasher.hash_one(s) as usize) % SHARDS]
    }

    fn get(&self, s: &SessionId) -> Option<SessionState> {
        self.shard(s).lock().get(s).cloned()
    }

    fn update(&self, s: &SessionId, f: impl FnOnce(&mut SessionState)) {
        let mut map = self.shard(s).lock();
        // The id is cloned (a reference count) only for a session not yet held.
        match map.get_mut(s) {
            Some(st) => f(st),
            None => f(map.entry(s.clone()).or_default()),
        }
    }

    /// Keeps a budget handle with a session this replica already holds (never creates one: an
    /// absent session is read from the checkpoint store on its next call).
    fn keep_budget(&self, s: &SessionId, h: Arc<crate::trigger::BudgetHandle>) {
        if let Some(st) = self.shard(s).lock().get_mut(s) {
            st.budget = Some(h);
        }
    }
}

struct Inner<P, O> {
    policies: Arc<PolicyStore>,
    evaluator: Arc<TriggerEvaluator>,
    router: TierRouter,
    client: Arc<dyn ModelClient<P, O>>,
    checkpoints: Arc<dyn CheckpointStore>,
    audit: Arc<dyn AuditSink>,
    notifier: Option<Arc<dyn Notifier>>,
    clock: Arc<dyn Clock>,
    sleeper: Arc<dyn Sleeper>,
    sessions: Sessions,
    approvals: Arc<dyn ApprovalStore>,
    exchange: Option<Arc<dyn HealthExchange>>,
    replica: String,
    freshness: Duration,
    workflows: Arc<dyn WorkflowStore>,
    sessionless: sessionless::SessionlessTiers,
    retry_budget: Arc<dyn RetryBudgetStore>,
    seed: u64,
    visibility: visibility::Visibility,
    recorder: Option<Arc<record::RecorderSlot>>,
    shadow: arc_swap::ArcSwapOption<shadow::Shadow>,
    counter: Arc<dyn TokenCounter>,
    replay: replay::ReplayLog<P>,
    ids: Arc<dyn IdSource>,
}

/// The engine: `Send + Sync`, cheap to clone, shared by every task of a process.
pub struct Engine<P = serde_json::Value, O = serde_json::Value> {
    inner: Arc<Inner<P, O>>,
}

impl<P, O> Clone for Engine<P, O> {
    fn clone(&self) -> Self {
        Engine {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<P, O> std::fmt::Debug for Engine<P, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("policy_set", &self.inner.policies.current().digest())
            .field("endpoints", &self.inner.evaluator.endpoints())
            .finish_non_exhaustive()
    }
}

/// Builds an [`Engine`].
#[must_use]
pub struct EngineBuilder<P, O> {
    policies: Arc<PolicyStore>,
    client: Arc<dyn ModelClient<P, O>>,
    evaluator: Option<Arc<TriggerEvaluator>>,
    checkpoints: Option<Arc<dyn CheckpointStore>>,
    audit: Option<Arc<dyn AuditSink>>,
    approvals: Option<Arc<dyn ApprovalStore>>,
    exchange: Option<Arc<dyn HealthExchange>>,
    replica: Option<String>,
    freshness: Duration,
    notifier: Option<Arc<dyn Notifier>>,
    clock: Option<Arc<dyn Clock>>,
    sleeper: Option<Arc<dyn Sleeper>>,
    retry_budget: Option<Arc<dyn RetryBudgetStore>>,
    workflows: Option<Arc<dyn WorkflowStore>>,
    seed: u64,
    stats: bool,
    metrics: bool,
    degraded_step_limit: usize,
    mode: EngineMode,
    labels: crate::telemetry::TenantLabels,
    recorder: Option<Arc<dyn Recorder>>,
    counter: Option<Arc<dyn TokenCounter>>,
    ids: Option<Arc<dyn IdSource>>,
}

impl<P, O> std::fmt::Debug for EngineBuilder<P, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder").finish_non_exhaustive()
    }
}

impl<P, O> EngineBuilder<P, O>
where
    P: Clone + Send + Sync + 'static,
    O: Send + Sync + 'static,
{
    /// Shares an evaluator (endpoint health) with other engines of this process.
    pub fn evaluator(mut self, evaluator: Arc<TriggerEvaluator>) -> Self {
        self.evaluator = Some(evaluator);
        self
    }

    /// The checkpoint store (default: in memory).
    pub fn checkpoints(mut self, store: Arc<dyn CheckpointStore>) -> Self {
        self.checkpoints = Some(store);
        self
    }

    /// The audit sink (default: in memory).
    pub fn audit(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }

    /// The approval tickets, shared with other replicas (default: in memory).
    pub fn approvals(mut self, store: Arc<dyn ApprovalStore>) -> Self {
        self.approvals = Some(store);
        self
    }

    /// Shares endpoint health and half-open probe slots with other replicas through
    /// `exchange` (call [`Engine::sync_health`] periodically, e.g. every second).
    pub fn health_exchange(mut self, exchange: Arc<dyn HealthExchange>) -> Self {
        self.exchange = Some(exchange);
        self
    }

    /// This replica's name in the health exchange (default: one from the [`IdSource`], drawn at
    /// random for this engine unless [`EngineBuilder::ids`] says otherwise). Give each replica a
    /// stable, distinct name.
    pub fn replica(mut self, name: impl Into<String>) -> Self {
        self.replica = Some(name.into());
        self
    }

    /// How old another replica's health record may be and still count (default 30 s).
    pub fn health_freshness(mut self, freshness: Duration) -> Self {
        self.freshness = freshness;
        self
    }

    /// Where real-time notices go (default: nowhere; notices are still audited).
    pub fn notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// The clock (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The sleeper for backoff and deadlines (default: [`NoSleep`]).
    pub fn sleeper(mut self, sleeper: Arc<dyn Sleeper>) -> Self {
        self.sleeper = Some(sleeper);
        self
    }

    /// Where the retry budget is counted (default: a [`MemoryRetryBudget`] of this engine's
    /// own). Give every replica the same replica-shared store to bound retries platform-wide.
    pub fn retry_budget(mut self, budget: Arc<dyn RetryBudgetStore>) -> Self {
        self.retry_budget = Some(budget);
        self
    }

    /// Where workflow deadlines and suspensions are kept (default: a [`MemoryWorkflowStore`]
    /// of this engine's own). Give every replica the same shared store so a workflow suspended
    /// on one replica is suspended on all.
    pub fn workflows(mut self, store: Arc<dyn WorkflowStore>) -> Self {
        self.workflows = Some(store);
        self
    }

    /// Where resume tokens and the default replica name come from (default: [`RandomIds`],
    /// unguessable). Give [`SeededIds`] for reproducible runs: byte-identical checkpoints and
    /// audit logs.
    pub fn ids(mut self, ids: Arc<dyn IdSource>) -> Self {
        self.ids = Some(ids);
        self
    }

    /// The seed for this replica's deterministic choices (jitter, power of two choices).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Whether the engine counts statistics (default on; see [`Engine::stats`]).
    pub fn stats(mut self, on: bool) -> Self {
        self.stats = on;
        self
    }

    /// The mode the engine starts in (default [`EngineMode::PerTenant`]; switch at run time
    /// with [`Engine::set_mode`]).
    pub fn mode(mut self, mode: EngineMode) -> Self {
        self.mode = mode;
        self
    }

    /// Whether calls are counted through the [`metrics`](https://docs.rs/metrics) facade
    /// (feature `metrics`; default off). Off, the engine builds no metric keys at all: with the
    /// feature compiled in but no exporter wanted, a call pays nothing for it. Switch at run
    /// time with [`Engine::set_metrics_enabled`].
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }

    /// How many degraded steps the engine keeps for [`Engine::replay_degraded`] and
    /// [`Engine::review_step`] (default [`DEFAULT_DEGRADED_STEP_LIMIT`]); beyond it a degraded
    /// step is still flagged in its result and provenance but not kept, and
    /// [`Engine::degraded_steps_not_kept`] counts it. Under `recovery.replay: flag` a step keeps
    /// only its metadata and output text; under `rerun` also the payload and context to re-send.
    /// `0` keeps none: every degraded step is only counted.
    pub fn degraded_step_limit(mut self, steps: usize) -> Self {
        self.degraded_step_limit = steps;
        self
    }

    /// How tenants are labelled in exported metrics (default: all `other`; feature `metrics`).
    pub fn metric_labels(mut self, labels: crate::telemetry::TenantLabels) -> Self {
        self.labels = labels;
        self
    }

    /// The token counter used to size and fit agent states (default: [`HeuristicCounter`]).
    pub fn token_counter(mut self, counter: Arc<dyn TokenCounter>) -> Self {
        self.counter = Some(counter);
        self
    }

    /// Builds the engine.
    ///
    /// # Errors
    /// [`Error::Trigger`] when the catalog is too large for an evaluator.
    pub fn build(self) -> Result<Engine<P, O>, Error> {
        let set = self.policies.current();
        let evaluator = match self.evaluator {
            Some(e) => e,
            None => Arc::new(TriggerEvaluator::for_catalog(
                &set.evaluator_settings(),
                set.catalog(),
                self.seed,
            )?),
        };
        let router = TierRouter::new(
            Arc::clone(&self.policies),
            Arc::clone(&evaluator),
            self.seed,
        );
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let visibility = visibility::Visibility::new(
            clock.now(),
            self.stats,
            self.mode,
            self.labels,
            self.metrics,
        );
        let ids = self.ids.unwrap_or_else(|| Arc::new(RandomIds));
        Ok(Engine {
            inner: Arc::new(Inner {
                policies: self.policies,
                evaluator,
                router,
                client: self.client,
                checkpoints: self
                    .checkpoints
                    .unwrap_or_else(|| Arc::new(MemoryCheckpointStore::new())),
                audit: self
                    .audit
                    .unwrap_or_else(|| Arc::new(MemoryAuditSink::new())),
                notifier: self.notifier,
                clock,
                sleeper: self.sleeper.unwrap_or_else(|| Arc::new(NoSleep)),
                sessions: Sessions::new(),
                approvals: self
                    .approvals
                    .unwrap_or_else(|| Arc::new(MemoryApprovalStore::new())),
                exchange: self.exchange,
                replica: self.replica.unwrap_or_else(|| ids.replica_name()),
                freshness: self.freshness,
                workflows: self
                    .workflows
                    .unwrap_or_else(|| Arc::new(MemoryWorkflowStore::new())),
                sessionless: sessionless::SessionlessTiers::default(),
                retry_budget: self
                    .retry_budget
                    .unwrap_or_else(|| Arc::new(MemoryRetryBudget::new())),
                seed: self.seed,
                visibility,
                recorder: self.recorder.map(record::RecorderSlot::new),
                shadow: arc_swap::ArcSwapOption::empty(),
                counter: self.counter.unwrap_or_else(|| Arc::new(HeuristicCounter)),
                replay: replay::ReplayLog::new(self.degraded_step_limit),
                ids,
            }),
        })
    }
}

fn tier_at(
    view: &ResolvedPolicy,
    catalog: &Catalog,
    tier: u32,
    endpoint: Option<crate::catalog::EndpointIdx>,
) -> TierAt {
    let mut t = TierAt::new(tier, view.tier(tier).map_or("?", |t| &*t.name));
    if let Some(e) = endpoint.and_then(|e| catalog.try_endpoint(e)) {
        t = t.on(e.id.clone());
    }
    t
}

fn policy_ref(view: &ResolvedPolicy) -> Option<PolicyRef> {
    view.layers.last().map(|l| PolicyRef {
        id: l.id.clone(),
        version: l.version.clone(),
        digest: view.digest.clone(),
    })
}

fn consent_ref(view: &ResolvedPolicy) -> Option<ConsentRef> {
    view.consent.as_ref().map(|c| ConsentRef {
        agreement_id: c.agreement_id.clone(),
        version: c.version.clone(),
        document_digest: c.document_digest.clone(),
    })
}

impl<P, O> Engine<P, O>
where
    P: Clone + Send + Sync + 'static,
    O: Send + Sync + 'static,
{
    /// Starts building an engine over `policies` (a [`PolicySet`], or a shared
    /// `Arc<PolicyStore>` for hot reload) that calls `client`.
    pub fn builder(
        policies: impl Into<Arc<PolicyStore>>,
        client: Arc<dyn ModelClient<P, O>>,
    ) -> EngineBuilder<P, O> {
        EngineBuilder {
            policies: policies.into(),
            client,
            evaluator: None,
            checkpoints: None,
            audit: None,
            approvals: None,
            exchange: None,
            replica: None,
            freshness: Duration::from_secs(30),
            notifier: None,
            clock: None,
            sleeper: None,
            retry_budget: None,
            workflows: None,
            seed: 0,
            stats: true,
            metrics: false,
            degraded_step_limit: replay::DEFAULT_DEGRADED_STEP_LIMIT,
            mode: EngineMode::PerTenant,
            labels: crate::telemetry::TenantLabels::new(),
            recorder: None,
            counter: None,
            ids: None,
        }
    }

    /// The router (for `explain`).
    #[must_use]
    pub fn router(&self) -> &TierRouter {
        &self.inner.router
    }

    /// The shared endpoint health.
    #[must_use]
    pub fn evaluator(&self) -> &Arc<TriggerEvaluator> {
        &self.inner.evaluator
    }

    /// The active policies.
    #[must_use]
    pub fn policies(&self) -> &Arc<PolicyStore> {
        &self.inner.policies
    }

    /// The checkpoint store.
    #[must_use]
    pub fn checkpoints(&self) -> &Arc<dyn CheckpointStore> {
        &self.inner.checkpoints
    }

    /// The audit sink.
    #[must_use]
    pub fn audit(&self) -> &Arc<dyn AuditSink> {
        &self.inner.audit
    }

    /// The session's state: this replica's copy, or — the first time this replica sees the
    /// session — what its checkpoint says (tier, suspension, version), so a session can move
    /// between replicas.
    async fn session_state(&self, sid: &SessionId) -> Result<SessionState, CheckpointError> {
        if let Some(s) = self.inner.sessions.get(sid) {
            // A suspension may have been lifted by another replica: the store decides.
            if s.suspended.is_none() {
                return Ok(s);
            }
        }
        let st = match self.inner.checkpoints.load(sid).await? {
            Some(cp) => SessionState {
                tier: Some((cp.tier.index, cp.created_at)),
                suspended_at: cp.suspended.as_ref().map(|_| cp.created_at),
                suspended: cp.suspended.map(|s| {
                    let reason = s.reason;
                    (s.resume_token, s.retry_at, reason)
                }),
                version: Some(cp.version),
                steps: 0,
                grant: None,
                budget: None,
            },
            None => SessionState::default(),
        };
        let copy = st.clone();
        self.inner.sessions.update(sid, |s| *s = copy);
        Ok(st)
    }

    /// Forgets this replica's copy of a session's state; its next call reads the checkpoint
    /// store again. Call it when another replica may have changed the session (or route a
    /// session's calls to one replica).
    pub fn forget_session(&self, session: &SessionId) {
        self.inner.sessions.shard(session).lock().remove(session);
    }

    async fn record(&self, event: AuditEvent) -> Result<u64, Rejection> {
        self.inner
            .audit
            .append(event)
            .await
            .map(|r| r.seq)
            .map_err(|e| Rejection {
                kind: RejectKind::Durability,
                reason: None,
                message: format!(
                    "the audit log could not be written, so the transition was not made: {e}"
                ),
            })
    }

    async fn notify(&self, call: &Call<P>, kind: NoticeKind, reason: String, at: Timestamp) {
        if let Some(n) = &self.inner.notifier {
            n.notify(Notice {
                tenant: call.tenant.clone(),
                session: call.session.clone(),
                workflow: call.workflow.clone(),
                task: call.task.clone(),
                kind,
                reason,
                at,
            })
            .await;
        }
    }

    fn event(
        call: &Call<P>,
        view: &ResolvedPolicy,
        at: Timestamp,
        kind: AuditEventKind,
    ) -> AuditEvent {
        let mut e = AuditEvent::new(at, kind)
            .tenant(call.tenant.clone())
            .task(call.task.clone());
        if let Some(s) = &call.session {
            e = e.session(s.clone());
        }
        if let Some(w) = &call.workflow {
            e = e.workflow(w.clone());
        }
        if let Some(p) = policy_ref(view) {
            e = e.policy(p);
        }
        if let Some(c) = consent_ref(view) {
            e = e.consent(c);
        }
        e
    }

    /// The gates before routing: the session's state (from this replica or the checkpoint
    /// store), a suspended session (it stays suspended until resumed), a suspended workflow
    /// (its siblings are suspended at their next call, with their own state saved, so none
    /// waits on an output that will never come), and the workflow's deadline.
    async fn preflight(
        &self,
        call: &Call<P>,
        start: Timestamp,
    ) -> Result<Preflight, CallResult<O>> {
        let inner = &*self.inner;
        inner.retry_budget.record_call(start);
        let session = match &call.session {
            Some(s) => match self.session_state(s).await {
                Ok(st) => Some(st),
                Err(e) => return Err(CallResult::Rejected(durability(e))),
            },
            None => None,
        };
        if let Some((token, retry_at, reason)) = session.as_ref().and_then(|s| s.suspended.clone())
        {
            // Suspended longer than the policy allows: given up, not suspended forever.
            let since = session.as_ref().and_then(|s| s.suspended_at);
            if let (Some(sid), Some(since)) = (&call.session, since) {
                let max =
                    expiry::max_duration(&inner.policies.current(), &call.tenant, Some(&call.task));
                if expiry::expired(since, max, start) {
                    let given_up = match inner.checkpoints.load(sid).await {
                        Ok(Some(cp)) => Box::pin(self.give_up_if_expired(cp, start)).await,
                        Ok(None) => Ok(None),
                        Err(e) => Err(e.into()),
                    };
                    match given_up {
                        Ok(Some(g)) => return Err(CallResult::Rejected(g.rejection())),
                        Ok(None) => {}
                        Err(e) => {
                            return Err(CallResult::Rejected(Rejection {
                                kind: RejectKind::Durability,
                                reason: None,
                                message: format!(
                                    "the expired suspension could not be given up: {e}"
                                ),
                            }));
                        }
                    }
                }
            }
            return Err(CallResult::Suspended {
                resume_token: token,
                retry_at,
                reason,
            });
        }
        let workflow = match &call.workflow {
            Some(w) => match inner.workflows.get(w).await {
                Ok(st) => Some(st.unwrap_or_default()),
                Err(e) => return Err(CallResult::Rejected(workflow_store_error(&e))),
            },
            None => None,
        };
        if let (
            Some(WorkflowSuspension {
                reason: why,
                retry_at,
            }),
            Some(w),
        ) = (
            workflow.as_ref().and_then(|w| w.suspended.clone()),
            call.workflow.as_ref(),
        ) {
            let set = inner.policies.current();
            if let Ok(tp) = set.tenant(call.tenant.as_str()) {
                let view = Arc::clone(tp.view(call.task.as_str()));
                let reason = Reason {
                    kind: ReasonKind::NothingUsable,
                    triggers: Default::default(),
                };
                let message = format!("workflow `{w}` is suspended: {why}");
                return Err(Box::pin(self.suspend_with(
                    call,
                    &view,
                    set.catalog(),
                    session.as_ref(),
                    reason,
                    message,
                    retry_at,
                    start,
                ))
                .await);
            }
        }
        Ok(Preflight {
            start,
            session,
            workflow_deadline: workflow.and_then(|w| w.deadline),
            approved_to: None,
            approved_ticket: None,
            budget: None,
        })
    }

    /// Routes the next attempt of a call. A `Route` comes back (with the policy view it was
    /// decided under); every other decision is settled here — an approval looked up, requested
    /// or (when granted) routed again, a suspension saved, a rejection audited — and ends the
    /// call. A retry beyond the platform's retry budget ends it too.
    async fn next_route(
        &self,
        call: &Call<P>,
        pre: &mut Preflight,
        attempts: &[Attempt],
    ) -> Result<Routed, CallResult<O>> {
        let inner = &*self.inner;
        loop {
            let now = inner.clock.now();
            let set = inner.policies.current();
            let Ok(tp) = set.tenant(call.tenant.as_str()) else {
                return Err(CallResult::Rejected(Rejection {
                    kind: RejectKind::Policy,
                    reason: Some(Reason {
                        kind: ReasonKind::UnknownTenant,
                        triggers: Default::default(),
                    }),
                    message: format!("unknown tenant `{}`", call.tenant),
                }));
            };
            let view = Arc::clone(tp.view(call.task.as_str()));
            // A session's budget state is found by id once, then reached through its handle.
            if pre.budget.is_none() && view.tenant_triggers.budget.is_some() {
                if let Some(sid) = &call.session {
                    // Moved out of this call's copy of the session state (nothing else reads it
                    // there), so the handle is not cloned twice per call.
                    let held = pre.session.as_mut().and_then(|s| s.budget.take());
                    pre.budget = Some(held.unwrap_or_else(|| {
                        // Named by the policy set's own tenant id, as the router's context is
                        // (below): the budget check then recognises the handle by address.
                        let mut scope = BudgetScope::tenant(tp.handle().tenant()).session(sid);
                        if let Some(w) = &call.workflow {
                            scope = scope.workflow(w);
                        }
                        let h = Arc::new(inner.evaluator.budget_handle(&scope, now));
                        inner.sessions.keep_budget(sid, Arc::clone(&h));
                        h
                    }));
                }
            }
            // The tenant is looked up once: the router takes it by handle (with the handle's
            // own id, so the router's check is a pointer comparison).
            let mut ctx = CallContext::for_handle(tp.handle(), &call.task)
                .requirements(call.requirements)
                .step_boundary(call.new_step && attempts.is_empty())
                .attempts(attempts);
            let own = call.deadline.or_else(|| {
                view.sla
                    .default_deadline
                    .map(|d| pre.start.saturating_add(d))
            });
            // The workflow's deadline bounds its sub-agents' calls.
            if let Some(d) = match (own, pre.workflow_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            } {
                ctx = ctx.deadline(d);
            }
            // The session and workflow by the budget handle's own ids when they are the same
            // (the handle is kept per session; a session's calls may name another workflow), so
            // the guardrail check recognises the handle by address and reads no cell.
            let held = pre.budget.as_deref();
            if let Some(s) = &call.session {
                ctx = ctx.session(held.and_then(|h| h.session()).unwrap_or(s));
            }
            if let Some(w) = &call.workflow {
                let own = held.and_then(|h| h.workflow()).filter(|hw| *hw == w);
                ctx = ctx.workflow(own.unwrap_or(w));
            }
            if let Some((tier, since)) = pre.session.as_ref().and_then(|s| s.tier) {
                ctx = ctx.on_tier(tier, since);
            }
            if let Some(a) = pre.approved_to {
                ctx = ctx.approved_to(a);
            }
            if let Some(h) = &pre.budget {
                ctx = ctx.budget_handle(h);
            }
            let deadline = ctx.deadline;
            let candidate = self.shadow_route(&ctx, now);
            let decision = inner.router.route(&ctx, now);
            self.shadow_compare(&ctx, candidate, &decision, now);
            match decision {
                Decision::Route(route) => {
                    if !attempts.is_empty() {
                        let granted = inner.retry_budget.try_retry(&view.retry.budget, now).await;
                        if !matches!(granted, Ok(true)) {
                            let message = match granted {
                                Err(e) => format!(
                                    "the retry budget could not be checked ({e}): no further retry or fallback now"
                                ),
                                Ok(_) => "the platform's retry budget is spent: no further retry or fallback now".into(),
                            };
                            return Err(CallResult::Rejected(Rejection {
                                kind: RejectKind::RetryBudget,
                                reason: Some(route.reason),
                                message,
                            }));
                        }
                    }
                    return Ok(Routed {
                        route,
                        view,
                        set,
                        deadline,
                        now,
                    });
                }
                Decision::AwaitApproval {
                    ticket,
                    current,
                    proposed_tier,
                    proposed_endpoint,
                    reason,
                } => {
                    match Box::pin(self.request_approval(
                        call,
                        &view,
                        set.catalog(),
                        ticket,
                        current,
                        proposed_tier,
                        proposed_endpoint,
                        reason,
                        pre.session.as_ref(),
                        now,
                    ))
                    .await
                    {
                        Gate::Proceed(tier) if pre.approved_to.is_none_or(|a| a < tier) => {
                            pre.approved_to = Some(tier);
                            pre.approved_ticket = Some(ticket);
                        }
                        Gate::Proceed(_) => {
                            return Err(CallResult::Rejected(Rejection {
                                kind: RejectKind::Policy,
                                reason: Some(reason),
                                message: "the approved switch could not be made".into(),
                            }));
                        }
                        Gate::End(result) => return Err(*result),
                    }
                }
                Decision::Suspend { reason, retry_at } => {
                    return Err(Box::pin(self.suspend(
                        call,
                        &view,
                        set.catalog(),
                        pre.session.as_ref(),
                        reason,
                        retry_at,
                        now,
                    ))
                    .await);
                }
                Decision::Reject { reason } => {
                    let message = reason.to_string();
                    let mut ev = Self::event(
                        call,
                        &view,
                        now,
                        AuditEventKind::Rejection {
                            reason: message.clone(),
                        },
                    );
                    if let Some(t) = reason.triggers.first() {
                        ev = ev.trigger(t.record(set.catalog()));
                    }
                    if let Err(r) = Box::pin(self.record(ev)).await {
                        return Err(CallResult::Rejected(r));
                    }
                    return Err(CallResult::Rejected(Rejection {
                        kind: RejectKind::Policy,
                        reason: Some(reason),
                        message,
                    }));
                }
            }
        }
    }

    /// [`Engine::call`] without the recorder (see `record.rs`).
    async fn call_unrecorded(&self, mut call: Call<P>) -> CallResult<O> {
        self.prepare_call(&mut call);
        self.call_visible(call).await
    }

    /// [`Engine::call`] under the tenants' full policies.
    async fn call_per_tenant(&self, call: &Call<P>) -> CallResult<O> {
        let start = self.inner.clock.now();
        let mut pre = match self.preflight(call, start).await {
            Ok(p) => p,
            Err(end) => return end,
        };
        let mut attempts: Vec<Attempt> = Vec::new();
        let mut tried: Vec<attempts::Tried> = Vec::new();
        let mut audit_seqs = Vec::new();
        loop {
            let r = match self.next_route(call, &mut pre, &attempts).await {
                Ok(r) => r,
                Err(end) => return attempts::explain(end, &tried),
            };
            let catalog = r.set.catalog();
            // The context to send: fitted to the endpoint, or the call ends here.
            let context = match self.context_for(call, &r, &pre, &mut audit_seqs).await {
                Ok(c) => c,
                Err(end) => return end,
            };
            let fitted = context.as_ref().is_some_and(|c| c.fitted);
            let context = context.map(|c| c.state);
            let began = self.inner.clock.now();
            let result = self
                .attempt(
                    call,
                    &r.view,
                    catalog,
                    &r.route,
                    r.deadline,
                    &attempts,
                    r.now,
                    context.clone(),
                    pre.budget.as_deref(),
                )
                .await;
            if let Err(e) = &result {
                let ended = self.inner.clock.now();
                tried.push(attempts::Tried {
                    endpoint: catalog
                        .try_endpoint(r.route.endpoint)
                        .map_or_else(|| EndpointId::new("?"), |x| x.id.clone()),
                    class: e.class(),
                    // Cut at the deadline: the time it was given.
                    waited: r
                        .deadline
                        .map_or(ended, |d| ended.min(d))
                        .duration_since(began),
                    at_deadline: r.deadline.is_some_and(|d| ended >= d),
                });
            }
            match result {
                Ok(response) => {
                    // The degraded output's text, kept for a later replay's diff.
                    let text = (r.route.degraded
                        && call.session.is_some()
                        && r.view.recovery.replay != Replay::None)
                        .then(|| self.inner.client.output_text(&response.output))
                        .flatten();
                    let mut steps = 0;
                    let mut result = self
                        .complete(
                            call,
                            &r.view,
                            catalog,
                            &r.route,
                            response,
                            Some(&pre),
                            &attempts,
                            &mut audit_seqs,
                            Some(&mut steps),
                        )
                        .await;
                    self.after_step(call, &r, &mut result, context, text, fitted, steps)
                        .await;
                    return result;
                }
                Err(e) if !e.class().is_capacity() => {
                    return CallResult::Rejected(refused(catalog, r.route.endpoint, &e));
                }
                Err(e) => attempts.push(Attempt {
                    endpoint: r.route.endpoint,
                    outcome: e.class(),
                }),
            }
        }
    }

    /// How long to wait before retrying an endpoint already tried in this call (exponential,
    /// capped, jittered), if the wait fits before the deadline.
    fn backoff(
        &self,
        view: &ResolvedPolicy,
        route: &Route,
        deadline: Option<Timestamp>,
        attempts: &[Attempt],
        now: Timestamp,
    ) -> Option<Duration> {
        let inner = &*self.inner;
        let same = attempts
            .iter()
            .filter(|a| a.endpoint == route.endpoint)
            .count();
        if same == 0 || !inner.sleeper.keeps_time() {
            return None;
        }
        let b = &view.retry.backoff;
        let exp = b
            .multiplier
            .max(1.0)
            .powi(i32::try_from(same - 1).unwrap_or(i32::MAX));
        let capped = (b.initial.as_secs_f64() * exp).min(b.max.as_secs_f64());
        let r = (splitmix(inner.seed ^ (same as u64) ^ now.as_millis()) % 10_000) as f64 / 10_000.0;
        let wait = Duration::from_secs_f64(capped * (1.0 + b.jitter.clamp(0.0, 1.0) * r));
        deadline
            .is_none_or(|d| now.saturating_add(wait) < d)
            .then_some(wait)
    }

    /// Reports one attempt's outcome to the evaluator (endpoint health, latency, budgets).
    #[allow(clippy::too_many_arguments)]
    fn observe_attempt(
        &self,
        call: &Call<P>,
        view: &ResolvedPolicy,
        route: &Route,
        ep: &Endpoint,
        class: OutcomeClass,
        usage: TokenUsage,
        classification: Option<&Classification>,
        started: Timestamp,
        budget: Option<&crate::trigger::BudgetHandle>,
    ) {
        let inner = &*self.inner;
        let finished = inner.clock.now();
        let cost = ep.pricing.cost(usage.input_tokens, usage.output_tokens);
        // Named by the budget handle's own ids where it has them (the same text), as the route
        // was, so the charge recognises the handle without reading its cells' ids.
        let mut obs = Observation::new(
            route.endpoint,
            budget.map_or(&call.tenant, |h| h.tenant()),
            class,
            started,
            finished.duration_since(started),
        )
        .task(&call.task)
        .usage(usage.input_tokens, usage.output_tokens)
        .cost(cost);
        if let Some(c) = classification {
            obs = obs.classified(c);
        }
        if let Some(s) = &call.session {
            obs = obs.session(budget.and_then(|h| h.session()).unwrap_or(s));
        }
        if let Some(w) = &call.workflow {
            obs = obs.workflow(
                budget
                    .and_then(|h| h.workflow())
                    .filter(|hw| *hw == w)
                    .unwrap_or(w),
            );
        }
        if let Some(p) = route.probe {
            obs = obs.probe(p);
        }
        if let Some(b) = &view.tenant_triggers.budget {
            obs = obs.budget(b);
            if let Some(h) = budget {
                obs = obs.budget_handle(h);
            }
        }
        self.record_observation(&obs);
        // An observation is only refused for an index outside the catalog or a bad cost, which
        // the engine never builds.
        let _ = inner.evaluator.observe(&obs, finished);
        self.record_attempt(
            &call.tenant,
            view,
            route,
            ep,
            class,
            usage,
            cost,
            finished.duration_since(started),
        );
    }

    /// Half-open probes are limited platform-wide: with a health exchange, a probe call first
    /// claims one of the platform's probe slots; when another replica holds them all, the local
    /// permit is given back and the call moves on as if the endpoint were busy.
    async fn claim_probe_slot(
        &self,
        route: &Route,
        endpoint: &EndpointId,
        now: Timestamp,
    ) -> Result<(), ModelError> {
        let inner = &*self.inner;
        let (Some(permit), Some(x)) = (route.probe, &inner.exchange) else {
            return Ok(());
        };
        let limit = inner
            .policies
            .current()
            .evaluator_settings()
            .half_open
            .probes;
        if x.claim_probe(endpoint, self.probe_round(route.endpoint, now), limit)
            .await
            .unwrap_or(false)
        {
            return Ok(());
        }
        let _ = inner.evaluator.release_probe(permit, now);
        Err(ModelError::of(
            OutcomeClass::Overloaded,
            "another replica holds the platform-wide probe slots",
        ))
    }

    /// One attempt at a routed endpoint: backoff if retrying it, the probe slot, the call raced
    /// against the deadline, and the observation.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        call: &Call<P>,
        view: &ResolvedPolicy,
        catalog: &Catalog,
        route: &Route,
        deadline: Option<Timestamp>,
        attempts: &[Attempt],
        now: Timestamp,
        context: Option<Arc<AgentState>>,
        budget: Option<&crate::trigger::BudgetHandle>,
    ) -> Result<ModelResponse<O>, ModelError> {
        let inner = &*self.inner;
        if let Some(wait) = self.backoff(view, route, deadline, attempts, now) {
            inner.sleeper.sleep(wait).await;
        }
        let Some(ep) = catalog.try_endpoint(route.endpoint) else {
            return Err(ModelError::of(
                OutcomeClass::BadRequest,
                "endpoint missing from the catalog",
            ));
        };
        self.claim_probe_slot(route, &ep.id, now).await?;
        let started = inner.clock.now();
        let request = ModelRequest {
            endpoint: ep.id.clone(),
            endpoint_idx: route.endpoint,
            model: ep.model.clone(),
            deadline,
            payload: call.payload.clone(),
            attempt: u32::try_from(attempts.len()).unwrap_or(u32::MAX),
            probe: route.probe.is_some(),
            fit_context: route.fit_context && context.is_none(),
            context_window: ep.capabilities.context_window,
            continue_from: None,
            context,
            purpose: Purpose::Step,
        };
        let fut = inner.client.call(request);
        let result = match deadline {
            Some(d) if inner.sleeper.keeps_time() => {
                let left = d.duration_since(started);
                let timer = inner.sleeper.sleep(left);
                match select(fut, timer).await {
                    Either::Left((r, _)) => r,
                    Either::Right(((), _)) => Err(deadline_error()),
                }
            }
            _ => fut.await,
        };
        // A success's headers carry the provider's rate-limit headroom: reading it lets the
        // `rate_limit_remaining` trigger move traffic off an endpoint before it returns 429s.
        let success = match &result {
            Ok(r) if !r.headers.is_empty() => {
                let headers: Vec<(&str, &str)> = r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let c = crate::trigger::classify_http(200, &headers, b"");
                (c.class == OutcomeClass::Ok).then_some(c)
            }
            _ => None,
        };
        let (class, usage, classification) = match &result {
            Ok(r) => (OutcomeClass::Ok, r.usage, success.as_ref()),
            Err(e) => (e.class(), e.usage, Some(&*e.classification)),
        };
        self.observe_attempt(
            call,
            view,
            route,
            ep,
            class,
            usage,
            classification,
            started,
            budget,
        );
        result
    }

    /// Settles a served call: checkpoint and audit the tier change, notify, move the session.
    /// Generic over the response so a finished stream (which has no single `O`) settles the
    /// same way.
    #[allow(clippy::too_many_arguments)]
    async fn complete<R>(
        &self,
        call: &Call<P>,
        view: &ResolvedPolicy,
        catalog: &Catalog,
        route: &Route,
        response: ModelResponse<R>,
        pre: Option<&Preflight>,
        attempts: &[Attempt],
        audit_seqs: &mut Vec<u64>,
        step: Option<&mut u64>,
    ) -> CallResult<R> {
        let inner = &*self.inner;
        let session = pre.and_then(|p| p.session.as_ref());
        let approved = pre.and_then(|p| p.approved_ticket);
        let now = inner.clock.now();
        let top = view.top_tier().unwrap_or(0);
        // Sessionless traffic audits transitions of its (tenant, task): the tier it was last
        // served on is the one it moves from, and a call on that same tier writes nothing (its
        // `audit` cites the record of the transition in force).
        let claim = if call.session.is_none() {
            Some(
                inner
                    .sessionless
                    .claim(&call.tenant, &call.task, route.tier, top),
            )
        } else {
            None
        };
        let (from, moved) = match claim {
            Some(sessionless::Claim::Same(seq)) => {
                audit_seqs.extend(seq);
                (route.tier, false)
            }
            Some(sessionless::Claim::Moved { from, .. }) => (from, true),
            None => {
                let from = session.and_then(|s| s.tier).map_or(top, |(t, _)| t);
                (from, route.tier != from)
            }
        };
        visibility::record_route(route, view, catalog, catalog.try_endpoint(route.endpoint));
        if moved {
            visibility::tier_event(
                if route.tier < from {
                    "promotion"
                } else {
                    "tier_change"
                },
                &call.tenant,
                call.session.as_ref(),
                from,
                Some(route.tier),
                catalog.try_endpoint(route.endpoint).map(|e| e.id.as_str()),
                route.reason.kind.as_str(),
            );
            // Checkpoint before the session's tier changes, when the caller gave its state.
            if let (Some(sid), Some(state)) = (&call.session, call.checkpoint_state()) {
                let cp = self.checkpoint(
                    call,
                    view,
                    catalog,
                    route.tier,
                    Some(route.endpoint),
                    state,
                    now,
                );
                if let Err(e) = self.save(sid, cp, session.and_then(|s| s.version)).await {
                    return e.into_result();
                }
            }
            let kind = if route.tier < from {
                AuditEventKind::Promotion {
                    from: tier_at(view, catalog, from, None),
                    to: tier_at(view, catalog, route.tier, Some(route.endpoint)),
                }
            } else {
                AuditEventKind::TierChange {
                    from: tier_at(view, catalog, from, None),
                    to: tier_at(view, catalog, route.tier, Some(route.endpoint)),
                }
            };
            let mut ev = Self::event(call, view, now, kind);
            if let Some(t) = route.reason.triggers.first() {
                ev = ev.trigger(t.record(catalog));
            }
            match self.record(ev).await {
                Ok(seq) => {
                    audit_seqs.push(seq);
                    if claim.is_some() {
                        inner
                            .sessionless
                            .recorded(&call.tenant, &call.task, route.tier, seq);
                    }
                }
                Err(r) => {
                    if let Some(sessionless::Claim::Moved { from, prev, .. }) = claim {
                        inner
                            .sessionless
                            .revert(&call.tenant, &call.task, route.tier, from, prev);
                    }
                    return CallResult::Rejected(r);
                }
            }
            if let Err(r) = self
                .spend_grants(call, view, session, claim, approved, route.tier)
                .await
            {
                return CallResult::Rejected(r);
            }
            if route.notice || (view.notification == Notification::Realtime && moved) {
                let endpoint = catalog
                    .try_endpoint(route.endpoint)
                    .map_or_else(|| EndpointId::new("?"), |e| e.id.clone());
                self.notify(
                    call,
                    NoticeKind::TierChanged {
                        from,
                        to: route.tier,
                        endpoint,
                        degraded: route.degraded,
                    },
                    route.reason.to_string(),
                    now,
                )
                .await;
            }
        }
        if let Some(sid) = &call.session {
            let tier = route.tier;
            // One visit to the session's shard: its tier and, when asked (`step`), the step count
            // the checkpoint cadence reads.
            let count = call.new_step;
            inner.sessions.update(sid, |s| {
                if s.tier.is_none_or(|(t, _)| t != tier) {
                    s.tier = Some((tier, now));
                }
                if let Some(step) = step {
                    if count {
                        s.steps = s.steps.saturating_add(1);
                        *step = s.steps;
                    }
                }
            });
        }
        let served = served_by(view, catalog, route);
        let flags = OutputFlags {
            degraded: route.degraded,
            top_tier: top,
            served_tier: route.tier,
            probe: route.probe.is_some(),
            fitted_context: route.fit_context,
            replay: view.recovery.replay,
            needs_review: route.degraded && view.recovery.replay != Replay::None,
        };
        CallResult::Completed(Box::new(Completed {
            response,
            served_by: served,
            degraded: route.degraded,
            flags,
            attempts: u32::try_from(attempts.len() + 1).unwrap_or(u32::MAX),
            policy_digest: view.digest.clone(),
            audit: std::mem::take(audit_seqs),
        }))
    }

    /// Approval grants after a move to `tier` (see the policy's `approval_lifetime`): a grant
    /// held on the tier the session (or sessionless traffic) left is spent; the grant this
    /// switch rests on is spent at once (`single_switch`) or held while it stays on `tier`
    /// (`while_on_tier`).
    async fn spend_grants(
        &self,
        call: &Call<P>,
        view: &ResolvedPolicy,
        session: Option<&SessionState>,
        claim: Option<sessionless::Claim>,
        approved: Option<ApprovalTicket>,
        tier: u32,
    ) -> Result<(), Rejection> {
        let inner = &*self.inner;
        let left = match claim {
            Some(sessionless::Claim::Moved { grant, .. }) => grant,
            _ => session.and_then(|s| s.grant).map(|(t, _)| t),
        };
        let mut spent: Vec<ApprovalTicket> = left.into_iter().collect();
        if let Some(sid) = &call.session {
            inner.sessions.update(sid, |s| s.grant = None);
        }
        if let Some(ticket) = approved {
            match view.approval_lifetime {
                ApprovalLifetime::SingleSwitch => spent.push(ticket),
                ApprovalLifetime::WhileOnTier => match &call.session {
                    Some(sid) => inner
                        .sessions
                        .update(sid, |s| s.grant = Some((ticket, tier))),
                    None => inner
                        .sessionless
                        .hold_grant(&call.tenant, &call.task, tier, ticket),
                },
            }
        }
        for t in spent {
            inner
                .approvals
                .remove_granted(t)
                .await
                .map_err(|e| store_error(&e))?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn checkpoint(
        &self,
        call: &Call<P>,
        view: &ResolvedPolicy,
        catalog: &Catalog,
        tier: u32,
        endpoint: Option<crate::catalog::EndpointIdx>,
        state: serde_json::Value,
        now: Timestamp,
    ) -> Checkpoint {
        let sid = call.session.clone().unwrap_or_else(|| SessionId::new(""));
        let mut cp = Checkpoint::new(
            call.tenant.clone(),
            sid,
            now,
            tier_at(view, catalog, tier, endpoint),
            view.digest.clone(),
            state,
        );
        if let Some(w) = &call.workflow {
            cp = cp.in_workflow(w.clone());
        }
        cp.task = Some(call.task.clone());
        cp
    }

    /// Saves with compare-and-swap against the version this engine last saw (or the stored
    /// one). On a conflict another replica saved since: the stored checkpoint is reloaded and
    /// reconciled — a suspension saved there stands (the session is suspended, whatever this
    /// replica was about to write); otherwise this save, decided on live health, goes on top of
    /// the newer version — and the save is retried, at most [`SAVE_ATTEMPTS`] times in all.
    async fn save(
        &self,
        sid: &SessionId,
        cp: Checkpoint,
        expected: Option<u64>,
    ) -> Result<u64, SaveError> {
        let store = &self.inner.checkpoints;
        let reject = |e| SaveError::Rejected(durability(e));
        let mut expected = match expected {
            Some(v) => Some(v),
            None => store.load(sid).await.map_err(reject)?.map(|c| c.version),
        };
        for _ in 0..SAVE_ATTEMPTS {
            match store.save(cp.clone(), expected).await {
                Ok(version) => {
                    self.inner
                        .sessions
                        .update(sid, |s| s.version = Some(version));
                    return Ok(version);
                }
                Err(CheckpointError::Conflict { .. }) => {
                    let current = store.load(sid).await.map_err(reject)?;
                    match current {
                        Some(c) => {
                            if let Some(susp) = c.suspended {
                                let held = (susp.resume_token, susp.retry_at, susp.reason);
                                let copy = held.clone();
                                self.inner.sessions.update(sid, |s| {
                                    *s = SessionState {
                                        tier: Some((c.tier.index, c.created_at)),
                                        suspended: Some(copy),
                                        suspended_at: Some(c.created_at),
                                        version: Some(c.version),
                                        grant: None,
                                        steps: 0,
                                        budget: None,
                                    };
                                });
                                return Err(SaveError::SuspendedElsewhere {
                                    resume_token: held.0,
                                    retry_at: held.1,
                                    reason: held.2,
                                });
                            }
                            expected = Some(c.version);
                        }
                        None => expected = None,
                    }
                }
                Err(e) => return Err(reject(e)),
            }
        }
        let e = EngineError::CheckpointContention {
            session: sid.clone(),
            attempts: SAVE_ATTEMPTS,
        };
        Err(SaveError::Rejected(Rejection {
            kind: RejectKind::Durability,
            reason: None,
            message: e.to_string(),
        }))
    }

    #[allow(clippy::too_many_arguments)]
    async fn suspend(
        &self,
        call: &Call<P>,
        view: &ResolvedPolicy,
        catalog: &Catalog,
        session: Option<&SessionState>,
        reason: Reason,
        retry_at: Option<Timestamp>,
        now: Timestamp,
    ) -> CallResult<O> {
        let message = reason.to_string();
        self.suspend_with(call, view, catalog, session, reason, message, retry_at, now)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn suspend_with(
        &self,
        call: &Call<P>,
        view: &ResolvedPolicy,
        catalog: &Catalog,
        session: Option<&SessionState>,
        reason: Reason,
        message: String,
        retry_at: Option<Timestamp>,
        now: Timestamp,
    ) -> CallResult<O> {
        let Some(sid) = &call.session else {
            let ev = Self::event(
                call,
                view,
                now,
                AuditEventKind::Rejection {
                    reason: format!("{message} (no session to suspend)"),
                },
            );
            if let Err(r) = self.record(ev).await {
                return CallResult::Rejected(r);
            }
            return CallResult::Rejected(Rejection {
                kind: RejectKind::NoSession,
                reason: Some(reason),
                message: format!(
                    "{message}; the policy suspends, but the call has no session to suspend"
                ),
            });
        };
        let top = view.top_tier().unwrap_or(0);
        let from = session.and_then(|s| s.tier).map_or(top, |(t, _)| t);
        let token = self
            .inner
            .ids
            .resume_token(sid, session.and_then(|s| s.version).unwrap_or(0) + 1);
        let trigger = reason.triggers.first().map(|t| t.record(catalog));
        let cp = self
            .checkpoint(
                call,
                view,
                catalog,
                from,
                None,
                call.checkpoint_state().unwrap_or(serde_json::Value::Null),
                now,
            )
            .suspend(Suspended {
                reason: message.clone(),
                trigger: trigger.clone(),
                retry_at,
                resume_token: token.clone(),
            });
        let version = match self
            .save(sid, cp.clone(), session.and_then(|s| s.version))
            .await
        {
            Ok(v) => v,
            Err(e) => return e.into_result(),
        };
        let mut saved = cp;
        saved.version = version;
        let mut ev = Self::event(
            call,
            view,
            now,
            AuditEventKind::Suspension {
                from: tier_at(view, catalog, from, None),
                reason: message.clone(),
                retry_at,
            },
        );
        if let Some(t) = trigger {
            ev = ev.trigger(t);
        }
        if let Ok(r) = saved.reference() {
            ev = ev.checkpoint(r);
        }
        if let Err(r) = self.record(ev).await {
            return CallResult::Rejected(r);
        }
        self.inner.visibility.stats.suspended(&call.tenant);
        visibility::tier_event(
            "suspension",
            &call.tenant,
            Some(sid),
            from,
            None,
            None,
            reason.kind.as_str(),
        );
        self.inner.sessions.update(sid, |s| {
            s.suspended = Some((token.clone(), retry_at, message.clone()));
            s.suspended_at = Some(now);
        });
        if let Some(w) = &call.workflow {
            let suspension = WorkflowSuspension {
                reason: message.clone(),
                retry_at,
            };
            if let Err(e) = self.inner.workflows.suspend(w, suspension).await {
                return CallResult::Rejected(workflow_store_error(&e));
            }
        }
        if view.suspension.as_ref().is_some_and(|s| s.notify)
            || view.notification == Notification::Realtime
        {
            self.notify(
                call,
                NoticeKind::Suspended { retry_at },
                message.clone(),
                now,
            )
            .await;
        }
        CallResult::Suspended {
            resume_token: token,
            retry_at,
            reason: message,
        }
    }

    /// Looks the router's ticket up in the shared approval store: a new request is stored,
    /// audited and notified; a granted one lets the switch proceed; a denied or expired one ends
    /// the call as the policy's `on_approval_timeout` says.
    #[allow(clippy::too_many_arguments)]
    async fn request_approval(
        &self,
        call: &Call<P>,
        view: &ResolvedPolicy,
        catalog: &Catalog,
        ticket: ApprovalTicket,
        current: u32,
        proposed_tier: u32,
        proposed_endpoint: crate::catalog::EndpointIdx,
        reason: Reason,
        session: Option<&SessionState>,
        now: Timestamp,
    ) -> Gate<O> {
        let store = &self.inner.approvals;
        let message = reason.to_string();
        let endpoint = catalog
            .try_endpoint(proposed_endpoint)
            .map_or_else(|| EndpointId::new("?"), |e| e.id.clone());
        let request = PendingApproval {
            ticket,
            tenant: call.tenant.clone(),
            session: call.session.clone(),
            from: current,
            to: proposed_tier,
            requested_at: now,
            expires_at: now.saturating_add(view.approval_timeout),
            state: ApprovalState::Pending,
            answered_by: None,
        };
        let (stored, inserted) = match store.insert_if_absent(request).await {
            Ok(p) => p,
            Err(e) => return Gate::End(Box::new(CallResult::Rejected(store_error(&e)))),
        };
        let mut state = stored.state;
        if inserted {
            let mut ev = Self::event(
                call,
                view,
                now,
                AuditEventKind::ApprovalRequested {
                    from: tier_at(view, catalog, current, None),
                    proposed: tier_at(view, catalog, proposed_tier, Some(proposed_endpoint)),
                    expires_at: Some(stored.expires_at),
                },
            )
            .approval(ticket.to_string());
            if let Some(t) = reason.triggers.first() {
                ev = ev.trigger(t.record(catalog));
            }
            if let Err(r) = self.record(ev).await {
                return Gate::End(Box::new(CallResult::Rejected(r)));
            }
            self.notify(
                call,
                NoticeKind::ApprovalRequested {
                    ticket,
                    proposed_tier,
                },
                message.clone(),
                now,
            )
            .await;
        } else if state == ApprovalState::Pending && now >= stored.expires_at {
            match store.answer(ticket, ApprovalState::Expired, None).await {
                Ok(Ok(p)) => {
                    state = p.state;
                    let mut ev = Self::event(call, view, now, AuditEventKind::ApprovalExpired {})
                        .approval(ticket.to_string());
                    if let Some(t) = reason.triggers.first() {
                        ev = ev.trigger(t.record(catalog));
                    }
                    if let Err(r) = self.record(ev).await {
                        return Gate::End(Box::new(CallResult::Rejected(r)));
                    }
                }
                Ok(Err(p)) => state = p.state,
                Err(e) => return Gate::End(Box::new(CallResult::Rejected(store_error(&e)))),
            }
        }
        match state {
            ApprovalState::Granted => Gate::Proceed(stored.to),
            ApprovalState::Pending => Gate::End(Box::new(CallResult::AwaitingApproval {
                ticket,
                proposed_tier,
                proposed_endpoint: endpoint,
                reason: message,
            })),
            ApprovalState::Denied | ApprovalState::Expired => {
                let (word, kind) = if state == ApprovalState::Denied {
                    ("denied", RejectKind::ApprovalDenied)
                } else {
                    ("not approved in time", RejectKind::ApprovalExpired)
                };
                let why =
                    format!("the switch to tier {proposed_tier} was {word} (ticket {ticket})");
                if view.on_approval_timeout == Exhausted::Suspend && view.suspension.is_some() {
                    let reason = Reason {
                        kind: ReasonKind::ApprovalRequired,
                        triggers: reason.triggers,
                    };
                    return Gate::End(Box::new(
                        self.suspend_with(call, view, catalog, session, reason, why, None, now)
                            .await,
                    ));
                }
                let ev = Self::event(
                    call,
                    view,
                    now,
                    AuditEventKind::Rejection {
                        reason: why.clone(),
                    },
                )
                .approval(ticket.to_string());
                if let Err(r) = self.record(ev).await {
                    return Gate::End(Box::new(CallResult::Rejected(r)));
                }
                Gate::End(Box::new(CallResult::Rejected(Rejection {
                    kind,
                    reason: Some(reason),
                    message: why,
                })))
            }
        }
    }

    /// Approves a pending switch: the session's next call makes it (on any replica sharing the
    /// approval store).
    ///
    /// # Errors
    /// [`EngineError::UnknownTicket`] or [`EngineError::TicketNotPending`]; a store or audit
    /// error.
    pub async fn approve(&self, ticket: ApprovalTicket, approver: &str) -> Result<(), Error> {
        let p = self
            .answer(ticket, ApprovalState::Granted, approver)
            .await?;
        let mut ev = AuditEvent::new(
            self.inner.clock.now(),
            AuditEventKind::ApprovalGranted {
                approver: approver.to_string(),
            },
        )
        .tenant(p.tenant.clone())
        .approval(ticket.to_string());
        if let Some(s) = &p.session {
            ev = ev.session(s.clone());
        }
        self.inner.audit.append(ev).await?;
        self.inner.visibility.stats.approval(&p.tenant, true);
        Ok(())
    }

    /// Denies a pending switch: the session's next call is suspended or rejected, as the
    /// policy's `on_approval_timeout` says.
    ///
    /// # Errors
    /// As [`Engine::approve`].
    pub async fn deny(
        &self,
        ticket: ApprovalTicket,
        approver: &str,
        reason: Option<&str>,
    ) -> Result<(), Error> {
        let p = self.answer(ticket, ApprovalState::Denied, approver).await?;
        let mut ev = AuditEvent::new(
            self.inner.clock.now(),
            AuditEventKind::ApprovalDenied {
                approver: approver.to_string(),
                reason: reason.map(str::to_string),
            },
        )
        .tenant(p.tenant.clone())
        .approval(ticket.to_string());
        if let Some(s) = &p.session {
            ev = ev.session(s.clone());
        }
        self.inner.audit.append(ev).await?;
        self.inner.visibility.stats.approval(&p.tenant, false);
        Ok(())
    }

    async fn answer(
        &self,
        ticket: ApprovalTicket,
        to: ApprovalState,
        by: &str,
    ) -> Result<PendingApproval, EngineError> {
        let now = self.inner.clock.now();
        let store = &self.inner.approvals;
        let current = store.get(ticket).await?.ok_or(EngineError::UnknownTicket {
            ticket: ticket.to_string(),
        })?;
        if current.state == ApprovalState::Pending && now >= current.expires_at {
            let _ = store.answer(ticket, ApprovalState::Expired, None).await?;
            return Err(EngineError::TicketNotPending {
                ticket: ticket.to_string(),
                state: "expired".into(),
            });
        }
        match store.answer(ticket, to, Some(by.to_string())).await? {
            Ok(p) => Ok(p),
            Err(p) => Err(EngineError::TicketNotPending {
                ticket: ticket.to_string(),
                state: format!("{:?}", p.state).to_lowercase(),
            }),
        }
    }

    /// Expires every pending approval past its deadline and audits each (also done when the
    /// session calls again); returns how many expired.
    ///
    /// # Errors
    /// A store or audit error.
    pub async fn expire_approvals(&self) -> Result<usize, Error> {
        let now = self.inner.clock.now();
        let mut n = 0;
        for p in self.inner.approvals.pending().await? {
            if now < p.expires_at {
                continue;
            }
            if let Ok(p) = self
                .inner
                .approvals
                .answer(p.ticket, ApprovalState::Expired, None)
                .await?
            {
                n += 1;
                let mut ev = AuditEvent::new(now, AuditEventKind::ApprovalExpired {})
                    .tenant(p.tenant.clone())
                    .approval(p.ticket.to_string());
                if let Some(s) = &p.session {
                    ev = ev.session(s.clone());
                }
                self.inner.audit.append(ev).await?;
            }
        }
        Ok(n)
    }

    /// The approvals waiting for a human.
    ///
    /// # Errors
    /// A store error.
    pub async fn pending_approvals(&self) -> Result<Vec<PendingApproval>, Error> {
        Ok(self.inner.approvals.pending().await?)
    }

    /// Resumes a suspended session: exactly one caller (or replica) wins, through the
    /// checkpoint's compare-and-swap. The session's next call routes from the top of what the
    /// policy now allows.
    ///
    /// # Errors
    /// [`EngineError::UnknownSession`], [`EngineError::NotSuspended`] (never suspended, or
    /// already resumed), [`EngineError::TokenMismatch`], or a checkpoint/audit error.
    pub async fn resume(&self, session: &SessionId, token: &ResumeToken) -> Result<Resumed, Error> {
        let store = &self.inner.checkpoints;
        let cp = store
            .load(session)
            .await?
            .ok_or_else(|| EngineError::UnknownSession {
                session: session.clone(),
            })?;
        let Some(susp) = &cp.suspended else {
            return Err(EngineError::NotSuspended {
                session: session.clone(),
            }
            .into());
        };
        if &susp.resume_token != token {
            return Err(EngineError::TokenMismatch {
                session: session.clone(),
            }
            .into());
        }
        if let Some(g) = self
            .give_up_if_expired(cp.clone(), self.inner.clock.now())
            .await?
        {
            return Err(g.error().into());
        }
        let mut resumed = cp.clone();
        resumed.suspended = None;
        resumed.created_at = self.inner.clock.now();
        // A resumed session starts again from the top of what its policy now allows, on every
        // replica that reads this checkpoint.
        let set = self.inner.policies.current();
        if let Ok(tp) = set.tenant(cp.tenant.as_str()) {
            let view = tp.default_view();
            if let Some(top) = view.top_tier() {
                resumed.tier = tier_at(view, set.catalog(), top, None);
            }
        }
        let version = match store.save(resumed.clone(), Some(cp.version)).await {
            Ok(v) => v,
            Err(CheckpointError::Conflict { .. }) => {
                return Err(EngineError::NotSuspended {
                    session: session.clone(),
                }
                .into());
            }
            Err(e) => return Err(e.into()),
        };
        resumed.version = version;
        let now = self.inner.clock.now();
        let mut ev = AuditEvent::new(
            now,
            AuditEventKind::Resume {
                to: cp.tier.clone(),
            },
        )
        .tenant(cp.tenant.clone())
        .session(session.clone());
        if let Some(w) = &cp.workflow {
            ev = ev.workflow(w.clone());
        }
        if let Ok(r) = resumed.reference() {
            ev = ev.checkpoint(r);
        }
        self.inner.audit.append(ev).await?;
        self.inner.visibility.stats.resumed(&cp.tenant);
        self.inner.sessions.update(session, |s| {
            *s = SessionState {
                version: Some(version),
                ..SessionState::default()
            };
        });
        self.inner.approvals.clear_session(session).await?;
        if let Some(n) = &self.inner.notifier {
            n.notify(Notice {
                tenant: cp.tenant.clone(),
                session: Some(session.clone()),
                workflow: cp.workflow.clone(),
                task: TaskKind::new(""),
                kind: NoticeKind::Resumed,
                reason: "capacity returned".into(),
                at: now,
            })
            .await;
        }
        Ok(Resumed {
            session: session.clone(),
            state: cp.state,
            version,
        })
    }

    /// Suspended sessions whose retry time has come and whose tenant has an endpoint that is
    /// usable again and has stayed healthy for the policy's `recovery.promotion.healthy_for`, so
    /// an orchestrator can resume them. The store is listed only for tenants with a view that
    /// is back, so calling it every second during a long outage stays cheap.
    ///
    /// # Errors
    /// A checkpoint store error.
    pub async fn ready_to_resume(&self) -> Result<Vec<ReadyToResume>, Error> {
        let now = self.inner.clock.now();
        let set = self.inner.policies.current();
        let mut out = Vec::new();
        for tenant in set.tenants() {
            let Ok(tp) = set.tenant(tenant.as_str()) else {
                continue;
            };
            // Whether each of the tenant's views is back, decided once per view (it does not
            // depend on the session). A tenant none of whose views is back has nothing to resume:
            // its suspended sessions are not even listed, so a long outage with thousands of
            // suspended sessions costs one health check per view and tick, not a scan.
            let mut back: Vec<(*const ResolvedPolicy, bool)> = Vec::new();
            for view in std::iter::once(tp.default_view())
                .chain(tp.task_kinds().into_iter().map(|k| tp.view(k.as_str())))
            {
                if !back
                    .iter()
                    .any(|(p, _)| std::ptr::eq(*p, Arc::as_ptr(view)))
                {
                    back.push((Arc::as_ptr(view), self.back_for(view, now)));
                }
            }
            if !back.iter().any(|(_, b)| *b) {
                continue;
            }
            let list = self
                .inner
                .checkpoints
                .list(tenant, &ListFilter::all().suspended_only())
                .await?;
            for s in list.sessions {
                let Some(susp) = s.suspended else { continue };
                if susp.retry_at.is_some_and(|t| t > now) {
                    continue;
                }
                // Past its policy's max_duration: it is given up, not resumed.
                if expiry::expired(
                    s.created_at,
                    expiry::max_duration(&set, &s.tenant, s.task.as_ref()),
                    now,
                ) {
                    continue;
                }
                // The session's own view (its task's floor and tiers) decides whether it is back.
                let view = match &s.task {
                    Some(t) => tp.view(t.as_str()),
                    None => tp.default_view(),
                };
                let is_back = back
                    .iter()
                    .find(|(p, _)| std::ptr::eq(*p, Arc::as_ptr(view)))
                    .map_or_else(|| self.back_for(view, now), |(_, b)| *b);
                if !is_back {
                    continue;
                }
                out.push(ReadyToResume {
                    tenant: s.tenant,
                    session: s.session,
                    workflow: s.workflow,
                    resume_token: susp.resume_token,
                });
            }
        }
        Ok(out)
    }

    /// Whether a view has an endpoint usable now and healthy for the policy's `healthy_for` (the
    /// promotion hysteresis), so a provider that lapses between 429s does not wake every
    /// suspended session only to suspend it again.
    fn back_for(&self, view: &ResolvedPolicy, now: Timestamp) -> bool {
        let healthy_for = view.recovery.promotion.healthy_for;
        let ev = &self.inner.evaluator;
        view.usable_tiers().any(|t| {
            t.endpoint_idx.iter().any(|&e| {
                ev.check(e, &view.tenant_triggers, now)
                    .is_ok_and(|v| v.is_usable())
                    && ev
                        .healthy_since(e, now)
                        .ok()
                        .flatten()
                        .is_some_and(|(since, _)| now.duration_since(since) >= healthy_for)
            })
        })
    }

    /// Sets the deadline of a workflow: every call of its sub-agent sessions must finish by it
    /// (the earlier of the call's own deadline and this one applies).
    ///
    /// # Errors
    /// A [`WorkflowStore`] error.
    pub async fn set_workflow_deadline(
        &self,
        workflow: &WorkflowId,
        deadline: Timestamp,
    ) -> Result<(), Error> {
        Ok(self
            .inner
            .workflows
            .set_deadline(workflow, deadline)
            .await?)
    }

    /// Whether a workflow is suspended (one of its sessions was, so all of them are), as the
    /// [`WorkflowStore`] says.
    ///
    /// # Errors
    /// A [`WorkflowStore`] error.
    pub async fn workflow_suspended(&self, workflow: &WorkflowId) -> Result<bool, Error> {
        Ok(self
            .inner
            .workflows
            .get(workflow)
            .await?
            .is_some_and(|w| w.suspended.is_some()))
    }

    /// Resumes every suspended session of a tenant's workflow together, and lifts the
    /// workflow's suspension. Each session is resumed exactly once (compare-and-swap); sessions
    /// another replica resumed first are skipped.
    ///
    /// # Errors
    /// A checkpoint store or audit error (sessions resumed before it stay resumed).
    pub async fn resume_workflow(
        &self,
        tenant: &TenantId,
        workflow: &WorkflowId,
    ) -> Result<Vec<Resumed>, Error> {
        let list = self
            .inner
            .checkpoints
            .list(
                tenant,
                &ListFilter::all()
                    .suspended_only()
                    .workflow(workflow.clone()),
            )
            .await?;
        let mut out = Vec::new();
        for s in list.sessions {
            let Some(susp) = s.suspended else { continue };
            match self.resume(&s.session, &susp.resume_token).await {
                Ok(r) => out.push(r),
                Err(Error::Engine(EngineError::NotSuspended { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        self.inner.workflows.lift(workflow).await?;
        Ok(out)
    }

    /// Endpoints whose breakers wait for a probe (open wait over, or half-open with permits
    /// left): run [`Engine::probe`] on them with a cheap request instead of risking a real
    /// user's call on a recovering provider.
    #[must_use]
    pub fn probes_due(&self) -> Vec<EndpointId> {
        let now = self.inner.clock.now();
        let set = self.inner.policies.current();
        set.catalog()
            .endpoints()
            .iter()
            .filter(|e| {
                set.catalog()
                    .index_of(e.id.as_str())
                    .is_some_and(|i| self.inner.evaluator.wants_probe(i, now).unwrap_or(false))
            })
            .map(|e| e.id.clone())
            .collect()
    }

    /// Sends a caller-defined cheap probe request to an endpoint that wants one (see
    /// [`TriggerEvaluator::wants_probe`]) — with one of its half-open permits when its breaker is
    /// recovering — and feeds the result to the evaluator like any other observation. Returns the
    /// outcome class, or `None` when no probe was due or no permit was free.
    ///
    /// # Errors
    /// [`Error::Trigger`] for an endpoint id not in the catalog.
    pub async fn probe(
        &self,
        endpoint: &EndpointId,
        payload: P,
    ) -> Result<Option<OutcomeClass>, Error> {
        let inner = &*self.inner;
        let set = inner.policies.current();
        let idx = set.catalog().index_of(endpoint.as_str()).ok_or_else(|| {
            EngineError::UnknownEndpoint {
                endpoint: endpoint.clone(),
            }
        })?;
        let now = inner.clock.now();
        // A breaker waiting for a probe lends a permit; a closed breaker whose latest evidence is a
        // failure needs none (see `TriggerEvaluator::wants_probe`).
        let permit = match inner.evaluator.try_acquire_probe(idx, now)? {
            crate::trigger::Probe::Granted(p) => Some(p),
            crate::trigger::Probe::NotNeeded if inner.evaluator.wants_probe(idx, now)? => None,
            _ => return Ok(None),
        };
        let ep = set.catalog().endpoint(idx);
        if let (Some(permit), Some(x)) = (permit, &inner.exchange) {
            let limit = set.evaluator_settings().half_open.probes;
            if !x
                .claim_probe(&ep.id, self.probe_round(idx, now), limit)
                .await?
            {
                inner.evaluator.release_probe(permit, now)?;
                return Ok(None);
            }
        }
        let request = ModelRequest {
            endpoint: ep.id.clone(),
            endpoint_idx: idx,
            model: ep.model.clone(),
            deadline: None,
            payload,
            attempt: 0,
            probe: true,
            fit_context: false,
            context_window: ep.capabilities.context_window,
            continue_from: None,
            context: None,
            purpose: Purpose::Probe,
        };
        let started = inner.clock.now();
        let result = inner.client.call(request).await;
        let finished = inner.clock.now();
        let platform = TenantId::new("downshift-probe");
        let (class, c) = match &result {
            Ok(_) => (OutcomeClass::Ok, None),
            Err(e) => (e.class(), Some(&*e.classification)),
        };
        let mut obs = Observation::new(
            idx,
            &platform,
            class,
            started,
            finished.duration_since(started),
        );
        if let Some(p) = permit {
            obs = obs.probe(p);
        }
        if let Some(c) = c {
            obs = obs.classified(c);
        }
        self.record_observation(&obs);
        inner.evaluator.observe(&obs, finished)?;
        Ok(Some(class))
    }

    /// The key of an endpoint's current recovery round, the same on every replica that synced
    /// its health: the second its last open wait ended.
    fn probe_round(&self, endpoint: crate::catalog::EndpointIdx, now: Timestamp) -> u64 {
        self.inner
            .evaluator
            .health(endpoint, now)
            .ok()
            .and_then(|h| h.last_trip)
            .and_then(|t| t.until)
            .map_or(0, |t| t.as_millis() / 1000)
    }

    /// Exchanges endpoint health with the other replicas: publishes this replica's view of every
    /// endpoint and merges theirs (records older than the freshness bound are ignored; the more
    /// pessimistic state and the later "not before" win). Returns how many endpoints changed.
    /// Without a health exchange it does nothing.
    ///
    /// # Errors
    /// An exchange error.
    pub async fn sync_health(&self) -> Result<usize, Error> {
        let inner = &*self.inner;
        let Some(x) = &inner.exchange else {
            return Ok(0);
        };
        let now = inner.clock.now();
        let set = inner.policies.current();
        let catalog = set.catalog();
        let mut records = Vec::with_capacity(catalog.len());
        for (i, e) in catalog.endpoints().iter().enumerate() {
            let idx = crate::catalog::EndpointIdx(u32::try_from(i).unwrap_or(u32::MAX));
            if let Ok(health) = inner.evaluator.shared_health(idx, now) {
                records.push(SharedHealthRecord {
                    replica: inner.replica.clone(),
                    endpoint: e.id.clone(),
                    taken_at: now,
                    health,
                });
            }
        }
        x.publish(records).await?;
        let mut changed = 0;
        for r in x.fetch(&inner.replica).await? {
            if now.duration_since(r.taken_at) > inner.freshness {
                continue;
            }
            if let Some(idx) = catalog.index_of(r.endpoint.as_str()) {
                if inner.evaluator.merge_shared(idx, &r.health, now)? {
                    changed += 1;
                }
            }
        }
        Ok(changed)
    }

    /// Validates `sources` whole and, if valid, makes them the active policy set, recording the
    /// activation in the audit log. A rejected set leaves the old one active.
    ///
    /// The catalog's endpoint details (models, prices, capabilities, regions, quality) and every
    /// tenant setting apply at once. Changes to the catalog's endpoint list (ids, order) or to
    /// the platform's breaker, latency, half-open and open-wait settings are refused with
    /// [`EngineError::ReloadNeedsNewEngine`] naming the field: the endpoint health is built
    /// from them (and may be shared by several engines); build a new engine to change them.
    ///
    /// # Errors
    /// The validation errors, [`EngineError::ReloadNeedsNewEngine`], or an audit error (the new set is then active but unrecorded:
    /// the error says so).
    pub async fn reload(
        &self,
        sources: impl IntoIterator<Item = Source>,
    ) -> Result<Arc<PolicySet>, Error> {
        let current = self.inner.policies.current();
        let previous = current.digest().clone();
        let next = PolicySet::from_sources(sources)?;
        if let Some(e) = reload::incompatible(&current, &next) {
            return Err(e.into());
        }
        self.inner.policies.replace(next);
        let set = self.inner.policies.current();
        // The new ladders may be numbered differently: sessionless traffic's next move is
        // recorded from its top tier again.
        self.inner.sessionless.clear();
        let ev = AuditEvent::new(
            self.inner.clock.now(),
            AuditEventKind::PolicyActivation {
                digest: set.digest().clone(),
                previous: Some(previous),
                mode: None,
            },
        );
        self.inner.audit.append(ev).await?;
        Ok(set)
    }
}

/// What the gates before routing found (see [`Engine::preflight`]).
struct Preflight {
    start: Timestamp,
    session: Option<SessionState>,
    workflow_deadline: Option<Timestamp>,
    approved_to: Option<u32>,
    /// The granted approval this call's switch rests on.
    approved_ticket: Option<ApprovalTicket>,
    /// The session's budget handle, when its view has a budget.
    budget: Option<Arc<crate::trigger::BudgetHandle>>,
}

/// A routed attempt and the policy it was decided under.
struct Routed {
    route: Route,
    view: Arc<ResolvedPolicy>,
    set: Arc<PolicySet>,
    deadline: Option<Timestamp>,
    now: Timestamp,
}

/// The refusal of a request the provider rejected as such.
fn refused(catalog: &Catalog, endpoint: crate::catalog::EndpointIdx, e: &ModelError) -> Rejection {
    Rejection {
        kind: RejectKind::Provider { class: e.class() },
        reason: None,
        message: format!(
            "{} refused the request ({e}); it would fail the same way elsewhere, so it was not retried",
            catalog
                .try_endpoint(endpoint)
                .map_or("?", |x| x.id.as_str())
        ),
    }
}

/// Who serves a route.
fn served_by(view: &ResolvedPolicy, catalog: &Catalog, route: &Route) -> ServedBy {
    ServedBy {
        tier: route.tier,
        tier_name: view
            .tier(route.tier)
            .map_or_else(|| Arc::from(""), |t| t.name.clone()),
        endpoint: catalog
            .try_endpoint(route.endpoint)
            .map_or_else(|| EndpointId::new("?"), |e| e.id.clone()),
    }
}

/// The error of a call still running at its deadline.
fn deadline_error() -> ModelError {
    ModelError::of(
        OutcomeClass::Timeout,
        "the call did not finish before its deadline",
    )
}

/// How many times a checkpoint save is tried when other replicas keep changing it.
const SAVE_ATTEMPTS: u32 = 3;

/// Why a checkpoint save did not happen. Returned once per failed save; boxing the refusal
/// would only make matching on it clumsier.
#[allow(clippy::large_enum_variant)]
enum SaveError {
    /// The store failed, or the checkpoint kept changing: the transition is refused.
    Rejected(Rejection),
    /// Another replica suspended the session meanwhile: its suspension stands.
    SuspendedElsewhere {
        resume_token: ResumeToken,
        retry_at: Option<Timestamp>,
        reason: String,
    },
}

impl SaveError {
    fn into_result<O>(self) -> CallResult<O> {
        match self {
            SaveError::Rejected(r) => CallResult::Rejected(r),
            SaveError::SuspendedElsewhere {
                resume_token,
                retry_at,
                reason,
            } => CallResult::Suspended {
                resume_token,
                retry_at,
                reason,
            },
        }
    }
}

enum Gate<O> {
    Proceed(u32),
    End(Box<CallResult<O>>),
}

fn store_error(e: &EngineError) -> Rejection {
    Rejection {
        kind: RejectKind::Durability,
        reason: None,
        message: format!("the approval store could not be used, so the switch was not made: {e}"),
    }
}

fn workflow_store_error(e: &EngineError) -> Rejection {
    Rejection {
        kind: RejectKind::Durability,
        reason: None,
        message: format!("the workflow store could not be used, so the call was not made: {e}"),
    }
}

fn durability(e: CheckpointError) -> Rejection {
    Rejection {
        kind: RejectKind::Durability,
        reason: None,
        message: format!(
            "the session's checkpoint could not be saved, so the transition was not made: {e}"
        ),
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl From<PolicySet> for Arc<PolicyStore> {
    fn from(set: PolicySet) -> Self {
        Arc::new(PolicyStore::new(set))
    }
}
