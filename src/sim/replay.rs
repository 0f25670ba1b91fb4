//! What-if replay: re-runs a recorded capacity event (a [`Recorded`] JSON-lines file written
//! by the engine's [`Recorder`](crate::engine::Recorder)) against a candidate policy set, and
//! reports what each tenant would have experienced beside what it did.
//!
//! The recorded calls arrive again at their recorded times. A provider answers an attempt the
//! way it answered the recorded attempt sent at the same moment (same class, latency,
//! retry-after, rate-limit headroom); an attempt the recording has no answer for — the
//! candidate sent it elsewhere or at another time — gets the endpoint's most recent recorded
//! answer of the last minute, or a success at the endpoint's median recorded latency.
//! Recorded provider signals are pushed again at the orchestrator tick that covers them, and
//! approvers answer as they did. Under the recorded policy a recording made by the simulator
//! replays to the same decisions, call for call.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};

use crate::clock::Timestamp;
use crate::engine::{
    ModelClient, ModelError, ModelRequest, ModelResponse, Recorded, RecordedRateLimit, TokenUsage,
};
use crate::error::{Error, SimError};
use crate::id::{EndpointId, SessionId, TaskKind, TenantId};
use crate::policy::PolicySet;
use crate::trigger::{Classification, OutcomeClass, Provider, ProviderSignal};

use super::client::{ScriptedProviders, Sent};
use super::exec::VirtualTime;
use super::report::Report;
use super::run::{Outcome, RunOptions, execute};
use super::scenario::{Approver, ApproverAnswer, Scenario, ScenarioKind};

/// A recorded call.
#[derive(Debug, Clone)]
pub(crate) struct RecCall {
    pub(crate) id: u64,
    pub(crate) at: Timestamp,
    pub(crate) tenant: TenantId,
    pub(crate) task: TaskKind,
    pub(crate) session: Option<SessionId>,
    pub(crate) deadline: Option<Timestamp>,
    pub(crate) input_tokens: u32,
    pub(crate) output_tokens: u32,
    pub(crate) new_step: bool,
}

#[derive(Debug, Clone)]
struct RecObs {
    tenant: TenantId,
    session: Option<SessionId>,
    started: u64,
    latency_ms: u64,
    outcome: OutcomeClass,
    retry_after_ms: Option<u64>,
    reset_at: Option<Timestamp>,
    rate_limit: Option<RecordedRateLimit>,
    usage: TokenUsage,
}

/// A recorded signal.
#[derive(Debug, Clone)]
pub(crate) struct RecSignal {
    pub(crate) at: Timestamp,
    endpoint: EndpointId,
    line: Recorded,
}

/// A parsed recording.
#[derive(Debug, Default)]
pub(crate) struct Recording {
    start: Option<Timestamp>,
    end: Option<Timestamp>,
    tick_ms: Option<u64>,
    seed: u64,
    pub(crate) calls: Vec<RecCall>,
    results: BTreeMap<u64, (String, Option<u32>, Option<EndpointId>, bool)>,
    obs: HashMap<EndpointId, Vec<RecObs>>,
    signals: Vec<RecSignal>,
    approvals: Vec<(TenantId, String, bool, u64)>,
}

impl Recording {
    /// Parses a recording's JSON lines; `path` names it in errors.
    pub(crate) fn parse(path: &Path, text: &str) -> Result<Recording, SimError> {
        let mut r = Recording::default();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let entry: Recorded = serde_json::from_str(line).map_err(|e| SimError::Recording {
                path: path.to_path_buf(),
                line: n + 1,
                message: e.to_string(),
            })?;
            match entry {
                Recorded::Header {
                    start,
                    end,
                    tick_ms,
                    seed,
                    ..
                } => {
                    r.start = Some(start);
                    r.end = Some(end);
                    r.tick_ms = Some(tick_ms);
                    r.seed = seed;
                }
                Recorded::Call {
                    id,
                    at,
                    tenant,
                    task,
                    session,
                    deadline,
                    requirements,
                    new_step,
                } => r.calls.push(RecCall {
                    id,
                    at,
                    tenant,
                    task,
                    session,
                    deadline,
                    input_tokens: requirements.input_tokens,
                    output_tokens: requirements.output_tokens,
                    new_step,
                }),
                Recorded::Result {
                    id,
                    outcome,
                    tier,
                    endpoint,
                    degraded,
                    ..
                } => {
                    r.results.insert(id, (outcome, tier, endpoint, degraded));
                }
                Recorded::Observation {
                    endpoint,
                    tenant,
                    session,
                    started,
                    latency_ms,
                    outcome,
                    retry_after_ms,
                    reset_at,
                    rate_limit,
                    input_tokens,
                    output_tokens,
                    ..
                } => r.obs.entry(endpoint).or_default().push(RecObs {
                    tenant,
                    session,
                    started: started.as_millis(),
                    latency_ms,
                    outcome,
                    retry_after_ms,
                    reset_at,
                    rate_limit,
                    usage: TokenUsage {
                        input_tokens,
                        output_tokens,
                    },
                }),
                ref s @ Recorded::Signal {
                    at, ref endpoint, ..
                } => r.signals.push(RecSignal {
                    at,
                    endpoint: endpoint.clone(),
                    line: s.clone(),
                }),
                Recorded::Approval {
                    tenant,
                    approver,
                    granted,
                    after_ms,
                    ..
                } => r.approvals.push((tenant, approver, granted, after_ms)),
            }
        }
        if r.calls.is_empty() {
            return Err(SimError::Recording {
                path: path.to_path_buf(),
                line: 0,
                message: "the recording holds no calls".into(),
            });
        }
        for list in r.obs.values_mut() {
            list.sort_by_key(|o| o.started);
        }
        Ok(r)
    }

    /// The signals recorded in `[now, now + tick)` (and, at the first tick, before it).
    pub(crate) fn signals_between(
        &self,
        now: Timestamp,
        tick: Duration,
        catalog: &crate::catalog::Catalog,
    ) -> Vec<(ProviderSignal, Timestamp)> {
        let first = self.start.is_none_or(|s| now <= s);
        let hi = now.saturating_add(tick);
        self.signals
            .iter()
            .filter(|s| (s.at >= now || first) && s.at < hi)
            .filter_map(|s| {
                let endpoint = catalog.index_of(s.endpoint.as_str())?;
                let Recorded::Signal {
                    queue_depth,
                    status_page,
                    not_before,
                    rate_limit,
                    ..
                } = &s.line
                else {
                    return None;
                };
                let signal = if let Some(depth) = queue_depth {
                    ProviderSignal::QueueDepth {
                        endpoint,
                        depth: *depth,
                    }
                } else if let Some(state) = status_page {
                    ProviderSignal::StatusPage {
                        endpoint,
                        state: *state,
                    }
                } else if let Some(until) = not_before {
                    ProviderSignal::NotBefore {
                        endpoint,
                        until: *until,
                    }
                } else {
                    ProviderSignal::RateLimit {
                        endpoint,
                        state: rate_limit.unwrap_or_default().state(),
                    }
                };
                Some((signal, s.at))
            })
            .collect()
    }
}

/// An attempt: endpoint, moment (ms), session.
type AttemptKey = (EndpointId, u64, Option<SessionId>);

/// Providers answering as recorded.
pub(crate) struct ReplayProviders {
    rec: Arc<Recording>,
    time: VirtualTime,
    base: Arc<ScriptedProviders>,
    used: Mutex<HashMap<AttemptKey, usize>>,
}

impl std::fmt::Debug for ReplayProviders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayProviders").finish_non_exhaustive()
    }
}

impl ReplayProviders {
    pub(crate) fn new(
        rec: Arc<Recording>,
        time: VirtualTime,
        base: Arc<ScriptedProviders>,
    ) -> Self {
        ReplayProviders {
            rec,
            time,
            base,
            used: Mutex::new(HashMap::new()),
        }
    }

    /// The recorded answer to this attempt: the same endpoint, moment, tenant and session
    /// (observations are recorded as answers arrive, so the order among attempts sent at the
    /// same moment is not the order they were sent in).
    fn answer(
        &self,
        endpoint: &EndpointId,
        now: u64,
        tenant: &str,
        session: Option<&SessionId>,
    ) -> Option<RecObs> {
        let list = self.rec.obs.get(endpoint)?;
        let lo = list.partition_point(|o| o.started < now);
        let hi = list.partition_point(|o| o.started <= now);
        let mut used = self.used.lock();
        let k = used
            .entry((endpoint.clone(), now, session.cloned()))
            .or_default();
        let same: Vec<&RecObs> = list
            .get(lo..hi)
            .unwrap_or(&[])
            .iter()
            .filter(|o| o.tenant.as_str() == tenant && o.session.as_ref() == session)
            .collect();
        if let Some(o) = same.get(*k) {
            *k += 1;
            return Some((*o).clone());
        }
        // Nothing recorded at this moment: the latest answer of the last minute.
        if lo > 0 {
            if let Some(o) = list.get(lo - 1) {
                if now.saturating_sub(o.started) <= 60_000 {
                    return Some(o.clone());
                }
            }
        }
        // Otherwise healthy, at the median recorded latency of its successes.
        let mut ok: Vec<u64> = list
            .iter()
            .filter(|o| o.outcome == OutcomeClass::Ok)
            .map(|o| o.latency_ms)
            .collect();
        ok.sort_unstable();
        Some(RecObs {
            tenant: TenantId::new(tenant),
            session: None,
            started: now,
            latency_ms: ok.get(ok.len() / 2).copied().unwrap_or(2_000),
            outcome: OutcomeClass::Ok,
            retry_after_ms: None,
            reset_at: None,
            rate_limit: None,
            usage: TokenUsage::default(),
        })
    }
}

#[async_trait]
impl ModelClient for ReplayProviders {
    async fn call(&self, req: ModelRequest<Value>) -> Result<ModelResponse<Value>, ModelError> {
        let now = self.time.now().as_millis();
        self.base.sent.lock().push(Sent {
            at: now,
            endpoint: req.endpoint_idx,
            probe: req.probe,
        });
        // The platform's own probes carry no tenant; a session's call sent as a probe does.
        let tenant = req
            .payload
            .get("tenant")
            .and_then(Value::as_str)
            .unwrap_or("downshift-probe")
            .to_string();
        let session = req
            .payload
            .get("session")
            .and_then(Value::as_str)
            .map(SessionId::new);
        let o = self
            .answer(&req.endpoint, now, &tenant, session.as_ref())
            .unwrap_or(RecObs {
                tenant: TenantId::new(tenant.as_str()),
                session: None,
                started: now,
                latency_ms: 2_000,
                outcome: OutcomeClass::Ok,
                retry_after_ms: None,
                reset_at: None,
                rate_limit: None,
                usage: TokenUsage::default(),
            });
        self.time.sleep(Duration::from_millis(o.latency_ms)).await;
        if o.outcome == OutcomeClass::Ok {
            let usage = if o.usage == TokenUsage::default() {
                TokenUsage {
                    input_tokens: req
                        .payload
                        .get("input_tokens")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                    output_tokens: req
                        .payload
                        .get("output_tokens")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                }
            } else {
                o.usage
            };
            let mut resp = ModelResponse::new(json!({"replay": true}), usage);
            if let Some(rl) = o.rate_limit {
                let mut h = Vec::new();
                if let Some(v) = rl.requests_limit {
                    h.push(("x-ratelimit-limit-requests".to_string(), v.to_string()));
                }
                if let Some(v) = rl.requests_remaining {
                    h.push(("x-ratelimit-remaining-requests".to_string(), v.to_string()));
                }
                if let Some(v) = rl.tokens_limit {
                    h.push(("x-ratelimit-limit-tokens".to_string(), v.to_string()));
                }
                if let Some(v) = rl.tokens_remaining {
                    h.push(("x-ratelimit-remaining-tokens".to_string(), v.to_string()));
                }
                resp.headers = h;
            }
            return Ok(resp);
        }
        let mut e = ModelError::classified(
            Classification {
                class: o.outcome,
                retryable: o.outcome.is_capacity(),
                retry_after: o.retry_after_ms.map(Duration::from_millis),
                reset_at: o.reset_at.map(Timestamp::to_system_time),
                rate_limit: o.rate_limit.map(|r| r.state()),
                provider: Provider::Unknown,
                rule: "replay.recorded",
            },
            format!("recorded {}", o.outcome),
        );
        e.usage = o.usage;
        Err(e)
    }
}

/// One tenant's figures in a recording and in its replay.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Side {
    /// Calls.
    pub calls: u64,
    /// Calls served per tier index.
    pub served_per_tier: BTreeMap<u32, u64>,
    /// Calls served below the top tier.
    pub degraded: u64,
    /// Calls that ended suspended.
    pub suspended: u64,
    /// Calls that ended awaiting approval.
    pub awaiting_approval: u64,
    /// Calls rejected.
    pub rejected: u64,
}

/// A tenant, as recorded and as replayed.
#[derive(Debug, Clone, Serialize)]
pub struct SideBySide {
    /// The tenant.
    pub tenant: TenantId,
    /// What it experienced under the recorded policy.
    pub recorded: Side,
    /// What it would have experienced under the candidate.
    pub candidate: Side,
}

/// A call decided differently.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayDiff {
    /// When it arrived.
    pub at: Timestamp,
    /// The tenant.
    pub tenant: TenantId,
    /// The task.
    pub task: TaskKind,
    /// The session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionId>,
    /// The recorded outcome.
    pub recorded: String,
    /// The candidate's.
    pub candidate: String,
}

/// The result of a what-if replay of a recording under a candidate policy: what each tenant
/// experienced under the recorded policy, side by side with what it would have experienced
/// under the candidate. (Not to be confused with
/// [`engine::ReplayReport`](crate::engine::ReplayReport), the continuity replay of a session's
/// degraded steps.)
#[derive(Debug, Clone, Serialize)]
pub struct WhatIfReport {
    /// Recorded calls replayed.
    pub calls: u64,
    /// Calls decided the same way (outcome, tier and endpoint).
    pub same: u64,
    /// Calls decided differently.
    pub differing: u64,
    /// Per tenant, side by side.
    pub tenants: Vec<SideBySide>,
    /// The first differing calls (at most 200).
    pub examples: Vec<ReplayDiff>,
    /// The candidate run's full report.
    pub candidate: Report,
}

fn describe(outcome: &str, tier: Option<u32>, endpoint: Option<&str>) -> String {
    match (tier, endpoint) {
        (Some(t), Some(e)) => format!("{outcome} tier {t} ({e})"),
        _ => outcome.to_string(),
    }
}

/// Replays a recording file under `candidate`.
///
/// # Errors
/// [`SimError::Io`] or [`SimError::Recording`].
pub fn replay_file(path: impl AsRef<Path>, candidate: PolicySet) -> Result<WhatIfReport, Error> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| SimError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    replay(path, &text, candidate)
}

/// Replays a recording's text under `candidate`; `path` names it in errors.
///
/// # Errors
/// [`SimError::Recording`] for a line that cannot be used.
pub fn replay(path: &Path, text: &str, candidate: PolicySet) -> Result<WhatIfReport, Error> {
    let rec = Arc::new(Recording::parse(path, text)?);
    let first = rec.calls.iter().map(|c| c.at).min().unwrap_or_default();
    let last = rec.calls.iter().map(|c| c.at).max().unwrap_or_default();
    let start = rec.start.unwrap_or(first);
    let end = rec.end.unwrap_or(last).max(last);
    let mut approvers: Vec<Approver> = Vec::new();
    for (tenant, name, granted, after) in &rec.approvals {
        if approvers.iter().all(|a| a.tenant != tenant.as_str()) {
            approvers.push(Approver {
                tenant: tenant.to_string(),
                name: name.clone(),
                answer: if *granted {
                    ApproverAnswer::Approve
                } else {
                    ApproverAnswer::Deny
                },
                after: Some(Duration::from_millis(*after)),
            });
        }
    }
    approvers.retain(|a| candidate.tenant(&a.tenant).is_ok());
    let scenario = Scenario {
        schema: None,
        kind: ScenarioKind::Scenario,
        name: format!("replay of {}", path.display()),
        description: None,
        policies: Vec::new(),
        shadow_policies: Vec::new(),
        start: start.to_string(),
        duration: end.duration_since(start).max(Duration::from_millis(1)),
        seed: rec.seed,
        tick: Duration::from_millis(rec.tick_ms.unwrap_or(10_000).max(1)),
        bucket: Duration::from_secs(60),
        endpoints: BTreeMap::new(),
        faults: Vec::new(),
        workload: Vec::new(),
        arrivals: Vec::new(),
        approvers,
        expectations: Vec::new(),
    };
    let options = RunOptions {
        policies: Some(candidate),
        ..RunOptions::default()
    };
    let raw = execute(&scenario, path, options, Some(Arc::clone(&rec)))?;
    let catalog = Arc::clone(raw.set.catalog());
    // Pair each recorded call with its replay.
    let mut replayed: BTreeMap<usize, (String, Option<u32>, Option<String>, bool)> =
        BTreeMap::new();
    for c in &raw.calls {
        let (name, tier, ep, degraded) = match c.outcome {
            Outcome::Served {
                tier,
                endpoint,
                degraded,
            } => (
                "completed",
                Some(tier),
                catalog.try_endpoint(endpoint).map(|e| e.id.to_string()),
                degraded,
            ),
            Outcome::Suspended => ("suspended", None, None, false),
            Outcome::Awaiting => ("awaiting_approval", None, None, false),
            Outcome::Rejected { .. } | Outcome::Interrupted => ("rejected", None, None, false),
        };
        replayed.insert(c.key, (name.to_string(), tier, ep, degraded));
    }
    let mut sides: BTreeMap<TenantId, (Side, Side)> = BTreeMap::new();
    let empty = Side {
        calls: 0,
        served_per_tier: BTreeMap::new(),
        degraded: 0,
        suspended: 0,
        awaiting_approval: 0,
        rejected: 0,
    };
    let add = |s: &mut Side, outcome: &str, tier: Option<u32>, degraded: bool| {
        s.calls += 1;
        match outcome {
            "completed" => {
                *s.served_per_tier.entry(tier.unwrap_or(0)).or_default() += 1;
                if degraded {
                    s.degraded += 1;
                }
            }
            "suspended" => s.suspended += 1,
            "awaiting_approval" => s.awaiting_approval += 1,
            _ => s.rejected += 1,
        }
    };
    let (mut same, mut differing) = (0u64, 0u64);
    let mut examples = Vec::new();
    for (k, c) in rec.calls.iter().enumerate() {
        let Some((ro, rt, re, rd)) = rec.results.get(&c.id) else {
            continue;
        };
        let (co, ct, ce, cd) = replayed
            .get(&k)
            .cloned()
            .unwrap_or_else(|| ("unfinished".to_string(), None, None, false));
        let entry = sides
            .entry(c.tenant.clone())
            .or_insert_with(|| (empty.clone(), empty.clone()));
        add(&mut entry.0, ro, *rt, *rd);
        add(&mut entry.1, &co, ct, cd);
        let re = re.as_ref().map(|e| e.to_string());
        if (ro.as_str(), *rt, re.as_deref()) == (co.as_str(), ct, ce.as_deref()) {
            same += 1;
        } else {
            differing += 1;
            if examples.len() < 200 {
                examples.push(ReplayDiff {
                    at: c.at,
                    tenant: c.tenant.clone(),
                    task: c.task.clone(),
                    session: c.session.clone(),
                    recorded: describe(ro, *rt, re.as_deref()),
                    candidate: describe(&co, ct, ce.as_deref()),
                });
            }
        }
    }
    let candidate = super::report::summarise(&scenario, path, raw)?;
    Ok(WhatIfReport {
        calls: same + differing,
        same,
        differing,
        tenants: sides
            .into_iter()
            .map(|(tenant, (recorded, candidate))| SideBySide {
                tenant,
                recorded,
                candidate,
            })
            .collect(),
        examples,
        candidate,
    })
}

impl WhatIfReport {
    /// The replay as text: per tenant, recorded beside candidate, then the differing calls.
    #[must_use]
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "Replay of {} recorded calls under policy set {}: {} decided the same, {} differently\n",
            self.calls, self.candidate.policy_digest, self.same, self.differing
        );
        let _ = writeln!(
            o,
            "  {:<18} {:<10} {:>6} {:<24} {:>8} {:>6} {:>6} {:>6}",
            "tenant", "", "calls", "served per tier", "degraded", "susp", "appr", "rej"
        );
        for t in &self.tenants {
            for (label, s) in [("recorded", &t.recorded), ("candidate", &t.candidate)] {
                let tiers: Vec<String> = s
                    .served_per_tier
                    .iter()
                    .map(|(k, v)| format!("t{k}:{v}"))
                    .collect();
                let _ = writeln!(
                    o,
                    "  {:<18} {:<10} {:>6} {:<24} {:>8} {:>6} {:>6} {:>6}",
                    if label == "recorded" {
                        t.tenant.as_str()
                    } else {
                        ""
                    },
                    label,
                    s.calls,
                    tiers.join(" "),
                    s.degraded,
                    s.suspended,
                    s.awaiting_approval,
                    s.rejected
                );
            }
        }
        if !self.examples.is_empty() {
            let _ = writeln!(o, "\nCalls decided differently:");
            for d in self.examples.iter().take(30) {
                let _ = writeln!(
                    o,
                    "  {}  {} {} {}: recorded {}, candidate {}",
                    d.at.to_string().get(11..19).unwrap_or(""),
                    d.tenant,
                    d.task,
                    d.session.as_ref().map_or("", |s| s.as_str()),
                    d.recorded,
                    d.candidate
                );
            }
            if self.differing > 30 {
                let _ = writeln!(o, "  ... {} more (see --json)", self.differing - 30);
            }
        }
        o
    }
}
