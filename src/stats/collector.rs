//! The engine's counters: sharded by tenant, atomics inside, no lock on the common path.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use hashbrown::{DefaultHashBuilder, HashMap, HashSet};
use parking_lot::{Mutex, RwLock};

use super::histogram::Histogram;
use super::{
    DegradationEvent, EndpointStats, Outcomes, RouteStats, Routes, StatsSnapshot, TenantStats,
    WouldBe, WouldBeDecision,
};
use crate::catalog::{Catalog, EndpointIdx};
use crate::clock::Timestamp;
use crate::engine::EngineMode;
use crate::id::{SessionId, TenantId};
use crate::router::Decision;
use crate::trigger::OutcomeClass;

const SHARDS: usize = 64;
const CLASSES: usize = OutcomeClass::ALL.len();
/// Closed degradation episodes kept for snapshots.
const MAX_CLOSED: usize = 10_000;
const R: Ordering = Ordering::Relaxed;

fn class_index(c: OutcomeClass) -> usize {
    OutcomeClass::ALL.iter().position(|x| *x == c).unwrap_or(0)
}

/// Adds to an `f64` kept as bits.
fn add_f64(cell: &AtomicU64, v: f64) {
    if v == 0.0 {
        return;
    }
    let mut cur = cell.load(R);
    loop {
        let next = (f64::from_bits(cur) + v).to_bits();
        match cell.compare_exchange_weak(cur, next, R, R) {
            Ok(_) => return,
            Err(x) => cur = x,
        }
    }
}

fn load_f64(cell: &AtomicU64) -> f64 {
    f64::from_bits(cell.load(R))
}

fn counts(cells: &[AtomicU64; CLASSES]) -> [u64; CLASSES] {
    std::array::from_fn(|i| cells.get(i).map_or(0, |c| c.load(R)))
}

/// One attempt, as the engine reports it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttemptRecord<'a> {
    pub tier: u32,
    pub tier_name: &'a str,
    pub endpoint: EndpointIdx,
    pub degraded: bool,
    pub class: OutcomeClass,
    pub latency_ms: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: f64,
    pub primary_cost: f64,
}

/// How a call ended, as the engine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Served { degraded: bool, tier: u32 },
    Suspended,
    AwaitingApproval,
    Rejected,
}

/// One ended call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallRecord<'a> {
    pub session: Option<&'a SessionId>,
    pub ending: Ending,
    pub latency_ms: Option<u64>,
    pub deadline_missed: bool,
    pub audit_seq: Option<u64>,
    /// Cost and primary cost of the served attempt (degraded calls only).
    pub cost: f64,
    pub primary_cost: f64,
    pub now: Timestamp,
}

/// `repr(C)`: the key and the counters a snapshot reads sit together, ahead of the histogram.
#[derive(Debug)]
#[repr(C)]
struct RouteCell {
    /// `tier << 32 | endpoint`; [`UNSET`] while a tenant's inline cell is unclaimed.
    key: AtomicU64,
    /// Set right after the key is claimed.
    tier_name: OnceLock<Arc<str>>,
    degraded: AtomicU64,
    input: AtomicU64,
    output: AtomicU64,
    cost: AtomicU64,
    primary_cost: AtomicU64,
    outcomes: [AtomicU64; CLASSES],
    latency: Histogram,
}

/// The key of an unclaimed inline route cell.
const UNSET: u64 = u64::MAX;

fn route_key(tier: u32, endpoint: EndpointIdx) -> u64 {
    (u64::from(tier) << 32) | u64::from(endpoint.0)
}

impl Default for RouteCell {
    fn default() -> Self {
        RouteCell {
            key: AtomicU64::new(UNSET),
            tier_name: OnceLock::new(),
            degraded: AtomicU64::new(0),
            input: AtomicU64::new(0),
            output: AtomicU64::new(0),
            cost: AtomicU64::new(0),
            primary_cost: AtomicU64::new(0),
            outcomes: Default::default(),
            latency: Histogram::default(),
        }
    }
}

impl RouteCell {
    fn new(tier: u32, tier_name: Arc<str>, endpoint: EndpointIdx) -> Self {
        let cell = RouteCell::default();
        cell.key.store(route_key(tier, endpoint), R);
        let _ = cell.tier_name.set(tier_name);
        cell
    }

    fn is(&self, a: &AttemptRecord<'_>) -> bool {
        self.key.load(R) == route_key(a.tier, a.endpoint)
    }

    /// The (tier, endpoint), `None` while unclaimed.
    fn tier_endpoint(&self) -> Option<(u32, EndpointIdx)> {
        let k = self.key.load(R);
        (k != UNSET).then_some(((k >> 32) as u32, EndpointIdx(k as u32)))
    }
}

/// `repr(C)`: the counters a snapshot reads sit together, ahead of the histogram and the
/// inline route.
#[derive(Debug, Default)]
#[repr(C)]
struct TenantCell {
    calls: AtomicU64,
    completed: AtomicU64,
    degraded: AtomicU64,
    calls_suspended: AtomicU64,
    suspensions: AtomicU64,
    resumes: AtomicU64,
    awaiting: AtomicU64,
    granted: AtomicU64,
    denied: AtomicU64,
    rejected: AtomicU64,
    deadline_misses: AtomicU64,
    /// When the tenant's current degraded stretch began (ms + 1; 0: not degraded).
    degraded_since: AtomicU64,
    degraded_ms: AtomicU64,
    would_degraded: AtomicU64,
    would_suspended: AtomicU64,
    would_approval: AtomicU64,
    would_rejected: AtomicU64,
    open_episodes: AtomicU32,
    /// Set once `more` holds a route.
    has_more: AtomicBool,
    /// The first (tier, endpoint) the tenant used, inline right after the counters: most
    /// tenants use one, and a snapshot then reads it without chasing a pointer.
    first: RouteCell,
    latency: Histogram,
    would_last: Mutex<Option<Box<WouldBeDecision>>>,
    /// The other routes, in the order first seen.
    more: ArcSwap<Vec<Arc<RouteCell>>>,
}

/// A route cell found or made for an attempt.
enum RouteRef<'a> {
    Inline(&'a RouteCell),
    Shared(Arc<RouteCell>),
}

impl TenantCell {
    fn route<'a>(&'a self, a: &AttemptRecord<'_>, names: &Interner) -> RouteRef<'a> {
        let first = &self.first;
        let key = route_key(a.tier, a.endpoint);
        match first.key.compare_exchange(UNSET, key, R, R) {
            Ok(_) => {
                let _ = first.tier_name.set(names.intern(a.tier_name));
                return RouteRef::Inline(first);
            }
            Err(k) if k == key => return RouteRef::Inline(first),
            Err(_) => {}
        }
        if self.has_more.load(R) {
            if let Some(r) = self.more.load().iter().find(|r| r.is(a)) {
                return RouteRef::Shared(Arc::clone(r));
            }
        }
        let mut out = None;
        self.more.rcu(|v| {
            if let Some(r) = v.iter().find(|r| r.is(a)) {
                out = Some(Arc::clone(r));
                return Arc::clone(v);
            }
            let cell = Arc::new(RouteCell::new(
                a.tier,
                names.intern(a.tier_name),
                a.endpoint,
            ));
            out = Some(Arc::clone(&cell));
            let mut n = Vec::with_capacity(v.len() + 1);
            n.extend(v.iter().cloned());
            n.push(cell);
            Arc::new(n)
        });
        self.has_more.store(true, R);
        // `rcu` ran the closure at least once, so `out` is set.
        RouteRef::Shared(out.unwrap_or_else(|| {
            Arc::new(RouteCell::new(
                a.tier,
                names.intern(a.tier_name),
                a.endpoint,
            ))
        }))
    }
}

/// Tier names, shared: every tenant's route at tier "primary" points at one `Arc<str>`, so a
/// snapshot's clones of it touch one hot cache line rather than one per tenant.
#[derive(Debug, Default)]
struct Interner(Mutex<HashSet<Arc<str>>>);

impl Interner {
    /// Called only when a tenant first uses a (tier, endpoint).
    fn intern(&self, name: &str) -> Arc<str> {
        let mut set = self.0.lock();
        if let Some(n) = set.get(name) {
            return Arc::clone(n);
        }
        let n: Arc<str> = Arc::from(name);
        set.insert(Arc::clone(&n));
        n
    }
}

/// An open degradation episode.
#[derive(Debug, Clone)]
struct Episode {
    started: Timestamp,
    audit_seq: Option<u64>,
    lowest: Option<u32>,
    calls: u64,
    suspended: u64,
    cost: f64,
    primary_cost: f64,
}

impl Episode {
    fn event(
        &self,
        tenant: &TenantId,
        session: Option<&SessionId>,
        end: Option<Timestamp>,
        now: Timestamp,
    ) -> DegradationEvent {
        DegradationEvent {
            tenant: tenant.clone(),
            session: session.cloned(),
            audit_seq: self.audit_seq,
            started_at: self.started,
            ended_at: end,
            duration_ms: end
                .unwrap_or(now)
                .duration_since(self.started)
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
            lowest_tier: self.lowest,
            calls_affected: self.calls,
            calls_suspended: self.suspended,
            cost_usd: self.cost,
            primary_cost_usd: self.primary_cost,
            cost_delta_usd: self.cost - self.primary_cost,
        }
    }
}

type EpisodeKey = (TenantId, Option<SessionId>);
type Shard = RwLock<HashMap<TenantId, Arc<TenantCell>>>;

/// The engine's statistics.
#[derive(Debug)]
pub(crate) struct Collector {
    enabled: AtomicBool,
    since: Timestamp,
    hasher: DefaultHashBuilder,
    shards: Box<[Shard]>,
    unknown_tenant: AtomicU64,
    episodes: Box<[Mutex<HashMap<EpisodeKey, Episode>>]>,
    closed: Mutex<VecDeque<DegradationEvent>>,
    names: Interner,
}

impl Collector {
    pub(crate) fn new(since: Timestamp, enabled: bool) -> Self {
        Collector {
            enabled: AtomicBool::new(enabled),
            since,
            hasher: DefaultHashBuilder::default(),
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            unknown_tenant: AtomicU64::new(0),
            episodes: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            closed: Mutex::new(VecDeque::new()),
            names: Interner::default(),
        }
    }

    /// Whether counting is on.
    #[inline]
    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(R)
    }

    pub(crate) fn set_enabled(&self, on: bool) {
        self.enabled.store(on, R);
    }

    fn shard_index(&self, tenant: &TenantId) -> usize {
        (self.hasher.hash_one(tenant.as_str()) as usize) % SHARDS
    }

    /// The tenant's cell, created on first sight.
    fn tenant(&self, tenant: &TenantId) -> Option<Arc<TenantCell>> {
        let shard = self.shards.get(self.shard_index(tenant))?;
        if let Some(c) = shard.read().get(tenant.as_str()) {
            return Some(Arc::clone(c));
        }
        Some(Arc::clone(
            shard
                .write()
                .entry(tenant.clone())
                .or_insert_with(|| Arc::new(TenantCell::default())),
        ))
    }

    /// Runs `f` on the tenant's cell without cloning its `Arc` when it exists.
    #[inline]
    fn with_tenant(&self, tenant: &TenantId, f: impl FnOnce(&TenantCell)) {
        if let Some(shard) = self.shards.get(self.shard_index(tenant)) {
            if let Some(c) = shard.read().get(tenant.as_str()) {
                f(c);
                return;
            }
        }
        if let Some(c) = self.tenant(tenant) {
            f(&c);
        }
    }

    /// Counts one attempt.
    pub(crate) fn attempt(&self, tenant: &TenantId, a: &AttemptRecord<'_>) {
        if !self.enabled() {
            return;
        }
        self.with_tenant(tenant, |t| {
            let found = t.route(a, &self.names);
            let r = match &found {
                RouteRef::Inline(r) => r,
                RouteRef::Shared(r) => &**r,
            };
            if a.degraded {
                r.degraded.fetch_add(1, R);
            }
            if let Some(o) = r.outcomes.get(class_index(a.class)) {
                o.fetch_add(1, R);
            }
            r.latency.record(a.latency_ms);
            if a.input_tokens > 0 {
                r.input.fetch_add(a.input_tokens, R);
            }
            if a.output_tokens > 0 {
                r.output.fetch_add(a.output_tokens, R);
            }
            add_f64(&r.cost, a.cost);
            add_f64(&r.primary_cost, a.primary_cost);
        });
    }

    /// Counts a call refused for an unknown tenant.
    pub(crate) fn unknown_tenant(&self) {
        if self.enabled() {
            self.unknown_tenant.fetch_add(1, R);
        }
    }

    /// Counts one ended call.
    pub(crate) fn call(&self, tenant: &TenantId, c: &CallRecord<'_>) {
        if !self.enabled() {
            return;
        }
        let mut episode_work = false;
        self.with_tenant(tenant, |t| {
            t.calls.fetch_add(1, R);
            if let Some(ms) = c.latency_ms {
                t.latency.record(ms);
            }
            if c.deadline_missed {
                t.deadline_misses.fetch_add(1, R);
            }
            let now = c.now.as_millis();
            let degraded_now = match c.ending {
                Ending::Served { degraded, .. } => {
                    t.completed.fetch_add(1, R);
                    if degraded {
                        t.degraded.fetch_add(1, R);
                    }
                    Some(degraded)
                }
                Ending::Suspended => {
                    t.calls_suspended.fetch_add(1, R);
                    Some(true)
                }
                Ending::AwaitingApproval => {
                    t.awaiting.fetch_add(1, R);
                    None
                }
                Ending::Rejected => {
                    t.rejected.fetch_add(1, R);
                    None
                }
            };
            match degraded_now {
                Some(true) => {
                    let _ = t.degraded_since.compare_exchange(0, now + 1, R, R);
                    episode_work = true;
                }
                Some(false) => {
                    let since = t.degraded_since.swap(0, R);
                    if since > 0 {
                        t.degraded_ms.fetch_add(now.saturating_sub(since - 1), R);
                    }
                    episode_work = t.open_episodes.load(R) > 0;
                }
                None => {}
            }
        });
        if episode_work {
            self.episode(tenant, c);
        }
    }

    fn episode(&self, tenant: &TenantId, c: &CallRecord<'_>) {
        let key = (tenant.clone(), c.session.cloned());
        let Some(shard) = self
            .episodes
            .get((self.hasher.hash_one(&key) as usize) % SHARDS)
        else {
            return;
        };
        let mut map = shard.lock();
        match c.ending {
            Ending::Served {
                degraded: false, ..
            } => {
                if let Some(ep) = map.remove(&key) {
                    drop(map);
                    self.with_tenant(tenant, |t| {
                        t.open_episodes.fetch_sub(1, R);
                    });
                    let ev = ep.event(tenant, c.session, Some(c.now), c.now);
                    let mut closed = self.closed.lock();
                    if closed.len() >= MAX_CLOSED {
                        closed.pop_front();
                    }
                    closed.push_back(ev);
                }
            }
            ending => {
                let ep = map.entry(key).or_insert_with(|| {
                    self.with_tenant(tenant, |t| {
                        t.open_episodes.fetch_add(1, R);
                    });
                    Episode {
                        started: c.now,
                        audit_seq: c.audit_seq,
                        lowest: None,
                        calls: 0,
                        suspended: 0,
                        cost: 0.0,
                        primary_cost: 0.0,
                    }
                });
                match ending {
                    Ending::Served { tier, .. } => {
                        ep.calls += 1;
                        ep.lowest = Some(ep.lowest.map_or(tier, |l| l.max(tier)));
                        ep.cost += c.cost;
                        ep.primary_cost += c.primary_cost;
                    }
                    _ => ep.suspended += 1,
                }
            }
        }
    }

    /// Counts a new suspension (once per suspended session).
    pub(crate) fn suspended(&self, tenant: &TenantId) {
        if self.enabled() {
            self.with_tenant(tenant, |t| {
                t.suspensions.fetch_add(1, R);
            });
        }
    }

    /// Counts a resume.
    pub(crate) fn resumed(&self, tenant: &TenantId) {
        if self.enabled() {
            self.with_tenant(tenant, |t| {
                t.resumes.fetch_add(1, R);
            });
        }
    }

    /// Counts an approval answered.
    pub(crate) fn approval(&self, tenant: &TenantId, granted: bool) {
        if self.enabled() {
            self.with_tenant(tenant, |t| {
                if granted {
                    t.granted.fetch_add(1, R);
                } else {
                    t.denied.fetch_add(1, R);
                }
            });
        }
    }

    /// Counts what the policy would have done (`observe_only`), when it differs from the
    /// primary.
    pub(crate) fn would_be(
        &self,
        tenant: &TenantId,
        decision: &Decision,
        catalog: &Catalog,
        now: Timestamp,
    ) {
        if !self.enabled() {
            return;
        }
        let (name, tier, endpoint) = match decision {
            Decision::Route(r) if !r.degraded => return,
            Decision::Route(r) => ("route", Some(r.tier), Some(r.endpoint)),
            Decision::AwaitApproval {
                proposed_tier,
                proposed_endpoint,
                ..
            } => (
                "await_approval",
                Some(*proposed_tier),
                Some(*proposed_endpoint),
            ),
            Decision::Suspend { .. } => ("suspend", None, None),
            Decision::Reject { .. } => ("reject", None, None),
        };
        self.with_tenant(tenant, |t| {
            match decision {
                Decision::Route(_) => &t.would_degraded,
                Decision::AwaitApproval { .. } => &t.would_approval,
                Decision::Suspend { .. } => &t.would_suspended,
                Decision::Reject { .. } => &t.would_rejected,
            }
            .fetch_add(1, R);
            *t.would_last.lock() = Some(Box::new(WouldBeDecision {
                at: now,
                decision: name.to_string(),
                tier,
                endpoint: endpoint
                    .and_then(|e| catalog.try_endpoint(e))
                    .map(|e| e.id.clone()),
                reason: decision.reason().to_string(),
            }));
        });
    }

    /// Takes a snapshot. `endpoints` come from the evaluator (health, transitions, signals);
    /// their `attempts` are summed here.
    pub(crate) fn snapshot(
        &self,
        now: Timestamp,
        mode: EngineMode,
        catalog: &Catalog,
        mut endpoints: Vec<EndpointStats>,
    ) -> StatsSnapshot {
        // Shard by shard: copy the shard's tenant list under its read lock (never held while
        // the stats are read, so calls and new tenants are never kept waiting), then read those
        // tenants while their cells are still in cache. Not sorted: comparing 100,000 scattered
        // tenant ids costs more than the rest of the snapshot (cache misses);
        // `StatsSnapshot::sort_by_tenant` does it on demand.
        let total: usize = self.shards.iter().map(|s| s.read().len()).sum();
        let mut tenants: Vec<TenantStats> = Vec::with_capacity(total);
        // Every tenant's routes go to one array; each tenant's slice of it is set at the end.
        let mut routes: Vec<RouteStats> = Vec::with_capacity(total + total / 8);
        let mut spans: Vec<(usize, usize)> = Vec::with_capacity(total);
        let mut per_endpoint = vec![0u64; catalog.len()];
        let mut cells: Vec<(TenantId, Arc<TenantCell>)> = Vec::new();
        for shard in &*self.shards {
            cells.clear();
            {
                let s = shard.read();
                cells.extend(s.iter().map(|(k, v)| (k.clone(), Arc::clone(v))));
            }
            for (id, t) in cells.drain(..) {
                let start = routes.len();
                tenants.push(tenant_stats(
                    id,
                    &t,
                    catalog,
                    now,
                    &mut per_endpoint,
                    &mut routes,
                ));
                spans.push((start, routes.len() - start));
            }
        }
        let all = Arc::new(routes);
        for (t, (start, len)) in tenants.iter_mut().zip(spans) {
            t.routes = Routes::shared(&all, start, len);
        }
        for (e, n) in endpoints.iter_mut().zip(&per_endpoint) {
            e.attempts = *n;
        }
        let mut events: Vec<DegradationEvent> = self.closed.lock().iter().cloned().collect();
        for shard in &*self.episodes {
            let m = shard.lock();
            events.extend(
                m.iter()
                    .map(|((t, s), ep)| ep.event(t, s.as_ref(), None, now)),
            );
        }
        events.sort_by(|a, b| {
            (a.started_at, &a.tenant, &a.session).cmp(&(b.started_at, &b.tenant, &b.session))
        });
        StatsSnapshot {
            taken_at: now,
            since: self.since,
            mode,
            unknown_tenant_calls: self.unknown_tenant.load(R),
            tenants,
            endpoints,
            degradation_events: events,
        }
    }
}

fn route_stats(
    r: &RouteCell,
    catalog: &Catalog,
    per_endpoint: &mut [u64],
    outcome_sum: &mut [u64; CLASSES],
) -> RouteStats {
    let oc = counts(&r.outcomes);
    for (s, o) in outcome_sum.iter_mut().zip(oc) {
        *s += o;
    }
    let (tier, endpoint) = r.tier_endpoint().unwrap_or((0, EndpointIdx(u32::MAX)));
    // The attempts are the sum of the outcome counts (one count per attempt): consistent with
    // them by construction, whatever a concurrent attempt has added so far.
    let attempts: u64 = oc.iter().sum();
    if let Some(n) = per_endpoint.get_mut(endpoint.0 as usize) {
        *n += attempts;
    }
    let rc = load_f64(&r.cost);
    let rp = load_f64(&r.primary_cost);
    RouteStats {
        tier,
        // Set right after the key: an attempt recorded in between is all that can miss it.
        tier_name: r.tier_name.get().map_or_else(|| Arc::from("?"), Arc::clone),
        endpoint: catalog
            .try_endpoint(endpoint)
            .map_or_else(|| crate::id::EndpointId::new("?"), |e| e.id.clone()),
        attempts,
        degraded: r.degraded.load(R),
        outcomes: Outcomes::from_counts(oc),
        latency: r.latency.percentiles(),
        input_tokens: r.input.load(R),
        output_tokens: r.output.load(R),
        cost_usd: rc,
        primary_cost_usd: rp,
        saving_usd: rp - rc,
    }
}

/// One tenant's stats; its routes are appended to `routes` (the caller sets
/// [`TenantStats::routes`]).
fn tenant_stats(
    id: TenantId,
    t: &TenantCell,
    catalog: &Catalog,
    now: Timestamp,
    per_endpoint: &mut [u64],
    routes: &mut Vec<RouteStats>,
) -> TenantStats {
    let mut outcome_sum = [0u64; CLASSES];
    let first = routes.len();
    if t.first.tier_endpoint().is_some() {
        routes.push(route_stats(
            &t.first,
            catalog,
            per_endpoint,
            &mut outcome_sum,
        ));
    }
    if t.has_more.load(R) {
        for r in t.more.load().iter() {
            routes.push(route_stats(r, catalog, per_endpoint, &mut outcome_sum));
        }
    }
    let (mut input, mut output, mut cost, mut primary) = (0u64, 0u64, 0.0f64, 0.0f64);
    for r in routes.get(first..).unwrap_or_default() {
        input += r.input_tokens;
        output += r.output_tokens;
        cost += r.cost_usd;
        primary += r.primary_cost_usd;
    }
    let since = t.degraded_since.load(R);
    let live = if since > 0 {
        now.as_millis().saturating_sub(since - 1)
    } else {
        0
    };
    let suspensions = t.suspensions.load(R);
    let resumes = t.resumes.load(R);
    let would = [
        t.would_degraded.load(R),
        t.would_suspended.load(R),
        t.would_approval.load(R),
        t.would_rejected.load(R),
    ];
    TenantStats {
        tenant: id,
        calls: t.calls.load(R),
        completed: t.completed.load(R),
        degraded: t.degraded.load(R),
        calls_suspended: t.calls_suspended.load(R),
        suspensions,
        resumes,
        suspended_sessions: suspensions.saturating_sub(resumes),
        awaiting_approval: t.awaiting.load(R),
        approvals_granted: t.granted.load(R),
        approvals_denied: t.denied.load(R),
        rejected: t.rejected.load(R),
        deadline_misses: t.deadline_misses.load(R),
        outcomes: Outcomes::from_counts(outcome_sum),
        latency: t.latency.percentiles(),
        time_degraded_ms: t.degraded_ms.load(R) + live,
        input_tokens: input,
        output_tokens: output,
        cost_usd: cost,
        primary_cost_usd: primary,
        saving_usd: primary - cost,
        would_be: WouldBe {
            degraded: would[0],
            suspended: would[1],
            awaiting_approval: would[2],
            rejected: would[3],
            // The lock only for tenants with a would-be decision (a counter is bumped just
            // before `last` is set).
            last: if would.iter().any(|n| *n > 0) {
                t.would_last.lock().clone()
            } else {
                None
            },
        },
        routes: Routes::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Endpoint;

    fn catalog() -> Catalog {
        let ep = |id: &str| -> Endpoint {
            serde_json::from_value(serde_json::json!({
                "id": id, "provider": "p", "model": id, "region": "eu-west-1",
                "capabilities": {"context_window": 1000, "max_output_tokens": 100},
                "pricing": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}
            }))
            .unwrap()
        };
        Catalog::new([ep("big"), ep("small")])
    }

    fn attempt(tier: u32, class: OutcomeClass) -> AttemptRecord<'static> {
        AttemptRecord {
            tier,
            tier_name: if tier == 0 { "primary" } else { "fallback" },
            endpoint: EndpointIdx(tier),
            degraded: tier > 0,
            class,
            latency_ms: 7,
            input_tokens: 10,
            output_tokens: 2,
            cost: 0.5,
            primary_cost: 1.0,
        }
    }

    /// One call: a failed attempt at the primary every third call, then the answer.
    fn one_call(c: &Collector, tenant: &TenantId, i: u64) {
        if i % 3 == 0 {
            c.attempt(tenant, &attempt(0, OutcomeClass::RateLimited));
        }
        let tier = u32::from(i % 3 == 0);
        c.attempt(tenant, &attempt(tier, OutcomeClass::Ok));
        c.call(
            tenant,
            &CallRecord {
                session: None,
                ending: Ending::Served {
                    degraded: tier > 0,
                    tier,
                },
                latency_ms: Some(7),
                deadline_missed: false,
                audit_seq: None,
                cost: 0.0,
                primary_cost: 0.0,
                now: Timestamp::from_millis(1_000 + i),
            },
        );
    }

    fn check_parts(s: &StatsSnapshot) {
        let mut per_endpoint = [0u64; 2];
        for t in &s.tenants {
            let routes: u64 = t.routes.iter().map(|r| r.attempts).sum();
            assert_eq!(t.outcomes.total(), routes, "{}", t.tenant);
            let input: u64 = t.routes.iter().map(|r| r.input_tokens).sum();
            assert_eq!(t.input_tokens, input);
            let cost: f64 = t.routes.iter().map(|r| r.cost_usd).sum();
            assert_eq!(t.cost_usd, cost);
            for r in t.routes.iter() {
                assert_eq!(r.outcomes.total(), r.attempts);
                per_endpoint[usize::from(r.endpoint.as_str() == "small")] += r.attempts;
            }
        }
        assert_eq!(s.endpoints[0].attempts, per_endpoint[0]);
        assert_eq!(s.endpoints[1].attempts, per_endpoint[1]);
    }

    fn endpoint_stats(c: &Catalog) -> Vec<EndpointStats> {
        c.endpoints()
            .iter()
            .map(|e| EndpointStats {
                endpoint: e.id.clone(),
                state: "closed".into(),
                breaker_transitions: 0,
                attempts: 0,
                window_failures: 0,
                failure_rate: None,
                p95_ms: None,
                queue_depth: None,
                status_page: None,
                requests_remaining: None,
                tokens_remaining: None,
                not_before: None,
            })
            .collect()
    }

    #[test]
    fn snapshots_taken_while_calls_run_have_totals_equal_to_the_sum_of_their_parts() {
        const TENANTS: u64 = 200;
        const CALLS: u64 = 30;
        let c = Collector::new(Timestamp::from_millis(0), true);
        let cat = catalog();
        let ids: Vec<TenantId> = (0..TENANTS)
            .map(|i| TenantId::new(format!("t{i}")))
            .collect();
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for half in 0..2u64 {
                let (c, ids) = (&c, &ids);
                scope.spawn(move || {
                    for i in 0..CALLS {
                        for t in ids.iter().skip(half as usize).step_by(2) {
                            one_call(c, t, i);
                        }
                    }
                });
            }
            let (c, cat, done) = (&c, &cat, &done);
            scope.spawn(move || {
                let mut last_calls = 0;
                while !done.load(R) {
                    let s = c.snapshot(
                        Timestamp::from_millis(5_000),
                        EngineMode::PerTenant,
                        cat,
                        endpoint_stats(cat),
                    );
                    check_parts(&s);
                    let calls: u64 = s.tenants.iter().map(|t| t.calls).sum();
                    assert!(calls >= last_calls, "counts never go back");
                    last_calls = calls;
                }
            });
            // Let the writers finish, then stop the reader.
            while c
                .shards
                .iter()
                .map(|s| s.read().values().map(|t| t.calls.load(R)).sum::<u64>())
                .sum::<u64>()
                < TENANTS * CALLS
            {
                std::thread::yield_now();
            }
            done.store(true, R);
        });
        let s = c.snapshot(
            Timestamp::from_millis(5_000),
            EngineMode::PerTenant,
            &cat,
            endpoint_stats(&cat),
        );
        check_parts(&s);
        assert_eq!(s.tenants.len() as u64, TENANTS);
        // Each tenant: 30 calls, 10 of them after a 429 at the primary, served by the fallback.
        for t in &s.tenants {
            assert_eq!((t.calls, t.completed, t.degraded), (CALLS, CALLS, 10));
            assert_eq!(t.outcomes.get("rate_limited"), Some(10));
            assert_eq!(t.outcomes.get("ok"), Some(CALLS));
            assert_eq!(t.routes.len(), 2);
            // The first call's first attempt was at the primary.
            assert_eq!(&*t.routes[0].tier_name, "primary");
            assert_eq!(&*t.routes[1].tier_name, "fallback");
            assert!(Arc::ptr_eq(
                &t.routes[0].tier_name,
                &s.tenants[0].routes[0].tier_name
            ));
        }
        assert_eq!(s.endpoints[0].attempts, TENANTS * 30);
        assert_eq!(s.endpoints[1].attempts, TENANTS * 10);
    }
}
