//! What a run reports: per-tenant figures, the tier timeline, what happened and why, the
//! audit verification, the expectations' verdicts — as a value (serialized by `--json`) and as
//! text for a terminal.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::audit::{AuditEventKind, AuditRecord, verify};
use crate::clock::Timestamp;
use crate::engine::ShadowReport;
use crate::error::{Error, SimError};
use crate::id::{SessionId, TaskKind, TenantId};

use super::run::{CallRec, Outcome, Raw};
use super::scenario::{Scenario, parse_time};

/// A run's report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// Start of virtual time.
    pub start: Timestamp,
    /// End of the workload.
    pub end: Timestamp,
    /// The policy set's digest.
    pub policy_digest: String,
    /// Per tenant.
    pub tenants: Vec<TenantSummary>,
    /// The tier of each tenant and task over time.
    pub timeline: Timeline,
    /// Changes in the timeline.
    pub transitions: Vec<Transition>,
    /// Who was suspended, asked for approval, resumed or rejected, and why (the first
    /// [`MAX_EVENTS`]).
    pub events: Vec<Event>,
    /// All such events, including those not listed.
    pub events_total: usize,
    /// Endpoint breaker changes.
    pub breakers: Vec<BreakerChange>,
    /// The audit log's verification.
    pub audit: AuditSummary,
    /// The expectations' verdicts, in file order.
    pub expectations: Vec<Verdict>,
    /// What the shadow candidate would have decided differently.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowReport>,
    /// Every expectation holds.
    pub passed: bool,
    /// The audit log (written by `--audit` and [`Report::write_audit`]; byte-identical from run
    /// to run, as the simulator's engine derives its resume tokens from the scenario's seed; not
    /// part of the JSON report, to keep it short).
    #[serde(skip)]
    pub audit_records: Vec<AuditRecord>,
}

/// How many events a report lists.
pub const MAX_EVENTS: usize = 500;

/// One tenant's figures.
#[derive(Debug, Clone, Serialize)]
pub struct TenantSummary {
    /// The tenant.
    pub tenant: TenantId,
    /// Calls made.
    pub calls: u64,
    /// Calls served.
    pub served: u64,
    /// Calls served per tier index.
    pub served_per_tier: BTreeMap<u32, u64>,
    /// Calls served below the top tier.
    pub degraded: u64,
    /// `degraded / served` (0 without served calls).
    pub degraded_share: f64,
    /// Sessions suspended.
    pub suspensions: u64,
    /// Approval requests.
    pub approvals: u64,
    /// Calls rejected (or interrupted).
    pub rejections: u64,
    /// Calls that did not finish by their deadline.
    pub deadline_misses: u64,
    /// Median latency of served calls, ms.
    pub p50_ms: u64,
    /// 95th percentile latency of served calls, ms.
    pub p95_ms: u64,
    /// What the served calls cost, USD.
    pub cost_usd: f64,
    /// What they would have cost on the tenant's primary.
    pub primary_cost_usd: f64,
    /// `primary_cost_usd - cost_usd`.
    pub saving_usd: f64,
}

/// The timeline: one character per bucket per tenant and task.
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    /// Bucket width, ms.
    pub bucket_ms: u64,
    /// What the characters mean.
    pub legend: String,
    /// Rows.
    pub rows: Vec<TimelineRow>,
}

/// One row of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineRow {
    /// The tenant.
    pub tenant: TenantId,
    /// The task.
    pub task: TaskKind,
    /// One character per bucket.
    pub cells: String,
}

/// A change in a timeline row.
#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    /// Start of the bucket where it shows.
    pub at: Timestamp,
    /// The tenant.
    pub tenant: TenantId,
    /// The task.
    pub task: TaskKind,
    /// Before (`0`-`9` a tier, `S`, `A`, `R`, `I`).
    pub from: char,
    /// After.
    pub to: char,
}

/// Something that happened to a session.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// When.
    pub at: Timestamp,
    /// The tenant.
    pub tenant: Option<TenantId>,
    /// The session.
    pub session: Option<SessionId>,
    /// `suspended`, `resumed`, `approval_requested`, `approved`, `denied`, `approval_expired`,
    /// `rejected`.
    pub kind: String,
    /// Why, in words.
    pub detail: String,
}

/// A breaker change.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerChange {
    /// When.
    pub at: Timestamp,
    /// The endpoint.
    pub endpoint: String,
    /// From.
    pub from: String,
    /// To.
    pub to: String,
    /// Why.
    pub why: String,
}

/// The audit log's state.
#[derive(Debug, Clone, Serialize)]
pub struct AuditSummary {
    /// Records written.
    pub records: u64,
    /// The hash chain verifies.
    pub verified: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Records per event kind.
    pub kinds: BTreeMap<String, u64>,
}

/// An expectation's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The expectation, in words.
    pub expectation: String,
    /// It holds.
    pub passed: bool,
    /// What was measured, in words (tenant, window, value, bound).
    pub message: String,
}

fn r6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

fn hms(t: Timestamp) -> String {
    t.to_string().get(11..19).unwrap_or("").to_string()
}

fn pct(sorted: &[u64], p: u64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let n = sorted.len() as u64;
    let rank = (p * n).div_ceil(100).max(1) - 1;
    sorted.get(rank as usize).copied().unwrap_or(0)
}

/// Builds the report of a finished run.
pub(crate) fn summarise(scenario: &Scenario, path: &Path, raw: Raw) -> Result<Report, Error> {
    let catalog = raw.set.catalog();
    let start = raw.start;
    // Per tenant.
    // One pass over the calls and one over the audit log, grouped by tenant.
    let mut by_tenant: Vec<Vec<&CallRec>> = vec![Vec::new(); raw.tenants.len()];
    for c in &raw.calls {
        if let Some(v) = by_tenant.get_mut(c.tenant) {
            v.push(c);
        }
    }
    let mut audit_of: BTreeMap<&str, Vec<&AuditRecord>> = BTreeMap::new();
    for r in &raw.audit {
        if let Some(t) = &r.event.tenant {
            audit_of.entry(t.as_str()).or_default().push(r);
        }
    }
    let mut tenants = Vec::new();
    for (tenant, calls) in raw.tenants.iter().zip(&by_tenant) {
        let audit = audit_of.get(tenant.as_str()).map_or(&[][..], Vec::as_slice);
        tenants.push(summary(tenant, calls, audit));
    }
    // Timeline.
    let bucket = u64::try_from(scenario.bucket.as_millis())
        .unwrap_or(60_000)
        .max(1);
    let n = (raw.end.as_millis().saturating_sub(start.as_millis())).div_ceil(bucket) as usize;
    let mut rows = Vec::new();
    let mut transitions = Vec::new();
    let mut pairs: Vec<(usize, usize)> = raw.calls.iter().map(|c| (c.tenant, c.task)).collect();
    pairs.sort_unstable();
    pairs.dedup();
    let counts = bucket_counts(&raw, start.as_millis(), bucket, n);
    for (ti, ki) in pairs {
        let mut cells = String::new();
        let row = counts.get(&(ti, ki));
        for b in 0..n {
            let lo = start.as_millis() + b as u64 * bucket;
            let hi = lo + bucket;
            let c = row.and_then(|r| r.get(b)).copied().unwrap_or([0; 14]);
            cells.push(cell(&raw, ti, ki, &c, lo, hi));
        }
        let (Some(tenant), Some(task)) = (raw.tenants.get(ti), raw.tasks.get(ki)) else {
            continue;
        };
        let mut prev: Option<char> = None;
        for (b, c) in cells.chars().enumerate() {
            if c == '.' {
                continue;
            }
            if let Some(p) = prev {
                if p != c {
                    transitions.push(Transition {
                        at: Timestamp::from_millis(start.as_millis() + b as u64 * bucket),
                        tenant: tenant.clone(),
                        task: task.clone(),
                        from: p,
                        to: c,
                    });
                }
            }
            prev = Some(c);
        }
        rows.push(TimelineRow {
            tenant: tenant.clone(),
            task: task.clone(),
            cells,
        });
    }
    transitions.sort_by_key(|t| t.at);
    // Events.
    let mut events = Vec::new();
    for r in &raw.audit {
        let e = &r.event;
        let (kind, detail) = match &e.kind {
            AuditEventKind::Suspension { reason, .. } => ("suspended", reason.clone()),
            AuditEventKind::Resume { .. } => ("resumed", "capacity returned".to_string()),
            AuditEventKind::ApprovalRequested { from, proposed, .. } => (
                "approval_requested",
                format!(
                    "asks to move from tier {} to tier {} ({}){}",
                    from.index,
                    proposed.index,
                    proposed.endpoint.as_ref().map_or("?", |x| x.as_str()),
                    e.approval
                        .as_ref()
                        .map_or(String::new(), |t| format!(", ticket {t}"))
                ),
            ),
            AuditEventKind::ApprovalGranted { approver } => {
                ("approved", format!("approved by {approver}"))
            }
            AuditEventKind::ApprovalDenied { approver, .. } => {
                ("denied", format!("denied by {approver}"))
            }
            AuditEventKind::ApprovalExpired {} => {
                ("approval_expired", "nobody answered in time".to_string())
            }
            AuditEventKind::Rejection { reason } => ("rejected", reason.clone()),
            _ => continue,
        };
        events.push(Event {
            at: e.time,
            tenant: e.tenant.clone(),
            session: e.session.clone(),
            kind: kind.to_string(),
            detail,
        });
    }
    let events_total = events.len();
    events.truncate(MAX_EVENTS);
    let breakers = raw
        .breaker
        .iter()
        .map(|b| BreakerChange {
            at: b.at,
            endpoint: catalog
                .try_endpoint(b.endpoint)
                .map_or_else(|| "?".to_string(), |e| e.id.to_string()),
            from: b.from.to_string(),
            to: b.to.to_string(),
            why: b.trigger.to_string(),
        })
        .collect();
    // Audit.
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for r in &raw.audit {
        *kinds.entry(r.event.kind.name().to_string()).or_default() += 1;
    }
    let verified = verify(&raw.audit);
    let audit = AuditSummary {
        records: raw.audit.len() as u64,
        verified: verified.is_ok(),
        error: verified.err().map(|e| e.to_string()),
        kinds,
    };
    // Expectations.
    let mut expectations = Vec::new();
    for (i, x) in scenario.expectations.iter().enumerate() {
        expectations.push(super::expect::check(x, i, &raw, &audit, path)?);
    }
    let passed = expectations.iter().all(|v| v.passed);
    Ok(Report {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        start,
        end: raw.end,
        policy_digest: raw.set.digest().short().to_string(),
        tenants,
        timeline: Timeline {
            bucket_ms: bucket,
            legend: "0-9 tier mostly serving, S suspended, A awaiting approval, R rejected, I interrupted stream, . no calls".into(),
            rows,
        },
        transitions,
        events,
        events_total,
        breakers,
        audit,
        expectations,
        shadow: raw.shadow.clone(),
        passed,
        audit_records: raw.audit,
    })
}

/// Outcome counts of one timeline bucket: tiers 0-9, then suspended, awaiting, rejected,
/// interrupted.
type Counts = [u32; 14];

/// Counts every call once, per (tenant, task) and bucket.
fn bucket_counts(
    raw: &Raw,
    start: u64,
    bucket: u64,
    n: usize,
) -> std::collections::HashMap<(usize, usize), Vec<Counts>> {
    let mut out: std::collections::HashMap<(usize, usize), Vec<Counts>> =
        std::collections::HashMap::new();
    for c in &raw.calls {
        let b = (c.start.saturating_sub(start) / bucket) as usize;
        let row = out
            .entry((c.tenant, c.task))
            .or_insert_with(|| vec![[0; 14]; n]);
        let Some(cell) = row.get_mut(b) else { continue };
        let k = match c.outcome {
            Outcome::Served { tier, .. } => tier.min(9) as usize,
            Outcome::Suspended => 10,
            Outcome::Awaiting => 11,
            Outcome::Rejected { .. } => 12,
            Outcome::Interrupted => 13,
        };
        if let Some(x) = cell.get_mut(k) {
            *x += 1;
        }
    }
    out
}

/// The character of one timeline bucket.
fn cell(raw: &Raw, ti: usize, ki: usize, counts: &Counts, lo: u64, hi: u64) -> char {
    let mut best: Option<(u32, usize)> = None;
    for (t, &n) in counts.iter().take(10).enumerate() {
        if n > 0 && best.is_none_or(|(m, _)| n >= m) {
            best = Some((n, t));
        }
    }
    if let Some((_, t)) = best {
        return char::from_digit(t as u32, 10).unwrap_or('?');
    }
    let waiting = |k: char| {
        raw.waits
            .iter()
            .any(|w| w.0 == ti && w.1 == ki && w.2 == k && w.3 < hi && w.4 > lo)
    };
    let [.., s, a, r, i] = *counts;
    if s > 0 || waiting('S') {
        'S'
    } else if a > 0 || waiting('A') {
        'A'
    } else if r > 0 {
        'R'
    } else if i > 0 {
        'I'
    } else {
        '.'
    }
}

pub(crate) fn summary(
    tenant: &TenantId,
    calls: &[&CallRec],
    audit: &[&AuditRecord],
) -> TenantSummary {
    let mut per_tier: BTreeMap<u32, u64> = BTreeMap::new();
    let (mut served, mut degraded, mut rejections, mut misses) = (0u64, 0u64, 0u64, 0u64);
    let (mut cost, mut primary) = (0.0f64, 0.0f64);
    let mut lat: Vec<u64> = Vec::new();
    for c in calls {
        match c.outcome {
            Outcome::Served {
                tier, degraded: d, ..
            } => {
                served += 1;
                *per_tier.entry(tier).or_default() += 1;
                if d {
                    degraded += 1;
                }
                lat.push(c.end.saturating_sub(c.start));
                if c.deadline.is_some_and(|dl| c.end > dl) {
                    misses += 1;
                }
            }
            Outcome::Rejected { deadline } => {
                rejections += 1;
                if deadline {
                    misses += 1;
                }
            }
            Outcome::Interrupted => rejections += 1,
            Outcome::Suspended | Outcome::Awaiting => {}
        }
        cost += c.cost;
        primary += c.primary_cost;
    }
    lat.sort_unstable();
    let of_tenant = |r: &&&AuditRecord| r.event.tenant.as_ref() == Some(tenant);
    let suspensions = audit
        .iter()
        .filter(of_tenant)
        .filter(|r| matches!(r.event.kind, AuditEventKind::Suspension { .. }))
        .count() as u64;
    let approvals = audit
        .iter()
        .filter(of_tenant)
        .filter(|r| matches!(r.event.kind, AuditEventKind::ApprovalRequested { .. }))
        .count() as u64;
    TenantSummary {
        tenant: tenant.clone(),
        calls: calls.len() as u64,
        served,
        served_per_tier: per_tier,
        degraded,
        degraded_share: if served == 0 {
            0.0
        } else {
            r6(degraded as f64 / served as f64)
        },
        suspensions,
        approvals,
        rejections,
        deadline_misses: misses,
        p50_ms: pct(&lat, 50),
        p95_ms: pct(&lat, 95),
        cost_usd: r6(cost),
        primary_cost_usd: r6(primary),
        saving_usd: r6(primary - cost),
    }
}

/// Parses an optional window bound of an expectation.
pub(crate) fn bound(
    s: Option<&String>,
    at: &str,
    start: Timestamp,
    path: &Path,
) -> Result<Option<u64>, Error> {
    s.map(|s| {
        parse_time(s, start).map(Timestamp::as_millis).map_err(|m| {
            Error::Sim(SimError::Invalid {
                path: path.to_path_buf(),
                at: at.to_string(),
                message: m,
            })
        })
    })
    .transpose()
}

impl Report {
    /// The report as text for a terminal: the timeline, what happened, the audit
    /// verification, the per-tenant table and the expectations.
    #[must_use]
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "scenario `{}` — seed {}, policy set {}, {} to {} UTC",
            self.scenario,
            self.seed,
            self.policy_digest,
            hms(self.start),
            hms(self.end)
        );
        let w = self
            .timeline
            .rows
            .iter()
            .map(|r| r.tenant.as_str().len() + r.task.as_str().len() + 1)
            .max()
            .unwrap_or(10)
            .max(10);
        let _ = writeln!(
            o,
            "\nTier timeline, one column per {} ({}):",
            crate::policy::duration::format(std::time::Duration::from_millis(
                self.timeline.bucket_ms
            )),
            self.timeline.legend
        );
        let mut ruler = String::new();
        let cols = self.timeline.rows.first().map_or(0, |r| r.cells.len());
        let mut c = 0;
        while c < cols {
            let t =
                Timestamp::from_millis(self.start.as_millis() + c as u64 * self.timeline.bucket_ms);
            let label = hms(t).get(0..5).unwrap_or("").to_string();
            ruler.push_str(&format!("{label:<10}"));
            c += 10;
        }
        let _ = writeln!(o, "  {:<w$} {}", "", ruler.trim_end());
        for r in &self.timeline.rows {
            let name = format!("{} {}", r.tenant, r.task);
            let _ = writeln!(o, "  {name:<w$} {}", r.cells);
        }
        if !self.transitions.is_empty() {
            let _ = writeln!(o, "\nTier transitions:");
            for t in self.transitions.iter().take(60) {
                let _ = writeln!(
                    o,
                    "  {}  {} {}: {} -> {}",
                    hms(t.at),
                    t.tenant,
                    t.task,
                    t.from,
                    t.to
                );
            }
            if self.transitions.len() > 60 {
                let _ = writeln!(o, "  ... {} more (see --json)", self.transitions.len() - 60);
            }
        }
        if !self.breakers.is_empty() {
            let _ = writeln!(o, "\nBreakers:");
            for b in self.breakers.iter().take(12) {
                let _ = writeln!(
                    o,
                    "  {}  {:<26} {} -> {} ({})",
                    hms(b.at),
                    b.endpoint,
                    b.from,
                    b.to,
                    b.why
                );
            }
            if self.breakers.len() > 12 {
                let _ = writeln!(o, "  ... {} more (see --json)", self.breakers.len() - 12);
            }
        }
        if !self.events.is_empty() {
            let _ = writeln!(
                o,
                "\nWho was suspended, asked for approval, resumed or rejected, and why:"
            );
            for e in self.events.iter().take(40) {
                let _ = writeln!(
                    o,
                    "  {}  {:<18} {:<22} {:<18} {}",
                    hms(e.at),
                    e.tenant.as_ref().map_or("", |t| t.as_str()),
                    e.session.as_ref().map_or("", |s| s.as_str()),
                    e.kind,
                    e.detail
                );
            }
            if self.events_total > 40 {
                let _ = writeln!(o, "  ... {} more (see --json)", self.events_total - 40);
            }
        }
        let _ = writeln!(
            o,
            "\nAudit log: {} records, hash chain {}",
            self.audit.records,
            if self.audit.verified {
                "verified".to_string()
            } else {
                format!(
                    "DOES NOT VERIFY: {}",
                    self.audit.error.as_deref().unwrap_or("?")
                )
            }
        );
        let kinds: Vec<String> = self
            .audit
            .kinds
            .iter()
            .map(|(k, n)| format!("{k} x{n}"))
            .collect();
        if !kinds.is_empty() {
            let _ = writeln!(o, "  {}", kinds.join(", "));
        }
        let _ = writeln!(o, "\nPer tenant:");
        let _ = writeln!(
            o,
            "  {:<18} {:>7} {:<20} {:>8} {:>5} {:>5} {:>5} {:>5} {:>8} {:>8} {:>10} {:>10}",
            "tenant",
            "calls",
            "served per tier",
            "degraded",
            "susp",
            "appr",
            "rej",
            "miss",
            "p50",
            "p95",
            "cost $",
            "saving $"
        );
        for t in &self.tenants {
            let tiers: Vec<String> = t
                .served_per_tier
                .iter()
                .map(|(k, v)| format!("t{k}:{v}"))
                .collect();
            let _ = writeln!(
                o,
                "  {:<18} {:>7} {:<20} {:>7.1}% {:>5} {:>5} {:>5} {:>5} {:>8} {:>8} {:>10.3} {:>10.3}",
                t.tenant.as_str(),
                t.calls,
                tiers.join(" "),
                t.degraded_share * 100.0,
                t.suspensions,
                t.approvals,
                t.rejections,
                t.deadline_misses,
                crate::policy::duration::format(std::time::Duration::from_millis(t.p50_ms)),
                crate::policy::duration::format(std::time::Duration::from_millis(t.p95_ms)),
                t.cost_usd,
                t.saving_usd
            );
        }
        if let Some(s) = &self.shadow {
            let _ = writeln!(
                o,
                "\nShadow policy {}: {} of {} decisions differ",
                s.candidate, s.differing, s.compared
            );
            for (t, n) in &s.tenants {
                let _ = writeln!(o, "  {t}: {n} calls affected");
            }
            for d in s.examples.iter().take(10) {
                let _ = writeln!(
                    o,
                    "  {}  {} {} {}: active {}, candidate {}",
                    hms(d.at),
                    d.tenant,
                    d.task,
                    d.session.as_ref().map_or("", |s| s.as_str()),
                    d.active,
                    d.candidate
                );
            }
        }
        if !self.expectations.is_empty() {
            let _ = writeln!(o, "\nExpectations:");
            for v in &self.expectations {
                let _ = writeln!(
                    o,
                    "  {} {}: {}",
                    if v.passed { "ok  " } else { "FAIL" },
                    v.expectation,
                    v.message
                );
            }
        }
        let failed = self.expectations.iter().filter(|v| !v.passed).count();
        let _ = writeln!(
            o,
            "\n{}",
            if failed == 0 {
                format!("PASSED ({} expectations)", self.expectations.len())
            } else {
                format!(
                    "FAILED ({failed} of {} expectations)",
                    self.expectations.len()
                )
            }
        );
        o
    }

    /// Writes the run's audit log to `path` as a JSON-lines log (replacing any file there),
    /// through [`JsonlAuditSink`](crate::audit::JsonlAuditSink): the same records, sealed the
    /// same way, so `downshift audit verify` checks it.
    ///
    /// # Errors
    /// [`SimError::Io`] or an [`AuditError`](crate::AuditError) of the sink.
    pub fn write_audit(&self, path: &Path) -> Result<(), Error> {
        use crate::audit::AuditSink as _;
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Sim(SimError::Io {
                    path: path.to_path_buf(),
                    source,
                }));
            }
        }
        let sink = crate::audit::JsonlAuditSink::open(path)?;
        futures::executor::block_on(async {
            for r in &self.audit_records {
                sink.append(r.event.clone()).await?;
            }
            sink.close().await
        })?;
        Ok(())
    }
}
