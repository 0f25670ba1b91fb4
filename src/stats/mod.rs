//! Visibility and FinOps: what every tenant experienced, what it cost, and what degradation
//! saved.
//!
//! The [`Engine`](crate::engine::Engine) counts every call as it ends and every attempt as it is
//! observed, in sharded, lock-free counters (a relaxed atomic add per counter; a read lock on
//! one of 64 shards to find the tenant, a write lock only the first time a tenant is seen).
//! [`Engine::stats`](crate::engine::Engine::stats) takes a [`StatsSnapshot`]: per tenant and per
//! (tenant, tier, endpoint) calls, outcomes by class, latency percentiles, time degraded,
//! suspensions, approvals, rejections, deadline misses, tokens, cost and the **saving** — what
//! the same tokens would have cost at the tenant's primary tier; per endpoint its health,
//! breaker transitions, P95 and pressure signals; and every degradation episode with its
//! duration, the calls it affected and its cost delta. The snapshot is plain data
//! (`serde`), for export, [`alerts`](crate::alerts) and the `downshift report` CLI.
//!
//! Consistency: each counter is read once, atomically; a call still in flight while the
//! snapshot is taken shows up in the next one. Taking a snapshot never blocks a call: a shard's
//! read lock is held only to copy its few pointers to the chunks of tenant cells.
//! [`Engine::stats_into`](crate::engine::Engine::stats_into) takes a snapshot into an existing
//! one, reusing its buffers (for callers that take snapshots periodically).
//!
//! Costs use [`Pricing::cost`](crate::catalog::Pricing::cost), the crate's one cost function.

pub(crate) mod collector;
mod histogram;
pub mod report;

pub(crate) use collector::Collector;
pub use histogram::Percentiles;

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::engine::EngineMode;
use crate::id::{EndpointId, SessionId, TenantId};
use crate::trigger::OutcomeClass;

/// A snapshot of the engine's statistics. `Default` is an empty snapshot, for
/// [`Engine::stats_into`](crate::engine::Engine::stats_into) to fill.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// When the snapshot was taken.
    pub taken_at: Timestamp,
    /// When counting started (the engine was built).
    pub since: Timestamp,
    /// The engine's mode when the snapshot was taken.
    pub mode: EngineMode,
    /// Calls refused because their tenant has no policy (not attributed to any tenant, so an
    /// unknown tenant id never costs memory).
    pub unknown_tenant_calls: u64,
    /// Per tenant, in no particular order (see [`StatsSnapshot::sort_by_tenant`]).
    pub tenants: Vec<TenantStats>,
    /// Per catalog endpoint, in catalog order.
    pub endpoints: Vec<EndpointStats>,
    /// Degradation episodes, oldest first: the closed ones kept (the most recent
    /// 10,000) and the open ones.
    pub degradation_events: Vec<DegradationEvent>,
}

impl StatsSnapshot {
    /// The statistics of one tenant (a linear search: build a map for many look-ups).
    #[must_use]
    pub fn tenant(&self, tenant: &str) -> Option<&TenantStats> {
        self.tenants.iter().find(|t| t.tenant.as_str() == tenant)
    }

    /// Sorts the tenants by id (the snapshot itself leaves them in storage order, which is
    /// cheaper to take).
    pub fn sort_by_tenant(&mut self) {
        self.tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    }

    /// The statistics of one endpoint.
    #[must_use]
    pub fn endpoint(&self, endpoint: &str) -> Option<&EndpointStats> {
        self.endpoints
            .iter()
            .find(|e| e.endpoint.as_str() == endpoint)
    }

    /// Sessions suspended now, across tenants.
    #[must_use]
    pub fn suspended_sessions(&self) -> u64 {
        self.tenants.iter().map(|t| t.suspended_sessions).sum()
    }
}

/// Attempts counted by outcome class; classes never seen are left out of the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcomes {
    /// Answered.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ok: u64,
    /// HTTP 429 and the like.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rate_limited: u64,
    /// The provider is overloaded (529, 503 overloaded).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub overloaded: u64,
    /// A quota or credit is spent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub quota_exhausted: u64,
    /// 5xx.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub server_error: u64,
    /// Timed out.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: u64,
    /// The request did not fit the context window.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub context_length_exceeded: u64,
    /// Refused by a content filter.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub content_filtered: u64,
    /// Authentication or permission error.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub auth: u64,
    /// Any other bad request.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bad_request: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Outcomes {
    /// Counts in [`OutcomeClass::ALL`] order.
    pub(crate) fn from_counts(c: [u64; 10]) -> Self {
        let [
            ok,
            rate_limited,
            overloaded,
            quota_exhausted,
            server_error,
            timeout,
            context_length_exceeded,
            content_filtered,
            auth,
            bad_request,
        ] = c;
        Outcomes {
            ok,
            rate_limited,
            overloaded,
            quota_exhausted,
            server_error,
            timeout,
            context_length_exceeded,
            content_filtered,
            auth,
            bad_request,
        }
    }

    /// The count of a class.
    #[must_use]
    pub const fn count(&self, class: OutcomeClass) -> u64 {
        match class {
            OutcomeClass::Ok => self.ok,
            OutcomeClass::RateLimited => self.rate_limited,
            OutcomeClass::Overloaded => self.overloaded,
            OutcomeClass::QuotaExhausted => self.quota_exhausted,
            OutcomeClass::ServerError => self.server_error,
            OutcomeClass::Timeout => self.timeout,
            OutcomeClass::ContextLengthExceeded => self.context_length_exceeded,
            OutcomeClass::ContentFiltered => self.content_filtered,
            OutcomeClass::Auth => self.auth,
            OutcomeClass::BadRequest => self.bad_request,
        }
    }

    /// The count of a class by its snake_case name, `None` when zero or unknown.
    #[must_use]
    pub fn get(&self, class: &str) -> Option<u64> {
        OutcomeClass::ALL
            .iter()
            .find(|c| c.as_str() == class)
            .map(|c| self.count(*c))
            .filter(|n| *n > 0)
    }

    /// All attempts.
    #[must_use]
    pub fn total(&self) -> u64 {
        OutcomeClass::ALL.iter().map(|c| self.count(*c)).sum()
    }
}

/// What one tenant experienced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantStats {
    /// The tenant.
    pub tenant: TenantId,
    /// Calls handed to the engine.
    pub calls: u64,
    /// Calls served.
    pub completed: u64,
    /// Calls served below the tenant's top tier.
    pub degraded: u64,
    /// Calls that ended suspended (including calls of an already suspended session).
    pub calls_suspended: u64,
    /// Sessions suspended (each suspension once).
    pub suspensions: u64,
    /// Sessions resumed.
    pub resumes: u64,
    /// Sessions suspended now (`suspensions - resumes`).
    pub suspended_sessions: u64,
    /// Calls that ended awaiting a human's approval.
    pub awaiting_approval: u64,
    /// Approvals granted.
    pub approvals_granted: u64,
    /// Approvals denied.
    pub approvals_denied: u64,
    /// Calls rejected.
    pub rejected: u64,
    /// Calls that missed their deadline: finished after it, or rejected because no endpoint
    /// could meet it.
    pub deadline_misses: u64,
    /// Attempts by outcome class.
    pub outcomes: Outcomes,
    /// End-to-end latency of the calls that reached a model (all attempts included).
    pub latency: Percentiles,
    /// Time during which the tenant's calls were served degraded or suspended, in
    /// milliseconds (from the first such call to the next call served at its top tier).
    pub time_degraded_ms: u64,
    /// Input tokens of every attempt.
    pub input_tokens: u64,
    /// Output tokens of every attempt.
    pub output_tokens: u64,
    /// What those tokens cost, in USD.
    pub cost_usd: f64,
    /// What the same tokens would have cost at the tenant's primary tier, in USD.
    pub primary_cost_usd: f64,
    /// `primary_cost_usd - cost_usd`: positive when degradation saved money.
    pub saving_usd: f64,
    /// In `observe_only` mode: what the policy would have done instead of the primary.
    pub would_be: WouldBe,
    /// Per (tier, endpoint), in the order first seen.
    pub routes: Routes,
}

/// A tenant's [`RouteStats`] (it dereferences to `[RouteStats]`): a tenant's only route is
/// kept inline, and the routes of tenants with several are a slice of one array shared by
/// every tenant of a snapshot, so a snapshot of 100,000 tenants makes no allocation per tenant
/// for their routes. Serialized as a plain JSON array.
///
/// One enum, no larger than the route it holds inline: a snapshot's output is one
/// `TenantStats` per tenant, so every byte here is 100 KB per 100,000 tenants to fault in.
#[derive(Clone, Default)]
pub struct Routes(pub(crate) RoutesRepr);

// The route is inline on purpose: boxing it would be an allocation per tenant per snapshot.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Default)]
pub(crate) enum RoutesRepr {
    /// No route.
    #[default]
    None,
    /// The tenant's only route.
    One(RouteStats),
    /// `len` routes from `start` in `all`, set once the snapshot's array is complete (each
    /// tenant gets its `Routes` as it is read, so a snapshot makes one pass over its tenants).
    Shared {
        all: Arc<OnceLock<Vec<RouteStats>>>,
        start: u32,
        len: u32,
    },
}

impl Routes {
    /// A single route.
    pub(crate) fn one(r: RouteStats) -> Self {
        Routes(RoutesRepr::One(r))
    }

    /// A tenant's `len` routes starting at `start` in `all` (an empty list until `all` is set,
    /// or when out of range).
    pub(crate) fn pending(all: &Arc<OnceLock<Vec<RouteStats>>>, start: usize, len: usize) -> Self {
        Routes(RoutesRepr::Shared {
            all: Arc::clone(all),
            start: u32::try_from(start).unwrap_or(u32::MAX),
            len: u32::try_from(len).unwrap_or(0),
        })
    }
}

impl std::ops::Deref for Routes {
    type Target = [RouteStats];
    fn deref(&self) -> &[RouteStats] {
        match &self.0 {
            RoutesRepr::None => &[],
            RoutesRepr::One(r) => std::slice::from_ref(r),
            RoutesRepr::Shared { all, start, len } => {
                let (start, len) = (*start as usize, *len as usize);
                all.get()
                    .and_then(|a| a.get(start..start.saturating_add(len)))
                    .unwrap_or_default()
            }
        }
    }
}

impl From<Vec<RouteStats>> for Routes {
    fn from(mut v: Vec<RouteStats>) -> Self {
        match v.len() {
            0 => Routes::default(),
            1 => v.pop().map(Routes::one).unwrap_or_default(),
            len => Routes::pending(&Arc::new(OnceLock::from(v)), 0, len),
        }
    }
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq for Routes {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Serialize for Routes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Routes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<RouteStats>::deserialize(d).map(Routes::from)
    }
}

/// What one tenant's calls did at one (tier, endpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteStats {
    /// The tier index.
    pub tier: u32,
    /// The tier's name.
    pub tier_name: Arc<str>,
    /// The endpoint.
    pub endpoint: EndpointId,
    /// Attempts made.
    pub attempts: u64,
    /// Attempts that were served below the tenant's top tier.
    pub degraded: u64,
    /// Attempts by outcome class.
    pub outcomes: Outcomes,
    /// Attempt latency.
    pub latency: Percentiles,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cost in USD.
    pub cost_usd: f64,
    /// What the same tokens would have cost at the tenant's primary tier.
    pub primary_cost_usd: f64,
    /// `primary_cost_usd - cost_usd`.
    pub saving_usd: f64,
}

/// What the policy would have done, counted in `observe_only` mode (the primary served
/// every call).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WouldBe {
    /// Calls the policy would have served below the top tier.
    pub degraded: u64,
    /// Calls the policy would have suspended.
    pub suspended: u64,
    /// Calls that would have waited for approval.
    pub awaiting_approval: u64,
    /// Calls the policy would have rejected.
    pub rejected: u64,
    /// The latest decision that differed from "the primary", if any (boxed: most tenants have
    /// none, and the snapshot keeps one `TenantStats` per tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Box<WouldBeDecision>>,
}

/// One would-be decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WouldBeDecision {
    /// When.
    pub at: Timestamp,
    /// `route`, `await_approval`, `suspend` or `reject`.
    pub decision: String,
    /// The tier it would have used, for a route or an approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<u32>,
    /// The endpoint it would have used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointId>,
    /// Why, as the operator reads it.
    pub reason: String,
}

/// One endpoint's health and load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointStats {
    /// The endpoint.
    pub endpoint: EndpointId,
    /// Breaker state (`closed`, `open`, `half_open`).
    pub state: String,
    /// Breaker transitions since the evaluator started.
    pub breaker_transitions: u64,
    /// Attempts of all tenants.
    pub attempts: u64,
    /// Capacity failures in the breaker window.
    pub window_failures: u32,
    /// Failure rate in the breaker window, once it holds enough calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<f64>,
    /// P95 latency over the latency window, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<u64>,
    /// Provider-reported queue depth in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<u64>,
    /// Status-page state in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_page: Option<String>,
    /// Remaining requests (fraction of the limit) the provider reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_remaining: Option<f64>,
    /// Remaining tokens (fraction of the limit) the provider reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_remaining: Option<f64>,
    /// The provider's "not before" (retry-after) in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
}

/// One degradation episode of a tenant's session (or of its session-less calls): from the first
/// call served degraded or suspended to the next call served at the top tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DegradationEvent {
    /// The tenant.
    pub tenant: TenantId,
    /// The session, `None` for session-less calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionId>,
    /// The audit record of the tier change that opened it, when the call recorded one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_seq: Option<u64>,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended (`None`: still open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    /// How long it lasted (until the snapshot, while open), in milliseconds.
    pub duration_ms: u64,
    /// The lowest tier served during it (`None` when nothing was served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lowest_tier: Option<u32>,
    /// Calls served degraded during it.
    pub calls_affected: u64,
    /// Calls that ended suspended during it.
    pub calls_suspended: u64,
    /// What the degraded calls cost, in USD.
    pub cost_usd: f64,
    /// What they would have cost at the primary tier.
    pub primary_cost_usd: f64,
    /// `cost_usd - primary_cost_usd`: negative when degradation saved money.
    pub cost_delta_usd: f64,
}
