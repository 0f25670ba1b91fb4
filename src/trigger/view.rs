//! [`TenantTriggers`]: one tenant's thresholds on the shared endpoint health.
//!
//! Endpoint health is shared by every tenant, but whether an endpoint is *usable* also depends on
//! the tenant: the hospital's P95 ceiling is not the marketing agency's, nor are their
//! queue-depth, status-page and rate-limit thresholds or their budgets. A `TenantTriggers` holds
//! those thresholds; build one per resolved tenant policy (and share it) with
//! [`TenantTriggers::from_policy`].

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::policy::{Budget, Constraints, RateLimitRemaining, StatusPageState, Triggers};

/// A set of [`StatusPageState`]s (a copyable bit set).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StatusSet(u8);

impl StatusSet {
    /// The empty set.
    pub const EMPTY: StatusSet = StatusSet(0);

    const fn bit(s: StatusPageState) -> u8 {
        1 << (match s {
            StatusPageState::Operational => 0,
            StatusPageState::DegradedPerformance => 1,
            StatusPageState::PartialOutage => 2,
            StatusPageState::MajorOutage => 3,
            StatusPageState::UnderMaintenance => 4,
        })
    }

    /// The set with `s` added.
    #[must_use]
    pub const fn with(self, s: StatusPageState) -> Self {
        StatusSet(self.0 | Self::bit(s))
    }

    /// Whether `s` is in the set.
    #[must_use]
    pub const fn contains(self, s: StatusPageState) -> bool {
        self.0 & Self::bit(s) != 0
    }

    /// Whether the set is empty.
    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The states in the set, in declaration order.
    pub fn iter(self) -> impl Iterator<Item = StatusPageState> {
        [
            StatusPageState::Operational,
            StatusPageState::DegradedPerformance,
            StatusPageState::PartialOutage,
            StatusPageState::MajorOutage,
            StatusPageState::UnderMaintenance,
        ]
        .into_iter()
        .filter(move |s| self.contains(*s))
    }
}

impl FromIterator<StatusPageState> for StatusSet {
    fn from_iter<I: IntoIterator<Item = StatusPageState>>(iter: I) -> Self {
        iter.into_iter().fold(StatusSet::EMPTY, StatusSet::with)
    }
}

impl fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Serialize for StatusSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

/// One tenant's thresholds on endpoint health and its budget guardrails.
///
/// ```
/// use downshift::policy::{Constraints, Triggers};
/// use downshift::trigger::TenantTriggers;
/// use std::time::Duration;
///
/// let mut constraints = Constraints::default();
/// constraints.sla.p95_ceiling = Some(Duration::from_secs(3));
/// let view = TenantTriggers::from_policy(&Triggers::default(), &constraints);
/// assert_eq!(view.p95_ceiling, Some(Duration::from_secs(3)));
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct TenantTriggers {
    /// An endpoint whose recent P95 is `>=` this is unusable for the tenant
    /// (`constraints.sla.p95_ceiling`).
    pub p95_ceiling: Option<Duration>,
    /// Provider-reported queue depth at or above which the endpoint is unusable
    /// (`triggers.queue_depth`).
    pub queue_depth: Option<u64>,
    /// Status-page states at which the endpoint is unusable (`triggers.status_page`).
    pub status_page: StatusSet,
    /// Rate-limit headroom below which the endpoint is unusable
    /// (`triggers.rate_limit_remaining`).
    pub rate_limit_remaining: Option<RateLimitRemaining>,
    /// Budget guardrails (`constraints.budget`).
    pub budget: Option<Budget>,
}

impl TenantTriggers {
    /// The view of a resolved tenant policy's triggers and constraints.
    #[must_use]
    pub fn from_policy(triggers: &Triggers, constraints: &Constraints) -> Self {
        TenantTriggers {
            p95_ceiling: constraints.sla.p95_ceiling,
            queue_depth: triggers.queue_depth,
            status_page: triggers.status_page.iter().copied().collect(),
            rate_limit_remaining: triggers.rate_limit_remaining.clone(),
            budget: constraints.budget.clone(),
        }
    }
}
