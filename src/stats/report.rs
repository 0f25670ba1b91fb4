//! The per-tenant degradation report of `downshift report`: what the audit log says happened
//! to each tenant in a period (events, degradation episodes, time degraded), joined with a
//! [`StatsSnapshot`] when one is given (calls and cost per tier, the saving, each episode's
//! calls and cost delta). Rendered as a terminal table, JSON, or a self-contained HTML page
//! with a per-tenant tier timeline.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::StatsSnapshot;
use crate::audit::{AuditEventKind, AuditRecord, verify_file};
use crate::clock::Timestamp;
use crate::error::AuditError;
use crate::id::{EndpointId, SessionId, TenantId};

/// Reads a JSON-lines audit log after verifying its hash chain
/// ([`verify_file`]): a report is only made from a log that verifies.
///
/// # Errors
/// The [`AuditError`] of [`verify_file`] (naming the file, line and record).
pub fn read_verified_log(path: impl AsRef<Path>) -> Result<Vec<AuditRecord>, AuditError> {
    let path = path.as_ref();
    verify_file(path, None)?;
    let io = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        let record: AuditRecord =
            serde_json::from_str(&line).map_err(|e| AuditError::Tampered {
                seq: out.len() as u64,
                path: Some(path.to_path_buf()),
                line: Some(i as u64 + 1),
                reason: format!("not a valid audit record: {e}"),
            })?;
        out.push(record);
    }
    Ok(out)
}

/// The period a report covers (both ends optional, inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Period {
    /// Records before this are left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
    /// Records after this are left out; episodes still open end here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
}

impl Period {
    fn contains(&self, t: Timestamp) -> bool {
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u)
    }
}

/// The report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DegradationReport {
    /// The period asked for.
    pub period: Period,
    /// The first and last record time in the period (the timeline's extent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Timestamp>,
    /// See `start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Timestamp>,
    /// Audit records in the period.
    pub records: u64,
    /// Whether a stats snapshot was joined.
    pub with_stats: bool,
    /// Per tenant, sorted by id.
    pub tenants: Vec<TenantReport>,
}

/// One tenant's part of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantReport {
    /// The tenant.
    pub tenant: TenantId,
    /// Audit events by type (`tier_change`, `suspension`, ...).
    pub events: BTreeMap<String, u64>,
    /// Degradation episodes, oldest first.
    pub episodes: Vec<Episode>,
    /// Time during which at least one of the tenant's sessions was degraded or suspended, in
    /// milliseconds (episodes merged where they overlap).
    pub time_degraded_ms: u64,
    /// Calls (from the stats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<u64>,
    /// Cost in USD (from the stats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// The saving against the primary tier's prices (from the stats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saving_usd: Option<f64>,
    /// Calls and cost per tier and endpoint (from the stats).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<TierUsage>,
}

/// Calls and cost at one (tier, endpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierUsage {
    /// Tier index.
    pub tier: u32,
    /// Tier name.
    pub tier_name: String,
    /// Endpoint.
    pub endpoint: EndpointId,
    /// Attempts.
    pub attempts: u64,
    /// Cost in USD.
    pub cost_usd: f64,
    /// What it would have cost at the primary tier.
    pub primary_cost_usd: f64,
    /// The saving.
    pub saving_usd: f64,
}

/// A degradation episode as the audit log shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// The session (`None`: the tenant's session-less calls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionId>,
    /// The record that opened it.
    pub start_seq: u64,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended (promotion back to the top, or resume); `None` while open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    /// Its duration within the period (open episodes: to the period's end), in milliseconds.
    pub duration_ms: u64,
    /// The tier it left.
    pub from_tier: u32,
    /// The lowest tier reached.
    pub lowest_tier: u32,
    /// Its name.
    pub lowest_tier_name: String,
    /// Whether the session was suspended during it.
    pub suspended: bool,
    /// The trigger that opened it (kind and endpoint), when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// Calls served degraded during it (from the stats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls_affected: Option<u64>,
    /// Its cost delta against the primary's prices, in USD (from the stats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_delta_usd: Option<f64>,
}

type Key = (TenantId, Option<SessionId>);

fn trigger_text(r: &AuditRecord) -> Option<String> {
    r.event.trigger.as_ref().map(|t| {
        let kind = serde_json::to_value(t.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        match &t.endpoint {
            Some(e) => format!("{kind} on {e}"),
            None => kind,
        }
    })
}

impl DegradationReport {
    /// Builds the report from audit records (in log order) and, optionally, a stats snapshot.
    #[must_use]
    pub fn build(records: &[AuditRecord], stats: Option<&StatsSnapshot>, period: Period) -> Self {
        let mut tenants: BTreeMap<TenantId, TenantReport> = BTreeMap::new();
        let mut open: HashMap<Key, Episode> = HashMap::new();
        let mut start = None;
        let mut end: Option<Timestamp> = None;
        let mut count = 0;
        for r in records {
            let ev = &r.event;
            if !period.contains(ev.time) {
                continue;
            }
            count += 1;
            start = Some(start.map_or(ev.time, |s: Timestamp| s.min(ev.time)));
            end = Some(end.map_or(ev.time, |e| e.max(ev.time)));
            let Some(tenant) = &ev.tenant else { continue };
            let report = tenants
                .entry(tenant.clone())
                .or_insert_with(|| TenantReport::empty(tenant));
            *report.events.entry(ev.kind.name().to_string()).or_default() += 1;
            let key = (tenant.clone(), ev.session.clone());
            let new = |from: u32, lowest: u32, name: &str, suspended: bool| Episode {
                session: ev.session.clone(),
                start_seq: r.seq,
                started_at: ev.time,
                ended_at: None,
                duration_ms: 0,
                from_tier: from,
                lowest_tier: lowest,
                lowest_tier_name: name.to_string(),
                suspended,
                trigger: trigger_text(r),
                calls_affected: None,
                cost_delta_usd: None,
            };
            match &ev.kind {
                AuditEventKind::TierChange { from, to } => match open.get_mut(&key) {
                    Some(e) => {
                        if to.index > e.lowest_tier {
                            e.lowest_tier = to.index;
                            e.lowest_tier_name.clone_from(&to.name);
                        }
                        if ev.session.is_none() {
                            // Session-less calls never promote: the episode reaches to the
                            // latest degraded call.
                            e.ended_at = Some(ev.time);
                        }
                    }
                    None => {
                        let mut e = new(from.index, to.index, &to.name, false);
                        if ev.session.is_none() {
                            e.ended_at = Some(ev.time);
                        }
                        open.insert(key, e);
                    }
                },
                AuditEventKind::Suspension { from, .. } => match open.get_mut(&key) {
                    Some(e) => e.suspended = true,
                    None => {
                        open.insert(key, new(from.index, from.index, "suspended", true));
                    }
                },
                AuditEventKind::Promotion { to, .. }
                    if open.get(&key).is_some_and(|e| to.index <= e.from_tier) =>
                {
                    if let Some(mut e) = open.remove(&key) {
                        e.ended_at = Some(ev.time);
                        report.episodes.push(e);
                    }
                }
                AuditEventKind::Resume { .. } => {
                    if let Some(mut e) = open.remove(&key) {
                        e.ended_at = Some(ev.time);
                        report.episodes.push(e);
                    }
                }
                _ => {}
            }
        }
        let horizon = period
            .until
            .or_else(|| stats.map(|s| s.taken_at))
            .or(end)
            .unwrap_or(Timestamp::from_millis(0));
        for ((tenant, session), mut e) in open {
            if let Some(t) = tenants.get_mut(&tenant) {
                if session.is_some() {
                    e.ended_at = None;
                }
                t.episodes.push(e);
            }
        }
        let stats_events: HashMap<(TenantId, Option<SessionId>, u64), &super::DegradationEvent> =
            stats
                .map(|s| {
                    s.degradation_events
                        .iter()
                        .map(|e| {
                            (
                                (
                                    e.tenant.clone(),
                                    e.session.clone(),
                                    e.started_at.as_millis(),
                                ),
                                e,
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
        let by_seq: HashMap<u64, &super::DegradationEvent> = stats
            .map(|s| {
                s.degradation_events
                    .iter()
                    .filter_map(|e| e.audit_seq.map(|q| (q, e)))
                    .collect()
            })
            .unwrap_or_default();
        let by_tenant: HashMap<&str, &super::TenantStats> = stats
            .map(|s| s.tenants.iter().map(|t| (t.tenant.as_str(), t)).collect())
            .unwrap_or_default();
        for t in tenants.values_mut() {
            t.episodes.sort_by_key(|e| (e.started_at, e.start_seq));
            for e in &mut t.episodes {
                let joined = by_seq.get(&e.start_seq).copied().or_else(|| {
                    stats_events
                        .get(&(
                            t.tenant.clone(),
                            e.session.clone(),
                            e.started_at.as_millis(),
                        ))
                        .copied()
                });
                if let Some(s) = joined {
                    e.calls_affected = Some(s.calls_affected);
                    e.cost_delta_usd = Some(s.cost_delta_usd);
                    if e.session.is_none() {
                        e.ended_at = s.ended_at;
                    }
                }
                let stop = e.ended_at.unwrap_or(horizon).max(e.started_at);
                e.duration_ms = ms(stop.duration_since(e.started_at));
            }
            t.time_degraded_ms = union_ms(&t.episodes, horizon);
            if let Some(ts) = by_tenant.get(t.tenant.as_str()) {
                fill_from_stats(t, ts);
            }
        }
        if let Some(s) = stats {
            for ts in &s.tenants {
                tenants.entry(ts.tenant.clone()).or_insert_with(|| {
                    let mut t = TenantReport::empty(&ts.tenant);
                    fill_from_stats(&mut t, ts);
                    t
                });
            }
        }
        DegradationReport {
            period,
            start,
            end: end.map(|e| e.max(horizon)).or(stats.map(|s| s.taken_at)),
            records: count,
            with_stats: stats.is_some(),
            tenants: tenants.into_values().collect(),
        }
    }

    /// The report as a terminal table.
    #[must_use]
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<24} {:>7} {:>8} {:>12} {:>8} {:>11} {:>11}",
            "TENANT", "EVENTS", "EPISODES", "DEGRADED", "CALLS", "COST $", "SAVING $"
        );
        for t in &self.tenants {
            let opt_u = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
            let opt_f = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
            let _ = writeln!(
                out,
                "{:<24} {:>7} {:>8} {:>12} {:>8} {:>11} {:>11}",
                t.tenant.as_str(),
                t.events.values().sum::<u64>(),
                t.episodes.len(),
                human_ms(t.time_degraded_ms),
                opt_u(t.calls),
                opt_f(t.cost_usd),
                opt_f(t.saving_usd)
            );
            for u in &t.tiers {
                let _ = writeln!(
                    out,
                    "  tier {} {:<10} {:<18} {:>8} attempts  cost ${:.4}  saving ${:.4}",
                    u.tier,
                    u.tier_name,
                    u.endpoint.as_str(),
                    u.attempts,
                    u.cost_usd,
                    u.saving_usd
                );
            }
            for e in &t.episodes {
                let _ = writeln!(
                    out,
                    "  episode {}{} tier {} -> {} ({}) for {}{}{}{}",
                    e.started_at,
                    e.session
                        .as_ref()
                        .map_or_else(String::new, |s| format!(" session {s}")),
                    e.from_tier,
                    e.lowest_tier,
                    e.lowest_tier_name,
                    human_ms(e.duration_ms),
                    if e.ended_at.is_none() { " (open)" } else { "" },
                    e.calls_affected
                        .map_or_else(String::new, |c| format!(", {c} calls")),
                    e.cost_delta_usd
                        .map_or_else(String::new, |d| format!(", cost delta ${d:.4}")),
                );
            }
        }
        out
    }

    /// The report as a self-contained HTML page (inline CSS and SVG, no script, nothing
    /// fetched) with a per-tenant tier timeline.
    #[must_use]
    pub fn html(&self) -> String {
        let mut h = String::with_capacity(16 * 1024);
        h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>downshift degradation report</title>\n<style>\nbody{font-family:system-ui,sans-serif;margin:2rem;color:#1b1f24}\ntable{border-collapse:collapse;margin:1rem 0}\nth,td{border:1px solid #ccd;padding:.25rem .6rem;text-align:right}\nth:first-child,td:first-child{text-align:left}\n.tier0{fill:#2e7d32}.tier1{fill:#f9a825}.tier2{fill:#ef6c00}.tier3{fill:#c62828}.tier4{fill:#6a1b9a}.susp{fill:#37474f}\n.axis{stroke:#889;stroke-width:1}\ntext{font-size:11px}\n</style>\n</head>\n<body>\n<h1>Degradation report</h1>\n");
        let _ = writeln!(
            h,
            "<p id=\"period\">{} audit records, {} to {}{}</p>",
            self.records,
            esc(&self.start.map_or_else(|| "-".into(), |t| t.to_string())),
            esc(&self.end.map_or_else(|| "-".into(), |t| t.to_string())),
            if self.with_stats { " (with stats)" } else { "" }
        );
        h.push_str(&self.timeline_svg());
        h.push_str("<table id=\"tenants\">\n<thead><tr><th>Tenant</th><th>Events</th><th>Episodes</th><th>Time degraded</th><th>Calls</th><th>Cost $</th><th>Saving $</th></tr></thead>\n<tbody>\n");
        for t in &self.tenants {
            let _ = writeln!(
                h,
                "<tr data-tenant=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(t.tenant.as_str()),
                esc(t.tenant.as_str()),
                t.events.values().sum::<u64>(),
                t.episodes.len(),
                esc(&human_ms(t.time_degraded_ms)),
                t.calls.map_or_else(|| "-".into(), |c| c.to_string()),
                t.cost_usd.map_or_else(|| "-".into(), |c| format!("{c:.4}")),
                t.saving_usd
                    .map_or_else(|| "-".into(), |c| format!("{c:.4}")),
            );
        }
        h.push_str("</tbody>\n</table>\n");
        let tiers: Vec<(&TenantReport, &TierUsage)> = self
            .tenants
            .iter()
            .flat_map(|t| t.tiers.iter().map(move |u| (t, u)))
            .collect();
        if !tiers.is_empty() {
            h.push_str("<h2>Calls and cost per tier</h2>\n<table id=\"tiers\">\n<thead><tr><th>Tenant</th><th>Tier</th><th>Endpoint</th><th>Attempts</th><th>Cost $</th><th>At primary prices $</th><th>Saving $</th></tr></thead>\n<tbody>\n");
            for (t, u) in tiers {
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td>{} {}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td></tr>",
                    esc(t.tenant.as_str()),
                    u.tier,
                    esc(&u.tier_name),
                    esc(u.endpoint.as_str()),
                    u.attempts,
                    u.cost_usd,
                    u.primary_cost_usd,
                    u.saving_usd
                );
            }
            h.push_str("</tbody>\n</table>\n");
        }
        h.push_str("</body>\n</html>\n");
        h
    }

    fn timeline_svg(&self) -> String {
        const LEFT: u64 = 180;
        const WIDTH: u64 = 720;
        const ROW: u64 = 28;
        let rows = self.tenants.len() as u64;
        let height = rows * ROW + 40;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "<svg id=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" viewBox=\"0 0 {} {height}\" role=\"img\" aria-label=\"tier timeline per tenant\">",
            LEFT + WIDTH + 20,
            LEFT + WIDTH + 20
        );
        let (Some(start), Some(end)) = (self.start, self.end) else {
            s.push_str("<text x=\"10\" y=\"20\">no events in the period</text>\n</svg>\n");
            return s;
        };
        let span = end.as_millis().saturating_sub(start.as_millis()).max(1);
        let x = |t: Timestamp| {
            LEFT + (t.as_millis().saturating_sub(start.as_millis()).min(span) * WIDTH) / span
        };
        for (i, t) in self.tenants.iter().enumerate() {
            let y = 10 + i as u64 * ROW;
            let _ = writeln!(
                s,
                "<g class=\"tenant\" data-tenant=\"{}\">\n<text x=\"4\" y=\"{}\">{}</text>\n<rect class=\"tier0\" x=\"{LEFT}\" y=\"{}\" width=\"{WIDTH}\" height=\"{}\" opacity=\"0.25\"/>",
                esc(t.tenant.as_str()),
                y + 15,
                esc(t.tenant.as_str()),
                y + 2,
                ROW - 8
            );
            for e in &t.episodes {
                let x0 = x(e.started_at);
                let stop = e.ended_at.unwrap_or(end).max(
                    e.started_at
                        .saturating_add(std::time::Duration::from_millis(e.duration_ms.min(span))),
                );
                let x1 = x(stop).max(x0 + 2);
                let class = if e.suspended {
                    "susp".to_string()
                } else {
                    format!("tier{}", e.lowest_tier.min(4))
                };
                let _ = writeln!(
                    s,
                    "<rect class=\"episode {class}\" x=\"{x0}\" y=\"{}\" width=\"{}\" height=\"{}\"><title>{}</title></rect>",
                    y + 2,
                    x1 - x0,
                    ROW - 8,
                    esc(&format!(
                        "{}{}: tier {} -> {} ({}) from {} for {}",
                        t.tenant,
                        e.session
                            .as_ref()
                            .map_or_else(String::new, |s| format!(" / {s}")),
                        e.from_tier,
                        e.lowest_tier,
                        e.lowest_tier_name,
                        e.started_at,
                        human_ms(e.duration_ms)
                    ))
                );
            }
            s.push_str("</g>\n");
        }
        let ay = rows * ROW + 14;
        let _ = writeln!(
            s,
            "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{ay}\" x2=\"{}\" y2=\"{ay}\"/>\n<text x=\"{LEFT}\" y=\"{}\">{}</text>\n<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n</svg>",
            LEFT + WIDTH,
            ay + 14,
            esc(&start.to_string()),
            LEFT + WIDTH,
            ay + 14,
            esc(&end.to_string())
        );
        s
    }
}

impl TenantReport {
    fn empty(tenant: &TenantId) -> Self {
        TenantReport {
            tenant: tenant.clone(),
            events: BTreeMap::new(),
            episodes: Vec::new(),
            time_degraded_ms: 0,
            calls: None,
            cost_usd: None,
            saving_usd: None,
            tiers: Vec::new(),
        }
    }
}

fn fill_from_stats(t: &mut TenantReport, ts: &super::TenantStats) {
    t.calls = Some(ts.calls);
    t.cost_usd = Some(ts.cost_usd);
    t.saving_usd = Some(ts.saving_usd);
    t.tiers = ts
        .routes
        .iter()
        .map(|r| TierUsage {
            tier: r.tier,
            tier_name: r.tier_name.to_string(),
            endpoint: r.endpoint.clone(),
            attempts: r.attempts,
            cost_usd: r.cost_usd,
            primary_cost_usd: r.primary_cost_usd,
            saving_usd: r.saving_usd,
        })
        .collect();
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Total time covered by the episodes (overlaps counted once).
fn union_ms(episodes: &[Episode], horizon: Timestamp) -> u64 {
    let mut iv: Vec<(u64, u64)> = episodes
        .iter()
        .map(|e| {
            let a = e.started_at.as_millis();
            let b = e.ended_at.unwrap_or(horizon).as_millis().max(a);
            (a, b)
        })
        .collect();
    iv.sort_unstable();
    let mut total = 0;
    let mut cur: Option<(u64, u64)> = None;
    for (a, b) in iv {
        match cur {
            Some((ca, cb)) if a <= cb => cur = Some((ca, cb.max(b))),
            Some((ca, cb)) => {
                total += cb - ca;
                cur = Some((a, b));
            }
            None => cur = Some((a, b)),
        }
    }
    if let Some((a, b)) = cur {
        total += b - a;
    }
    total
}

fn human_ms(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
}

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_episodes_count_once() {
        let e = |a: u64, b: u64| Episode {
            session: None,
            start_seq: 0,
            started_at: Timestamp::from_millis(a),
            ended_at: Some(Timestamp::from_millis(b)),
            duration_ms: b - a,
            from_tier: 0,
            lowest_tier: 1,
            lowest_tier_name: "x".into(),
            suspended: false,
            trigger: None,
            calls_affected: None,
            cost_delta_usd: None,
        };
        let eps = [e(0, 10), e(5, 20), e(30, 40)];
        assert_eq!(union_ms(&eps, Timestamp::from_millis(100)), 30);
    }

    #[test]
    fn html_text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
