//! The engine's counters: sharded by tenant, atomics inside, no lock on the common path.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use hashbrown::{DefaultHashBuilder, HashMap, HashSet, HashTable};
use parking_lot::{Mutex, RwLock};

use super::histogram::{Histogram, Percentiles};
use super::{
    DegradationEvent, EndpointStats, Outcomes, RouteStats, Routes, RoutesRepr, StatsSnapshot,
    TenantStats, WouldBe, WouldBeDecision,
};
use crate::catalog::{Catalog, EndpointIdx};
use crate::clock::Timestamp;
use crate::engine::EngineMode;
use crate::id::{EndpointId, SessionId, TenantId};
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
    /// The tenant, set when the cell is claimed (before a snapshot can see it).
    key: OnceLock<TenantId>,
    /// The tenant id snapshots hand out: a copy of `key` made by the first snapshot that
    /// reads the cell. Those copies are allocated one after the other, in the order the
    /// snapshot reads the cells, so the reference counts every later snapshot adds (and drops)
    /// lie in one dense run of memory read in address order, rather than one cache miss per
    /// tenant at wherever the caller's id was allocated (which, as an atomic add, cannot
    /// overlap with the next one).
    id: OnceLock<TenantId>,
    // No `calls` counter: every call ends exactly one way, so the calls are the sum of
    // `completed`, `calls_suspended`, `awaiting` and `rejected` (one atomic add fewer per call,
    // and consistent with them by construction; see `TenantCell::calls`).
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
    /// The calls counted, read from the four ways a call ends (each read once): `(calls,
    /// completed, calls_suspended, awaiting, rejected)`.
    fn calls(&self) -> (u64, u64, u64, u64, u64) {
        let completed = self.completed.load(R);
        let suspended = self.calls_suspended.load(R);
        let awaiting = self.awaiting.load(R);
        let rejected = self.rejected.load(R);
        (
            completed + suspended + awaiting + rejected,
            completed,
            suspended,
            awaiting,
            rejected,
        )
    }

    fn route<'a>(&'a self, a: &AttemptRecord<'_>, names: &Interner) -> RouteRef<'a> {
        let first = &self.first;
        let key = route_key(a.tier, a.endpoint);
        // A plain load first: the inline route is nearly always claimed already, and a failing
        // compare-exchange is still a locked instruction.
        let k = first.key.load(R);
        if k == key {
            return RouteRef::Inline(first);
        }
        if k == UNSET {
            match first.key.compare_exchange(UNSET, key, R, R) {
                Ok(_) => {
                    let _ = first.tier_name.set(names.intern(a.tier_name));
                    return RouteRef::Inline(first);
                }
                Err(k) if k == key => return RouteRef::Inline(first),
                Err(_) => {}
            }
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

/// Cells in a shard's first chunk; each next chunk holds twice as many, up to [`MAX_CHUNK`].
/// A cell is about 1.2 KB and a chunk's cells are made (and their pages touched) at once, so
/// the cap bounds the unused cells to 128 per shard (about 10 MB over 64 shards at worst).
const FIRST_CHUNK: usize = 8;
const MAX_CHUNK: usize = 128;

/// One shard's tenants: their cells sit in chunks (an arena), in the order the tenants were
/// first seen, so a snapshot reads them in address order rather than one scattered allocation
/// per tenant. Cells are only ever added.
#[derive(Debug, Default)]
struct ShardData {
    /// A tenant's (chunk, cell) position, by the tenant's hash: the one hash a look-up
    /// computes also picks the shard (see [`Collector::hash`]).
    index: HashTable<(TenantId, u32, u32)>,
    chunks: Vec<Arc<[TenantCell]>>,
    /// Cells claimed in the last chunk.
    last_len: usize,
}

impl ShardData {
    fn cell(&self, (chunk, at): (u32, u32)) -> Option<&TenantCell> {
        self.chunks.get(chunk as usize)?.get(at as usize)
    }

    /// A tenant's position, by its hash.
    fn find(&self, hash: u64, tenant: &str) -> Option<(u32, u32)> {
        self.index
            .find(hash, |(t, _, _)| t.as_str() == tenant)
            .map(|&(_, chunk, at)| (chunk, at))
    }

    /// The size of the next chunk.
    fn next_chunk(&self) -> usize {
        self.chunks
            .last()
            .map_or(FIRST_CHUNK, |c| (c.len() * 2).min(MAX_CHUNK))
    }

    /// Claims a free cell for `tenant`, if the last chunk has one.
    fn claim(
        &mut self,
        hash: u64,
        tenant: &TenantId,
        hasher: &DefaultHashBuilder,
    ) -> Option<(u32, u32)> {
        let chunk = self.chunks.len().checked_sub(1)?;
        let cell = self.chunks.last()?.get(self.last_len)?;
        let _ = cell.key.set(tenant.clone());
        let pos = (
            u32::try_from(chunk).ok()?,
            u32::try_from(self.last_len).ok()?,
        );
        self.last_len += 1;
        self.index
            .insert_unique(hash, (tenant.clone(), pos.0, pos.1), |(t, _, _)| {
                hasher.hash_one(t.as_str())
            });
        Some(pos)
    }

    /// The tenants, as the chunks' cells in use: cloned under the read lock (a few `Arc`s
    /// per shard), read after it is released.
    fn used(&self) -> (Vec<Arc<[TenantCell]>>, usize) {
        (self.chunks.clone(), self.last_len)
    }

    fn len(&self) -> usize {
        self.index.len()
    }
}

type Shard = RwLock<ShardData>;

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
            shards: (0..SHARDS)
                .map(|_| RwLock::new(ShardData::default()))
                .collect(),
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

    /// A tenant's hash: its bits 32 to 37 pick the shard, and the shard's table uses the same
    /// hash (its low bits pick a bucket and its top seven bits tag it, so within a shard the
    /// shard's bits are never the only ones that differ).
    fn hash(&self, tenant: &str) -> u64 {
        self.hasher.hash_one(tenant)
    }

    fn shard(&self, hash: u64) -> Option<&Shard> {
        self.shards.get(((hash >> 32) as usize) % SHARDS)
    }

    /// The tenant's cell, created on first sight: its chunk and place in it.
    fn tenant(&self, hash: u64, tenant: &TenantId) -> Option<(Arc<[TenantCell]>, usize)> {
        let shard = self.shard(hash)?;
        loop {
            let wanted = {
                let mut s = shard.write();
                let found = match s.find(hash, tenant.as_str()) {
                    Some(pos) => Some(pos),
                    None => s.claim(hash, tenant, &self.hasher),
                };
                if let Some((chunk, at)) = found {
                    let c = s.chunks.get(chunk as usize)?;
                    return Some((Arc::clone(c), at as usize));
                }
                (s.chunks.len(), s.next_chunk())
            };
            // The last chunk is full: make the next one without holding the lock (calls of
            // the shard's other tenants go on meanwhile), then add it unless another thread
            // has.
            let chunk: Arc<[TenantCell]> = (0..wanted.1).map(|_| TenantCell::default()).collect();
            let mut s = shard.write();
            if s.chunks.len() == wanted.0 {
                s.chunks.push(chunk);
                s.last_len = 0;
            }
        }
    }

    /// Runs `f` on the tenant's cell (under the shard's read lock when it exists).
    #[inline]
    fn with_tenant(&self, tenant: &TenantId, f: impl FnOnce(&TenantCell)) {
        let hash = self.hash(tenant.as_str());
        if let Some(shard) = self.shard(hash) {
            let s = shard.read();
            if let Some(c) = s.find(hash, tenant.as_str()).and_then(|pos| s.cell(pos)) {
                f(c);
                return;
            }
        }
        if let Some((chunk, at)) = self.tenant(hash, tenant) {
            if let Some(c) = chunk.get(at) {
                f(c);
            }
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
                    if t.degraded_since.load(R) == 0 {
                        let _ = t.degraded_since.compare_exchange(0, now + 1, R, R);
                    }
                    episode_work = true;
                }
                Some(false) => {
                    // Read before swapping: a tenant served at its top tier is rarely in a
                    // degraded stretch, and the load spares a locked instruction per call.
                    if t.degraded_since.load(R) > 0 {
                        let since = t.degraded_since.swap(0, R);
                        if since > 0 {
                            t.degraded_ms.fetch_add(now.saturating_sub(since - 1), R);
                        }
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
    #[cfg(test)]
    pub(crate) fn snapshot(
        &self,
        now: Timestamp,
        mode: EngineMode,
        catalog: &Catalog,
        endpoints: Vec<EndpointStats>,
    ) -> StatsSnapshot {
        let mut out = StatsSnapshot::default();
        self.snapshot_into(now, mode, catalog, endpoints, &mut out);
        out
    }

    /// Takes a snapshot into `out`, reusing its buffers (its tenants' and routes' arrays keep
    /// their capacity, so a caller taking snapshots periodically with the same `out` does
    /// not fault in tens of megabytes of fresh pages each time).
    pub(crate) fn snapshot_into(
        &self,
        now: Timestamp,
        mode: EngineMode,
        catalog: &Catalog,
        mut endpoints: Vec<EndpointStats>,
        out: &mut StatsSnapshot,
    ) {
        // Entries are overwritten in place (see `fill_tenant`); the array of routes of tenants
        // with several is made anew (the previous one is shared by the entries it is replacing).
        let mut routes = Vec::new();
        let mut filled = 0;
        // Shard by shard: clone the shard's chunks of cells under its read lock (a few `Arc`s;
        // never held while the stats are read, so calls and new tenants are never kept
        // waiting), then read the cells in address order. Not sorted: comparing 100,000
        // tenant ids costs more than the rest of the snapshot;
        // `StatsSnapshot::sort_by_tenant` does it on demand.
        let total: usize = self.shards.iter().map(|s| s.read().len()).sum();
        let tenants = &mut out.tenants;
        tenants.reserve(total.saturating_sub(tenants.len()));
        let mut per_endpoint = vec![0u64; catalog.len()];
        let all = Arc::new(OnceLock::new());
        for shard in &*self.shards {
            let (chunks, last_len) = shard.read().used();
            let n = chunks.len();
            for (i, chunk) in chunks.iter().enumerate() {
                let used = if i + 1 == n { last_len } else { chunk.len() };
                for t in chunk.iter().take(used) {
                    let Some(key) = t.key.get() else { continue };
                    let id = t.id.get_or_init(|| TenantId::new(key.as_str()));
                    if filled == tenants.len() {
                        tenants.push(blank_tenant(id.clone()));
                    }
                    if let Some(slot) = tenants.get_mut(filled) {
                        fill_tenant(
                            slot,
                            id,
                            t,
                            catalog,
                            now,
                            &mut per_endpoint,
                            &mut routes,
                            &all,
                        );
                        filled += 1;
                    }
                }
            }
        }
        tenants.truncate(filled);
        let _ = all.set(routes);
        for (e, n) in endpoints.iter_mut().zip(&per_endpoint) {
            e.attempts = *n;
        }
        let events = &mut out.degradation_events;
        events.clear();
        events.extend(self.closed.lock().iter().cloned());
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
        out.taken_at = now;
        out.since = self.since;
        out.mode = mode;
        out.unknown_tenant_calls = self.unknown_tenant.load(R);
        out.endpoints = endpoints;
    }
}

/// A route's stats, its names taken from the cell and the catalog.
fn route_stats(
    r: &RouteCell,
    catalog: &Catalog,
    per_endpoint: &mut [u64],
    outcome_sum: &mut [u64; CLASSES],
) -> RouteStats {
    let (tier_name, endpoint) = route_names(r, catalog);
    let mut out = RouteStats {
        tier: 0,
        tier_name,
        endpoint,
        attempts: 0,
        degraded: 0,
        outcomes: Outcomes::default(),
        latency: Percentiles::default(),
        input_tokens: 0,
        output_tokens: 0,
        cost_usd: 0.0,
        primary_cost_usd: 0.0,
        saving_usd: 0.0,
    };
    fill_route(&mut out, r, catalog, per_endpoint, outcome_sum);
    out
}

fn route_names(r: &RouteCell, catalog: &Catalog) -> (Arc<str>, EndpointId) {
    let endpoint = r.tier_endpoint().map_or(EndpointIdx(u32::MAX), |(_, e)| e);
    (
        // Set right after the key: an attempt recorded in between is all that can miss it.
        r.tier_name.get().map_or_else(|| Arc::from("?"), Arc::clone),
        catalog
            .try_endpoint(endpoint)
            .map_or_else(|| EndpointId::new("?"), |e| e.id.clone()),
    )
}

/// Writes a route's stats into `out`, in place: its names are replaced only when they are not
/// already the very same shared strings, so a snapshot taken again into the same
/// `StatsSnapshot` touches no reference count for an unchanged route.
fn fill_route(
    out: &mut RouteStats,
    r: &RouteCell,
    catalog: &Catalog,
    per_endpoint: &mut [u64],
    outcome_sum: &mut [u64; CLASSES],
) {
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
    let same_name = r
        .tier_name
        .get()
        .is_some_and(|n| Arc::ptr_eq(n, &out.tier_name));
    let same_endpoint = catalog
        .try_endpoint(endpoint)
        .is_some_and(|e| e.id.same(&out.endpoint));
    if !(same_name && same_endpoint) {
        (out.tier_name, out.endpoint) = route_names(r, catalog);
    }
    let rc = load_f64(&r.cost);
    let rp = load_f64(&r.primary_cost);
    out.tier = tier;
    out.attempts = attempts;
    out.degraded = r.degraded.load(R);
    out.outcomes = Outcomes::from_counts(oc);
    out.latency = r.latency.percentiles();
    out.input_tokens = r.input.load(R);
    out.output_tokens = r.output.load(R);
    out.cost_usd = rc;
    out.primary_cost_usd = rp;
    out.saving_usd = rp - rc;
}

/// An entry for `id`, to be filled by [`fill_tenant`].
fn blank_tenant(id: TenantId) -> TenantStats {
    TenantStats {
        tenant: id,
        calls: 0,
        completed: 0,
        degraded: 0,
        calls_suspended: 0,
        suspensions: 0,
        resumes: 0,
        suspended_sessions: 0,
        awaiting_approval: 0,
        approvals_granted: 0,
        approvals_denied: 0,
        rejected: 0,
        deadline_misses: 0,
        outcomes: Outcomes::default(),
        latency: Percentiles::default(),
        time_degraded_ms: 0,
        input_tokens: 0,
        output_tokens: 0,
        cost_usd: 0.0,
        primary_cost_usd: 0.0,
        saving_usd: 0.0,
        would_be: WouldBe::default(),
        routes: Routes::default(),
    }
}

/// Writes one tenant's stats into `out`, in place (the tenant id and an only route's names
/// are kept when they are already the same shared strings). A single route is kept inline;
/// several are appended to `routes`, the array `all` will hold once complete.
#[allow(clippy::too_many_arguments)]
fn fill_tenant(
    out: &mut TenantStats,
    id: &TenantId,
    t: &TenantCell,
    catalog: &Catalog,
    now: Timestamp,
    per_endpoint: &mut [u64],
    routes: &mut Vec<RouteStats>,
    all: &Arc<OnceLock<Vec<RouteStats>>>,
) {
    if !out.tenant.same(id) {
        out.tenant = id.clone();
    }
    let mut outcome_sum = [0u64; CLASSES];
    let has_first = t.first.tier_endpoint().is_some();
    if has_first && !t.has_more.load(R) {
        // The common case, one route: kept inline in the tenant's entry, updated in place when
        // the entry already holds one.
        match &mut out.routes {
            Routes(RoutesRepr::One(r)) => {
                fill_route(r, &t.first, catalog, per_endpoint, &mut outcome_sum);
            }
            other => {
                *other = Routes::one(route_stats(
                    &t.first,
                    catalog,
                    per_endpoint,
                    &mut outcome_sum,
                ));
            }
        }
    } else {
        let start = routes.len();
        if has_first {
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
        out.routes = match routes.len() - start {
            0 => Routes::default(),
            n => Routes::pending(all, start, n),
        };
    }
    let (mut input, mut output, mut cost, mut primary) = (0u64, 0u64, 0.0f64, 0.0f64);
    let mine: &[RouteStats] = match &out.routes.0 {
        RoutesRepr::None => &[],
        RoutesRepr::One(r) => std::slice::from_ref(r),
        RoutesRepr::Shared { start, len, .. } => {
            let (start, len) = (*start as usize, *len as usize);
            routes
                .get(start..start.saturating_add(len))
                .unwrap_or_default()
        }
    };
    for r in mine {
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
    let (calls, completed, calls_suspended, awaiting, rejected) = t.calls();
    out.calls = calls;
    out.completed = completed;
    out.degraded = t.degraded.load(R);
    out.calls_suspended = calls_suspended;
    out.suspensions = suspensions;
    out.resumes = resumes;
    out.suspended_sessions = suspensions.saturating_sub(resumes);
    out.awaiting_approval = awaiting;
    out.approvals_granted = t.granted.load(R);
    out.approvals_denied = t.denied.load(R);
    out.rejected = rejected;
    out.deadline_misses = t.deadline_misses.load(R);
    out.outcomes = Outcomes::from_counts(outcome_sum);
    out.latency = t.latency.percentiles();
    out.time_degraded_ms = t.degraded_ms.load(R) + live;
    out.input_tokens = input;
    out.output_tokens = output;
    out.cost_usd = cost;
    out.primary_cost_usd = primary;
    out.saving_usd = primary - cost;
    let w = &mut out.would_be;
    [w.degraded, w.suspended, w.awaiting_approval, w.rejected] = would;
    // The lock only for tenants with a would-be decision (a counter is bumped just before
    // `last` is set).
    w.last = if would.iter().any(|n| *n > 0) {
        t.would_last.lock().clone()
    } else {
        None
    };
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
    fn tenants_across_many_chunks_each_appear_once_and_a_reused_snapshot_matches() {
        // About 156 tenants per shard: chunks of 8, 16, 32, 64 and 128 cells.
        const TENANTS: u64 = 10_000;
        let c = Collector::new(Timestamp::from_millis(0), true);
        let cat = catalog();
        for i in 0..TENANTS {
            let t = TenantId::new(format!("tenant-{i}"));
            for k in 0..=(i % 3) {
                one_call(&c, &t, k);
            }
        }
        let at = Timestamp::from_millis(5_000);
        let s = c.snapshot(at, EngineMode::PerTenant, &cat, endpoint_stats(&cat));
        check_parts(&s);
        assert_eq!(s.tenants.len() as u64, TENANTS);
        let ids: HashSet<&str> = s.tenants.iter().map(|t| t.tenant.as_str()).collect();
        assert_eq!(ids.len() as u64, TENANTS);
        for t in &s.tenants {
            let i: u64 = t.tenant.as_str()["tenant-".len()..].parse().unwrap();
            assert_eq!(t.calls, i % 3 + 1);
        }
        // Taken again into itself (in place) after more calls: equal to a fresh one.
        let mut again = s.clone();
        one_call(&c, &TenantId::new("tenant-7"), 3);
        one_call(&c, &TenantId::new("new-tenant"), 1);
        c.snapshot_into(
            at,
            EngineMode::PerTenant,
            &cat,
            endpoint_stats(&cat),
            &mut again,
        );
        let fresh = c.snapshot(at, EngineMode::PerTenant, &cat, endpoint_stats(&cat));
        assert_eq!(again, fresh);
        check_parts(&again);
        assert_eq!(again.tenants.len() as u64, TENANTS + 1);
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
                .map(|s| {
                    let s = s.read();
                    s.index
                        .iter()
                        .filter_map(|&(_, chunk, at)| s.cell((chunk, at)))
                        .map(|t| t.calls().0)
                        .sum::<u64>()
                })
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
