//! [`TriggerEvaluator`]: the shared health of every endpoint and the budget state of every
//! tenant, session and workflow, fed by [`Observation`]s and [`ProviderSignal`]s and queried per
//! endpoint and tenant.
//!
//! # Concurrency
//!
//! One evaluator is shared (`Send + Sync`) by every task. There is no global lock:
//! - each endpoint has a block of atomics that queries read without locking (breaker state, open
//!   wait, retry-after block, probe permits left, published P50/P95/P99, provider signals), and
//!   one mutex of its own, taken by `observe`, `signal` and the operator calls, over its sliding
//!   windows. A query takes that mutex only in one case: the first query after an endpoint has
//!   been idle long enough for samples to leave its latency window expires them (once per
//!   latency slice at most).
//! - each tenant's budget state is a cell with its own mutex (its sessions' and workflows' cells
//!   inside), found through 64 mutex-guarded shards keyed by the tenant id's hash; a lookup
//!   compares `&str` and never allocates, and a [`BudgetHandle`] kept per session skips it.
//!
//! `docs/performance.md` has the measured costs.
//!
//! # Breaker events
//!
//! Every real change of a breaker's state (and only a real change) is queued as a
//! [`BreakerEvent`] with its trigger; [`TriggerEvaluator::drain_events`] hands them to whoever
//! audits them. The queue is bounded ([`MAX_QUEUED_EVENTS`]); events that do not fit are counted
//! in [`TriggerEvaluator::dropped_events`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;

use super::breaker::{
    BreakerConfig, BreakerCore, BreakerEvent, BreakerMode, BreakerState, Probe, ProbePermit,
};
use super::budget::{BudgetHandle, BudgetStore, Evicted, Scope, Spend};
use super::latency::LatencyWindow;
use super::observation::{Observation, ProviderSignal};
use super::reason::{Trigger, TriggerKind};
use super::view::TenantTriggers;
use super::{OutcomeClass, RateLimitState};
use crate::catalog::{Catalog, EndpointIdx};
use crate::clock::Timestamp;
use crate::error::TriggerError;
use crate::id::{SessionId, TenantId, WorkflowId};
use crate::policy::{
    Breaker, HalfOpen, LatencyWindow as LatencySettings, OpenWait, Recovery, StatusPageState,
    Triggers,
};

/// The most endpoints one evaluator tracks.
pub const MAX_ENDPOINTS: usize = 1 << 16;
/// The most breaker events queued before [`TriggerEvaluator::drain_events`] is called.
pub const MAX_QUEUED_EVENTS: usize = 4096;

const NO_STATUS: u8 = u8::MAX;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn ms_ceil(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// The platform settings an evaluator is built from.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct EvaluatorSettings {
    /// The shared breaker (`triggers.breaker`).
    pub breaker: Breaker,
    /// Half-open probing (`recovery.half_open`).
    pub half_open: HalfOpen,
    /// The open wait (`recovery.open_wait`).
    pub open_wait: OpenWait,
    /// The latency window behind tenants' P95 ceilings (`triggers.latency`).
    pub latency: LatencySettings,
    /// Treat a provider's retry-after as "not before" (`triggers.honour_retry_after`).
    pub honour_retry_after: bool,
    /// How long a pushed queue depth, status-page state, or rate-limit reading without a reset
    /// time holds before it is treated as unknown. Default 2 minutes.
    pub signal_ttl: Duration,
    /// The longest "not before" a provider may impose (a buggy or hostile retry-after of a year
    /// is cut to this). Default 24 hours.
    pub max_not_before: Duration,
}

impl Default for EvaluatorSettings {
    fn default() -> Self {
        EvaluatorSettings::from_policy(&Triggers::default(), &Recovery::default())
    }
}

impl EvaluatorSettings {
    /// The settings of the platform policy's triggers and recovery layers.
    pub fn from_policy(triggers: &Triggers, recovery: &Recovery) -> Self {
        EvaluatorSettings {
            breaker: triggers.breaker.clone(),
            half_open: recovery.half_open.clone(),
            open_wait: recovery.open_wait.clone(),
            latency: triggers.latency.clone(),
            honour_retry_after: triggers.honour_retry_after,
            signal_ttl: Duration::from_secs(120),
            max_not_before: Duration::from_secs(24 * 3600),
        }
    }
}

/// One endpoint's shared health as replicas exchange it: mergeable (the more pessimistic state
/// and the later "not before" win).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct SharedHealth {
    /// The breaker state.
    pub state: BreakerState,
    /// Until when it is open, while open.
    pub open_until: Option<Timestamp>,
    /// Consecutive re-opens.
    pub reopens: u32,
    /// The provider's "not before", while in force.
    pub not_before: Option<Timestamp>,
}

/// Whether an endpoint may serve a tenant's call now.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "verdict", content = "trigger", rename_all = "snake_case")]
pub enum Verdict {
    /// Usable.
    Usable,
    /// The endpoint is recovering: a call may go only as a half-open probe, with a permit from
    /// [`TriggerEvaluator::try_acquire_probe`] (and only for probe-eligible tenants).
    ProbeOnly(Trigger),
    /// Not usable, with the trigger that fired (measured value, threshold, and `until` when
    /// known).
    Unusable(Trigger),
}

impl Verdict {
    /// Whether the endpoint is usable for an ordinary call.
    #[must_use]
    pub const fn is_usable(&self) -> bool {
        matches!(self, Verdict::Usable)
    }

    /// The trigger, unless usable.
    #[must_use]
    pub const fn trigger(&self) -> Option<&Trigger> {
        match self {
            Verdict::Usable => None,
            Verdict::ProbeOnly(t) | Verdict::Unusable(t) => Some(t),
        }
    }
}

/// Latency percentiles of an endpoint over the latency window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySnapshot {
    /// Median (`None` with no samples).
    pub p50: Option<Duration>,
    /// 95th percentile.
    pub p95: Option<Duration>,
    /// 99th percentile.
    pub p99: Option<Duration>,
    /// Samples in the window.
    pub samples: u64,
    /// The window.
    pub window: Duration,
    /// Whether `samples` reaches the minimum the settings require before a percentile is used.
    pub trusted: bool,
}

/// Provider signals currently in force for an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Signals {
    /// Last reported queue depth.
    pub queue_depth: Option<u64>,
    /// Last reported status-page state.
    pub status_page: Option<StatusPageState>,
    /// Remaining requests as a fraction of the limit.
    pub requests_remaining: Option<f64>,
    /// Remaining tokens as a fraction of the limit.
    pub tokens_remaining: Option<f64>,
}

/// A snapshot of one endpoint's shared health, for explain output and stats.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointHealth {
    /// The endpoint.
    pub endpoint: EndpointIdx,
    /// The breaker state.
    pub state: BreakerState,
    /// The operator mode.
    pub mode: BreakerMode,
    /// Calls in the breaker window (successes and capacity failures).
    pub calls: u32,
    /// Capacity failures in the window.
    pub failures: u32,
    /// Slow calls in the window.
    pub slow_calls: u32,
    /// Failure rate, once the window holds `min_calls` calls.
    pub failure_rate: Option<f64>,
    /// Slow-call rate, once the window holds `min_calls` calls.
    pub slow_call_rate: Option<f64>,
    /// Capacity failures in a row.
    pub consecutive_failures: u32,
    /// Consecutive re-opens (0 after a close).
    pub reopens: u32,
    /// End of the open wait, while open.
    pub open_until: Option<Timestamp>,
    /// Probe permits left, while half-open.
    pub probes_left: Option<u32>,
    /// The trigger of the last opening.
    pub last_trip: Option<Trigger>,
    /// Latency percentiles.
    pub latency: LatencySnapshot,
    /// The provider's "not before", while in force.
    pub not_before: Option<Timestamp>,
    /// Provider signals in force.
    pub signals: Signals,
}

/// The lock-free side of an endpoint: what queries read.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Hot {
    state: AtomicU8,
    status: AtomicU8,
    probes_left: AtomicU32,
    reopens: AtomicU32,
    samples: AtomicU32,
    p50: AtomicU32,
    p95: AtomicU32,
    p99: AtomicU32,
    open_until: AtomicU64,
    half_deadline: AtomicU64,
    not_before: AtomicU64,
    fresh_until: AtomicU64,
    queue_depth: AtomicU64,
    queue_until: AtomicU64,
    status_until: AtomicU64,
    rl_req: AtomicU64,
    rl_req_until: AtomicU64,
    rl_tok: AtomicU64,
    rl_tok_until: AtomicU64,
    /// When the breaker last closed (0: closed since the start).
    closed_since: AtomicU64,
    /// When the endpoint last failed with a capacity error (0: never).
    last_failure: AtomicU64,
    /// When the endpoint last answered successfully (0: never).
    last_success: AtomicU64,
    /// Whether that close came from successful half-open probes.
    closed_by_probe: AtomicU8,
    /// Breaker transitions so far.
    transitions: AtomicU64,
    /// Per status-page state (by `status_to_u8`): until when it was last in force, once it was
    /// replaced, expired or cleared (0: never). What promotion's `healthy_for` is measured from.
    status_seen: [AtomicU64; 5],
}

impl Hot {
    /// Records that the state in force (if any) stops being in force at `now` (or ended
    /// earlier, when its reading expired). Called under the endpoint's mutex.
    fn retire_status(&self, now: u64) {
        let until = self.status_until.load(ACQ);
        if let Some(seen) = self.status_seen.get(usize::from(self.status.load(ACQ))) {
            seen.fetch_max(until.min(now), Ordering::AcqRel);
        }
    }
}

/// The locked side of an endpoint: its windows.
#[derive(Debug)]
struct Inner {
    breaker: BreakerCore,
    latency: LatencyWindow,
    rl_req_at: u64,
    rl_tok_at: u64,
}

#[derive(Debug)]
struct Cell {
    hot: Hot,
    inner: Mutex<Inner>,
}

const ACQ: Ordering = Ordering::Acquire;
const REL: Ordering = Ordering::Release;

fn status_to_u8(s: StatusPageState) -> u8 {
    match s {
        StatusPageState::Operational => 0,
        StatusPageState::DegradedPerformance => 1,
        StatusPageState::PartialOutage => 2,
        StatusPageState::MajorOutage => 3,
        StatusPageState::UnderMaintenance => 4,
    }
}

fn status_from_u8(v: u8) -> Option<StatusPageState> {
    Some(match v {
        0 => StatusPageState::Operational,
        1 => StatusPageState::DegradedPerformance,
        2 => StatusPageState::PartialOutage,
        3 => StatusPageState::MajorOutage,
        4 => StatusPageState::UnderMaintenance,
        _ => return None,
    })
}

fn u32_sat(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Where a tenant's spend is checked: the tenant and, optionally, a session and a workflow of
/// it, and optionally a [`BudgetHandle`] for them (a shortcut past the lookup by id).
#[derive(Debug, Clone, Copy)]
pub struct BudgetScope<'a> {
    /// The tenant.
    pub tenant: &'a TenantId,
    /// A session of the tenant.
    pub session: Option<&'a SessionId>,
    /// A workflow of the tenant.
    pub workflow: Option<&'a WorkflowId>,
    /// A handle to the same tenant, session and workflow.
    pub handle: Option<&'a BudgetHandle>,
}

impl<'a> BudgetScope<'a> {
    /// The tenant alone.
    #[must_use]
    pub const fn tenant(tenant: &'a TenantId) -> Self {
        BudgetScope {
            tenant,
            session: None,
            workflow: None,
            handle: None,
        }
    }

    /// The same scope with a handle obtained from
    /// [`TriggerEvaluator::budget_handle`] for it.
    #[must_use]
    pub const fn with_handle(mut self, handle: &'a BudgetHandle) -> Self {
        self.handle = Some(handle);
        self
    }

    fn inner(&self) -> Scope<'a> {
        Scope {
            tenant: self.tenant,
            session: self.session,
            workflow: self.workflow,
            handle: self.handle,
        }
    }

    /// The same scope narrowed to a session.
    #[must_use]
    pub const fn session(mut self, session: &'a SessionId) -> Self {
        self.session = Some(session);
        self
    }

    /// The same scope narrowed to a workflow.
    #[must_use]
    pub const fn workflow(mut self, workflow: &'a WorkflowId) -> Self {
        self.workflow = Some(workflow);
        self
    }
}

/// The shared health of every endpoint and the budget state of every tenant (see the module
/// docs for its concurrency).
///
/// ```
/// use downshift::trigger::{
///     EvaluatorSettings, Observation, OutcomeClass, TenantTriggers, TriggerEvaluator, Verdict,
/// };
/// use downshift::{EndpointIdx, TenantId, Timestamp};
/// use std::time::Duration;
///
/// let eval = TriggerEvaluator::new(&EvaluatorSettings::default(), 2, 42).unwrap();
/// let tenant = TenantId::new("acme");
/// let now = Timestamp::from_millis(1_000_000);
/// // A 429 asking to wait 30 s blocks the endpoint for everyone for 30 s.
/// let obs = Observation::new(EndpointIdx(0), &tenant, OutcomeClass::RateLimited, now, Duration::ZERO)
///     .retry_after(Duration::from_secs(30));
/// eval.observe(&obs, now).unwrap();
/// let view = TenantTriggers::default();
/// let verdict = eval.check(EndpointIdx(0), &view, now).unwrap();
/// assert!(matches!(verdict, Verdict::Unusable(t) if t.until == Some(now.saturating_add(Duration::from_secs(30)))));
/// assert!(eval.check(EndpointIdx(1), &view, now).unwrap().is_usable());
/// ```
#[derive(Debug)]
pub struct TriggerEvaluator {
    cells: Box<[Cell]>,
    breaker: BreakerConfig,
    min_samples: u64,
    latency_window: Duration,
    honour_retry_after: bool,
    signal_ttl: u64,
    max_not_before: u64,
    budgets: BudgetStore,
    events: Mutex<VecDeque<BreakerEvent>>,
    pending: AtomicUsize,
    dropped: AtomicU64,
}

impl TriggerEvaluator {
    /// An evaluator for `endpoints` catalog endpoints (indices `0..endpoints`), with the open
    /// waits' jitter drawn from `jitter_seed` (give each replica its own seed).
    ///
    /// Odd settings never panic (see [`open_wait`](super::open_wait) and the breaker's module
    /// docs for how each is read); the policy loader is where they are rejected.
    ///
    /// # Errors
    /// [`TriggerError::TooManyEndpoints`] above [`MAX_ENDPOINTS`].
    pub fn new(
        settings: &EvaluatorSettings,
        endpoints: usize,
        jitter_seed: u64,
    ) -> Result<Self, TriggerError> {
        if endpoints > MAX_ENDPOINTS {
            return Err(TriggerError::TooManyEndpoints {
                requested: endpoints,
                max: MAX_ENDPOINTS,
            });
        }
        let breaker = BreakerConfig::new(
            &settings.breaker,
            settings.half_open.probes,
            settings.half_open.timeout,
            &settings.open_wait,
            jitter_seed,
        );
        let cells = (0..endpoints)
            .map(|i| {
                let idx = EndpointIdx(u32::try_from(i).unwrap_or(u32::MAX));
                let hot = Hot::default();
                hot.status.store(NO_STATUS, REL);
                hot.fresh_until.store(u64::MAX, REL);
                Cell {
                    hot,
                    inner: Mutex::new(Inner {
                        breaker: BreakerCore::new(idx, &breaker),
                        latency: LatencyWindow::new(settings.latency.window),
                        rl_req_at: 0,
                        rl_tok_at: 0,
                    }),
                }
            })
            .collect();
        Ok(TriggerEvaluator {
            cells,
            breaker,
            min_samples: u64::from(settings.latency.min_samples),
            latency_window: settings.latency.window,
            honour_retry_after: settings.honour_retry_after,
            signal_ttl: ms(settings.signal_ttl),
            max_not_before: ms(settings.max_not_before),
            budgets: BudgetStore::default(),
            events: Mutex::new(VecDeque::new()),
            pending: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// An evaluator for every endpoint of `catalog`.
    ///
    /// # Errors
    /// As [`TriggerEvaluator::new`].
    pub fn for_catalog(
        settings: &EvaluatorSettings,
        catalog: &Catalog,
        jitter_seed: u64,
    ) -> Result<Self, TriggerError> {
        Self::new(settings, catalog.len(), jitter_seed)
    }

    /// Number of endpoints tracked.
    #[must_use]
    pub fn endpoints(&self) -> usize {
        self.cells.len()
    }

    fn cell(&self, endpoint: EndpointIdx) -> Result<&Cell, TriggerError> {
        self.cells
            .get(endpoint.0 as usize)
            .ok_or(TriggerError::UnknownEndpoint {
                endpoint,
                len: self.cells.len(),
            })
    }

    fn emit(&self, e: BreakerEvent) {
        if let Some(cell) = self.cells.get(e.endpoint.0 as usize) {
            cell.hot.transitions.fetch_add(1, Ordering::Relaxed);
        }
        if e.to == BreakerState::Closed {
            if let Some(cell) = self.cells.get(e.endpoint.0 as usize) {
                cell.hot.closed_since.store(e.at.as_millis(), REL);
                cell.hot
                    .closed_by_probe
                    .store(u8::from(e.from == BreakerState::HalfOpen), REL);
            }
        }
        let mut q = self.events.lock();
        if q.len() >= MAX_QUEUED_EVENTS {
            q.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(e);
        self.pending.store(q.len(), REL);
    }

    /// Takes every queued breaker event, oldest first. Cheap (no lock, no allocation) when none
    /// is queued.
    pub fn drain_events(&self) -> Vec<BreakerEvent> {
        if self.pending.load(ACQ) == 0 {
            return Vec::new();
        }
        let mut q = self.events.lock();
        self.pending.store(0, REL);
        q.drain(..).collect()
    }

    /// How many times an endpoint's breaker changed state since the evaluator started
    /// (lock-free; counted whether or not the events were drained).
    ///
    /// # Errors
    /// [`TriggerError::UnknownEndpoint`].
    pub fn breaker_transitions(&self, endpoint: EndpointIdx) -> Result<u64, TriggerError> {
        Ok(self.cell(endpoint)?.hot.transitions.load(Ordering::Relaxed))
    }

    /// Events dropped because the queue was full when they happened.
    #[must_use]
    pub fn dropped_events(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn publish(&self, hot: &Hot, inner: &Inner) {
        let b = &inner.breaker;
        hot.state.store(b.reported().to_u8(), REL);
        hot.open_until.store(b.open_until(), REL);
        hot.reopens.store(b.reopens(), REL);
        hot.half_deadline
            .store(b.half_open_deadline(&self.breaker), REL);
        hot.probes_left.store(b.probes_left(&self.breaker), REL);
    }

    fn publish_latency(hot: &Hot, latency: &LatencyWindow) {
        let p = latency.percentiles();
        hot.p50.store(u32_sat(p.p50), REL);
        hot.p95.store(u32_sat(p.p95), REL);
        hot.p99.store(u32_sat(p.p99), REL);
        hot.samples.store(u32_sat(p.samples), REL);
        hot.fresh_until.store(latency.fresh_until(), REL);
    }

    fn apply_rate_limit(
        &self,
        inner: &mut Inner,
        hot: &Hot,
        rl: &RateLimitState,
        at: u64,
        now: u64,
    ) {
        let ttl_until = now.saturating_add(self.signal_ttl);
        if let (Some(rem), Some(lim)) = (rl.requests_remaining, rl.requests_limit) {
            if lim > 0 && at >= inner.rl_req_at {
                inner.rl_req_at = at;
                let until = rl
                    .requests_reset
                    .map_or(ttl_until, |r| at.saturating_add(ms(r)));
                hot.rl_req.store((rem as f64 / lim as f64).to_bits(), REL);
                hot.rl_req_until.store(until, REL);
            }
        }
        if let (Some(rem), Some(lim)) = (rl.tokens_remaining, rl.tokens_limit) {
            if lim > 0 && at >= inner.rl_tok_at {
                inner.rl_tok_at = at;
                let until = rl
                    .tokens_reset
                    .map_or(ttl_until, |r| at.saturating_add(ms(r)));
                hot.rl_tok.store((rem as f64 / lim as f64).to_bits(), REL);
                hot.rl_tok_until.store(until, REL);
            }
        }
    }

    fn block_until(&self, hot: &Hot, until: u64, now: u64) {
        let until = until.min(now.saturating_add(self.max_not_before));
        if until > now {
            hot.not_before.fetch_max(until, Ordering::AcqRel);
        }
    }

    /// Records the outcome of one call at `now`: the endpoint's breaker window (successes and
    /// capacity failures only), its latency window (successes and timeouts: a fast error says
    /// nothing about how fast the endpoint serves), a provider retry-after or reset as "not
    /// before" (capacity errors only; never shortening an existing block), rate-limit headroom,
    /// a probe's result, and the spend against whatever budgets `obs.budget` configures.
    ///
    /// # Errors
    /// [`TriggerError::UnknownEndpoint`]; [`TriggerError::InvalidCost`] for a negative or
    /// non-finite cost (then nothing is recorded).
    pub fn observe(&self, obs: &Observation<'_>, now: Timestamp) -> Result<(), TriggerError> {
        if let (Some(b), Some(h)) = (obs.budget, obs.budget_handle) {
            self.budgets.prefetch(h, b);
        }
        let cell = self.cell(obs.endpoint)?;
        if !(obs.cost_usd.is_finite() && obs.cost_usd >= 0.0) {
            return Err(TriggerError::InvalidCost {
                endpoint: obs.endpoint,
                tenant: obs.tenant.clone(),
                cost_usd: obs.cost_usd,
            });
        }
        let now_ms = now.as_millis();
        let finished = obs.finished().as_millis().min(now_ms);
        let hot = &cell.hot;
        if self.honour_retry_after && obs.outcome.is_capacity() {
            let mut until = 0;
            if let Some(after) = obs.retry_after {
                until = finished.saturating_add(ms_ceil(after));
            }
            if let Some(reset) = obs.reset_at {
                until = until.max(reset.as_millis());
            }
            self.block_until(hot, until, now_ms);
        }
        let flags = self.breaker.flags(obs.outcome, obs.latency);
        if flags.failure {
            hot.last_failure.fetch_max(now_ms, Ordering::AcqRel);
        } else if obs.outcome == OutcomeClass::Ok {
            hot.last_success.fetch_max(now_ms, Ordering::AcqRel);
        }
        {
            let mut inner = cell.inner.lock();
            let inner = &mut *inner;
            if matches!(obs.outcome, OutcomeClass::Ok | OutcomeClass::Timeout) {
                inner.latency.record(ms(obs.latency), now_ms);
                Self::publish_latency(hot, &inner.latency);
            }
            if let Some(rl) = &obs.rate_limit {
                self.apply_rate_limit(inner, hot, rl, finished, now_ms);
            }
            let before = inner.breaker.reported();
            // A permit only ever counts for the endpoint it was granted for.
            let probe = obs.probe.filter(|p| p.endpoint == obs.endpoint);
            inner
                .breaker
                .record(&self.breaker, flags, probe, now_ms, &mut |e| self.emit(e));
            if before != inner.breaker.reported() || probe.is_some() {
                self.publish(hot, inner);
            }
        }
        if let Some(budget) = obs.budget {
            let scope = Scope {
                tenant: obs.tenant,
                session: obs.session,
                workflow: obs.workflow,
                handle: obs.budget_handle,
            };
            self.budgets.charge(&scope, budget, obs.cost_usd, now_ms);
        }
        Ok(())
    }

    /// Records a provider signal at `now`.
    ///
    /// # Errors
    /// [`TriggerError::UnknownEndpoint`].
    pub fn signal(&self, signal: &ProviderSignal, now: Timestamp) -> Result<(), TriggerError> {
        let cell = self.cell(signal.endpoint())?;
        let hot = &cell.hot;
        let now_ms = now.as_millis();
        let ttl_until = now_ms.saturating_add(self.signal_ttl);
        match *signal {
            ProviderSignal::QueueDepth { depth, .. } => {
                let _g = cell.inner.lock();
                hot.queue_depth.store(depth, REL);
                hot.queue_until.store(ttl_until, REL);
            }
            ProviderSignal::StatusPage { state, .. } => {
                let _g = cell.inner.lock();
                hot.retire_status(now_ms);
                hot.status.store(status_to_u8(state), REL);
                hot.status_until.store(ttl_until, REL);
            }
            ProviderSignal::RateLimit { state, .. } => {
                let mut inner = cell.inner.lock();
                self.apply_rate_limit(&mut inner, hot, &state, now_ms, now_ms);
            }
            ProviderSignal::RetryAfter { after, .. } => {
                if self.honour_retry_after {
                    self.block_until(hot, now_ms.saturating_add(ms_ceil(after)), now_ms);
                }
            }
            ProviderSignal::NotBefore { until, .. } => {
                self.block_until(hot, until.as_millis(), now_ms);
            }
        }
        Ok(())
    }

    /// The published P95 and sample count, expiring old samples first if the endpoint has been
    /// idle long enough for some to leave the window.
    fn latency(&self, cell: &Cell, now: u64) -> (u64, u64) {
        let hot = &cell.hot;
        if now >= hot.fresh_until.load(ACQ) {
            let mut inner = cell.inner.lock();
            if inner.latency.advance(now) {
                Self::publish_latency(hot, &inner.latency);
            }
        }
        (
            u64::from(hot.p95.load(ACQ)),
            u64::from(hot.samples.load(ACQ)),
        )
    }

    /// Whether `endpoint` may serve a call of the tenant whose thresholds are `view`, now, and if
    /// not, the trigger that fired. Checks, in order: a forced-open breaker; an open breaker or a
    /// provider's "not before" (whichever ends later); the status page, rate-limit headroom and
    /// queue depth against the tenant's thresholds; the endpoint's P95 against the tenant's
    /// ceiling (once the window holds `min_samples`). A recovering breaker yields
    /// [`Verdict::ProbeOnly`] when nothing else blocks.
    ///
    /// Lock-free except as the module docs say.
    ///
    /// # Errors
    /// [`TriggerError::UnknownEndpoint`].
    pub fn check(
        &self,
        endpoint: EndpointIdx,
        view: &TenantTriggers,
        now: Timestamp,
    ) -> Result<Verdict, TriggerError> {
        let cell = self.cell(endpoint)?;
        let hot = &cell.hot;
        let now_ms = now.as_millis();
        let state = BreakerState::from_u8(hot.state.load(ACQ));
        let mut blocked: Option<Trigger> = None;
        let mut probe_only: Option<Trigger> = None;
        match state {
            BreakerState::ForcedOpen => {
                return Ok(Verdict::Unusable(
                    Trigger::new(TriggerKind::ForcedOpen, 0.0, 0.0).at(endpoint),
                ));
            }
            BreakerState::Open => {
                let until = hot.open_until.load(ACQ);
                let t = Trigger::new(
                    TriggerKind::BreakerOpen,
                    f64::from(hot.reopens.load(ACQ)),
                    0.0,
                )
                .at(endpoint)
                .until(Timestamp::from_millis(until));
                if now_ms < until {
                    blocked = Some(t);
                } else {
                    probe_only = Some(t);
                }
            }
            BreakerState::HalfOpen => {
                let deadline = hot.half_deadline.load(ACQ);
                let left = hot.probes_left.load(ACQ);
                let probes = f64::from(self.breaker.probes);
                if left == 0 && now_ms < deadline {
                    blocked = Some(
                        Trigger::new(TriggerKind::ProbesExhausted, probes, probes)
                            .at(endpoint)
                            .until(Timestamp::from_millis(deadline)),
                    );
                } else {
                    probe_only = Some(
                        Trigger::new(
                            TriggerKind::BreakerOpen,
                            f64::from(hot.reopens.load(ACQ)),
                            0.0,
                        )
                        .at(endpoint),
                    );
                }
            }
            BreakerState::Closed | BreakerState::Disabled | BreakerState::MetricsOnly => {}
        }
        if matches!(
            state,
            BreakerState::Closed | BreakerState::Open | BreakerState::HalfOpen
        ) {
            let nb = hot.not_before.load(ACQ);
            if nb > now_ms && blocked.is_none_or(|b| b.until.is_some_and(|u| u.as_millis() < nb)) {
                blocked = Some(
                    Trigger::new(TriggerKind::RetryAfter, 0.0, 0.0)
                        .at(endpoint)
                        .until(Timestamp::from_millis(nb)),
                );
            }
        }
        if let Some(t) = blocked {
            return Ok(Verdict::Unusable(t));
        }
        if let Some(t) = self.tenant_trigger(cell, endpoint, view, now_ms) {
            return Ok(Verdict::Unusable(t));
        }
        Ok(match probe_only {
            Some(t) => Verdict::ProbeOnly(t),
            None => Verdict::Usable,
        })
    }

    fn tenant_trigger(
        &self,
        cell: &Cell,
        endpoint: EndpointIdx,
        view: &TenantTriggers,
        now: u64,
    ) -> Option<Trigger> {
        let hot = &cell.hot;
        if !view.status_page.is_empty() && now < hot.status_until.load(ACQ) {
            if let Some(s) = status_from_u8(hot.status.load(ACQ)) {
                if view.status_page.contains(s) {
                    let mut t = Trigger::new(TriggerKind::StatusPage, 0.0, 0.0).at(endpoint);
                    t.status = Some(s);
                    return Some(t);
                }
            }
        }
        if let Some(rl) = &view.rate_limit_remaining {
            if let Some(min) = rl.min_requests_fraction {
                let until = hot.rl_req_until.load(ACQ);
                let frac = f64::from_bits(hot.rl_req.load(ACQ));
                if now < until && frac < min {
                    return Some(
                        Trigger::new(TriggerKind::RateLimitRequests, frac, min)
                            .at(endpoint)
                            .until(Timestamp::from_millis(until)),
                    );
                }
            }
            if let Some(min) = rl.min_tokens_fraction {
                let until = hot.rl_tok_until.load(ACQ);
                let frac = f64::from_bits(hot.rl_tok.load(ACQ));
                if now < until && frac < min {
                    return Some(
                        Trigger::new(TriggerKind::RateLimitTokens, frac, min)
                            .at(endpoint)
                            .until(Timestamp::from_millis(until)),
                    );
                }
            }
        }
        if let Some(max) = view.queue_depth {
            let depth = hot.queue_depth.load(ACQ);
            if now < hot.queue_until.load(ACQ) && depth >= max {
                return Some(
                    Trigger::new(TriggerKind::QueueDepth, depth as f64, max as f64).at(endpoint),
                );
            }
        }
        if let Some(ceiling) = view.p95_ceiling {
            let (p95, samples) = self.latency(cell, now);
            let ceiling = ms(ceiling);
            if samples > 0 && samples >= self.min_samples && p95 >= ceiling {
                return Some(
                    Trigger::new(TriggerKind::LatencyP95, p95 as f64, ceiling as f64)
                        .at(endpoint)
                        .over(Some(self.latency_window), u32_sat(samples)),
                );
            }
        }
        None
    }

    /// The endpoint's recent P95 latency, once the window holds the minimum number of samples
    /// (for the router's deadline check). Lock-free except as the module docs say.
    ///
    /// # Errors
    /// [`TriggerError::UnknownEndpoint`].
    pub fn recent_p95(
        &self,
        endpoint: EndpointIdx,
        now: Timestamp,
    ) -> Result<Option<Duration>, TriggerError> {
        let cell = self.cell(endpoint)?;
        let (p95, samples) = self.latency(cell, now.as_millis());
        Ok((samples > 0 && samples >= self.min_samples).then(|| Duration::from_millis(p95)))
    }

    /// Since when `endpoint` has been healthy for everyone, as far as its shared state goes:
    /// its breaker closed (or disabled / metrics only), no provider "not before" in force, and no
    /// capacity failure since that time. `None` while it is open, half-open, forced open or blocked. The second
    /// value says whether the last close came from successful half-open probes (or the breaker
    /// never tripped). Lock-free.
    ///
    /// The router's promotion rule (`healthy_for`) reads this.
    ///
    /// # Errors
    /// [`TriggerError::UnknownEndpoint`].
    pub fn healthy_since(
        &self,
        endpoint: EndpointIdx,
        now: Timestamp,
    ) -> Result<Option<(Timestamp, bool)>, TriggerError> {
        let hot = &self.cell(endpoint)?.hot;
        let state = BreakerState::from_u8(hot.state.load(ACQ));
        if !matches!(
            state,
            BreakerState::Closed | BreakerState::Disabled | BreakerState::MetricsOnly
        ) {
            return Ok(None);
        }
        let now_ms = now.as_millis();
        let nb = hot.not_before.load(ACQ);
        if state == BreakerState::Closed && nb > now_ms {
            return Ok(None);
        }
        // The latest evidence is a failure: not healthy, however long ago it was, until a call
        // or a probe succeeds.
        if state == BreakerState::Closed && hot.last_failure.load(ACQ) > hot.last_success.load(ACQ)
        {
            return Ok(None);
        }
        // Healthy since the breaker closed, the provider's "not before" passed, and the last
        // capacity failure — whichever is latest: failures too few to open the breaker still
        // reset the clock.
        let since = if state == BreakerState::Closed {
            hot.closed_since
                .load(ACQ)
                .max(nb)
                .max(hot.last_failure.load(ACQ))
        } else {
            hot.closed_since.load(ACQ)
        };
        // An endpoint that never tripped has nothing to prove by probing.
        let by_probe = hot.closed_by_probe.load(ACQ) != 0 || hot.closed_since.load(ACQ) == 0;
        Ok(Some((Timestamp::from_millis(since), by_probe)))
    }

    /// Whether `endpoint` wants a probe: its breaker waits for one (open wait over, or
    /// half-open with permits left), or — with the breaker closed — its latest evidence is a
    /// capacity failure at least an initial open wait old and nothing has called it since, so
    /// only a probe can tell whether it is back.
    ///
    /// # Errors
    /// [`TriggerError::UnknownEndpoint`].
    pub fn wants_probe(&self, endpoint: EndpointIdx, now: Timestamp) -> Result<bool, TriggerError> {
        if matches!(
            self.check(endpoint, &TenantTriggers::default(), now)?,
            Verdict::ProbeOnly(_)
        ) {
            return Ok(true);
        }
        let hot = &self.cell(endpoint)?.hot;
        let now_ms = now.as_millis();
        let (failed, ok) = (hot.last_failure.load(ACQ), hot.last_success.load(ACQ));
        Ok(
            BreakerState::from_u8(hot.state.load(ACQ)) == BreakerState::Closed
                && failed > ok
                && hot.not_before.load(ACQ) <= now_ms
                && now_ms.saturating_sub(failed) >= self.breaker.wait_ms(endpoint, 0),
        )
    }

    /// This replica's view of an endpoint's shared health, to publish to other replicas
    /// (see [`TriggerEvaluator::merge_shared`]).
    ///
    /// # Errors
    /// [`TriggerError::UnknownEndpoint`].
    pub fn shared_health(
        &self,
        endpoint: EndpointIdx,
        now: Timestamp,
    ) -> Result<SharedHealth, TriggerError> {
        let hot = &self.cell(endpoint)?.hot;
        let now_ms = now.as_millis();
        let state = BreakerState::from_u8(hot.state.load(ACQ));
        let open_until = hot.open_until.load(ACQ);
        let nb = hot.not_before.load(ACQ);
        Ok(SharedHealth {
            state,
            open_until: (matches!(state, BreakerState::Open) && open_until > now_ms)
                .then(|| Timestamp::from_millis(open_until)),
            reopens: hot.reopens.load(ACQ),
            not_before: (nb > now_ms).then(|| Timestamp::from_millis(nb)),
        })
    }

    /// Merges another replica's view of an endpoint: the later "not before" wins, and an open
    /// breaker elsewhere opens this replica's too, until the later of the two open waits (so
    /// ten replicas do not each need their own failures to stop calling a failing provider).
    /// A closed state elsewhere never closes this replica's breaker: the more pessimistic view
    /// wins. Returns whether anything changed. The caller decides freshness (see the engine's
    /// health exchange).
    ///
    /// # Errors
    /// [`TriggerError::UnknownEndpoint`].
    pub fn merge_shared(
        &self,
        endpoint: EndpointIdx,
        remote: &SharedHealth,
        now: Timestamp,
    ) -> Result<bool, TriggerError> {
        let cell = self.cell(endpoint)?;
        let hot = &cell.hot;
        let now_ms = now.as_millis();
        let mut changed = false;
        if let Some(nb) = remote.not_before {
            let nb = nb
                .as_millis()
                .min(now_ms.saturating_add(self.max_not_before));
            if hot.not_before.fetch_max(nb, Ordering::AcqRel) < nb {
                changed = true;
            }
        }
        if let Some(until) = remote.open_until {
            let mut inner = cell.inner.lock();
            let t = Trigger::new(TriggerKind::BreakerOpen, f64::from(remote.reopens), 0.0);
            if inner.breaker.adopt_open(
                until
                    .as_millis()
                    .min(now_ms.saturating_add(self.max_not_before)),
                remote.reopens,
                now_ms,
                t,
                &mut |e| self.emit(e),
            ) {
                changed = true;
            }
            self.publish(hot, &inner);
        }
        Ok(changed)
    }

    /// Gives back an unused probe permit (another replica took the platform-wide probe slot).
    ///
    /// # Errors
    /// [`TriggerError::UnknownEndpoint`].
    pub fn release_probe(&self, permit: ProbePermit, _now: Timestamp) -> Result<(), TriggerError> {
        let cell = self.cell(permit.endpoint)?;
        let mut inner = cell.inner.lock();
        inner.breaker.release(permit);
        self.publish(&cell.hot, &inner);
        Ok(())
    }

    /// Since when `endpoint` has been usable for a tenant whose thresholds are `view`, as far as
    /// the evaluator keeps history: [`healthy_since`](Self::healthy_since) (breaker closed, no
    /// provider "not before"), and no status-page state in the tenant's `status_page` set in
    /// force since then. `None` while one is in force. Lock-free.
    ///
    /// This is what the router's promotion rule (`healthy_for`) reads, so that a provider whose
    /// status page alternates between an outage and operational faster than `healthy_for`
    /// never draws a session back up. Queue depth, rate-limit headroom and the tenant's P95
    /// ceiling keep no such history: they are checked as they stand when the router tries the
    /// higher tier.
    ///
    /// ```
    /// use downshift::policy::StatusPageState;
    /// use downshift::trigger::{
    ///     EvaluatorSettings, ProviderSignal, StatusSet, TenantTriggers, TriggerEvaluator,
    /// };
    /// use downshift::{EndpointIdx, Timestamp};
    ///
    /// let eval = TriggerEvaluator::new(&EvaluatorSettings::default(), 1, 7).unwrap();
    /// let (e, at) = (EndpointIdx(0), Timestamp::from_millis);
    /// let view = TenantTriggers {
    ///     status_page: StatusSet::EMPTY.with(StatusPageState::MajorOutage),
    ///     ..TenantTriggers::default()
    /// };
    /// let page = |state| ProviderSignal::StatusPage { endpoint: e, state };
    /// eval.signal(&page(StatusPageState::MajorOutage), at(10_000)).unwrap();
    /// assert_eq!(eval.healthy_since_for(e, &view, at(20_000)).unwrap(), None);
    /// eval.signal(&page(StatusPageState::Operational), at(30_000)).unwrap();
    /// let (since, _) = eval.healthy_since_for(e, &view, at(40_000)).unwrap().unwrap();
    /// assert_eq!(since, at(30_000));
    /// ```
    ///
    /// # Errors
    /// [`TriggerError::UnknownEndpoint`].
    pub fn healthy_since_for(
        &self,
        endpoint: EndpointIdx,
        view: &TenantTriggers,
        now: Timestamp,
    ) -> Result<Option<(Timestamp, bool)>, TriggerError> {
        let Some((since, by_probe)) = self.healthy_since(endpoint, now)? else {
            return Ok(None);
        };
        let mut since = since.as_millis();
        if !view.status_page.is_empty() {
            let hot = &self.cell(endpoint)?.hot;
            let now_ms = now.as_millis();
            let current = hot.status.load(ACQ);
            let until = hot.status_until.load(ACQ);
            for s in view.status_page.iter() {
                let k = status_to_u8(s);
                let mut seen = hot
                    .status_seen
                    .get(usize::from(k))
                    .map_or(0, |x| x.load(ACQ));
                if current == k {
                    if now_ms < until {
                        return Ok(None);
                    }
                    seen = seen.max(until);
                }
                since = since.max(seen);
            }
        }
        Ok(Some((Timestamp::from_millis(since), by_probe)))
    }

    /// Asks for one of the half-open probe permits of a recovering endpoint, shared by every
    /// tenant of the platform (the router asks only for probe-eligible tenants). The first ask
    /// after the open wait moves the breaker to half-open; a round that outlives the half-open
    /// timeout re-opens it with a longer wait. A provider's "not before" is honoured here too.
    ///
    /// # Errors
    /// [`TriggerError::UnknownEndpoint`].
    pub fn try_acquire_probe(
        &self,
        endpoint: EndpointIdx,
        now: Timestamp,
    ) -> Result<Probe, TriggerError> {
        let cell = self.cell(endpoint)?;
        let hot = &cell.hot;
        let now_ms = now.as_millis();
        let mut inner = cell.inner.lock();
        let inner = &mut *inner;
        if inner.breaker.mode() == BreakerMode::Auto {
            let nb = hot.not_before.load(ACQ);
            if nb > now_ms && inner.breaker.reported() != BreakerState::Closed {
                return Ok(Probe::Refused(
                    Trigger::new(TriggerKind::RetryAfter, 0.0, 0.0)
                        .at(endpoint)
                        .until(Timestamp::from_millis(nb)),
                ));
            }
        }
        let probe = inner
            .breaker
            .acquire(&self.breaker, now_ms, &mut |e| self.emit(e));
        self.publish(hot, inner);
        Ok(probe)
    }

    /// Sets an endpoint's operator mode (forced open, disabled, metrics only, or back to
    /// automatic, which starts closed with an empty window). Emits an event if the state changes.
    ///
    /// # Errors
    /// [`TriggerError::UnknownEndpoint`].
    pub fn set_mode(
        &self,
        endpoint: EndpointIdx,
        mode: BreakerMode,
        now: Timestamp,
    ) -> Result<(), TriggerError> {
        let cell = self.cell(endpoint)?;
        let mut inner = cell.inner.lock();
        inner
            .breaker
            .set_mode(mode, now.as_millis(), &mut |e| self.emit(e));
        self.publish(&cell.hot, &inner);
        Ok(())
    }

    /// Operator reset of an endpoint: automatic mode, closed, empty breaker window, no re-opens,
    /// and the provider's "not before" and pushed signals cleared. The latency window is kept.
    ///
    /// # Errors
    /// [`TriggerError::UnknownEndpoint`].
    pub fn reset(&self, endpoint: EndpointIdx, now: Timestamp) -> Result<(), TriggerError> {
        let cell = self.cell(endpoint)?;
        let hot = &cell.hot;
        let mut inner = cell.inner.lock();
        inner.breaker.reset(now.as_millis(), &mut |e| self.emit(e));
        hot.not_before.store(0, REL);
        hot.queue_until.store(0, REL);
        hot.retire_status(now.as_millis());
        hot.status_until.store(0, REL);
        hot.rl_req_until.store(0, REL);
        hot.rl_tok_until.store(0, REL);
        self.publish(hot, &inner);
        Ok(())
    }

    /// A snapshot of an endpoint's shared health at `now` (takes the endpoint's mutex briefly).
    ///
    /// # Errors
    /// [`TriggerError::UnknownEndpoint`].
    pub fn health(
        &self,
        endpoint: EndpointIdx,
        now: Timestamp,
    ) -> Result<EndpointHealth, TriggerError> {
        let cell = self.cell(endpoint)?;
        let hot = &cell.hot;
        let now_ms = now.as_millis();
        let mut inner = cell.inner.lock();
        if inner.latency.advance(now_ms) {
            Self::publish_latency(hot, &inner.latency);
        }
        let w = inner.breaker.window_stats(now_ms);
        let b = &inner.breaker;
        let state = b.reported();
        let rated = w.calls >= self.breaker.min_calls();
        let rate = |n: u32| rated.then(|| f64::from(n) / f64::from(w.calls));
        let p = inner.latency.percentiles();
        let dur = |v: u64| (p.samples > 0).then(|| Duration::from_millis(v));
        let live = |until: &AtomicU64| now_ms < until.load(ACQ);
        let nb = hot.not_before.load(ACQ);
        Ok(EndpointHealth {
            endpoint,
            state,
            mode: b.mode(),
            calls: w.calls,
            failures: w.failures,
            slow_calls: w.slow,
            failure_rate: rate(w.failures),
            slow_call_rate: rate(w.slow),
            consecutive_failures: w.consecutive,
            reopens: b.reopens(),
            open_until: (state == BreakerState::Open)
                .then(|| Timestamp::from_millis(b.open_until())),
            probes_left: (state == BreakerState::HalfOpen).then(|| b.probes_left(&self.breaker)),
            last_trip: b.last_trip(),
            latency: LatencySnapshot {
                p50: dur(p.p50),
                p95: dur(p.p95),
                p99: dur(p.p99),
                samples: p.samples,
                window: inner.latency.window(),
                trusted: p.samples > 0 && p.samples >= self.min_samples,
            },
            not_before: (nb > now_ms).then(|| Timestamp::from_millis(nb)),
            signals: Signals {
                queue_depth: live(&hot.queue_until).then(|| hot.queue_depth.load(ACQ)),
                status_page: if live(&hot.status_until) {
                    status_from_u8(hot.status.load(ACQ))
                } else {
                    None
                },
                requests_remaining: live(&hot.rl_req_until)
                    .then(|| f64::from_bits(hot.rl_req.load(ACQ))),
                tokens_remaining: live(&hot.rl_tok_until)
                    .then(|| f64::from_bits(hot.rl_tok.load(ACQ))),
            },
        })
    }

    /// Starts loading the headroom entry a budget check through `h` reads (scattered among
    /// many tenants', so likely not in cache), for a caller with other work to do before the
    /// check: the router, first thing in a route.
    pub(crate) fn prefetch_budget_check(&self, h: &BudgetHandle) {
        self.budgets.prefetch_check(h);
    }

    /// Whether the tenant, session or workflow of `scope` is at or over a budget guardrail of
    /// `view` at `now`, checked in that order: the first that fires, with the measured spend and
    /// the limit (`>=`: spending exactly the limit fires). `None` when within every budget.
    #[must_use]
    pub fn check_budget(
        &self,
        scope: &BudgetScope<'_>,
        view: &TenantTriggers,
        now: Timestamp,
    ) -> Option<Trigger> {
        let budget = view.budget.as_ref()?;
        if budget.tenant.is_none() && budget.session_usd.is_none() && budget.workflow_usd.is_none()
        {
            return None;
        }
        let mut inner = scope.inner();
        inner.session = inner.session.filter(|_| budget.session_usd.is_some());
        inner.workflow = inner.workflow.filter(|_| budget.workflow_usd.is_some());
        if self.budgets.clear_by_handle(&inner, budget) {
            return None;
        }
        let spend = self.budgets.spend(&inner, now.as_millis());
        if let Some(wb) = &budget.tenant {
            if spend.tenant_window_usd >= wb.limit_usd {
                return Some(
                    Trigger::new(
                        TriggerKind::TenantBudget,
                        spend.tenant_window_usd,
                        wb.limit_usd,
                    )
                    .over(Some(wb.window), 0),
                );
            }
        }
        if let (Some(limit), Some(_)) = (budget.workflow_usd, scope.workflow) {
            if spend.workflow_usd >= limit {
                return Some(Trigger::new(
                    TriggerKind::WorkflowBudget,
                    spend.workflow_usd,
                    limit,
                ));
            }
        }
        if let (Some(limit), Some(_)) = (budget.session_usd, scope.session) {
            if spend.session_usd >= limit {
                return Some(Trigger::new(
                    TriggerKind::SessionBudget,
                    spend.session_usd,
                    limit,
                ));
            }
        }
        None
    }

    /// What the scope has spent as of `now` (tenant spend over its budget window; session and
    /// workflow totals), as tracked for the budgets observations were charged against.
    #[must_use]
    pub fn spend(&self, scope: &BudgetScope<'_>, now: Timestamp) -> Spend {
        self.budgets.spend(&scope.inner(), now.as_millis())
    }

    /// A handle to the budget state of `scope`'s tenant, session and workflow (created if new),
    /// for a caller that keeps one per session: passed on observations and budget checks it
    /// skips the lookup by id, the costly part of both with many tenants. Ask again after
    /// [`TriggerEvaluator::evict_idle`] may have evicted it (a stale handle still works, through
    /// the slower lookup). Allocates only for a tenant, session or workflow not yet known.
    #[must_use]
    pub fn budget_handle(&self, scope: &BudgetScope<'_>, now: Timestamp) -> BudgetHandle {
        self.budgets
            .handle(scope.tenant, scope.session, scope.workflow, now.as_millis())
    }

    /// Sets the session's and workflow's total spend of `scope` (e.g. from a checkpoint when a
    /// suspended session resumes after its budget state was evicted). Values that are negative
    /// or not finite are ignored.
    pub fn restore_spend(
        &self,
        scope: &BudgetScope<'_>,
        session_usd: f64,
        workflow_usd: f64,
        now: Timestamp,
    ) {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        self.budgets.restore(
            scope.tenant,
            scope
                .session
                .filter(|_| ok(session_usd))
                .map(|s| (s, session_usd)),
            scope
                .workflow
                .filter(|_| ok(workflow_usd))
                .map(|w| (w, workflow_usd)),
            now.as_millis(),
        );
    }

    /// Prunes budget state not charged for `idle_for`: sessions and workflows, and tenants once
    /// none of their spend still counts in their window (so eviction never lets a tenant
    /// overspend). A session evicted while suspended restarts from zero unless its spend is
    /// restored with [`TriggerEvaluator::restore_spend`]; pick `idle_for` longer than the
    /// longest suspension, or restore.
    pub fn evict_idle(&self, now: Timestamp, idle_for: Duration) -> Evicted {
        self.budgets.evict_idle(now.as_millis(), ms(idle_for))
    }

    /// Number of tenants with budget state (for memory accounting).
    #[must_use]
    pub fn tracked_tenants(&self) -> usize {
        self.budgets.tenants()
    }
}
