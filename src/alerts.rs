//! Alerts as data: threshold rules over a [`StatsSnapshot`], evaluated on demand, returning
//! [`Alert`] values for the caller to route to its pager. No I/O.
//!
//! ```
//! use std::time::Duration;
//! use downshift::alerts::{AlertRule, evaluate};
//! # let stats: downshift::stats::StatsSnapshot = serde_json::from_value(serde_json::json!({
//! #   "taken_at": "2027-01-15T08:00:00Z", "since": "2027-01-15T07:00:00Z", "mode": {"mode": "per_tenant"},
//! #   "unknown_tenant_calls": 0, "tenants": [], "endpoints": [], "degradation_events": []})).unwrap();
//! let rules = vec![
//!     AlertRule::DegradedFor { tenant: Some("hospital".into()), at_least: Duration::from_secs(300) },
//!     AlertRule::SuspendedSessions { at_least: 100 },
//!     AlertRule::FallbackShare { tenant: None, at_least: 0.5, min_calls: 20 },
//! ];
//! for alert in evaluate(&rules, &stats) {
//!     println!("{}", alert.message); // hand it to the pager
//! }
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::id::{EndpointId, TenantId};
use crate::stats::{StatsSnapshot, TenantStats};

/// A threshold rule. Comparisons are `>=` (reaching the threshold fires). Rules with an
/// optional `tenant` apply to that tenant, or to every tenant (one alert each) when `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case", deny_unknown_fields)]
pub enum AlertRule {
    /// A tenant's calls have been served degraded (or suspended) for at least this long in
    /// total.
    DegradedFor {
        /// The tenant, or every tenant.
        #[serde(default)]
        tenant: Option<TenantId>,
        /// The threshold.
        #[serde(with = "humantime_serde_compat")]
        at_least: Duration,
    },
    /// Sessions suspended now, platform-wide.
    SuspendedSessions {
        /// The threshold.
        at_least: u64,
    },
    /// The share of a tenant's served calls that were served degraded (by a fallback).
    FallbackShare {
        /// The tenant, or every tenant.
        #[serde(default)]
        tenant: Option<TenantId>,
        /// The threshold, 0..=1.
        at_least: f64,
        /// Fewer served calls than this never fire (a rate needs a minimum of calls).
        #[serde(default)]
        min_calls: u64,
    },
    /// The share of a tenant's calls that were rejected.
    RejectionRate {
        /// The tenant, or every tenant.
        #[serde(default)]
        tenant: Option<TenantId>,
        /// The threshold, 0..=1.
        at_least: f64,
        /// Fewer calls than this never fire.
        #[serde(default)]
        min_calls: u64,
    },
    /// A tenant's P95 call latency.
    P95Latency {
        /// The tenant, or every tenant.
        #[serde(default)]
        tenant: Option<TenantId>,
        /// The threshold.
        #[serde(with = "humantime_serde_compat")]
        at_least: Duration,
    },
    /// A tenant's spend since the engine started, in USD.
    Cost {
        /// The tenant, or every tenant.
        #[serde(default)]
        tenant: Option<TenantId>,
        /// The threshold.
        at_least_usd: f64,
    },
    /// An endpoint's breaker is open or half-open (a provider capacity signal).
    BreakerNotClosed {
        /// The endpoint, or every endpoint.
        #[serde(default)]
        endpoint: Option<EndpointId>,
    },
    /// Calls that missed their deadline, per tenant.
    DeadlineMisses {
        /// The tenant, or every tenant.
        #[serde(default)]
        tenant: Option<TenantId>,
        /// The threshold.
        at_least: u64,
    },
}

impl AlertRule {
    /// The rule's name (its `rule` tag).
    #[must_use]
    pub const fn name(&self) -> &'static str {
        match self {
            AlertRule::DegradedFor { .. } => "degraded_for",
            AlertRule::SuspendedSessions { .. } => "suspended_sessions",
            AlertRule::FallbackShare { .. } => "fallback_share",
            AlertRule::RejectionRate { .. } => "rejection_rate",
            AlertRule::P95Latency { .. } => "p95_latency",
            AlertRule::Cost { .. } => "cost",
            AlertRule::BreakerNotClosed { .. } => "breaker_not_closed",
            AlertRule::DeadlineMisses { .. } => "deadline_misses",
        }
    }
}

/// A rule that fired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The rule's name.
    pub rule: String,
    /// The tenant it is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    /// The endpoint it is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointId>,
    /// The measured value (seconds for durations, a share for rates, USD for cost).
    pub measured: f64,
    /// The threshold, in the same unit.
    pub threshold: f64,
    /// What fired, as an operator reads it.
    pub message: String,
}

/// Evaluates `rules` over `stats`: every alert that fires, in rule order.
#[must_use]
pub fn evaluate(rules: &[AlertRule], stats: &StatsSnapshot) -> Vec<Alert> {
    let mut out = Vec::new();
    for rule in rules {
        evaluate_one(rule, stats, &mut out);
    }
    out
}

fn tenants<'a>(
    stats: &'a StatsSnapshot,
    tenant: Option<&'a TenantId>,
) -> Box<dyn Iterator<Item = &'a TenantStats> + 'a> {
    match tenant {
        Some(t) => Box::new(stats.tenant(t.as_str()).into_iter()),
        None => Box::new(stats.tenants.iter()),
    }
}

fn alert(
    rule: &AlertRule,
    t: Option<&TenantId>,
    measured: f64,
    threshold: f64,
    message: String,
) -> Alert {
    Alert {
        rule: rule.name().to_string(),
        tenant: t.cloned(),
        endpoint: None,
        measured,
        threshold,
        message,
    }
}

fn evaluate_one(rule: &AlertRule, stats: &StatsSnapshot, out: &mut Vec<Alert>) {
    match rule {
        AlertRule::DegradedFor { tenant, at_least } => {
            for t in tenants(stats, tenant.as_ref()) {
                let d = Duration::from_millis(t.time_degraded_ms);
                if t.time_degraded_ms > 0 && d >= *at_least {
                    out.push(alert(
                        rule,
                        Some(&t.tenant),
                        d.as_secs_f64(),
                        at_least.as_secs_f64(),
                        format!(
                            "tenant `{}` degraded for {} (threshold {})",
                            t.tenant,
                            humantime::format_duration(d),
                            humantime::format_duration(*at_least)
                        ),
                    ));
                }
            }
        }
        AlertRule::SuspendedSessions { at_least } => {
            let n = stats.suspended_sessions();
            if n >= *at_least {
                out.push(alert(
                    rule,
                    None,
                    n as f64,
                    *at_least as f64,
                    format!("{n} sessions suspended (threshold {at_least})"),
                ));
            }
        }
        AlertRule::FallbackShare {
            tenant,
            at_least,
            min_calls,
        } => {
            for t in tenants(stats, tenant.as_ref()) {
                if t.completed == 0 || t.completed < *min_calls {
                    continue;
                }
                let share = t.degraded as f64 / t.completed as f64;
                if share >= *at_least {
                    out.push(alert(
                        rule,
                        Some(&t.tenant),
                        share,
                        *at_least,
                        format!(
                            "tenant `{}`: {:.0}% of served calls went to a fallback ({} of {}; threshold {:.0}%)",
                            t.tenant,
                            share * 100.0,
                            t.degraded,
                            t.completed,
                            at_least * 100.0
                        ),
                    ));
                }
            }
        }
        AlertRule::RejectionRate {
            tenant,
            at_least,
            min_calls,
        } => {
            for t in tenants(stats, tenant.as_ref()) {
                if t.calls == 0 || t.calls < *min_calls {
                    continue;
                }
                let rate = t.rejected as f64 / t.calls as f64;
                if rate >= *at_least {
                    out.push(alert(
                        rule,
                        Some(&t.tenant),
                        rate,
                        *at_least,
                        format!(
                            "tenant `{}`: {:.0}% of calls rejected ({} of {})",
                            t.tenant,
                            rate * 100.0,
                            t.rejected,
                            t.calls
                        ),
                    ));
                }
            }
        }
        AlertRule::P95Latency { tenant, at_least } => {
            for t in tenants(stats, tenant.as_ref()) {
                let Some(p95) = t.latency.p95_ms else {
                    continue;
                };
                let d = Duration::from_millis(p95);
                if d >= *at_least {
                    out.push(alert(
                        rule,
                        Some(&t.tenant),
                        d.as_secs_f64(),
                        at_least.as_secs_f64(),
                        format!(
                            "tenant `{}`: P95 latency {} ms (threshold {})",
                            t.tenant,
                            p95,
                            humantime::format_duration(*at_least)
                        ),
                    ));
                }
            }
        }
        AlertRule::Cost {
            tenant,
            at_least_usd,
        } => {
            for t in tenants(stats, tenant.as_ref()) {
                if t.cost_usd >= *at_least_usd {
                    out.push(alert(
                        rule,
                        Some(&t.tenant),
                        t.cost_usd,
                        *at_least_usd,
                        format!(
                            "tenant `{}` spent ${:.4} (threshold ${at_least_usd})",
                            t.tenant, t.cost_usd
                        ),
                    ));
                }
            }
        }
        AlertRule::BreakerNotClosed { endpoint } => {
            for e in &stats.endpoints {
                if endpoint.as_ref().is_some_and(|x| x != &e.endpoint) || e.state == "closed" {
                    continue;
                }
                out.push(Alert {
                    rule: rule.name().to_string(),
                    tenant: None,
                    endpoint: Some(e.endpoint.clone()),
                    measured: 1.0,
                    threshold: 1.0,
                    message: format!(
                        "endpoint `{}` breaker is {} ({} transitions)",
                        e.endpoint, e.state, e.breaker_transitions
                    ),
                });
            }
        }
        AlertRule::DeadlineMisses { tenant, at_least } => {
            for t in tenants(stats, tenant.as_ref()) {
                if t.deadline_misses >= *at_least && t.deadline_misses > 0 {
                    out.push(alert(
                        rule,
                        Some(&t.tenant),
                        t.deadline_misses as f64,
                        *at_least as f64,
                        format!(
                            "tenant `{}`: {} calls missed their deadline",
                            t.tenant, t.deadline_misses
                        ),
                    ));
                }
            }
        }
    }
}

/// Durations in rules are written like the policy files: `"5m"`, `"30s"`.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}
