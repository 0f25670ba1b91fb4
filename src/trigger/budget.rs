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
//! The tenant window is a ring of [`SPEND_SLICES`] + 1 slices: a dollar spent at `t` counts
//! until at least `t + window` and at most `t + window + window / SPEND_SLICES` (a guardrail
//! errs on the side of counting).

use std::hash::BuildHasher;
use std::sync::Arc;
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

#[derive(Debug)]
#[repr(C)]
struct SpendRing {
    clock: RingClock,
    total: f64,
    /// Spend of the head slot not yet written into `slots`: a charge touches only the first
    /// cache line of the ring; the slot is written when the head moves on.
    head: f64,
    window: Duration,
    slots: [f64; RING],
}

impl SpendRing {
    fn new(window: Duration) -> Self {
        let ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        SpendRing {
            clock: RingClock::new((ms / SPEND_SLICES as u64).max(1), RING),
            total: 0.0,
            head: 0.0,
            window,
            slots: [0.0; RING],
        }
    }

    fn advance(&mut self, now: u64) {
        if !self.clock.moves_at(now) {
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

/// One tenant's budget state. `repr(C)`, hot fields first: a charge through a handle touches
/// the lock, the id and the ring's head within the allocation's first cache lines.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct TenantCell {
    id: TenantId,
    hash: u64,
    state: Mutex<TenantState>,
}

#[derive(Debug)]
#[repr(C)]
struct TenantState {
    last_seen: u64,
    window: Option<SpendRing>,
    evicted: bool,
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
}

impl BudgetHandle {
    /// The tenant this handle is for.
    #[must_use]
    pub fn tenant(&self) -> &TenantId {
        &self.tenant.id
    }

    /// The session this handle is for, if any.
    #[must_use]
    pub fn session(&self) -> Option<&SessionId> {
        self.session.as_ref().map(|s| &s.id)
    }

    /// The workflow this handle is for, if any.
    #[must_use]
    pub fn workflow(&self) -> Option<&WorkflowId> {
        self.workflow.as_ref().map(|w| &w.id)
    }
}

/// String equality that skips reading the bytes when both are the same shared string (the
/// common case: ids are `Arc<str>` clones), saving a cache miss per lookup.
fn same(stored: &str, wanted: &str) -> bool {
    std::ptr::eq(stored, wanted) || stored == wanted
}

/// Whether an optional handle part matches an optional id.
fn matches<K: AsRef<str>>(cell: Option<&Arc<TotalCell<K>>>, id: Option<&K>) -> bool {
    match (cell, id) {
        (Some(c), Some(id)) => same(c.id.as_ref(), id.as_ref()),
        (_, None) => true,
        (None, Some(_)) => false,
    }
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
}

impl Default for BudgetStore {
    fn default() -> Self {
        BudgetStore {
            hasher: DefaultHashBuilder::default(),
            shards: Box::new(std::array::from_fn(|_| Shard::default())),
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

fn new_tenant(hash: u64, id: &TenantId, now: u64) -> Arc<TenantCell> {
    Arc::new(TenantCell {
        hash,
        id: id.clone(),
        state: Mutex::new(TenantState {
            evicted: false,
            last_seen: now,
            window: None,
            sessions: HashTable::new(),
            workflows: HashTable::new(),
        }),
    })
}

fn charge_ring(state: &mut TenantState, budget: &Budget, usd: f64, now: u64) {
    if let Some(wb) = &budget.tenant {
        let ring = state
            .window
            .get_or_insert_with(|| SpendRing::new(wb.window));
        if ring.window != wb.window {
            // The policy changed the window: start a ring of the new shape that keeps counting
            // what still counted (conservatively, for a whole new window).
            let carried = ring.spent(now);
            *ring = SpendRing::new(wb.window);
            ring.charge(carried, now);
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
        let entry = table.insert_unique(th, new_tenant(th, tenant, now), |c| c.hash);
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
                let c = new_tenant(th, tenant, now);
                table.insert_unique(th, c.clone(), |c| c.hash);
                c
            }
        };
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
                tenant: cell,
                session,
                workflow,
            }
        }
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
        if !same(h.tenant.id.as_str(), scope.tenant.as_str())
            || !matches(h.session.as_ref(), wants_session)
            || !matches(h.workflow.as_ref(), wants_workflow)
        {
            return false;
        }
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
        true
    }

    /// Charges `usd` at `now` to whatever of the tenant's budgets are configured.
    pub(crate) fn charge(&self, scope: &Scope<'_>, budget: &Budget, usd: f64, now: u64) {
        if self.charge_by_handle(scope, budget, usd, now) {
            return;
        }
        let _ = self.with_tenant(scope.tenant, true, now, |cell| {
            let mut st = cell.state.lock();
            st.last_seen = now;
            charge_ring(&mut st, budget, usd, now);
            if let (Some(_), Some(s)) = (budget.session_usd, scope.session) {
                let h = self.hash(s.as_str());
                let c = find_or_insert(&mut st.sessions, h, s, now);
                let mut t = c.state.lock();
                t.usd += usd;
                t.last_seen = now;
            }
            if let (Some(_), Some(w)) = (budget.workflow_usd, scope.workflow) {
                let h = self.hash(w.as_str());
                let c = find_or_insert(&mut st.workflows, h, w, now);
                let mut t = c.state.lock();
                t.usd += usd;
                t.last_seen = now;
            }
        });
    }

    fn spend_by_handle(&self, scope: &Scope<'_>, now: u64) -> Option<Spend> {
        let h = scope.handle?;
        if !same(h.tenant.id.as_str(), scope.tenant.as_str())
            || !matches(h.session.as_ref(), scope.session)
            || !matches(h.workflow.as_ref(), scope.workflow)
        {
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
        Some(Spend {
            tenant_window_usd: st.window.as_mut().map_or(0.0, |r| r.spent(now)),
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
            let tenant_window_usd = st.window.as_mut().map_or(0.0, |r| r.spent(now));
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
                st.sessions.retain(|c| {
                    let mut t = c.state.lock();
                    let gone = idle(t.last_seen);
                    t.evicted |= gone;
                    out.sessions += usize::from(gone);
                    !gone
                });
                st.workflows.retain(|c| {
                    let mut t = c.state.lock();
                    let gone = idle(t.last_seen);
                    t.evicted |= gone;
                    out.workflows += usize::from(gone);
                    !gone
                });
                let window_clear = st.window.as_mut().is_none_or(|r| r.spent(now) <= 0.0);
                let gone = idle(st.last_seen)
                    && window_clear
                    && st.sessions.is_empty()
                    && st.workflows.is_empty();
                if gone {
                    st.evicted = true;
                    out.tenants += 1;
                } else {
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
}
