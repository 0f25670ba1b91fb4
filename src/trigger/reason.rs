//! [`Trigger`]: why an endpoint is unusable or a decision was taken, with the measured value and
//! the threshold it crossed.
//!
//! A `Trigger` is `Copy` and allocation-free so the hot path can carry it in every decision; its
//! `Display` renders the sentence an operator reads ("p95 4.2 s >= ceiling 3 s over 60 s, 212
//! samples"), and [`TriggerRecord`] is its self-describing, serializable form for the audit log.

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, EndpointIdx};
use crate::clock::Timestamp;
use crate::id::EndpointId;
use crate::policy::StatusPageState;

/// What kind of condition fired.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TriggerKind {
    /// Failure rate over the breaker window `>=` threshold (measured and threshold are fractions).
    FailureRate,
    /// Slow-call rate over the breaker window `>=` threshold (fractions).
    SlowCallRate,
    /// Consecutive capacity failures `>=` threshold (counts).
    ConsecutiveFailures,
    /// The breaker is open and its wait has not passed (`until` = when probing may start).
    BreakerOpen,
    /// The breaker is half-open and every probe permit is taken.
    ProbesExhausted,
    /// An operator forced the breaker open.
    ForcedOpen,
    /// The provider asked not to be called before `until` (retry-after / reset).
    RetryAfter,
    /// The endpoint's P95 latency `>=` the tenant's ceiling (milliseconds).
    LatencyP95,
    /// Provider-reported queue depth `>=` threshold.
    QueueDepth,
    /// The provider's status page reports `status`.
    StatusPage,
    /// Remaining requests / limit below threshold (fractions).
    RateLimitRequests,
    /// Remaining tokens / limit below threshold (fractions).
    RateLimitTokens,
    /// The tenant's spend over its rolling window `>=` its limit (USD).
    TenantBudget,
    /// The session's spend `>=` its limit (USD).
    SessionBudget,
    /// The workflow's spend `>=` its limit (USD).
    WorkflowBudget,
    /// The call's remaining deadline is shorter than the endpoint's recent P95 (milliseconds).
    Deadline,
    /// The latest call to the endpoint failed with a capacity error (measured = attempts made).
    CallFailed,
    /// Recovery: the higher tier has been healthy long enough (milliseconds).
    Recovered,
    /// Herd control: the fallback endpoint already took its capped share of the traffic moved
    /// off top tiers this second (fractions).
    FallbackShare,
    /// An operator or a policy activation caused the change.
    Manual,
    /// The breaker's open wait has passed; it moves to half-open (milliseconds waited and the
    /// wait).
    OpenWaitElapsed,
    /// A half-open probe failed with a capacity error or was slow (measured = probes that had
    /// succeeded, threshold = probes needed).
    ProbeFailed,
    /// The half-open round did not finish within the half-open timeout (milliseconds).
    ProbeTimeout,
    /// Every half-open probe succeeded; the breaker closes (counts).
    ProbesSucceeded,
}

/// Why an endpoint is unusable, or why a decision was taken: the condition, the measured value
/// and the threshold it was compared with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Trigger {
    /// What fired.
    pub kind: TriggerKind,
    /// The endpoint it is about, if any.
    pub endpoint: Option<EndpointIdx>,
    /// The measured value (unit depends on `kind`).
    pub measured: f64,
    /// The threshold it was compared with (same unit).
    pub threshold: f64,
    /// The window the measurement covers, if any.
    pub window: Option<Duration>,
    /// How many samples the measurement is based on (0 when not applicable).
    pub samples: u32,
    /// Until when the condition holds, when known (retry-after, open wait).
    pub until: Option<Timestamp>,
    /// The status-page state, for [`TriggerKind::StatusPage`].
    pub status: Option<StatusPageState>,
}

impl Trigger {
    /// A trigger with a measured value and a threshold; other fields empty.
    #[must_use]
    pub const fn new(kind: TriggerKind, measured: f64, threshold: f64) -> Self {
        Trigger {
            kind,
            endpoint: None,
            measured,
            threshold,
            window: None,
            samples: 0,
            until: None,
            status: None,
        }
    }

    /// The same trigger about `endpoint`.
    #[must_use]
    pub const fn at(mut self, endpoint: EndpointIdx) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// The same trigger measured over `window` from `samples` samples.
    #[must_use]
    pub const fn over(mut self, window: Option<Duration>, samples: u32) -> Self {
        self.window = window;
        self.samples = samples;
        self
    }

    /// The same trigger holding until `until`.
    #[must_use]
    pub const fn until(mut self, until: Timestamp) -> Self {
        self.until = Some(until);
        self
    }

    /// The unit of `measured` and `threshold`.
    #[must_use]
    pub const fn unit(&self) -> &'static str {
        match self.kind {
            TriggerKind::FailureRate
            | TriggerKind::SlowCallRate
            | TriggerKind::RateLimitRequests
            | TriggerKind::RateLimitTokens
            | TriggerKind::FallbackShare => "fraction",
            TriggerKind::ConsecutiveFailures
            | TriggerKind::CallFailed
            | TriggerKind::ProbeFailed
            | TriggerKind::ProbesSucceeded => "calls",
            TriggerKind::LatencyP95
            | TriggerKind::Deadline
            | TriggerKind::Recovered
            | TriggerKind::OpenWaitElapsed
            | TriggerKind::ProbeTimeout => "ms",
            TriggerKind::QueueDepth => "requests",
            TriggerKind::TenantBudget
            | TriggerKind::SessionBudget
            | TriggerKind::WorkflowBudget => "usd",
            TriggerKind::BreakerOpen
            | TriggerKind::ProbesExhausted
            | TriggerKind::ForcedOpen
            | TriggerKind::RetryAfter
            | TriggerKind::StatusPage
            | TriggerKind::Manual => "",
        }
    }

    /// The self-describing record for the audit log, naming the endpoint by id.
    #[must_use]
    pub fn record(&self, catalog: &Catalog) -> TriggerRecord {
        TriggerRecord {
            kind: self.kind,
            endpoint: self
                .endpoint
                .and_then(|i| catalog.try_endpoint(i))
                .map(|e| e.id.clone()),
            measured: self.measured,
            threshold: self.threshold,
            unit: self.unit().to_string(),
            window_ms: self
                .window
                .map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
            samples: self.samples,
            until: self.until,
            text: self.to_string(),
        }
    }
}

fn secs(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (m, t) = (self.measured, self.threshold);
        match self.kind {
            TriggerKind::FailureRate => {
                write!(f, "failure rate {:.0}% >= {:.0}%", m * 100.0, t * 100.0)?
            }
            TriggerKind::SlowCallRate => {
                write!(f, "slow-call rate {:.0}% >= {:.0}%", m * 100.0, t * 100.0)?
            }
            TriggerKind::ConsecutiveFailures => {
                write!(f, "{m:.0} consecutive capacity failures >= {t:.0}")?;
            }
            TriggerKind::BreakerOpen => f.write_str("breaker open")?,
            TriggerKind::ProbesExhausted => {
                write!(f, "half-open: all {t:.0} probe permits taken")?;
            }
            TriggerKind::ForcedOpen => f.write_str("forced open by an operator")?,
            TriggerKind::RetryAfter => f.write_str("provider asked to retry later")?,
            TriggerKind::LatencyP95 => {
                write!(f, "p95 {} >= ceiling {}", secs(m), secs(t))?;
            }
            TriggerKind::QueueDepth => write!(f, "queue depth {m:.0} >= {t:.0}")?,
            TriggerKind::StatusPage => match self.status {
                Some(s) => write!(f, "status page reports {}", status_name(s))?,
                None => f.write_str("status page reports an incident")?,
            },
            TriggerKind::RateLimitRequests => write!(
                f,
                "remaining requests {:.1}% < {:.1}% of limit",
                m * 100.0,
                t * 100.0
            )?,
            TriggerKind::RateLimitTokens => write!(
                f,
                "remaining tokens {:.1}% < {:.1}% of limit",
                m * 100.0,
                t * 100.0
            )?,
            TriggerKind::TenantBudget => write!(f, "tenant spend ${m:.2} >= limit ${t:.2}")?,
            TriggerKind::SessionBudget => write!(f, "session spend ${m:.2} >= limit ${t:.2}")?,
            TriggerKind::WorkflowBudget => write!(f, "workflow spend ${m:.2} >= limit ${t:.2}")?,
            TriggerKind::Deadline => {
                write!(f, "remaining deadline {} < recent p95 {}", secs(m), secs(t))?
            }
            TriggerKind::CallFailed => write!(f, "call failed with a capacity error")?,
            TriggerKind::Recovered => {
                write!(f, "healthy for {} >= {}", secs(m), secs(t))?;
            }
            TriggerKind::Manual => f.write_str("manual change")?,
            TriggerKind::FallbackShare => write!(
                f,
                "fallback share {:.0}% >= cap {:.0}%",
                m * 100.0,
                t * 100.0
            )?,
            TriggerKind::OpenWaitElapsed => {
                write!(f, "open wait of {} elapsed; probing", secs(t))?;
            }
            TriggerKind::ProbeFailed => {
                write!(
                    f,
                    "half-open probe failed after {m:.0} of {t:.0} probes succeeded"
                )?;
            }
            TriggerKind::ProbeTimeout => {
                write!(
                    f,
                    "half-open probes unfinished after {} >= timeout {}",
                    secs(m),
                    secs(t)
                )?;
            }
            TriggerKind::ProbesSucceeded => {
                write!(f, "{m:.0} of {t:.0} half-open probes succeeded")?;
            }
        }
        if let Some(w) = self.window {
            write!(f, " over {}", crate::policy::duration::format(w))?;
        }
        if self.samples > 0 {
            write!(f, ", {} samples", self.samples)?;
        }
        if let Some(u) = self.until {
            write!(f, " (until {u})")?;
        }
        Ok(())
    }
}

fn status_name(s: StatusPageState) -> &'static str {
    match s {
        StatusPageState::Operational => "operational",
        StatusPageState::DegradedPerformance => "degraded_performance",
        StatusPageState::PartialOutage => "partial_outage",
        StatusPageState::MajorOutage => "major_outage",
        StatusPageState::UnderMaintenance => "under_maintenance",
    }
}

/// The serializable, self-describing form of a [`Trigger`], as written to the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TriggerRecord {
    /// What fired.
    pub kind: TriggerKind,
    /// The endpoint it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointId>,
    /// The measured value.
    pub measured: f64,
    /// The threshold.
    pub threshold: f64,
    /// Unit of `measured` and `threshold` (`fraction`, `ms`, `usd`, `calls`, `requests`, or empty).
    pub unit: String,
    /// Window in milliseconds, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    /// Samples behind the measurement.
    #[serde(default)]
    pub samples: u32,
    /// Until when it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
    /// The sentence an operator reads.
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_operator_sentence() {
        let t = Trigger::new(TriggerKind::LatencyP95, 4200.0, 3000.0)
            .over(Some(Duration::from_secs(60)), 212);
        assert_eq!(
            t.to_string(),
            "p95 4.2 s >= ceiling 3.0 s over 1m, 212 samples"
        );
        let f = Trigger::new(TriggerKind::FailureRate, 0.6, 0.5).over(None, 10);
        assert_eq!(f.to_string(), "failure rate 60% >= 50%, 10 samples");
    }
}
