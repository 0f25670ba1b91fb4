//! Checking a scenario's expectations against a finished run. A failing check names the
//! tenant, the window, the measured value and the bound.

use std::collections::BTreeMap;
use std::path::Path;

use crate::audit::AuditEventKind;
use crate::clock::Timestamp;
use crate::error::Error;
use crate::id::SessionId;
use crate::trigger::BreakerState;

use super::report::{AuditSummary, Verdict, bound, summary};
use super::run::{CallRec, Outcome, Raw};
use super::scenario::{Expectation, MetricName, parse_time};

fn hms(ms: u64) -> String {
    Timestamp::from_millis(ms)
        .to_string()
        .get(11..19)
        .unwrap_or("")
        .to_string()
}

fn window_words(from: Option<u64>, until: Option<u64>, raw: &Raw) -> String {
    format!(
        "{}-{}",
        hms(from.unwrap_or(raw.start.as_millis())),
        hms(until.unwrap_or(raw.end.as_millis()))
    )
}

fn who(tenant: Option<&String>, task: Option<&String>) -> String {
    match (tenant, task) {
        (Some(t), Some(k)) => format!("tenant `{t}` task `{k}`"),
        (Some(t), None) => format!("tenant `{t}`"),
        (None, Some(k)) => format!("all tenants, task `{k}`"),
        (None, None) => "all tenants".to_string(),
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

struct Filter {
    tenant: Option<usize>,
    task: Option<usize>,
    from: Option<u64>,
    until: Option<u64>,
}

impl Filter {
    fn keep(&self, c: &CallRec) -> bool {
        self.tenant.is_none_or(|t| c.tenant == t)
            && self.task.is_none_or(|k| c.task == k)
            && self.from.is_none_or(|f| c.start >= f)
            && self.until.is_none_or(|u| c.start < u)
    }
}

#[allow(clippy::too_many_lines)]
pub(crate) fn check(
    x: &Expectation,
    i: usize,
    raw: &Raw,
    audit: &AuditSummary,
    path: &Path,
) -> Result<Verdict, Error> {
    let at = |f: &str| format!("expectations[{i}].{f}");
    let start = raw.start;
    let invalid = |f: &str, m: String| {
        Error::Sim(crate::error::SimError::Invalid {
            path: path.to_path_buf(),
            at: at(f),
            message: m,
        })
    };
    let tenant_ix = |t: Option<&String>| -> Result<Option<usize>, Error> {
        t.map(|t| {
            raw.tenants
                .iter()
                .position(|x| x.as_str() == t)
                .ok_or_else(|| {
                    invalid(
                        "tenant",
                        format!("tenant `{t}` makes no calls in this scenario"),
                    )
                })
        })
        .transpose()
    };
    let task_ix = |t: Option<&String>| -> Result<Option<usize>, Error> {
        t.map(|t| {
            raw.tasks
                .iter()
                .position(|x| x.as_str() == t)
                .ok_or_else(|| {
                    invalid(
                        "task",
                        format!("task `{t}` is not in this scenario's workload"),
                    )
                })
        })
        .transpose()
    };
    let filter = |tenant: Option<&String>,
                  task: Option<&String>,
                  from: Option<&String>,
                  until: Option<&String>|
     -> Result<Filter, Error> {
        Ok(Filter {
            tenant: tenant_ix(tenant)?,
            task: task_ix(task)?,
            from: bound(from, &at("from"), start, path)?,
            until: bound(until, &at("until"), start, path)?,
        })
    };
    let (expectation, passed, message) = match x {
        Expectation::NeverBelowTier {
            tenant,
            task,
            tier,
            from,
            until,
        } => {
            let f = filter(Some(tenant), task.as_ref(), from.as_ref(), until.as_ref())?;
            let below: Vec<&CallRec> = raw
                .calls
                .iter()
                .filter(|c| f.keep(c))
                .filter(|c| matches!(c.outcome, Outcome::Served { tier: t, .. } if t > *tier))
                .collect();
            let worst = below
                .iter()
                .filter_map(|c| match c.outcome {
                    Outcome::Served { tier, .. } => Some(tier),
                    _ => None,
                })
                .max();
            let w = window_words(f.from, f.until, raw);
            (
                format!(
                    "{} never below tier {tier}",
                    who(Some(tenant), task.as_ref())
                ),
                below.is_empty(),
                match (worst, below.first()) {
                    (Some(worst), Some(first)) => format!(
                        "{} in {w}: {} calls served below tier {tier}, the lowest at tier {worst}, the first at {}; bound: tier {tier} or above",
                        who(Some(tenant), task.as_ref()),
                        below.len(),
                        hms(first.start)
                    ),
                    _ => format!(
                        "{} in {w}: no call served below tier {tier}",
                        who(Some(tenant), task.as_ref())
                    ),
                },
            )
        }
        Expectation::ServedByTier {
            tenant,
            task,
            tier,
            at_least,
            from,
            until,
        } => {
            let f = filter(Some(tenant), task.as_ref(), from.as_ref(), until.as_ref())?;
            let calls: Vec<&CallRec> = raw.calls.iter().filter(|c| f.keep(c)).collect();
            let on = calls
                .iter()
                .filter(|c| matches!(c.outcome, Outcome::Served { tier: t, .. } if t == *tier))
                .count();
            let share = if calls.is_empty() {
                0.0
            } else {
                on as f64 / calls.len() as f64
            };
            (
                format!(
                    "{} served by tier {tier} at least {}",
                    who(Some(tenant), task.as_ref()),
                    pct(*at_least)
                ),
                !calls.is_empty() && share >= *at_least,
                format!(
                    "{} in {}: served by tier {tier} in {} of {} calls; bound: at least {}",
                    who(Some(tenant), task.as_ref()),
                    window_words(f.from, f.until, raw),
                    pct(share),
                    calls.len(),
                    pct(*at_least)
                ),
            )
        }
        Expectation::NoRejections {
            tenant,
            task,
            from,
            until,
        } => {
            let f = filter(Some(tenant), task.as_ref(), from.as_ref(), until.as_ref())?;
            let rejected: Vec<&CallRec> = raw
                .calls
                .iter()
                .filter(|c| f.keep(c))
                .filter(|c| matches!(c.outcome, Outcome::Rejected { .. } | Outcome::Interrupted))
                .collect();
            (
                format!("no call of {} rejected", who(Some(tenant), task.as_ref())),
                rejected.is_empty(),
                format!(
                    "{} in {}: {} calls rejected{}; bound: 0",
                    who(Some(tenant), task.as_ref()),
                    window_words(f.from, f.until, raw),
                    rejected.len(),
                    rejected.first().map_or(String::new(), |c| format!(
                        ", the first at {}",
                        hms(c.start)
                    ))
                ),
            )
        }
        Expectation::ResumedWithin {
            tenant,
            recovery,
            within,
        } => {
            let rec = parse_time(recovery, start)
                .map_err(|m| invalid("recovery", m))?
                .as_millis();
            let within_ms = u64::try_from(within.as_millis()).unwrap_or(u64::MAX);
            // Each suspension of a session, and its next resume.
            let mut open: BTreeMap<SessionId, u64> = BTreeMap::new();
            let mut waits: Vec<(SessionId, u64, Option<u64>)> = Vec::new();
            for r in &raw.audit {
                let e = &r.event;
                if tenant
                    .as_ref()
                    .is_some_and(|t| e.tenant.as_ref().is_none_or(|x| x.as_str() != t))
                {
                    continue;
                }
                let Some(s) = &e.session else { continue };
                match e.kind {
                    AuditEventKind::Suspension { .. } => {
                        open.insert(s.clone(), e.time.as_millis());
                    }
                    AuditEventKind::Resume { .. } => {
                        if let Some(since) = open.remove(s) {
                            waits.push((s.clone(), since, Some(e.time.as_millis())));
                        }
                    }
                    _ => {}
                }
            }
            for (s, since) in open {
                waits.push((s, since, None));
            }
            let mut worst: Option<(SessionId, u64, Option<u64>)> = None;
            let mut failed = 0;
            for (s, since, resumed) in &waits {
                let from = (*since).max(rec);
                let late = match resumed {
                    Some(r) => r.saturating_sub(from) > within_ms,
                    None => true,
                };
                if late {
                    failed += 1;
                    if worst.is_none() {
                        worst = Some((s.clone(), *since, *resumed));
                    }
                }
            }
            let who = tenant
                .as_ref()
                .map_or("all tenants".to_string(), |t| format!("tenant `{t}`"));
            let within_s = crate::policy::duration::format(*within);
            (
                format!(
                    "every suspended session of {who} resumed within {within_s} of recovery at {}",
                    hms(rec)
                ),
                failed == 0,
                match worst {
                    Some((s, since, Some(r))) => format!(
                        "{who}: {failed} of {} suspended sessions resumed late; session `{s}` (suspended {}) resumed at {}, {} after {}; bound: {within_s}",
                        waits.len(),
                        hms(since),
                        hms(r),
                        crate::policy::duration::format(std::time::Duration::from_millis(
                            r.saturating_sub(since.max(rec))
                        )),
                        hms(since.max(rec))
                    ),
                    Some((s, since, None)) => format!(
                        "{who}: {failed} of {} suspended sessions resumed late or never; session `{s}` (suspended {}) was never resumed by {}; bound: {within_s} after {}",
                        waits.len(),
                        hms(since),
                        hms(raw.end.as_millis()),
                        hms(since.max(rec))
                    ),
                    None => format!(
                        "{who}: {} suspended sessions, every one resumed within {within_s}",
                        waits.len()
                    ),
                },
            )
        }
        Expectation::EndpointShareAfterBreakerOpen {
            endpoint,
            max_share,
            until,
        } => {
            let idx = raw
                .set
                .catalog()
                .index_of(endpoint)
                .ok_or_else(|| invalid("endpoint", format!("unknown endpoint `{endpoint}`")))?;
            let until = bound(until.as_ref(), &at("until"), start, path)?;
            let opened = raw
                .breaker
                .iter()
                .find(|b| b.endpoint == idx && b.to == BreakerState::Open)
                .map(|b| b.at.as_millis());
            let expectation = format!(
                "at most {} of calls reach `{endpoint}` after its breaker opened",
                pct(*max_share)
            );
            match opened {
                None => (
                    expectation,
                    false,
                    format!(
                        "the breaker of `{endpoint}` never opened in {}",
                        window_words(None, until, raw)
                    ),
                ),
                Some(t0) => {
                    let in_w = |t: u64| t >= t0 && until.is_none_or(|u| t < u);
                    let calls = raw.calls.iter().filter(|c| in_w(c.start)).count();
                    let sent = raw
                        .sent
                        .iter()
                        .filter(|s| s.endpoint == idx && !s.probe && in_w(s.at))
                        .count();
                    let share = if calls == 0 {
                        0.0
                    } else {
                        sent as f64 / calls as f64
                    };
                    (
                        expectation,
                        share <= *max_share,
                        format!(
                            "all tenants in {}: {sent} of {calls} calls ({}) reached `{endpoint}` after its breaker opened at {}; bound: at most {}",
                            window_words(Some(t0), until, raw),
                            pct(share),
                            hms(t0),
                            pct(*max_share)
                        ),
                    )
                }
            }
        }
        Expectation::AuditVerifies {} => (
            "the audit chain verifies".to_string(),
            audit.verified,
            match &audit.error {
                None => format!("{} records verified", audit.records),
                Some(e) => format!("{} records; verification failed: {e}", audit.records),
            },
        ),
        Expectation::NoPolicyViolations {} => {
            let mut n = 0;
            let mut first = None;
            for c in &raw.calls {
                let Outcome::Served { tier, endpoint, .. } = c.outcome else {
                    continue;
                };
                let (Some(t), Some(k)) = (raw.tenants.get(c.tenant), raw.tasks.get(c.task)) else {
                    continue;
                };
                let ok = raw.set.view(t.as_str(), k.as_str()).is_ok_and(|v| {
                    tier <= v.floor
                        && v.tier(tier)
                            .is_some_and(|rt| rt.usable() && rt.endpoint_idx.contains(&endpoint))
                });
                if !ok {
                    n += 1;
                    if first.is_none() {
                        let ep = raw
                            .set
                            .catalog()
                            .try_endpoint(endpoint)
                            .map_or("?", |e| e.id.as_str());
                        first = Some(format!(
                            "tenant `{t}` task `{k}` served by tier {tier} ({ep}) at {}",
                            hms(c.start)
                        ));
                    }
                }
            }
            (
                "zero policy violations".to_string(),
                n == 0,
                match first {
                    Some(f) => {
                        format!("{n} served calls outside their policy, the first: {f}; bound: 0")
                    }
                    None => format!(
                        "{} served calls, each on a tier and endpoint its tenant's policy allows for the task",
                        raw.calls
                            .iter()
                            .filter(|c| matches!(c.outcome, Outcome::Served { .. }))
                            .count()
                    ),
                },
            )
        }
        Expectation::CostBelow { tenant, max_usd } => {
            let f = filter(tenant.as_ref(), None, None, None)?;
            let cost: f64 = raw.calls.iter().filter(|c| f.keep(c)).map(|c| c.cost).sum();
            (
                format!("cost of {} below ${max_usd}", who(tenant.as_ref(), None)),
                cost < *max_usd,
                format!(
                    "{} in {}: cost ${cost:.4}; bound: below ${max_usd}",
                    who(tenant.as_ref(), None),
                    window_words(None, None, raw)
                ),
            )
        }
        Expectation::Metric {
            metric,
            tenant,
            task,
            from,
            until,
            min,
            max,
        } => {
            if min.is_none() && max.is_none() {
                return Err(invalid("min", "give `min`, `max` or both".into()));
            }
            let f = filter(
                tenant.as_ref(),
                task.as_ref(),
                from.as_ref(),
                until.as_ref(),
            )?;
            let calls: Vec<&CallRec> = raw.calls.iter().filter(|c| f.keep(c)).collect();
            let in_window = |t: Timestamp| {
                f.from.is_none_or(|x| t.as_millis() >= x)
                    && f.until.is_none_or(|u| t.as_millis() < u)
            };
            let audit_count = |pred: &dyn Fn(&AuditEventKind) -> bool| {
                raw.audit
                    .iter()
                    .filter(|r| in_window(r.event.time))
                    .filter(|r| {
                        f.tenant
                            .is_none_or(|t| r.event.tenant.as_ref() == raw.tenants.get(t))
                            && f.task
                                .is_none_or(|k| r.event.task.as_ref() == raw.tasks.get(k))
                    })
                    .filter(|r| pred(&r.event.kind))
                    .count() as f64
            };
            let name = tenant.clone().unwrap_or_default();
            let s = summary(&crate::id::TenantId::new(name), &calls, &[]);
            let value = match metric {
                MetricName::Calls => calls.len() as f64,
                MetricName::Served => s.served as f64,
                MetricName::DegradedShare => s.degraded_share,
                MetricName::Suspensions => {
                    audit_count(&|k| matches!(k, AuditEventKind::Suspension { .. }))
                }
                MetricName::Approvals => {
                    audit_count(&|k| matches!(k, AuditEventKind::ApprovalRequested { .. }))
                }
                MetricName::Rejections => s.rejections as f64,
                MetricName::DeadlineMisses => s.deadline_misses as f64,
                MetricName::TierChanges => audit_count(&|k| {
                    matches!(
                        k,
                        AuditEventKind::TierChange { .. } | AuditEventKind::Promotion { .. }
                    )
                }),
                MetricName::Promotions => {
                    audit_count(&|k| matches!(k, AuditEventKind::Promotion { .. }))
                }
                MetricName::P50LatencyMs => s.p50_ms as f64,
                MetricName::P95LatencyMs => s.p95_ms as f64,
                MetricName::CostUsd => s.cost_usd,
                MetricName::ShadowDifferences => raw.shadow.as_ref().map_or(0.0, |sh| {
                    match f.tenant.and_then(|t| raw.tenants.get(t)) {
                        Some(t) => sh.tenants.get(t).copied().unwrap_or(0) as f64,
                        None => sh.differing as f64,
                    }
                }),
                MetricName::ContextTransforms => {
                    audit_count(&|k| matches!(k, AuditEventKind::ContextTransform { .. }))
                }
                MetricName::StreamContinuations => {
                    calls.iter().filter(|c| c.continued).count() as f64
                }
            };
            let metric_name = serde_json::to_value(metric)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let bounds = match (min, max) {
                (Some(a), Some(b)) => format!("between {a} and {b}"),
                (Some(a), None) => format!("at least {a}"),
                (None, Some(b)) => format!("at most {b}"),
                (None, None) => String::new(),
            };
            (
                format!(
                    "{metric_name} of {} {bounds}",
                    who(tenant.as_ref(), task.as_ref())
                ),
                min.is_none_or(|a| value >= a) && max.is_none_or(|b| value <= b),
                format!(
                    "{} in {}: {metric_name} = {}; bound: {bounds}",
                    who(tenant.as_ref(), task.as_ref()),
                    window_words(f.from, f.until, raw),
                    (value * 1e6).round() / 1e6
                ),
            )
        }
    };
    Ok(Verdict {
        expectation,
        passed,
        message,
    })
}
