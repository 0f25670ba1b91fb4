//! The tier sessionless traffic was last served on, per (tenant, task), so a gateway's
//! stateless calls audit degradation *transitions* — the first call served below the top tier,
//! a later move, the return to the top — and not every call.

use parking_lot::Mutex;

use crate::id::{TaskKind, TenantId};
use crate::router::ApprovalTicket;

/// hashbrown with its default (foldhash, randomly seeded) hasher.
type Map<K, V> = hashbrown::HashMap<K, V>;

#[derive(Debug, Clone, Copy)]
struct Entry {
    tier: u32,
    /// The audit record of the transition to `tier`; `None` while it is being written.
    seq: Option<u64>,
    /// A granted approval held while the traffic stays on `tier` (`approval_lifetime:
    /// while_on_tier`).
    grant: Option<ApprovalTicket>,
}

/// What a served sessionless call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Served on the tier already in force; the record of the transition to it, if any.
    Same(Option<u64>),
    /// This call moved the (tenant, task) from `from`: it must write the transition record and
    /// then [`SessionlessTiers::recorded`] (or [`SessionlessTiers::revert`] on failure).
    Moved {
        /// The tier in force before.
        from: u32,
        /// The record of the transition to `from`, if any.
        prev: Option<u64>,
        /// A grant held on `from`, now spent (the traffic left the tier).
        grant: Option<ApprovalTicket>,
    },
}

/// Sessionless tiers per (tenant, task), held by one engine.
#[derive(Debug, Default)]
pub(crate) struct SessionlessTiers {
    map: Mutex<Map<TenantId, Map<TaskKind, Entry>>>,
}

impl SessionlessTiers {
    /// Claims the transition to `tier` atomically: of concurrent calls that move the same
    /// (tenant, task) to the same tier, exactly one gets `Moved`.
    pub(crate) fn claim(&self, tenant: &TenantId, task: &TaskKind, tier: u32, top: u32) -> Claim {
        let mut map = self.map.lock();
        if let Some(e) = map.get_mut(tenant).and_then(|t| t.get_mut(task)) {
            if e.tier == tier {
                return Claim::Same(e.seq);
            }
            let moved = Claim::Moved {
                from: e.tier,
                prev: e.seq,
                grant: e.grant,
            };
            *e = Entry {
                tier,
                seq: None,
                grant: None,
            };
            return moved;
        }
        if tier == top {
            return Claim::Same(None);
        }
        map.entry(tenant.clone()).or_default().insert(
            task.clone(),
            Entry {
                tier,
                seq: None,
                grant: None,
            },
        );
        Claim::Moved {
            from: top,
            prev: None,
            grant: None,
        }
    }

    /// The transition to `tier` was recorded as `seq`.
    pub(crate) fn recorded(&self, tenant: &TenantId, task: &TaskKind, tier: u32, seq: u64) {
        let mut map = self.map.lock();
        if let Some(e) = map.get_mut(tenant).and_then(|t| t.get_mut(task)) {
            if e.tier == tier && e.seq.is_none() {
                e.seq = Some(seq);
            }
        }
    }

    /// The transition to `tier` could not be recorded: `from` is in force again (unless another
    /// call moved it since).
    pub(crate) fn revert(
        &self,
        tenant: &TenantId,
        task: &TaskKind,
        tier: u32,
        from: u32,
        prev: Option<u64>,
    ) {
        let mut map = self.map.lock();
        if let Some(e) = map.get_mut(tenant).and_then(|t| t.get_mut(task)) {
            if e.tier == tier && e.seq.is_none() {
                *e = Entry {
                    tier: from,
                    seq: prev,
                    grant: None,
                };
            }
        }
    }

    /// Holds `ticket` while the traffic stays on `tier`.
    pub(crate) fn hold_grant(
        &self,
        tenant: &TenantId,
        task: &TaskKind,
        tier: u32,
        ticket: ApprovalTicket,
    ) {
        let mut map = self.map.lock();
        if let Some(e) = map.get_mut(tenant).and_then(|t| t.get_mut(task)) {
            if e.tier == tier {
                e.grant = Some(ticket);
            }
        }
    }

    /// Forgets every entry (a reload may renumber the ladder).
    pub(crate) fn clear(&self) {
        self.map.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transitions_are_claimed() {
        let s = SessionlessTiers::default();
        let (t, k) = (TenantId::new("t"), TaskKind::new("k"));
        assert_eq!(s.claim(&t, &k, 0, 0), Claim::Same(None));
        assert_eq!(
            s.claim(&t, &k, 2, 0),
            Claim::Moved {
                from: 0,
                prev: None,
                grant: None
            }
        );
        assert_eq!(s.claim(&t, &k, 2, 0), Claim::Same(None));
        s.recorded(&t, &k, 2, 7);
        assert_eq!(s.claim(&t, &k, 2, 0), Claim::Same(Some(7)));
        assert_eq!(
            s.claim(&t, &k, 0, 0),
            Claim::Moved {
                from: 2,
                prev: Some(7),
                grant: None
            }
        );
        s.revert(&t, &k, 0, 2, Some(7));
        assert_eq!(s.claim(&t, &k, 2, 0), Claim::Same(Some(7)));
    }
}
