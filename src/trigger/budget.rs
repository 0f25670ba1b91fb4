//! Spend per tenant over a rolling window, and per session and per workflow in total.
//!
//! State lives in a sharded table keyed by tenant: [`SHARDS`] cache-line-aligned mutexes, each
//! over a SwissTable (`hashbrown::HashTable`) of tenants. The tenant id is hashed once (foldhash,
//! randomly seeded per evaluator); the hash picks the shard and finds the entry, and entries are
//! compared by `&str`, so a lookup never allocates or clones an id. A tenant's sessions and
//! workflows live inside its entry, so a session id only has to be unique within its tenant and
//! one lock covers every charge of an observation.
//!
//! The tenant window is a ring of [`SPEND_SLICES`] + 1 slices: a dollar spent at `t` counts
//! until at least `t + window` and at most `t + window + window / SPEND_SLICES` (a guardrail
//! errs on the side of counting).

use std::hash::BuildHasher;
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
struct SpendRing {
    window: Duration,
    clock: RingClock,
    slots: [f64; RING],
    total: f64,
}

impl SpendRing {
    fn new(window: Duration) -> Self {
        let ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        SpendRing {
            window,
            clock: RingClock::new((ms / SPEND_SLICES as u64).max(1), RING),
            slots: [0.0; RING],
            total: 0.0,
        }
    }

    fn advance(&mut self, now: u64) {
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
        if let Some(s) = self.slots.get_mut(self.clock.head()) {
            *s += usd;
        }
        self.total += usd;
    }

    fn spent(&mut self, now: u64) -> f64 {
        self.advance(now);
        self.total
    }
}

#[derive(Debug)]
struct Total<K> {
    hash: u64,
    id: K,
    usd: f64,
    last_seen: u64,
}

#[derive(Debug)]
struct TenantSpend {
    hash: u64,
    id: TenantId,
    last_seen: u64,
    window: Option<SpendRing>,
    sessions: HashTable<Total<SessionId>>,
    workflows: HashTable<Total<WorkflowId>>,
}

/// One shard, alone on its cache lines so two threads on neighbouring shards do not contend.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(Mutex<HashTable<TenantSpend>>);

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

/// The per-tenant budget state of an evaluator.
#[derive(Debug)]
pub(crate) struct BudgetStore {
    hasher: DefaultHashBuilder,
    shards: Box<[Shard]>,
}

impl Default for BudgetStore {
    fn default() -> Self {
        BudgetStore {
            hasher: DefaultHashBuilder::default(),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }
}

fn find_total<'t, K: AsRef<str>>(
    table: &'t mut HashTable<Total<K>>,
    hash: u64,
    id: &str,
) -> Option<&'t mut Total<K>> {
    table.find_mut(hash, |t| t.id.as_ref() == id)
}

fn charge_total<K: AsRef<str> + Clone>(
    table: &mut HashTable<Total<K>>,
    hash: u64,
    id: &K,
    usd: f64,
    now: u64,
) {
    if let Some(t) = find_total(table, hash, id.as_ref()) {
        t.usd += usd;
        t.last_seen = now;
    } else {
        table.insert_unique(
            hash,
            Total {
                hash,
                id: id.clone(),
                usd,
                last_seen: now,
            },
            |t| t.hash,
        );
    }
}

/// Gives memory back once a table is mostly empty (not on every eviction, so a table that
/// shrinks and grows again does not reallocate each time).
fn shrink_if_sparse<T>(table: &mut HashTable<T>, hash: impl Fn(&T) -> u64) {
    if table.capacity() > 4 * table.len() + 16 {
        table.shrink_to(table.len(), hash);
    }
}

impl BudgetStore {
    fn hash(&self, s: &str) -> u64 {
        self.hasher.hash_one(s)
    }

    fn shard(&self, hash: u64) -> Option<&Shard> {
        // The top bits pick the shard; the table uses the low bits and the top 7 as its tag,
        // which stay well mixed within a shard.
        self.shards.get((hash >> 58) as usize % SHARDS)
    }

    /// Charges `usd` at `now` to whatever of the tenant's budgets are configured.
    pub(crate) fn charge(
        &self,
        tenant: &TenantId,
        session: Option<&SessionId>,
        workflow: Option<&WorkflowId>,
        budget: &Budget,
        usd: f64,
        now: u64,
    ) {
        let th = self.hash(tenant.as_str());
        let Some(shard) = self.shard(th) else { return };
        let mut table = shard.0.lock();
        let entry = match table.find_mut(th, |t| t.id.as_str() == tenant.as_str()) {
            Some(e) => e,
            None => table
                .insert_unique(
                    th,
                    TenantSpend {
                        hash: th,
                        id: tenant.clone(),
                        last_seen: now,
                        window: None,
                        sessions: HashTable::new(),
                        workflows: HashTable::new(),
                    },
                    |t| t.hash,
                )
                .into_mut(),
        };
        entry.last_seen = now;
        if let Some(wb) = &budget.tenant {
            let ring = entry
                .window
                .get_or_insert_with(|| SpendRing::new(wb.window));
            if ring.window != wb.window {
                // The policy changed the window: start a ring of the new shape that keeps
                // counting what still counted (conservatively, for a whole new window).
                let carried = ring.spent(now);
                *ring = SpendRing::new(wb.window);
                ring.charge(carried, now);
            }
            ring.charge(usd, now);
        }
        if let (Some(_), Some(s)) = (budget.session_usd, session) {
            let h = self.hash(s.as_str());
            charge_total(&mut entry.sessions, h, s, usd, now);
        }
        if let (Some(_), Some(w)) = (budget.workflow_usd, workflow) {
            let h = self.hash(w.as_str());
            charge_total(&mut entry.workflows, h, w, usd, now);
        }
    }

    /// What the tenant, session and workflow have spent as of `now`.
    pub(crate) fn spend(
        &self,
        tenant: &str,
        session: Option<&str>,
        workflow: Option<&str>,
        now: u64,
    ) -> Spend {
        let th = self.hash(tenant);
        let Some(shard) = self.shard(th) else {
            return Spend::default();
        };
        let mut table = shard.0.lock();
        let Some(entry) = table.find_mut(th, |t| t.id.as_str() == tenant) else {
            return Spend::default();
        };
        let tenant_window_usd = entry.window.as_mut().map_or(0.0, |r| r.spent(now));
        let session_usd = session
            .and_then(|s| {
                let h = self.hash(s);
                find_total(&mut entry.sessions, h, s).map(|t| t.usd)
            })
            .unwrap_or(0.0);
        let workflow_usd = workflow
            .and_then(|w| {
                let h = self.hash(w);
                find_total(&mut entry.workflows, h, w).map(|t| t.usd)
            })
            .unwrap_or(0.0);
        Spend {
            tenant_window_usd,
            session_usd,
            workflow_usd,
        }
    }

    /// Sets a session's and/or workflow's total spend (for resuming from a checkpoint).
    pub(crate) fn restore(
        &self,
        tenant: &TenantId,
        session: Option<(&SessionId, f64)>,
        workflow: Option<(&WorkflowId, f64)>,
        now: u64,
    ) {
        let th = self.hash(tenant.as_str());
        let Some(shard) = self.shard(th) else { return };
        let mut table = shard.0.lock();
        let entry = match table.find_mut(th, |t| t.id.as_str() == tenant.as_str()) {
            Some(e) => e,
            None => table
                .insert_unique(
                    th,
                    TenantSpend {
                        hash: th,
                        id: tenant.clone(),
                        last_seen: now,
                        window: None,
                        sessions: HashTable::new(),
                        workflows: HashTable::new(),
                    },
                    |t| t.hash,
                )
                .into_mut(),
        };
        entry.last_seen = entry.last_seen.max(now);
        if let Some((s, usd)) = session {
            let h = self.hash(s.as_str());
            if let Some(t) = find_total(&mut entry.sessions, h, s.as_str()) {
                t.usd = usd;
                t.last_seen = now;
            } else {
                charge_total(&mut entry.sessions, h, s, usd, now);
            }
        }
        if let Some((w, usd)) = workflow {
            let h = self.hash(w.as_str());
            if let Some(t) = find_total(&mut entry.workflows, h, w.as_str()) {
                t.usd = usd;
                t.last_seen = now;
            } else {
                charge_total(&mut entry.workflows, h, w, usd, now);
            }
        }
    }

    /// Drops sessions and workflows not charged for `idle_for`, and tenants not charged for
    /// `idle_for` once none of their spend still counts in a window.
    pub(crate) fn evict_idle(&self, now: u64, idle_for: u64) -> Evicted {
        let mut out = Evicted::default();
        let idle = |last: u64| now.saturating_sub(last) >= idle_for;
        for shard in &*self.shards {
            let mut table = shard.0.lock();
            table.retain(|t| {
                let before = t.sessions.len();
                t.sessions.retain(|s| !idle(s.last_seen));
                out.sessions += before - t.sessions.len();
                let before = t.workflows.len();
                t.workflows.retain(|w| !idle(w.last_seen));
                out.workflows += before - t.workflows.len();
                let window_clear = t.window.as_mut().is_none_or(|r| r.spent(now) <= 0.0);
                let keep = !(idle(t.last_seen)
                    && window_clear
                    && t.sessions.is_empty()
                    && t.workflows.is_empty());
                if !keep {
                    out.tenants += 1;
                } else {
                    shrink_if_sparse(&mut t.sessions, |s| s.hash);
                    shrink_if_sparse(&mut t.workflows, |w| w.hash);
                }
                keep
            });
            shrink_if_sparse(&mut table, |t| t.hash);
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

    #[test]
    fn window_spend_slides_and_sessions_are_per_tenant() {
        let store = BudgetStore::default();
        let (a, b) = (TenantId::new("a"), TenantId::new("b"));
        let s = SessionId::new("s-1");
        store.charge(&a, Some(&s), None, &hourly(10.0), 2.5, 0);
        store.charge(&b, Some(&s), None, &hourly(10.0), 1.0, 1_000);
        let sa = store.spend("a", Some("s-1"), None, 2_000);
        assert_eq!((sa.tenant_window_usd, sa.session_usd), (2.5, 2.5));
        assert_eq!(store.spend("b", Some("s-1"), None, 2_000).session_usd, 1.0);
        // one hour plus one slice later the first charge has left the window
        let later = 3_600_000 + 225_000;
        assert_eq!(store.spend("a", None, None, later).tenant_window_usd, 0.0);
        assert_eq!(store.spend("a", Some("s-1"), None, later).session_usd, 2.5);
    }

    #[test]
    fn eviction_keeps_tenants_whose_spend_still_counts() {
        let store = BudgetStore::default();
        let a = TenantId::new("a");
        let s = SessionId::new("s");
        store.charge(&a, Some(&s), None, &hourly(10.0), 1.0, 0);
        let e = store.evict_idle(60_000, 60_000);
        assert_eq!((e.tenants, e.sessions), (0, 1));
        assert_eq!(store.tenants(), 1);
        let e = store.evict_idle(4_000_000, 60_000);
        assert_eq!(e.tenants, 1);
        assert_eq!(store.tenants(), 0);
    }
}
