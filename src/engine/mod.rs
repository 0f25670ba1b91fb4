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

mod budget;
mod client;
mod result;
mod stream;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{Either, select};
use parking_lot::Mutex;
use serde::Serialize;

pub use client::{
    Chunk, ChunkStream, FinishReason, ModelClient, ModelError, ModelRequest, ModelResponse,
    NoSleep, Notice, NoticeKind, Notifier, Sleeper, TokenUsage,
};
pub use result::{CallResult, Completed, OutputFlags, RejectKind, Rejection, ServedBy};
pub use stream::{
    EventStream, Interrupted, Segment, StreamCompleted, StreamEnd, StreamEvent, StreamOutcome,
};

use crate::audit::{AuditEvent, AuditEventKind, AuditSink, ConsentRef, MemoryAuditSink, PolicyRef};
use crate::catalog::{Catalog, Requirements};
use crate::checkpoint::{
    Checkpoint, CheckpointStore, ListFilter, MemoryCheckpointStore, ResumeToken, Suspended, TierAt,
};
use crate::clock::{Clock, SystemClock, Timestamp};
use crate::error::{CheckpointError, EngineError, Error};
use crate::id::{EndpointId, SessionId, TaskKind, TenantId, WorkflowId};
use crate::policy::{
    Exhausted, Notification, PolicySet, PolicyStore, Replay, ResolvedPolicy, Source,
};
use crate::router::{
    ApprovalTicket, Attempt, CallContext, Decision, Reason, ReasonKind, Route, TierRouter,
};
use crate::trigger::{Observation, OutcomeClass, TriggerEvaluator};

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
    /// The agent's state, saved in the session's checkpoint before a tier change or a
    /// suspension (a later release gives it a schema).
    pub state: Option<serde_json::Value>,
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

/// A pending approval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PendingApproval {
    /// The ticket.
    pub ticket: ApprovalTicket,
    /// The tenant.
    pub tenant: TenantId,
    /// The session, if any.
    pub session: Option<SessionId>,
    /// The session's current tier.
    pub from: u32,
    /// The proposed tier.
    pub to: u32,
    /// When it expires.
    pub expires_at: Timestamp,
    /// Its state.
    pub state: ApprovalState,
}

/// Where an approval request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for a human.
    Pending,
    /// Approved.
    Granted,
    /// Denied.
    Denied,
    /// Nobody answered in time.
    Expired,
}

/// What the engine keeps per session.
#[derive(Debug, Clone, Default)]
struct SessionState {
    tier: Option<(u32, Timestamp)>,
    approved_to: Option<u32>,
    pending: Option<ApprovalTicket>,
    suspended: Option<(ResumeToken, Option<Timestamp>, String)>,
    version: Option<u64>,
}

const SHARDS: usize = 32;

/// Sessions, sharded so calls of different sessions do not contend.
#[derive(Debug)]
struct Sessions {
    shards: Box<[Mutex<HashMap<SessionId, SessionState>>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Sessions {
    fn new() -> Self {
        Sessions {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn shard(&self, s: &SessionId) -> &Mutex<HashMap<SessionId, SessionState>> {
        &self.shards[(self.hasher.hash_one(s) as usize) % SHARDS]
    }

    fn get(&self, s: &SessionId) -> SessionState {
        self.shard(s).lock().get(s).cloned().unwrap_or_default()
    }

    fn update(&self, s: &SessionId, f: impl FnOnce(&mut SessionState)) {
        f(self.shard(s).lock().entry(s.clone()).or_default());
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
    approvals: Mutex<HashMap<ApprovalTicket, PendingApproval>>,
    retry_budget: budget::RetryBudget,
    seed: u64,
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
    notifier: Option<Arc<dyn Notifier>>,
    clock: Option<Arc<dyn Clock>>,
    sleeper: Option<Arc<dyn Sleeper>>,
    seed: u64,
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

    /// The seed for this replica's deterministic choices (jitter, power of two choices).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
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
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
                sleeper: self.sleeper.unwrap_or_else(|| Arc::new(NoSleep)),
                sessions: Sessions::new(),
                approvals: Mutex::new(HashMap::new()),
                retry_budget: budget::RetryBudget::new(),
                seed: self.seed,
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
    let mut t = TierAt::new(tier, view.tier(tier).map_or("?", |t| t.name.as_str()));
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
            notifier: None,
            clock: None,
            sleeper: None,
            seed: 0,
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

    /// Routes, calls, observes, and falls back or retries until the call ends in exactly one
    /// [`CallResult`].
    pub async fn call(&self, call: Call<P>) -> CallResult<O> {
        let inner = &*self.inner;
        let start = inner.clock.now();
        inner.retry_budget.record_call(start);
        let mut session = call.session.as_ref().map(|s| inner.sessions.get(s));

        // A suspended session stays suspended until it is resumed.
        if let Some((token, retry_at, reason)) = session.as_ref().and_then(|s| s.suspended.clone())
        {
            return CallResult::Suspended {
                resume_token: token,
                retry_at,
                reason,
            };
        }
        // A pending approval decides this call until it is answered.
        if let Some(ticket) = session.as_ref().and_then(|s| s.pending) {
            match self.approval_gate(&call, ticket, start).await {
                Gate::Proceed(approved_to) => {
                    if let Some(s) = session.as_mut() {
                        s.approved_to = approved_to;
                    }
                }
                Gate::End(result) => return *result,
            }
        }

        let mut attempts: Vec<Attempt> = Vec::new();
        let mut audit_seqs = Vec::new();
        loop {
            let now = inner.clock.now();
            let set = inner.policies.current();
            let Ok(tp) = set.tenant(call.tenant.as_str()) else {
                return CallResult::Rejected(Rejection {
                    kind: RejectKind::Policy,
                    reason: Some(Reason {
                        kind: ReasonKind::UnknownTenant,
                        triggers: Default::default(),
                    }),
                    message: format!("unknown tenant `{}`", call.tenant),
                });
            };
            let view = Arc::clone(tp.view(call.task.as_str()));
            let mut ctx = CallContext::new(&call.tenant, &call.task)
                .requirements(call.requirements)
                .step_boundary(call.new_step && attempts.is_empty())
                .attempts(&attempts);
            if let Some(d) = call.deadline {
                ctx = ctx.deadline(d);
            } else if let Some(d) = view.sla.default_deadline {
                ctx = ctx.deadline(start.saturating_add(d));
            }
            if let Some(s) = &call.session {
                ctx = ctx.session(s);
            }
            if let Some(w) = &call.workflow {
                ctx = ctx.workflow(w);
            }
            if let Some((tier, since)) = session.as_ref().and_then(|s| s.tier) {
                ctx = ctx.on_tier(tier, since);
            }
            if let Some(a) = session.as_ref().and_then(|s| s.approved_to) {
                ctx = ctx.approved_to(a);
            }
            let deadline = ctx.deadline;
            let decision = inner.router.route(&ctx, now);
            match decision {
                Decision::Route(route) => {
                    if !attempts.is_empty()
                        && !inner.retry_budget.try_retry(&view.retry.budget, now)
                    {
                        return CallResult::Rejected(Rejection {
                            kind: RejectKind::RetryBudget,
                            reason: Some(route.reason),
                            message: "the platform's retry budget is spent: no further retry or fallback now".into(),
                        });
                    }
                    match self
                        .attempt(
                            &call,
                            &view,
                            set.catalog(),
                            &route,
                            deadline,
                            &attempts,
                            now,
                        )
                        .await
                    {
                        Ok(response) => {
                            return self
                                .complete(
                                    &call,
                                    &view,
                                    set.catalog(),
                                    &route,
                                    response,
                                    session.as_ref(),
                                    &attempts,
                                    &mut audit_seqs,
                                )
                                .await;
                        }
                        Err(e) => {
                            if !e.class().is_capacity() {
                                return CallResult::Rejected(Rejection {
                                    kind: RejectKind::Provider { class: e.class() },
                                    reason: None,
                                    message: format!(
                                        "{} refused the request ({}); it would fail the same way elsewhere, so it was not retried",
                                        set.catalog()
                                            .try_endpoint(route.endpoint)
                                            .map_or("?", |x| x.id.as_str()),
                                        e
                                    ),
                                });
                            }
                            attempts.push(Attempt {
                                endpoint: route.endpoint,
                                outcome: e.class(),
                            });
                        }
                    }
                }
                Decision::AwaitApproval {
                    ticket,
                    current,
                    proposed_tier,
                    proposed_endpoint,
                    reason,
                } => {
                    return self
                        .request_approval(
                            &call,
                            &view,
                            set.catalog(),
                            ticket,
                            current,
                            proposed_tier,
                            proposed_endpoint,
                            reason,
                            now,
                        )
                        .await;
                }
                Decision::Suspend { reason, retry_at } => {
                    return self
                        .suspend(
                            &call,
                            &view,
                            set.catalog(),
                            session.as_ref(),
                            reason,
                            retry_at,
                            now,
                        )
                        .await;
                }
                Decision::Reject { reason } => {
                    let message = reason.to_string();
                    let ev = Self::event(
                        &call,
                        &view,
                        now,
                        AuditEventKind::Rejection {
                            reason: message.clone(),
                        },
                    );
                    let ev = match reason.triggers.first() {
                        Some(t) => ev.trigger(t.record(set.catalog())),
                        None => ev,
                    };
                    if let Err(r) = self.record(ev).await {
                        return CallResult::Rejected(r);
                    }
                    return CallResult::Rejected(Rejection {
                        kind: RejectKind::Policy,
                        reason: Some(reason),
                        message,
                    });
                }
            }
        }
    }

    /// One attempt at a routed endpoint: backoff if retrying it, the call raced against the
    /// deadline, and the observation.
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
    ) -> Result<ModelResponse<O>, ModelError> {
        let inner = &*self.inner;
        let same = attempts
            .iter()
            .filter(|a| a.endpoint == route.endpoint)
            .count();
        if same > 0 && inner.sleeper.keeps_time() {
            let b = &view.retry.backoff;
            let exp = b
                .multiplier
                .max(1.0)
                .powi(i32::try_from(same - 1).unwrap_or(i32::MAX));
            let base = b.initial.as_secs_f64() * exp;
            let capped = base.min(b.max.as_secs_f64());
            let r =
                (splitmix(inner.seed ^ (same as u64) ^ now.as_millis()) % 10_000) as f64 / 10_000.0;
            let wait = Duration::from_secs_f64(capped * (1.0 + b.jitter.clamp(0.0, 1.0) * r));
            let fits = deadline.is_none_or(|d| now.saturating_add(wait) < d);
            if fits {
                inner.sleeper.sleep(wait).await;
            }
        }
        let Some(ep) = catalog.try_endpoint(route.endpoint) else {
            return Err(ModelError::of(
                OutcomeClass::BadRequest,
                "endpoint missing from the catalog",
            ));
        };
        let started = inner.clock.now();
        let request = ModelRequest {
            endpoint: ep.id.clone(),
            endpoint_idx: route.endpoint,
            model: ep.model.clone(),
            deadline,
            payload: call.payload.clone(),
            attempt: u32::try_from(attempts.len()).unwrap_or(u32::MAX),
            probe: route.probe.is_some(),
            fit_context: route.fit_context,
            context_window: ep.capabilities.context_window,
            continue_from: None,
        };
        let fut = inner.client.call(request);
        let result = match deadline {
            Some(d) if inner.sleeper.keeps_time() => {
                let left = d.duration_since(started);
                let timer = inner.sleeper.sleep(left);
                match select(fut, timer).await {
                    Either::Left((r, _)) => r,
                    Either::Right(((), _)) => Err(ModelError::of(
                        OutcomeClass::Timeout,
                        "the call did not finish before its deadline",
                    )),
                }
            }
            _ => fut.await,
        };
        let finished = inner.clock.now();
        let (class, usage, classification) = match &result {
            Ok(r) => (OutcomeClass::Ok, r.usage, None),
            Err(e) => (e.class(), e.usage, Some(&e.classification)),
        };
        let cost = ep.pricing.cost(usage.input_tokens, usage.output_tokens);
        let mut obs = Observation::new(
            route.endpoint,
            &call.tenant,
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
            obs = obs.session(s);
        }
        if let Some(w) = &call.workflow {
            obs = obs.workflow(w);
        }
        if let Some(p) = route.probe {
            obs = obs.probe(p);
        }
        if let Some(b) = &view.tenant_triggers.budget {
            obs = obs.budget(b);
        }
        // An observation is only refused for an index outside the catalog or a bad cost, which
        // the engine never builds.
        let _ = inner.evaluator.observe(&obs, finished);
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
        session: Option<&SessionState>,
        attempts: &[Attempt],
        audit_seqs: &mut Vec<u64>,
    ) -> CallResult<R> {
        let inner = &*self.inner;
        let now = inner.clock.now();
        let top = view.top_tier().unwrap_or(0);
        let from = session.and_then(|s| s.tier).map_or(top, |(t, _)| t);
        let moved = route.tier != from;
        if moved {
            // Checkpoint before the session's tier changes, when the caller gave its state.
            if let (Some(sid), Some(state)) = (&call.session, &call.state) {
                let cp = self.checkpoint(
                    call,
                    view,
                    catalog,
                    route.tier,
                    Some(route.endpoint),
                    state.clone(),
                    now,
                );
                if let Err(e) = self.save(sid, cp, session.and_then(|s| s.version)).await {
                    return CallResult::Rejected(e);
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
                Ok(seq) => audit_seqs.push(seq),
                Err(r) => return CallResult::Rejected(r),
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
            inner.sessions.update(sid, |s| {
                if s.tier.is_none_or(|(t, _)| t != tier) {
                    s.tier = Some((tier, now));
                }
                s.pending = None;
            });
        }
        let served = ServedBy {
            tier: route.tier,
            tier_name: view
                .tier(route.tier)
                .map_or_else(String::new, |t| t.name.clone()),
            endpoint: catalog
                .try_endpoint(route.endpoint)
                .map_or_else(|| EndpointId::new("?"), |e| e.id.clone()),
        };
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
        cp
    }

    /// Saves with compare-and-swap against the version this engine last saw (or the stored
    /// one, if another replica saved since).
    async fn save(
        &self,
        sid: &SessionId,
        cp: Checkpoint,
        expected: Option<u64>,
    ) -> Result<u64, Rejection> {
        let store = &self.inner.checkpoints;
        let expected = match expected {
            Some(v) => Some(v),
            None => store
                .load(sid)
                .await
                .map_err(durability)?
                .map(|c| c.version),
        };
        let version = match store.save(cp.clone(), expected).await {
            Ok(v) => v,
            Err(CheckpointError::Conflict { actual, .. }) => {
                store.save(cp, actual).await.map_err(durability)?
            }
            Err(e) => return Err(durability(e)),
        };
        self.inner
            .sessions
            .update(sid, |s| s.version = Some(version));
        Ok(version)
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
        let token = ResumeToken::generate(sid, session.and_then(|s| s.version).unwrap_or(0) + 1);
        let trigger = reason.triggers.first().map(|t| t.record(catalog));
        let cp = self
            .checkpoint(
                call,
                view,
                catalog,
                from,
                None,
                call.state.clone().unwrap_or(serde_json::Value::Null),
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
            Err(r) => return CallResult::Rejected(r),
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
        self.inner.sessions.update(sid, |s| {
            s.suspended = Some((token.clone(), retry_at, message.clone()));
        });
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
        now: Timestamp,
    ) -> CallResult<O> {
        let message = reason.to_string();
        let endpoint = catalog
            .try_endpoint(proposed_endpoint)
            .map_or_else(|| EndpointId::new("?"), |e| e.id.clone());
        let expires_at = now.saturating_add(view.approval_timeout);
        let is_new = {
            let mut approvals = self.inner.approvals.lock();
            match approvals.get(&ticket) {
                Some(p) if p.state == ApprovalState::Pending => false,
                _ => {
                    approvals.insert(
                        ticket,
                        PendingApproval {
                            ticket,
                            tenant: call.tenant.clone(),
                            session: call.session.clone(),
                            from: current,
                            to: proposed_tier,
                            expires_at,
                            state: ApprovalState::Pending,
                        },
                    );
                    true
                }
            }
        };
        if is_new {
            let mut ev = Self::event(
                call,
                view,
                now,
                AuditEventKind::ApprovalRequested {
                    from: tier_at(view, catalog, current, None),
                    proposed: tier_at(view, catalog, proposed_tier, Some(proposed_endpoint)),
                    expires_at: Some(expires_at),
                },
            )
            .approval(ticket.to_string());
            if let Some(t) = reason.triggers.first() {
                ev = ev.trigger(t.record(catalog));
            }
            if let Err(r) = self.record(ev).await {
                return CallResult::Rejected(r);
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
        }
        if let Some(sid) = &call.session {
            self.inner
                .sessions
                .update(sid, |s| s.pending = Some(ticket));
        }
        CallResult::AwaitingApproval {
            ticket,
            proposed_tier,
            proposed_endpoint: endpoint,
            reason: message,
        }
    }

    /// Decides what a call of a session with a pending approval does.
    async fn approval_gate(
        &self,
        call: &Call<P>,
        ticket: ApprovalTicket,
        now: Timestamp,
    ) -> Gate<O> {
        let pending = self.inner.approvals.lock().get(&ticket).cloned();
        let Some(mut p) = pending else {
            return Gate::Proceed(None);
        };
        if p.state == ApprovalState::Pending && now >= p.expires_at {
            self.expire(&mut p, now).await;
        }
        match p.state {
            ApprovalState::Pending => Gate::Proceed(None),
            ApprovalState::Granted => Gate::Proceed(Some(p.to)),
            ApprovalState::Denied | ApprovalState::Expired => {
                let set = self.inner.policies.current();
                let (denied, kind) = if p.state == ApprovalState::Denied {
                    ("denied", RejectKind::ApprovalDenied)
                } else {
                    ("expired", RejectKind::ApprovalExpired)
                };
                if let Some(sid) = &call.session {
                    self.inner.sessions.update(sid, |s| s.pending = None);
                }
                let suspend = set
                    .tenant(call.tenant.as_str())
                    .map(|tp| {
                        let v = tp.view(call.task.as_str());
                        v.on_approval_timeout == Exhausted::Suspend && v.suspension.is_some()
                    })
                    .unwrap_or(false);
                if suspend {
                    if let Ok(tp) = set.tenant(call.tenant.as_str()) {
                        let view = Arc::clone(tp.view(call.task.as_str()));
                        let session = call.session.as_ref().map(|s| self.inner.sessions.get(s));
                        let reason = Reason {
                            kind: ReasonKind::ApprovalRequired,
                            triggers: Default::default(),
                        };
                        return Gate::End(Box::new(
                            self.suspend(
                                call,
                                &view,
                                set.catalog(),
                                session.as_ref(),
                                reason,
                                None,
                                now,
                            )
                            .await,
                        ));
                    }
                }
                Gate::End(Box::new(CallResult::Rejected(Rejection {
                    kind,
                    reason: None,
                    message: format!("the switch to tier {} was {denied} (ticket {ticket})", p.to),
                })))
            }
        }
    }

    async fn expire(&self, p: &mut PendingApproval, now: Timestamp) {
        p.state = ApprovalState::Expired;
        self.inner.approvals.lock().insert(p.ticket, p.clone());
        let mut ev = AuditEvent::new(now, AuditEventKind::ApprovalExpired {})
            .tenant(p.tenant.clone())
            .approval(p.ticket.to_string());
        if let Some(s) = &p.session {
            ev = ev.session(s.clone());
        }
        let _ = self.inner.audit.append(ev).await;
    }

    /// Approves a pending switch: the session's next call makes it.
    ///
    /// # Errors
    /// [`EngineError::UnknownTicket`] or [`EngineError::TicketNotPending`]; an audit error.
    pub async fn approve(&self, ticket: ApprovalTicket, approver: &str) -> Result<(), Error> {
        let p = self.answer(ticket, ApprovalState::Granted)?;
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
            let to = p.to;
            self.inner.sessions.update(s, |st| {
                st.approved_to = Some(st.approved_to.map_or(to, |a| a.max(to)))
            });
        }
        self.inner.audit.append(ev).await?;
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
        let p = self.answer(ticket, ApprovalState::Denied)?;
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
        Ok(())
    }

    fn answer(
        &self,
        ticket: ApprovalTicket,
        to: ApprovalState,
    ) -> Result<PendingApproval, EngineError> {
        let now = self.inner.clock.now();
        let mut approvals = self.inner.approvals.lock();
        let p = approvals
            .get_mut(&ticket)
            .ok_or(EngineError::UnknownTicket {
                ticket: ticket.to_string(),
            })?;
        if p.state != ApprovalState::Pending || now >= p.expires_at {
            return Err(EngineError::TicketNotPending {
                ticket: ticket.to_string(),
                state: format!(
                    "{:?}",
                    if now >= p.expires_at && p.state == ApprovalState::Pending {
                        ApprovalState::Expired
                    } else {
                        p.state
                    }
                )
                .to_lowercase(),
            });
        }
        p.state = to;
        Ok(p.clone())
    }

    /// Expires every pending approval past its deadline (also done lazily on the session's next
    /// call); returns how many expired.
    pub async fn expire_approvals(&self) -> usize {
        let now = self.inner.clock.now();
        let due: Vec<PendingApproval> = self
            .inner
            .approvals
            .lock()
            .values()
            .filter(|p| p.state == ApprovalState::Pending && now >= p.expires_at)
            .cloned()
            .collect();
        for mut p in due.iter().cloned() {
            self.expire(&mut p, now).await;
        }
        due.len()
    }

    /// The approvals waiting for a human.
    #[must_use]
    pub fn pending_approvals(&self) -> Vec<PendingApproval> {
        let mut v: Vec<PendingApproval> = self
            .inner
            .approvals
            .lock()
            .values()
            .filter(|p| p.state == ApprovalState::Pending)
            .cloned()
            .collect();
        v.sort_by_key(|p| p.ticket);
        v
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
        let mut resumed = cp.clone();
        resumed.suspended = None;
        resumed.created_at = self.inner.clock.now();
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
        self.inner.sessions.update(session, |s| {
            *s = SessionState {
                version: Some(version),
                ..SessionState::default()
            };
        });
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

    /// Suspended sessions whose retry time has come and whose tenant's top usable tier has a
    /// healthy endpoint again, so an orchestrator can resume them.
    ///
    /// # Errors
    /// A checkpoint store error.
    pub async fn ready_to_resume(&self) -> Result<Vec<ReadyToResume>, Error> {
        let now = self.inner.clock.now();
        let set = self.inner.policies.current();
        let mut out = Vec::new();
        for tenant in set.tenants() {
            let list = self
                .inner
                .checkpoints
                .list(tenant, &ListFilter::all().suspended_only())
                .await?;
            let Ok(tp) = set.tenant(tenant.as_str()) else {
                continue;
            };
            let view = tp.default_view();
            let healthy = view.usable_tiers().any(|t| {
                t.endpoint_idx.iter().any(|&e| {
                    self.inner
                        .evaluator
                        .check(e, &view.tenant_triggers, now)
                        .is_ok_and(|v| v.is_usable())
                })
            });
            if !healthy {
                continue;
            }
            for s in list.sessions {
                let Some(susp) = s.suspended else { continue };
                if susp.retry_at.is_some_and(|t| t > now) {
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

    /// Validates `sources` whole and, if valid, makes them the active policy set, recording the
    /// activation in the audit log. A rejected set leaves the old one active.
    ///
    /// # Errors
    /// The validation errors, or an audit error (the new set is then active but unrecorded:
    /// the error says so).
    pub async fn reload(
        &self,
        sources: impl IntoIterator<Item = Source>,
    ) -> Result<Arc<PolicySet>, Error> {
        let previous = self.inner.policies.current().digest().clone();
        let set = self.inner.policies.reload(sources)?;
        let ev = AuditEvent::new(
            self.inner.clock.now(),
            AuditEventKind::PolicyActivation {
                digest: set.digest().clone(),
                previous: Some(previous),
            },
        );
        self.inner.audit.append(ev).await?;
        Ok(set)
    }
}

enum Gate<O> {
    Proceed(Option<u32>),
    End(Box<CallResult<O>>),
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
