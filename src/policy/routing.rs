//! The routing part of resolved views, interned: what [`TierRouter::route`] reads on every call,
//! in one shared allocation per distinct content, and [`TenantHandle`], a caller-held pointer to
//! a tenant's routing.
//!
//! Tenants created from one template resolve to views that differ only in their identity (tenant
//! id, layers, digest). The router needs none of that identity: it reads the ladder with its
//! endpoint indices, the thresholds, the budget rule, the approval rule and a few flags. A
//! [`PolicySet`](super::PolicySet) keeps one [`RoutingView`] per distinct content and one
//! [`TenantRouting`] (a tenant's default view and per-task views) per distinct combination, so
//! with 100,000 tenants over a hundred templates the router's per-tenant reads come down to the
//! tenant's entry (by id) or nothing at all (by [`TenantHandle`]): everything behind it is
//! shared and stays in cache.
//!
//! [`TierRouter::route`]: crate::router::TierRouter::route

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::model::{Exhausted, Notification, Promotion, Selection};
use super::resolved::{ApprovalRule, BudgetRule, ResolvedPolicy};
use crate::catalog::EndpointIdx;
use crate::id::{TaskKind, TenantId};
use crate::trigger::TenantTriggers;

/// One rung of a routing ladder.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RouteTier {
    /// Position in the ladder (0 = primary).
    pub(crate) index: u32,
    /// Permitted in this view (not excluded by floor, task or `forbid_tiers`).
    pub(crate) permitted: bool,
    /// The usable endpoints, as catalog indices, in policy order.
    pub(crate) endpoint_idx: Box<[EndpointIdx]>,
    /// How to choose among them.
    pub(crate) selection: Selection,
}

impl RouteTier {
    /// Whether the tier may be used and has at least one usable endpoint.
    pub(crate) fn usable(&self) -> bool {
        self.permitted && !self.endpoint_idx.is_empty()
    }
}

/// What the router reads of a resolved view: everything but its identity.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RoutingView {
    pub(crate) tiers: Box<[RouteTier]>,
    /// The first usable tier.
    pub(crate) top: Option<u32>,
    pub(crate) max_attempts: u32,
    pub(crate) attempts_per_endpoint: u32,
    pub(crate) default_deadline: Option<Duration>,
    /// What a crossed budget guardrail does (`None`: no budget).
    pub(crate) budget: Option<BudgetRule>,
    pub(crate) tenant_triggers: TenantTriggers,
    pub(crate) promotion: Promotion,
    pub(crate) approval: ApprovalRule,
    pub(crate) notification: Notification,
    pub(crate) when_exhausted: Exhausted,
    /// The ladder ends in a suspension step.
    pub(crate) can_suspend: bool,
    pub(crate) probe_eligible: bool,
    pub(crate) fit_to_smaller_window: bool,
}

impl RoutingView {
    pub(crate) fn of(v: &ResolvedPolicy) -> Self {
        RoutingView {
            tiers: v
                .tiers
                .iter()
                .map(|t| RouteTier {
                    index: t.index,
                    permitted: t.excluded.is_none(),
                    endpoint_idx: t.endpoint_idx.clone().into_boxed_slice(),
                    selection: t.selection,
                })
                .collect(),
            top: v.top_tier(),
            max_attempts: v.retry.max_attempts,
            attempts_per_endpoint: v.retry.attempts_per_endpoint,
            default_deadline: v.sla.default_deadline,
            budget: v.budget.as_ref().map(|b| b.on_exceeded),
            tenant_triggers: v.tenant_triggers.clone(),
            promotion: v.recovery.promotion.clone(),
            approval: v.approval,
            notification: v.notification,
            when_exhausted: v.when_exhausted,
            can_suspend: v.suspension.is_some(),
            probe_eligible: v.probe_eligible,
            fit_to_smaller_window: v.continuity.fit_to_smaller_window,
        }
    }

    /// The tier at an index.
    pub(crate) fn tier(&self, index: u32) -> Option<&RouteTier> {
        self.tiers.get(index as usize)
    }

    /// Number of tiers.
    pub(crate) fn len(&self) -> u32 {
        u32::try_from(self.tiers.len()).unwrap_or(u32::MAX)
    }
}

/// A tenant's routing views: the default one and one per task kind with its own rules. Shared
/// by every tenant whose views have the same content.
#[derive(Debug)]
pub(crate) struct TenantRouting {
    default: Arc<RoutingView>,
    tasks: Box<[(TaskKind, Arc<RoutingView>)]>,
}

impl TenantRouting {
    /// The view for `task` (its own, else the default), without hashing: a tenant has a handful
    /// of task views, and their names are shared and hot.
    pub(crate) fn view(&self, task: &TaskKind) -> &RoutingView {
        let want = task.as_str();
        for (k, v) in &*self.tasks {
            let have = k.as_str();
            if std::ptr::eq(have, want) || have == want {
                return v;
            }
        }
        &self.default
    }
}

/// Interns routing views and tenant routings while a policy set is assembled.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    /// By a hash of the view's main fields; equal content is confirmed with `==`.
    views: HashMap<u64, Vec<Arc<RoutingView>>>,
    distinct: usize,
    tenants: HashMap<Vec<(Option<TaskKind>, usize)>, Arc<TenantRouting>>,
}

/// A hash of the fields that usually tell routing views apart (the rest is compared by `==`).
fn rough_hash(v: &RoutingView) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    use std::mem::discriminant;
    let mut h = DefaultHasher::new();
    for t in &*v.tiers {
        (t.index, t.permitted, &*t.endpoint_idx).hash(&mut h);
        discriminant(&t.selection).hash(&mut h);
    }
    (
        v.top,
        v.max_attempts,
        v.attempts_per_endpoint,
        v.default_deadline,
    )
        .hash(&mut h);
    (v.can_suspend, v.probe_eligible, v.fit_to_smaller_window).hash(&mut h);
    (v.budget.is_some(), v.tenant_triggers.p95_ceiling).hash(&mut h);
    discriminant(&v.approval).hash(&mut h);
    discriminant(&v.notification).hash(&mut h);
    discriminant(&v.when_exhausted).hash(&mut h);
    h.finish()
}

impl Interner {
    fn view(&mut self, v: &ResolvedPolicy) -> Arc<RoutingView> {
        let rv = RoutingView::of(v);
        let bucket = self.views.entry(rough_hash(&rv)).or_default();
        if let Some(found) = bucket.iter().find(|f| ***f == rv) {
            return Arc::clone(found);
        }
        let rv = Arc::new(rv);
        bucket.push(Arc::clone(&rv));
        self.distinct += 1;
        rv
    }

    /// The shared routing of a tenant with these views (`None` = the default view).
    pub(crate) fn tenant<'a>(
        &mut self,
        views: impl Iterator<Item = (Option<&'a TaskKind>, &'a ResolvedPolicy)>,
    ) -> Option<Arc<TenantRouting>> {
        let mut default = None;
        let mut tasks = Vec::new();
        let mut key = Vec::new();
        for (task, v) in views {
            let rv = self.view(v);
            key.push((task.cloned(), Arc::as_ptr(&rv) as usize));
            match task {
                None => default = Some(rv),
                Some(t) => tasks.push((t.clone(), rv)),
            }
        }
        let default = default?;
        Some(Arc::clone(self.tenants.entry(key).or_insert_with(|| {
            Arc::new(TenantRouting {
                default,
                tasks: tasks.into_boxed_slice(),
            })
        })))
    }

    /// Distinct routing views interned.
    pub(crate) fn distinct_views(&self) -> usize {
        self.distinct
    }
}

/// A caller-held shortcut to one tenant's routing state in a [`PolicySet`](super::PolicySet):
/// resolved once by id ([`PolicySet::tenant_handle`](super::PolicySet::tenant_handle), or
/// [`TenantPolicy::handle`](super::TenantPolicy::handle)) and kept (an engine keeps one per
/// session, beside its [`BudgetHandle`](crate::trigger::BudgetHandle)). Passed in a
/// [`CallContext`](crate::router::CallContext), it lets the router reach the tenant's interned
/// routing views directly instead of hashing the tenant id and reading the tenant's entry.
///
/// A handle is only ever a shortcut: when it belongs to another policy set (a hot reload
/// happened since) or to another tenant than the call's, the router looks the tenant up by id.
/// Cloning it is cheap (two reference counts, no allocation).
#[derive(Debug, Clone)]
pub struct TenantHandle {
    pub(crate) tenant: TenantId,
    /// The epoch of the set it was taken from.
    pub(crate) set: u64,
    pub(crate) routing: Arc<TenantRouting>,
}

impl TenantHandle {
    /// The tenant this handle is for.
    #[must_use]
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Whether this handle is for `tenant` (by pointer first: ids are shared `Arc<str>`s).
    pub(crate) fn is_for(&self, tenant: &TenantId) -> bool {
        std::ptr::eq(self.tenant.as_str(), tenant.as_str()) || self.tenant == *tenant
    }
}
