//! Metrics export through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`),
//! with tenant labels bounded for platforms with 100,000 tenants.
//!
//! Every attempt and every call end is counted with `tenant`, `tier` and `endpoint` labels, so
//! any `metrics` exporter (Prometheus, StatsD, OpenTelemetry) picks them up:
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `downshift.attempts` | counter | tenant, tier, endpoint, outcome |
//! | `downshift.degraded_attempts` | counter | tenant, tier, endpoint |
//! | `downshift.calls` | counter | tenant, result |
//! | `gen_ai.client.operation.duration` | histogram (seconds) | tenant, tier, endpoint |
//! | `gen_ai.client.token.usage` | histogram (tokens) | tenant, tier, endpoint, gen_ai.token.type |
//! | `downshift.cost_microusd` | counter | tenant, tier, endpoint |
//! | `downshift.primary_cost_microusd` | counter | tenant, tier, endpoint |
//!
//! A time series per tenant would be 100,000 series per metric and label set: more than most
//! metrics backends accept. [`TenantLabels`] bounds the `tenant` label: tenants named
//! explicitly (typically the top N by traffic, refreshed from a stats snapshot with
//! [`TenantLabels::top_by_calls`]) keep their own label, others may be mapped to a group (a
//! plan, a region), and every other tenant is `other`. The number of distinct `tenant` values
//! is at most [`TenantLabels::cardinality_bound`]; the per-tenant detail stays in
//! [`Engine::stats`](crate::engine::Engine::stats).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::id::TenantId;
use crate::stats::StatsSnapshot;

/// How tenants are labelled in exported metrics.
#[derive(Debug, Clone)]
pub struct TenantLabels {
    named: HashMap<TenantId, Arc<str>>,
    groups: HashMap<TenantId, Arc<str>>,
    other: Arc<str>,
}

impl Default for TenantLabels {
    fn default() -> Self {
        TenantLabels::new()
    }
}

impl TenantLabels {
    /// Every tenant labelled `other`.
    #[must_use]
    pub fn new() -> Self {
        TenantLabels {
            named: HashMap::new(),
            groups: HashMap::new(),
            other: Arc::from("other"),
        }
    }

    /// `tenant` keeps its own label.
    #[must_use]
    pub fn named(mut self, tenant: impl Into<TenantId>) -> Self {
        let t = tenant.into();
        let label = Arc::from(t.as_str());
        self.named.insert(t, label);
        self
    }

    /// `tenant` is labelled as its group (e.g. `plan:enterprise`).
    #[must_use]
    pub fn group(mut self, tenant: impl Into<TenantId>, group: &str) -> Self {
        let g = self
            .groups
            .values()
            .find(|v| &***v == group)
            .cloned()
            .unwrap_or_else(|| Arc::from(group));
        self.groups.insert(tenant.into(), g);
        self
    }

    /// The label of every other tenant (default `other`).
    #[must_use]
    pub fn other(mut self, label: &str) -> Self {
        self.other = Arc::from(label);
        self
    }

    /// The `n` tenants with the most calls in `stats` keep their own label (ties broken by
    /// tenant id); groups and the `other` label are kept.
    #[must_use]
    pub fn top_by_calls(mut self, stats: &StatsSnapshot, n: usize) -> Self {
        let mut by_calls: Vec<(&TenantId, u64)> =
            stats.tenants.iter().map(|t| (&t.tenant, t.calls)).collect();
        by_calls.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        self.named.clear();
        for (t, _) in by_calls.into_iter().take(n) {
            self.named.insert(t.clone(), Arc::from(t.as_str()));
        }
        self
    }

    /// The `tenant` label of a tenant.
    #[must_use]
    pub fn label(&self, tenant: &TenantId) -> Arc<str> {
        self.named
            .get(tenant)
            .or_else(|| self.groups.get(tenant))
            .map_or_else(|| Arc::clone(&self.other), Arc::clone)
    }

    /// The most distinct `tenant` label values these labels produce: named tenants, distinct
    /// groups, and `other`.
    #[must_use]
    pub fn cardinality_bound(&self) -> usize {
        let groups: HashSet<&str> = self.groups.values().map(|g| &**g).collect();
        self.named.len() + groups.len() + 1
    }
}

#[cfg(feature = "metrics")]
mod emit {
    use super::TenantLabels;
    use crate::engine::TokenUsage;
    use crate::id::{EndpointId, TenantId};
    use crate::trigger::OutcomeClass;

    const TIERS: [&str; 8] = ["0", "1", "2", "3", "4", "5", "6", "7"];

    fn tier_label(t: u32) -> metrics::SharedString {
        match TIERS.get(t as usize) {
            Some(s) => metrics::SharedString::const_str(s),
            None => metrics::SharedString::from(t.to_string()),
        }
    }

    fn micro(usd: f64) -> u64 {
        if usd.is_finite() && usd > 0.0 {
            (usd * 1_000_000.0).round() as u64
        } else {
            0
        }
    }

    /// Counts one attempt.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn emit_attempt(
        labels: &TenantLabels,
        tenant: &TenantId,
        tier: u32,
        endpoint: &EndpointId,
        class: OutcomeClass,
        degraded: bool,
        latency: std::time::Duration,
        usage: TokenUsage,
        cost: f64,
        primary_cost: f64,
    ) {
        let t = metrics::SharedString::from(labels.label(tenant));
        let tier = tier_label(tier);
        let ep = metrics::SharedString::from(endpoint.as_str().to_string());
        metrics::counter!("downshift.attempts", "tenant" => t.clone(), "tier" => tier.clone(), "endpoint" => ep.clone(), "outcome" => class.as_str()).increment(1);
        if degraded {
            metrics::counter!("downshift.degraded_attempts", "tenant" => t.clone(), "tier" => tier.clone(), "endpoint" => ep.clone()).increment(1);
        }
        metrics::histogram!("gen_ai.client.operation.duration", "tenant" => t.clone(), "tier" => tier.clone(), "endpoint" => ep.clone()).record(latency.as_secs_f64());
        metrics::histogram!("gen_ai.client.token.usage", "tenant" => t.clone(), "tier" => tier.clone(), "endpoint" => ep.clone(), "gen_ai.token.type" => "input").record(usage.input_tokens as f64);
        metrics::histogram!("gen_ai.client.token.usage", "tenant" => t.clone(), "tier" => tier.clone(), "endpoint" => ep.clone(), "gen_ai.token.type" => "output").record(usage.output_tokens as f64);
        metrics::counter!("downshift.cost_microusd", "tenant" => t.clone(), "tier" => tier.clone(), "endpoint" => ep.clone()).increment(micro(cost));
        metrics::counter!("downshift.primary_cost_microusd", "tenant" => t, "tier" => tier, "endpoint" => ep).increment(micro(primary_cost));
    }

    /// Counts one call's end.
    pub(crate) fn emit_result(labels: &TenantLabels, tenant: &TenantId, result: &'static str) {
        let t = metrics::SharedString::from(labels.label(tenant));
        metrics::counter!("downshift.calls", "tenant" => t, "result" => result).increment(1);
    }
}

#[cfg(feature = "metrics")]
pub(crate) use emit::{emit_attempt, emit_result};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_grouped_and_other_tenants_get_their_labels() {
        let l = TenantLabels::new()
            .named("acme")
            .group("small-1", "plan:free")
            .group("small-2", "plan:free")
            .other("rest");
        assert_eq!(&*l.label(&TenantId::new("acme")), "acme");
        assert_eq!(&*l.label(&TenantId::new("small-2")), "plan:free");
        assert_eq!(&*l.label(&TenantId::new("zzz")), "rest");
        assert_eq!(l.cardinality_bound(), 3);
    }
}
