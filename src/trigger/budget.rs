//! Spend per tenant over a rolling window, and per session and per workflow in total.
//!
//! Each tenant's state is a cell of its own (`Arc` + mutex), indexed by a sharded table: [`SHARDS`]
//! cache-line-aligned mutexes, each over a SwissTable (`hashbrown::HashTable`) of cell pointers.
//! The tenant id is hashed once (foldhash, randomly seeded per evaluator); the hash picks the
//! shard and finds the cell, and ids are compared as `&str` (by pointer first: ids are shared
//! `Arc<str>`s), so a lookup never allocates or clones an id. A tenant's sessions and workflows
//! are cells indexed inside its cell, so a session id only has to be unique within its tenant.
//!
//! The lookup by id costs a few cache misses with 100,000 tenants in random order. A caller that
//! keeps a [`BudgetHandle`] per session (from
//! [`TriggerEvaluator::budget_handle`](super::TriggerEvaluator::budget_handle)) skips it: the
//! handle points at the cells directly. A handle whose cells were evicted (idle) is detected and
//! the lookup by id is used instead, so a stale handle never loses or splits spend.
//!
//! A budget check through a handle usually reads none of those cells: every tenant also has a
//! 16-byte entry in a dense *headroom index* (`Headroom`), holding upper bounds of its window
//! spend and of its sessions' and workflows' largest totals, refreshed under the tenant's lock on
//! every charge. 100,000 tenants take 1.6 MB there, which stays in cache where their cells
//! (hundreds of bytes each, scattered) do not. When every bound is under its limit the check
//! answers "under budget" from the index alone; otherwise (or for a stale handle) it reads the
//! cells and is exact. The bounds only err upwards: window spend only leaves the window between
//! charges, and session and workflow totals only grow (a restore or an eviction can lower them,
//! and the index is then refreshed, or merely left high, which costs a slower exact check).
//!
//! The tenant window is a ring of [`SPEND_SLICES`] + 1 slices: a dollar spent at `t` counts
//! until at least `t + window` and at most `t + window + window / SPEND_SLICES` (a guardrail
//! errs on the side of counting).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hashbrown::{DefaultHashBuilder, HashTable};
use parking_lot::Mutex;

use super::ring::RingClock;
use crate::id::{SessionId, TenantId, WorkflowId};
use crate::policy::Budget;

/// Number of shards (a power of two).
pub(crate) const SHARDS: usize = 64;
/// Slices a tenant's budget window is divided into.
pub(crate) const SPEND_SLICES: usize = 16;
const RING: usize = SPEND_SLICES + 1;

/// A tenant's rolling-window spend. `repr(C)`, and what a charge reads and writes first (the
/// total, the head slot's spend, the window and the clock's width and head epoch), so that with
/// the lock before it a charge touches one cache line of its tenant's cell.
#[derive(Debug)]
#[repr(C)]
struct SpendRing {
    total: f64,
    /// Spend of the head slot not yet written into `slots`: a charge touches only the first
    /// cache line of the ring; the slot is written when the head moves on.
    head: f64,
    /// The window in milliseconds (at least 1); 0 for a tenant no windowed budget was charged
    /// to yet (the ring is then empty and never advanced).
    window_ms: u64,
    clock: RingClock,
    slots: [f64; RING],
}

/// A window in whole milliseconds, at least 1 (0 means "no window").
fn window_ms(window: Duration) -> u64 {
    u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl SpendRing {
    /// No window yet.
    const NONE: SpendRing = SpendRing {
        total: 0.0,
        head: 0.0,
        window_ms: 0,
        clock: RingClock::new(1, RING),
        slots: [0.0; RING],
    };

    fn new(window: Duration) -> Self {
        let ms = window_ms(window);
        SpendRing {
            clock: RingClock::new((ms / SPEND_SLICES as u64).max(1), RING),
            total: 0.0,
            head: 0.0,
            window_ms: ms,
            slots: [0.0; RING],
        }
    }

    /// Whether a windowed budget was ever charged to it.
    fn is_set(&self) -> bool {
        self.window_ms != 0
    }

    fn advance(&mut self, now: u64) {
        if !self.is_set() || !self.clock.moves_at(now) {
            return;
        }
        if let Some(s) = self.slots.get_mut(self.clock.head()) {
            *s += self.head;
        }
        self.head = 0.0;
        let slots = &mut self.slots;
        let mut expired = false;
        self.clock.advance(now, |slot| {
            if let Some(s) = slots.get_mut(slot) {
                expired |= *s != 0.0;
                *s = 0.0;
            }
        });
        if expired {
            // Re-sum rather than subtract, so rounding never accumulates.
            self.total = self.slots.iter().sum();
        }
    }

    fn charge(&mut self, usd: f64, now: u64) {
        self.advance(now);
        self.head += usd;
        self.total += usd;
    }

    fn spent(&mut self, now: u64) -> f64 {
        self.advance(now);
        self.total
    }
}

/// Total spend of one session or workflow.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct TotalCell<K> {
    id: K,
    hash: u64,
    state: Mutex<Total>,
}

#[derive(Debug, Default)]
struct Total {
    evicted: bool,
    usd: f64,
    last_seen: u64,
}

/// One tenant's budget state. `repr(C)`, cache-line aligned, the state first: a charge through
/// a handle reads and writes the lock, `last_seen`, `evicted` and the first fields of the ring
/// (see [`SpendRing`]), all in the cell's first cache line, which an observation starts loading
/// before its first lock (`prefetch`). With many tenants, that line is the charge's one cold
/// access to the cell (a layout test checks the offsets).
#[derive(Debug)]
#[repr(C, align(64))]
pub(crate) struct TenantCell {
    state: Mutex<TenantState>,
    /// Its entry in the headroom index ([`NO_SLOT`] when the index was full).
    slot: u32,
    /// The entry's generation when it was given to this tenant.
    epoch: u32,
    hash: u64,
    id: TenantId,
}

#[derive(Debug)]
#[repr(C)]
struct TenantState {
    last_seen: u64,
    evicted: bool,
    /// The rolling window ([`SpendRing::NONE`] until a windowed budget is charged).
    window: SpendRing,
    sessions: HashTable<Arc<TotalCell<SessionId>>>,
    workflows: HashTable<Arc<TotalCell<WorkflowId>>>,
}

/// One shard, alone on its cache lines so two threads on neighbouring shards do not contend.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(Mutex<HashTable<Arc<TenantCell>>>);

/// What a tenant, one of its sessions and one of its workflows have spent.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Spend {
    /// The tenant's spend over its budget window (0 when it has no windowed budget).
    pub tenant_window_usd: f64,
    /// The session's total spend (0 when unknown).
    pub session_usd: f64,
    /// The workflow's total spend (0 when unknown).
    pub workflow_usd: f64,
}

/// How many entries [`TriggerEvaluator::evict_idle`](super::TriggerEvaluator::evict_idle)
/// removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Evicted {
    /// Tenant entries removed (only once no spend of theirs still counts in a window).
    pub tenants: usize,
    /// Session entries removed.
    pub sessions: usize,
    /// Workflow entries removed.
    pub workflows: usize,
}

/// A caller-held shortcut to the budget state of one tenant and, optionally, one of its
/// sessions and workflows: attach it to observations
/// ([`Observation::budget_handle`](super::Observation::budget_handle)) and budget checks
/// ([`BudgetScope::with_handle`](super::BudgetScope::with_handle)) to skip the lookup by id on
/// the hot path. Cloning it is cheap (reference counts, no allocation).
///
/// A handle is only ever a shortcut: when it does not match the ids it is used with, or its
/// state was evicted as idle, the evaluator falls back to the lookup by id.
#[derive(Debug, Clone)]
pub struct BudgetHandle {
    tenant: Arc<TenantCell>,
    session: Option<Arc<TotalCell<SessionId>>>,
    workflow: Option<Arc<TotalCell<WorkflowId>>>,
    /// The ids it was asked for (shared strings, kept alive here): a caller that names the
    /// scope with these ([`BudgetHandle::tenant`], [`BudgetHandle::session`]) is recognised by
    /// the address of their text, reading neither the text nor any cell.
    ids: (TenantId, Option<SessionId>, Option<WorkflowId>),
    /// The tenant's headroom entry and its generation.
    slot: u32,
    epoch: u32,
}

impl BudgetHandle {
    /// The tenant this handle is for.
    #[must_use]
    pub fn tenant(&self) -> &TenantId {
        &self.ids.0
    }

    /// The session this handle is for, if any.
    #[must_use]
    pub fn session(&self) -> Option<&SessionId> {
        self.ids.1.as_ref().filter(|_| self.session.is_some())
    }

    /// The workflow this handle is for, if any.
    #[must_use]
    pub fn workflow(&self) -> Option<&WorkflowId> {
        self.ids.2.as_ref().filter(|_| self.workflow.is_some())
    }

    /// Whether the handle covers these ids (a part not asked for always matches; a part asked
    /// for that the handle lacks never does). Ids are compared by address first, so a caller
    /// naming the scope with the handle's own ids reads no string.
    fn is_for(
        &self,
        tenant: &TenantId,
        session: Option<&SessionId>,
        workflow: Option<&WorkflowId>,
    ) -> bool {
        fn part(held: Option<&str>, id: Option<&str>) -> bool {
            match (held, id) {
                (Some(h), Some(id)) => same(h, id),
                (_, None) => true,
                (None, Some(_)) => false,
            }
        }
        same(self.ids.0.as_str(), tenant.as_str())
            && part(
                self.session().map(SessionId::as_str),
                session.map(SessionId::as_str),
            )
            && part(
                self.workflow().map(WorkflowId::as_str),
                workflow.map(WorkflowId::as_str),
            )
    }
}

/// The address of a string's bytes (for identity, never dereferenced).
fn addr(s: &str) -> usize {
    s.as_ptr().addr()
}

/// Whether an optional handle part is, by address, the optional id (a part not asked for
/// always matches; a part asked for that the handle lacks never does). Reads neither text.
fn same_addr(held: Option<&str>, id: Option<&str>) -> bool {
    match (held, id) {
        (Some(h), Some(id)) => addr(h) == addr(id),
        (_, None) => true,
        (None, Some(_)) => false,
    }
}

/// No headroom entry.
const NO_SLOT: u32 = u32::MAX;
/// Entries per headroom chunk (64 KiB).
const CHUNK: usize = 4096;
/// Chunks at most: 16.7 million tenants have an entry; any more are checked through their cells.
const CHUNKS: usize = 4096;

/// An `f64` amount as an `f32` that is not below it (the index keeps upper bounds).
fn bound(usd: f64) -> u32 {
    // `as` saturates to ±inf and keeps NaN; a rounded-down value is moved up by one step.
    let f = usd as f32;
    if f64::from(f) >= usd || f.is_nan() || f == f32::INFINITY {
        return f.to_bits();
    }
    // The next `f32` up (`f32::next_up`, written out for the crate's minimum Rust version).
    let bits = f.to_bits();
    if f == 0.0 {
        1
    } else if f > 0.0 {
        bits + 1
    } else {
        bits - 1
    }
}

/// One tenant's entry in the headroom index.
#[derive(Debug)]
#[repr(C, align(16))]
struct Entry {
    /// Changes when the entry is taken from an evicted tenant (a handle of the old tenant then
    /// no longer matches).
    epoch: AtomicU32,
    /// Upper bound of the tenant's window spend (`f32` bits).
    tenant: AtomicU32,
    /// Upper bound of the largest total among the tenant's sessions.
    session: AtomicU32,
    /// Upper bound of the largest total among the tenant's workflows.
    workflow: AtomicU32,
}

impl Entry {
    fn fill(&self, usd: f32) {
        for a in [&self.tenant, &self.session, &self.workflow] {
            a.store(usd.to_bits(), Ordering::Relaxed);
        }
    }
}

/// The headroom index: a dense array of [`Entry`], in chunks allocated as tenants arrive.
#[derive(Debug)]
struct Headroom {
    chunks: Box<[OnceLock<Box<[Entry]>>]>,
    free: Mutex<FreeSlots>,
}

#[derive(Debug, Default)]
struct FreeSlots {
    next: u32,
    free: Vec<u32>,
}

impl Default for Headroom {
    fn default() -> Self {
        Headroom {
            chunks: (0..CHUNKS).map(|_| OnceLock::new()).collect(),
            free: Mutex::new(FreeSlots::default()),
        }
    }
}

impl Headroom {
    fn entry(&self, slot: u32) -> Option<&Entry> {
        let slot = slot as usize;
        self.chunks.get(slot / CHUNK)?.get()?.get(slot % CHUNK)
    }

    /// An entry for a new tenant, zeroed, with its generation; `(NO_SLOT, 0)` when full.
    fn take(&self) -> (u32, u32) {
        let mut free = self.free.lock();
        let slot = match free.free.pop() {
            Some(s) => s,
            None if (free.next as usize) < CHUNK * CHUNKS => {
                let s = free.next;
                free.next += 1;
                s
            }
            None => return (NO_SLOT, 0),
        };
        drop(free);
        let chunk = self.chunks.get(slot as usize / CHUNK).map(|c| {
            c.get_or_init(|| {
                (0..CHUNK)
                    .map(|_| Entry {
                        epoch: AtomicU32::new(0),
                        tenant: AtomicU32::new(0),
                        session: AtomicU32::new(0),
                        workflow: AtomicU32::new(0),
                    })
                    .collect()
            })
        });
        let Some(e) = chunk.and_then(|c| c.get(slot as usize % CHUNK)) else {
            return (NO_SLOT, 0);
        };
        let epoch = e.epoch.load(Ordering::Relaxed);
        // A reader that sees these zeros also sees the generation bumped when the entry was
        // released (the free list's lock orders the two), so an old handle cannot take them.
        fence(Ordering::Release);
        e.fill(0.0);
        (slot, epoch)
    }

    /// Gives an evicted tenant's entry back: bounds to infinity (so a reader racing with this
    /// falls back to the cells), then a new generation.
    fn release(&self, slot: u32) {
        let Some(e) = self.entry(slot) else { return };
        e.fill(f32::INFINITY);
        fence(Ordering::Release);
        e.epoch.fetch_add(1, Ordering::Relaxed);
        self.free.lock().free.push(slot);
    }

    /// Starts loading a tenant's entry (likely not in cache), so that miss overlaps the
    /// others of a charge instead of following them.
    fn touch(&self, slot: u32) {
        if let Some(e) = self.entry(slot) {
            std::hint::black_box(e.tenant.load(Ordering::Relaxed));
        }
    }

    /// Refreshes a tenant's bounds (under the tenant's lock, so writers never race).
    fn update(&self, slot: u32, state: &TenantState, session: Option<f64>, workflow: Option<f64>) {
        let Some(e) = self.entry(slot) else { return };
        e.tenant.store(bound(state.window.total), Ordering::Relaxed);
        let raise = |a: &AtomicU32, usd: Option<f64>| {
            if let Some(usd) = usd {
                let b = bound(usd);
                if f32::from_bits(b) > f32::from_bits(a.load(Ordering::Relaxed)) {
                    a.store(b, Ordering::Relaxed);
                }
            }
        };
        raise(&e.session, session);
        raise(&e.workflow, workflow);
    }

    /// Sets a tenant's session and workflow bounds to exactly the largest totals (after an
    /// eviction sweep has visited all of them).
    fn reset_totals(&self, slot: u32, session: f64, workflow: f64) {
        let Some(e) = self.entry(slot) else { return };
        e.session.store(bound(session), Ordering::Relaxed);
        e.workflow.store(bound(workflow), Ordering::Relaxed);
    }

    /// The bounds of `slot` if it still belongs to generation `epoch`: (tenant, session,
    /// workflow).
    fn read(&self, slot: u32, epoch: u32) -> Option<(f32, f32, f32)> {
        let e = self.entry(slot)?;
        if e.epoch.load(Ordering::Acquire) != epoch {
            return None;
        }
        let v = (
            f32::from_bits(e.tenant.load(Ordering::Relaxed)),
            f32::from_bits(e.session.load(Ordering::Relaxed)),
            f32::from_bits(e.workflow.load(Ordering::Relaxed)),
        );
        fence(Ordering::Acquire);
        (e.epoch.load(Ordering::Relaxed) == epoch).then_some(v)
    }
}

/// String equality that skips reading the bytes when both are the same shared string (the
/// common case: ids are `Arc<str>` clones), saving a cache miss per lookup.
fn same(stored: &str, wanted: &str) -> bool {
    std::ptr::eq(stored, wanted) || stored == wanted
}

/// Gives memory back once a table is mostly empty (not on every eviction, so a table that
/// shrinks and grows again does not reallocate each time).
fn shrink_if_sparse<T>(table: &mut HashTable<T>, hash: impl Fn(&T) -> u64) {
    if table.capacity() > 4 * table.len() + 16 {
        table.shrink_to(table.len(), hash);
    }
}

/// The budget state of an evaluator.
#[derive(Debug)]
pub(crate) struct BudgetStore {
    hasher: DefaultHashBuilder,
    shards: Box<[Shard; SHARDS]>,
    headroom: Headroom,
}

impl Default for BudgetStore {
    fn default() -> Self {
        BudgetStore {
            hasher: DefaultHashBuilder::default(),
            shards: Box::new(std::array::from_fn(|_| Shard::default())),
            headroom: Headroom::default(),
        }
    }
}

/// What one charge or lookup is about.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scope<'a> {
    pub(crate) tenant: &'a TenantId,
    pub(crate) session: Option<&'a SessionId>,
    pub(crate) workflow: Option<&'a WorkflowId>,
    pub(crate) handle: Option<&'a BudgetHandle>,
}

fn find_or_insert<K: AsRef<str> + Clone>(
    table: &mut HashTable<Arc<TotalCell<K>>>,
    hash: u64,
    id: &K,
    now: u64,
) -> Arc<TotalCell<K>> {
    if let Some(c) = table.find(hash, |c| c.hash == hash && same(c.id.as_ref(), id.as_ref())) {
        return c.clone();
    }
    let cell = Arc::new(TotalCell {
        hash,
        id: id.clone(),
        state: Mutex::new(Total {
            evicted: false,
            usd: 0.0,
            last_seen: now,
        }),
    });
    table.insert_unique(hash, cell.clone(), |c| c.hash);
    cell
}

fn new_tenant(headroom: &Headroom, hash: u64, id: &TenantId, now: u64) -> Arc<TenantCell> {
    let (slot, epoch) = headroom.take();
    Arc::new(TenantCell {
        hash,
        id: id.clone(),
        slot,
        epoch,
        state: Mutex::new(TenantState {
            evicted: false,
            last_seen: now,
            window: SpendRing::NONE,
            sessions: HashTable::new(),
            workflows: HashTable::new(),
        }),
    })
}

fn charge_ring(state: &mut TenantState, budget: &Budget, usd: f64, now: u64) {
    if let Some(wb) = &budget.tenant {
        let ring = &mut state.window;
        if ring.window_ms != window_ms(wb.window) {
            // The first windowed charge, or the policy changed the window: start a ring of the
            // new shape that keeps counting what still counted (conservatively, for a whole new
            // window; nothing for a new ring).
            let carried = ring.spent(now);
            *ring = SpendRing::new(wb.window);
            if carried != 0.0 {
                ring.charge(carried, now);
            }
        }
        ring.charge(usd, now);
    }
}

impl BudgetStore {
    fn hash(&self, s: &str) -> u64 {
        self.hasher.hash_one(s)
    }

    fn shard(&self, hash: u64) -> &Shard {
        // Middle bits pick the shard: the table itself uses the low bits for the position and
        // the top 7 as its tag, which must stay well mixed within a shard (with the top bits
        // picking the shard, every entry of a shard would share most of its tag). The mask keeps
        // the index in range, so this cannot panic.
        &self.shards[(hash >> 32) as usize & (SHARDS - 1)]
    }

    /// Runs `f` on the tenant's cell (created if `create`), under the shard lock.
    fn with_tenant<R>(
        &self,
        tenant: &TenantId,
        create: bool,
        now: u64,
        f: impl FnOnce(&Arc<TenantCell>) -> R,
    ) -> Option<R> {
        let th = self.hash(tenant.as_str());
        let mut table = self.shard(th).0.lock();
        let eq = |c: &Arc<TenantCell>| c.hash == th && same(c.id.as_str(), tenant.as_str());
        if let Some(c) = table.find(th, eq) {
            return Some(f(c));
        }
        if !create {
            return None;
        }
        let cell = new_tenant(&self.headroom, th, tenant, now);
        let entry = table.insert_unique(th, cell, |c| c.hash);
        Some(f(entry.get()))
    }

    /// A handle to the scope's cells, creating them if needed.
    pub(crate) fn handle(
        &self,
        tenant: &TenantId,
        session: Option<&SessionId>,
        workflow: Option<&WorkflowId>,
        now: u64,
    ) -> BudgetHandle {
        let th = self.hash(tenant.as_str());
        let mut table = self.shard(th).0.lock();
        let eq = |c: &Arc<TenantCell>| c.hash == th && same(c.id.as_str(), tenant.as_str());
        let cell = match table.find(th, eq) {
            Some(c) => c.clone(),
            None => {
                let c = new_tenant(&self.headroom, th, tenant, now);
                table.insert_unique(th, c.clone(), |c| c.hash);
                c
            }
        };
        let (session_id, workflow_id) = (session, workflow);
        {
            let mut st = cell.state.lock();
            st.last_seen = st.last_seen.max(now);
            let session = session.map(|s| {
                let h = self.hash(s.as_str());
                let c = find_or_insert(&mut st.sessions, h, s, now);
                let mut t = c.state.lock();
                t.last_seen = t.last_seen.max(now);
                drop(t);
                c
            });
            let workflow = workflow.map(|w| {
                let h = self.hash(w.as_str());
                let c = find_or_insert(&mut st.workflows, h, w, now);
                let mut t = c.state.lock();
                t.last_seen = t.last_seen.max(now);
                drop(t);
                c
            });
            drop(st);
            BudgetHandle {
                ids: (tenant.clone(), session_id.cloned(), workflow_id.cloned()),
                slot: cell.slot,
                epoch: cell.epoch,
                tenant: cell,
                session,
                workflow,
            }
        }
    }

    /// Starts loading what a charge through `h` will touch — the tenant's cell, its session's
    /// and workflow's, and its headroom entry: scattered, and on a platform with many tenants
    /// likely not in cache. Called first thing by an observation, so the misses overlap each
    /// other (and the observation's endpoint work) instead of following one another: a locked
    /// instruction waits for every earlier load, so each lock taken on a cold cell would
    /// otherwise cost one full memory round trip after the last.
    /// Only the cells `budget` will charge are touched: a session cell that a budget without a
    /// session limit never locks would be one more miss (and, with many tenants, one more
    /// page walk) for nothing.
    pub(crate) fn prefetch(&self, h: &BudgetHandle, budget: &Budget) {
        self.headroom.touch(h.slot);
        std::hint::black_box(h.tenant.state.is_locked());
        if let (Some(c), Some(_)) = (&h.session, budget.session_usd) {
            std::hint::black_box(c.state.is_locked());
        }
        if let (Some(c), Some(_)) = (&h.workflow, budget.workflow_usd) {
            std::hint::black_box(c.state.is_locked());
        }
    }

    /// Starts loading the headroom entry a check through `h` reads.
    pub(crate) fn prefetch_check(&self, h: &BudgetHandle) {
        self.headroom.touch(h.slot);
    }

    /// Charges through a handle; `false` when the handle cannot be used (mismatch, evicted, or
    /// missing a part the charge needs) and nothing was charged.
    fn charge_by_handle(&self, scope: &Scope<'_>, budget: &Budget, usd: f64, now: u64) -> bool {
        let Some(h) = scope.handle else { return false };
        let wants_session = budget
            .session_usd
            .is_some()
            .then_some(scope.session)
            .flatten();
        let wants_workflow = budget
            .workflow_usd
            .is_some()
            .then_some(scope.workflow)
            .flatten();
        if !h.is_for(scope.tenant, wants_session, wants_workflow) {
            return false;
        }
        // (The evaluator has started loading the cells: `prefetch`.)
        // Lock order as everywhere: tenant, then session, then workflow.
        let mut st = h.tenant.state.lock();
        let mut ss = wants_session
            .and(h.session.as_ref())
            .map(|c| c.state.lock());
        let mut ws = wants_workflow
            .and(h.workflow.as_ref())
            .map(|c| c.state.lock());
        if st.evicted
            || ss.as_ref().is_some_and(|s| s.evicted)
            || ws.as_ref().is_some_and(|w| w.evicted)
        {
            return false;
        }
        st.last_seen = now;
        charge_ring(&mut st, budget, usd, now);
        for t in [ss.as_deref_mut(), ws.as_deref_mut()].into_iter().flatten() {
            t.usd += usd;
            t.last_seen = now;
        }
        self.headroom.update(
            h.slot, // the cell's slot, copied into the handle
            &st,
            ss.as_ref().map(|t| t.usd),
            ws.as_ref().map(|t| t.usd),
        );
        true
    }

    /// Charges `usd` at `now` to whatever of the tenant's budgets are configured.
    pub(crate) fn charge(&self, scope: &Scope<'_>, budget: &Budget, usd: f64, now: u64) {
        if self.charge_by_handle(scope, budget, usd, now) {
            return;
        }
        let _ = self.with_tenant(scope.tenant, true, now, |cell| {
            self.headroom.touch(cell.slot);
            let mut st = cell.state.lock();
            st.last_seen = now;
            charge_ring(&mut st, budget, usd, now);
            let mut session = None;
            if let (Some(_), Some(s)) = (budget.session_usd, scope.session) {
                let h = self.hash(s.as_str());
                let c = find_or_insert(&mut st.sessions, h, s, now);
                let mut t = c.state.lock();
                t.usd += usd;
                t.last_seen = now;
                session = Some(t.usd);
            }
            let mut workflow = None;
            if let (Some(_), Some(w)) = (budget.workflow_usd, scope.workflow) {
                let h = self.hash(w.as_str());
                let c = find_or_insert(&mut st.workflows, h, w, now);
                let mut t = c.state.lock();
                t.usd += usd;
                t.last_seen = now;
                workflow = Some(t.usd);
            }
            self.headroom.update(cell.slot, &st, session, workflow);
        });
    }

    /// Whether the scope is certainly under every limit of `budget`, from the headroom index
    /// alone (reading none of the cells); `false` when it cannot tell (no usable handle, a bound
    /// at or over its limit), and the caller must check exactly.
    pub(crate) fn clear_by_handle(&self, scope: &Scope<'_>, budget: &Budget) -> bool {
        let Some(h) = scope.handle else { return false };
        if addr(h.ids.0.as_str()) != addr(scope.tenant.as_str())
            || !same_addr(
                h.session().map(SessionId::as_str),
                scope.session.map(SessionId::as_str),
            )
            || !same_addr(
                h.workflow().map(WorkflowId::as_str),
                scope.workflow.map(WorkflowId::as_str),
            )
        {
            return false;
        }
        let Some((tenant, session, workflow)) = self.headroom.read(h.slot, h.epoch) else {
            return false;
        };
        let under = |bound: f32, limit: Option<f64>| limit.is_none_or(|l| f64::from(bound) < l);
        under(tenant, budget.tenant.as_ref().map(|w| w.limit_usd))
            && (scope.session.is_none() || under(session, budget.session_usd))
            && (scope.workflow.is_none() || under(workflow, budget.workflow_usd))
    }

    fn spend_by_handle(&self, scope: &Scope<'_>, now: u64) -> Option<Spend> {
        let h = scope.handle?;
        if !h.is_for(scope.tenant, scope.session, scope.workflow) {
            return None;
        }
        let mut st = h.tenant.state.lock();
        let ss = scope
            .session
            .and(h.session.as_ref())
            .map(|c| c.state.lock());
        let ws = scope
            .workflow
            .and(h.workflow.as_ref())
            .map(|c| c.state.lock());
        if st.evicted
            || ss.as_ref().is_some_and(|s| s.evicted)
            || ws.as_ref().is_some_and(|w| w.evicted)
        {
            return None;
        }
        let tenant_window_usd = st.window.spent(now);
        // Spend that left the window lowers the tenant's bound again.
        self.headroom.update(h.slot, &st, None, None);
        Some(Spend {
            tenant_window_usd,
            session_usd: ss.map_or(0.0, |s| s.usd),
            workflow_usd: ws.map_or(0.0, |w| w.usd),
        })
    }

    /// What the tenant, session and workflow of `scope` have spent as of `now`.
    pub(crate) fn spend(&self, scope: &Scope<'_>, now: u64) -> Spend {
        if let Some(s) = self.spend_by_handle(scope, now) {
            return s;
        }
        self.with_tenant(scope.tenant, false, now, |cell| {
            let mut st = cell.state.lock();
            let tenant_window_usd = st.window.spent(now);
            self.headroom.update(cell.slot, &st, None, None);
            let session_usd = scope
                .session
                .and_then(|s| {
                    let h = self.hash(s.as_str());
                    st.sessions
                        .find(h, |c| c.hash == h && same(c.id.as_str(), s.as_str()))
                        .map(|c| c.state.lock().usd)
                })
                .unwrap_or(0.0);
            let workflow_usd = scope
                .workflow
                .and_then(|w| {
                    let h = self.hash(w.as_str());
                    st.workflows
                        .find(h, |c| c.hash == h && same(c.id.as_str(), w.as_str()))
                        .map(|c| c.state.lock().usd)
                })
                .unwrap_or(0.0);
            Spend {
                tenant_window_usd,
                session_usd,
                workflow_usd,
            }
        })
        .unwrap_or_default()
    }

    /// Sets a session's and/or workflow's total spend (for resuming from a checkpoint).
    pub(crate) fn restore(
        &self,
        tenant: &TenantId,
        session: Option<(&SessionId, f64)>,
        workflow: Option<(&WorkflowId, f64)>,
        now: u64,
    ) {
        let _ = self.with_tenant(tenant, true, now, |cell| {
            let mut st = cell.state.lock();
            st.last_seen = st.last_seen.max(now);
            if let Some((s, usd)) = session {
                let h = self.hash(s.as_str());
                let c = find_or_insert(&mut st.sessions, h, s, now);
                let mut t = c.state.lock();
                t.usd = usd;
                t.last_seen = now;
            }
            if let Some((w, usd)) = workflow {
                let h = self.hash(w.as_str());
                let c = find_or_insert(&mut st.workflows, h, w, now);
                let mut t = c.state.lock();
                t.usd = usd;
                t.last_seen = now;
            }
            // A restored total may be higher than any the index holds (a lower one leaves the
            // bound high until the next eviction sweep, which only costs an exact check).
            self.headroom.update(
                cell.slot,
                &st,
                session.map(|(_, usd)| usd),
                workflow.map(|(_, usd)| usd),
            );
        });
    }

    /// Drops sessions and workflows not charged for `idle_for`, and tenants not charged for
    /// `idle_for` once none of their spend still counts in a window. Evicted cells are marked,
    /// so handles still pointing at them fall back to the lookup by id.
    pub(crate) fn evict_idle(&self, now: u64, idle_for: u64) -> Evicted {
        let mut out = Evicted::default();
        let idle = |last: u64| now.saturating_sub(last) >= idle_for;
        for shard in &*self.shards {
            let mut table = shard.0.lock();
            table.retain(|cell| {
                let mut st = cell.state.lock();
                let st = &mut *st;
                let (mut session_max, mut workflow_max) = (0.0_f64, 0.0_f64);
                st.sessions.retain(|c| {
                    let mut t = c.state.lock();
                    let gone = idle(t.last_seen);
                    t.evicted |= gone;
                    out.sessions += usize::from(gone);
                    if !gone {
                        session_max = session_max.max(t.usd);
                    }
                    !gone
                });
                st.workflows.retain(|c| {
                    let mut t = c.state.lock();
                    let gone = idle(t.last_seen);
                    t.evicted |= gone;
                    out.workflows += usize::from(gone);
                    if !gone {
                        workflow_max = workflow_max.max(t.usd);
                    }
                    !gone
                });
                let window_clear = st.window.spent(now) <= 0.0;
                let gone = idle(st.last_seen)
                    && window_clear
                    && st.sessions.is_empty()
                    && st.workflows.is_empty();
                if gone {
                    st.evicted = true;
                    out.tenants += 1;
                    self.headroom.release(cell.slot);
                } else {
                    self.headroom.update(cell.slot, st, None, None);
                    self.headroom
                        .reset_totals(cell.slot, session_max, workflow_max);
                    shrink_if_sparse(&mut st.sessions, |c| c.hash);
                    shrink_if_sparse(&mut st.workflows, |c| c.hash);
                }
                !gone
            });
            shrink_if_sparse(&mut table, |c| c.hash);
        }
        out
    }

    /// Number of tenant entries held.
    pub(crate) fn tenants(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{BudgetAction, WindowBudget};

    /// A charge through a handle reads and writes only its tenant cell's first cache line
    /// (after a first windowed charge; the ring's slots only when the head moves on).
    #[test]
    fn a_charge_touches_one_cache_line_of_its_tenant_cell() {
        assert_eq!(std::mem::align_of::<TenantCell>(), 64);
        let store = BudgetStore::default();
        let t = TenantId::new("t");
        store.charge(&scope(&t, None), &hourly(10.0), 1.0, 0);
        let h = store.handle(&t, None, None, 0);
        let cell: &TenantCell = &h.tenant;
        let base = std::ptr::from_ref(cell).addr();
        assert_eq!(base % 64, 0, "the cell starts a cache line");
        let st = cell.state.lock();
        let end = |p: usize, size: usize| p - base + size;
        let touched = [
            end(std::ptr::from_ref(&cell.state).addr(), 1),
            end(std::ptr::from_ref(&st.last_seen).addr(), 8),
            end(std::ptr::from_ref(&st.evicted).addr(), 1),
            end(std::ptr::from_ref(&st.window.total).addr(), 8),
            end(std::ptr::from_ref(&st.window.head).addr(), 8),
            end(std::ptr::from_ref(&st.window.window_ms).addr(), 8),
            // `RingClock` is `repr(C)` with `width` and `head_epoch` first (`moves_at`).
            end(std::ptr::from_ref(&st.window.clock).addr(), 16),
        ];
        for (i, e) in touched.into_iter().enumerate() {
            assert!(e <= 64, "field {i} ends at byte {e} of the cell");
        }
        assert_eq!(st.window.total, 1.0);
    }

    fn hourly(limit: f64) -> Budget {
        Budget {
            tenant: Some(WindowBudget {
                limit_usd: limit,
                window: Duration::from_secs(3600),
            }),
            session_usd: Some(1.0),
            workflow_usd: None,
            on_exceeded: BudgetAction::Reject,
        }
    }

    fn scope<'a>(t: &'a TenantId, s: Option<&'a SessionId>) -> Scope<'a> {
        Scope {
            tenant: t,
            session: s,
            workflow: None,
            handle: None,
        }
    }

    #[test]
    fn window_spend_slides_and_sessions_are_per_tenant() {
        let store = BudgetStore::default();
        let (a, b) = (TenantId::new("a"), TenantId::new("b"));
        let s = SessionId::new("s-1");
        store.charge(&scope(&a, Some(&s)), &hourly(10.0), 2.5, 0);
        store.charge(&scope(&b, Some(&s)), &hourly(10.0), 1.0, 1_000);
        let sa = store.spend(&scope(&a, Some(&s)), 2_000);
        assert_eq!((sa.tenant_window_usd, sa.session_usd), (2.5, 2.5));
        assert_eq!(store.spend(&scope(&b, Some(&s)), 2_000).session_usd, 1.0);
        // one hour plus one slice later the first charge has left the window
        let later = 3_600_000 + 225_000;
        assert_eq!(store.spend(&scope(&a, None), later).tenant_window_usd, 0.0);
        assert_eq!(store.spend(&scope(&a, Some(&s)), later).session_usd, 2.5);
    }

    #[test]
    fn eviction_keeps_tenants_whose_spend_still_counts() {
        let store = BudgetStore::default();
        let a = TenantId::new("a");
        let s = SessionId::new("s");
        store.charge(&scope(&a, Some(&s)), &hourly(10.0), 1.0, 0);
        let e = store.evict_idle(60_000, 60_000);
        assert_eq!((e.tenants, e.sessions), (0, 1));
        assert_eq!(store.tenants(), 1);
        let e = store.evict_idle(4_000_000, 60_000);
        assert_eq!(e.tenants, 1);
        assert_eq!(store.tenants(), 0);
    }

    #[test]
    fn handles_charge_the_same_state_and_fall_back_once_evicted() {
        let store = BudgetStore::default();
        let a = TenantId::new("a");
        let s = SessionId::new("s");
        let h = store.handle(&a, Some(&s), None, 0);
        let with = Scope {
            handle: Some(&h),
            ..scope(&a, Some(&s))
        };
        store.charge(&with, &hourly(10.0), 1.0, 0);
        store.charge(&scope(&a, Some(&s)), &hourly(10.0), 1.0, 0);
        assert_eq!(store.spend(&with, 1).session_usd, 2.0);
        assert_eq!(store.spend(&scope(&a, Some(&s)), 1).tenant_window_usd, 2.0);
        // A handle used with other ids is ignored, not misapplied.
        let other = SessionId::new("other");
        let wrong = Scope {
            handle: Some(&h),
            ..scope(&a, Some(&other))
        };
        store.charge(&wrong, &hourly(10.0), 5.0, 2);
        assert_eq!(store.spend(&with, 3).session_usd, 2.0);
        assert_eq!(store.spend(&scope(&a, Some(&other)), 3).session_usd, 5.0);
        // Evicted: the old handle's charges go to the live state.
        store.evict_idle(10_000_000, 60_000);
        assert_eq!(store.tenants(), 0);
        store.charge(&with, &hourly(10.0), 0.5, 10_000_001);
        assert_eq!(
            store.spend(&scope(&a, Some(&s)), 10_000_002).session_usd,
            0.5
        );
        assert_eq!(store.tenants(), 1);
    }

    /// Whether the index may call this scope clear, checked against the exact spend.
    fn exact_clear(store: &BudgetStore, sc: &Scope<'_>, budget: &Budget, now: u64) -> bool {
        let spend = store.spend(
            &Scope {
                handle: None,
                ..*sc
            },
            now,
        );
        budget
            .tenant
            .as_ref()
            .is_none_or(|w| spend.tenant_window_usd < w.limit_usd)
            && budget.session_usd.is_none_or(|l| spend.session_usd < l)
    }

    #[test]
    fn a_scope_named_by_the_handles_own_ids_takes_the_index() {
        let store = BudgetStore::default();
        // The cells are made by a caller with its own copies of the ids...
        store.charge(
            &scope(&TenantId::new("a"), Some(&SessionId::new("s"))),
            &hourly(10.0),
            0.1,
            0,
        );
        // ...and a handle asked for with other copies of the same text keeps those.
        let (a, s) = (TenantId::new("a"), SessionId::new("s"));
        let h = store.handle(&a, Some(&s), None, 1);
        assert!(std::ptr::eq(h.tenant().as_str(), a.as_str()));
        assert!(
            h.session()
                .is_some_and(|x| std::ptr::eq(x.as_str(), s.as_str()))
        );
        let by_own_ids = Scope {
            handle: Some(&h),
            ..scope(h.tenant(), h.session())
        };
        assert!(store.clear_by_handle(&by_own_ids, &hourly(10.0)));
        assert_eq!(store.spend(&by_own_ids, 2).session_usd, 0.1);
    }

    #[test]
    fn bounds_never_round_down() {
        for usd in [
            0.0,
            1e-9,
            0.1,
            0.3,
            1.0 / 3.0,
            2.0,
            1e6 + 0.1,
            123_456.789,
            -0.1,
            1e300,
        ] {
            let b = f32::from_bits(bound(usd));
            assert!(f64::from(b) >= usd, "{usd} -> {b}");
        }
        assert!(f32::from_bits(bound(f64::NAN)).is_nan());
    }

    #[test]
    fn headroom_answers_clear_only_under_the_limits() {
        let store = BudgetStore::default();
        let a = TenantId::new("a");
        let s = SessionId::new("s");
        let h = store.handle(&a, Some(&s), None, 0);
        let with = Scope {
            handle: Some(&h),
            ..scope(&a, Some(&s))
        };
        let budget = hourly(10.0); // session limit 1.0
        assert!(store.clear_by_handle(&with, &budget));
        store.charge(&with, &budget, 0.6, 0);
        assert!(store.clear_by_handle(&with, &budget));
        // The session crosses its limit: the index can no longer say clear.
        store.charge(&with, &budget, 0.4, 1);
        assert!(!store.clear_by_handle(&with, &budget));
        // Another session of the tenant is also checked exactly (the bound is the largest).
        let s2 = SessionId::new("s2");
        let h2 = store.handle(&a, Some(&s2), None, 2);
        let with2 = Scope {
            handle: Some(&h2),
            ..scope(&a, Some(&s2))
        };
        assert!(!store.clear_by_handle(&with2, &budget));
        assert_eq!(store.spend(&with2, 2).session_usd, 0.0);
        // Without the session in scope only the tenant window counts: 1.0 of 10.0.
        let tenant_only = Scope {
            session: None,
            ..with
        };
        assert!(store.clear_by_handle(&tenant_only, &budget));
        // The tenant window crosses its limit, then its spend leaves the window: an exact
        // check refreshes the bound and the index says clear again.
        store.charge(&tenant_only, &budget, 9.5, 3);
        assert!(!store.clear_by_handle(&tenant_only, &budget));
        let later = 3_600_000 + 225_001;
        assert_eq!(store.spend(&tenant_only, later).tenant_window_usd, 0.0);
        assert!(store.clear_by_handle(&tenant_only, &budget));
        // A handle used with other ids never answers from the index.
        let other = TenantId::new("a");
        let mismatched = Scope {
            tenant: &other,
            ..tenant_only
        };
        assert!(!store.clear_by_handle(&mismatched, &budget));
    }

    #[test]
    fn an_evicted_tenants_entry_is_not_read_through_its_old_handle() {
        let store = BudgetStore::default();
        let a = TenantId::new("a");
        let h = store.handle(&a, None, None, 0);
        let with = Scope {
            handle: Some(&h),
            ..scope(&a, None)
        };
        let budget = hourly(10.0);
        assert!(store.clear_by_handle(&with, &budget));
        store.evict_idle(10_000_000, 60_000);
        assert_eq!(store.tenants(), 0);
        // The entry goes to the next new tenant, zeroed; the old handle no longer matches it.
        let b = TenantId::new("b");
        let hb = store.handle(&b, None, None, 10_000_001);
        assert_eq!((hb.slot, hb.epoch), (h.slot, h.epoch + 1));
        assert!(!store.clear_by_handle(&with, &budget));
        let with_b = Scope {
            handle: Some(&hb),
            ..scope(&b, None)
        };
        assert!(store.clear_by_handle(&with_b, &budget));
    }

    #[test]
    fn an_eviction_sweep_lowers_the_session_bound_to_the_sessions_left() {
        let store = BudgetStore::default();
        let a = TenantId::new("a");
        let (old, new) = (SessionId::new("old"), SessionId::new("new"));
        let budget = hourly(10.0);
        store.charge(&scope(&a, Some(&old)), &budget, 1.5, 0);
        let h = store.handle(&a, Some(&new), None, 100_000);
        let with = Scope {
            handle: Some(&h),
            ..scope(&a, Some(&new))
        };
        assert!(!store.clear_by_handle(&with, &budget));
        store.evict_idle(100_000, 60_000); // drops `old` only
        assert!(store.clear_by_handle(&with, &budget));
    }

    proptest::proptest! {
        /// Whatever happened before (charges, time passing, restores, evictions, other
        /// tenants arriving), the index never calls a scope clear that is at or over a limit.
        #[test]
        fn the_index_never_calls_a_scope_clear_that_is_over(
            ops in proptest::collection::vec((0u8..6, 0usize..3, 0usize..3, 0u32..400, 0u64..900_000), 1..60),
        ) {
            let store = BudgetStore::default();
            let tenants = [TenantId::new("t0"), TenantId::new("t1"), TenantId::new("t2")];
            let sessions = [SessionId::new("s0"), SessionId::new("s1"), SessionId::new("s2")];
            let budget = hourly(2.0);
            let mut now = 0u64;
            let mut handles: Vec<(usize, usize, BudgetHandle)> = Vec::new();
            for (op, t, s, cents, dt) in ops {
                now += dt;
                let usd = f64::from(cents) / 100.0;
                let (tenant, session) = (&tenants[t], &sessions[s]);
                match op {
                    0 | 1 => {
                        let h = store.handle(tenant, Some(session), None, now);
                        let sc = Scope { handle: Some(&h), ..scope(tenant, Some(session)) };
                        store.charge(&sc, &budget, usd, now);
                        handles.push((t, s, h));
                    }
                    2 => store.charge(&scope(tenant, Some(session)), &budget, usd, now),
                    3 => store.restore(tenant, Some((session, usd)), None, now),
                    4 => { store.evict_idle(now, 300_000); }
                    _ => { let _ = store.spend(&scope(tenant, Some(session)), now); }
                }
                for (t, s, h) in &handles {
                    for session in [Some(&sessions[*s]), None] {
                        let sc = Scope { handle: Some(h), ..scope(&tenants[*t], session) };
                        if store.clear_by_handle(&sc, &budget) {
                            proptest::prop_assert!(exact_clear(&store, &sc, &budget, now));
                        }
                    }
                }
            }
        }
    }
}
