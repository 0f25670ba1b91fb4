//! Invariants of the [`TierRouter`] over arbitrary policies, endpoint health and calls.
//!
//! Each case generates a catalog (3–12 endpoints over several providers and regions, random
//! capabilities), a platform + template + tenant layer set (a ladder of 2–5 tiers, floors,
//! forbidden tiers, residency, data handling, task overrides, approvals, budgets, what happens
//! when nothing is left), a health state (retry-after blocks, open breakers, slow latencies,
//! status pages, forced-open endpoints) and calls (task kinds, requirements, deadlines, session
//! tiers, approvals, attempts). The routing rules are checked against the generated *spec*, not
//! against the resolved views, so a resolution bug cannot hide a routing bug.

use std::sync::Arc;
use std::time::Duration;

use downshift::policy::{Exhausted, PolicySet, PolicyStore, Source, StatusPageState};
use downshift::router::{Attempt, CallContext, Decision, ReasonKind, TierRouter};
use downshift::trigger::{BreakerMode, Observation, ProviderSignal, TriggerEvaluator, Verdict};
use downshift::{
    CapabilityGap, EndpointIdx, OutcomeClass, Requirements, SessionId, TaskKind, TenantId,
    Timestamp,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};

const REGIONS: [&str; 5] = [
    "eu-west-1",
    "eu-central-1",
    "us-east-1",
    "us-west-2",
    "global",
];
const PATTERNS: [&str; 5] = ["eu-*", "us-*", "global", "eu-west-1", "us-east-1"];
const TASKS: [&str; 4] = ["summarization", "code_generation", "triage", "copywriting"];
/// A task kind no policy mentions: it gets the tenant's default view.
const UNLISTED: &str = "translation";
const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);

// ---------------------------------------------------------------------------------------------
// The generated world

#[derive(Debug, Clone)]
struct Ep {
    provider: u8,
    region: u8,
    window: u32,
    max_out: u32,
    tools: bool,
    parallel: bool,
    vision: bool,
    json_mode: bool,
    quality: f64,
    code_quality: f64,
    self_hosted: bool,
    retains: bool,
}

#[derive(Debug, Clone)]
struct TierSpec {
    extra: usize,
    tasks: Option<u8>,
    least_latency: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Appr {
    Never,
    Always,
    AtOrBelow(u8),
}

#[derive(Debug, Clone)]
struct TaskOv {
    task: u8,
    floor: Option<u8>,
    allowed: Option<Vec<u8>>,
    min_quality: Option<f64>,
    approval: Option<Appr>,
    suspend: Option<bool>,
    deadline_s: Option<u64>,
}

#[derive(Debug, Clone)]
struct TenantSpec {
    floor: Option<u8>,
    forbid: Vec<u8>,
    regions: Option<Vec<u8>>,
    approval: Appr,
    suspend: bool,
    /// (action: 0 downshift, 1 suspend, 2 reject; downshift tier; overspent)
    budget: Option<(u8, u8, bool)>,
    probe_eligible: bool,
    realtime: bool,
    overrides: Vec<TaskOv>,
    p95_ceiling_ms: Option<u64>,
    forbid_retention: bool,
    self_hosted_only: bool,
    default_deadline_s: Option<u64>,
}

#[derive(Debug, Clone)]
struct Spec {
    eps: Vec<Ep>,
    tiers_raw: Vec<TierSpec>,
    suspension: bool,
    fit: bool,
    attempts_per_endpoint: u32,
    max_attempts: u32,
    healthy_for_s: u64,
    min_dwell_s: u64,
    straight_up: bool,
    herd: Option<f64>,
    tenants: Vec<TenantSpec>,
}

/// The ladder after normalisation: tier k takes the next `1 + extra` endpoints in catalog order
/// while they last (at least two tiers always fit in three endpoints).
#[derive(Debug, Clone)]
struct Tier {
    eps: Vec<usize>,
    tasks: Option<Vec<&'static str>>,
    least_latency: bool,
}

impl Spec {
    fn tiers(&self) -> Vec<Tier> {
        let mut out = Vec::new();
        let mut next = 0;
        for t in &self.tiers_raw {
            if next >= self.eps.len() {
                break;
            }
            let end = (next + 1 + t.extra).min(self.eps.len());
            out.push(Tier {
                eps: (next..end).collect(),
                // Only lower tiers serve a subset of task kinds (a "minimal" tier for triage).
                tasks: t.tasks.filter(|_| !out.is_empty()).map(|m| {
                    TASKS
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| m & (1 << i) != 0)
                        .map(|(_, t)| *t)
                        .collect()
                }),
                least_latency: t.least_latency,
            });
            next = end;
        }
        out
    }

    fn n(&self) -> u32 {
        self.tiers().len() as u32
    }
}

/// One tenant's constraints as the generator meant them (normalised to the ladder).
#[derive(Debug, Clone)]
struct Meant {
    floor: u32,
    forbid: Vec<u32>,
    regions: Option<Vec<&'static str>>,
    approval: Appr,
    suspend: bool,
    budget: Option<(u8, u32, bool)>,
    overrides: Vec<(&'static str, MeantOv)>,
}

#[derive(Debug, Clone)]
struct MeantOv {
    floor: Option<u32>,
    allowed: Option<Vec<u32>>,
    min_quality: Option<f64>,
    approval: Option<Appr>,
    suspend: Option<bool>,
    deadline_s: Option<u64>,
}

fn stricter(a: Appr, b: Appr) -> Appr {
    match (a, b) {
        (Appr::Always, _) | (_, Appr::Always) => Appr::Always,
        (Appr::AtOrBelow(x), Appr::AtOrBelow(y)) => Appr::AtOrBelow(x.min(y)),
        (Appr::AtOrBelow(x), Appr::Never) | (Appr::Never, Appr::AtOrBelow(x)) => Appr::AtOrBelow(x),
        (Appr::Never, Appr::Never) => Appr::Never,
    }
}

fn meant(spec: &Spec, t: &TenantSpec) -> Meant {
    let n = spec.n();
    let floor = t.floor.map_or(n - 1, |f| u32::from(f) % n);
    let norm = |a: Appr| match a {
        Appr::AtOrBelow(k) => Appr::AtOrBelow((u32::from(k) % n) as u8),
        other => other,
    };
    let approval = norm(t.approval);
    let suspend_ok = spec.suspension;
    let mut overrides: Vec<(&'static str, MeantOv)> = Vec::new();
    for o in &t.overrides {
        let task = TASKS[o.task as usize % TASKS.len()];
        if overrides.iter().any(|(k, _)| *k == task) {
            continue;
        }
        overrides.push((
            task,
            MeantOv {
                floor: o.floor.map(|f| u32::from(f) % (floor + 1)),
                allowed: o.allowed.as_ref().map(|v| {
                    let mut v: Vec<u32> = v.iter().map(|x| u32::from(*x) % n).collect();
                    v.sort_unstable();
                    v.dedup();
                    v
                }),
                min_quality: o.min_quality,
                approval: o.approval.map(|a| stricter(approval, norm(a))),
                suspend: o.suspend.map(|s| s && suspend_ok),
                deadline_s: o.deadline_s,
            },
        ));
    }
    Meant {
        floor,
        forbid: {
            let mut v: Vec<u32> = t.forbid.iter().map(|x| u32::from(*x) % n).collect();
            v.sort_unstable();
            v.dedup();
            v
        },
        regions: t.regions.as_ref().map(|v| {
            v.iter()
                .map(|r| PATTERNS[*r as usize % PATTERNS.len()])
                .collect()
        }),
        approval,
        suspend: t.suspend && suspend_ok,
        budget: t.budget.map(|(a, k, over)| {
            let a = if a == 1 && !suspend_ok { 2 } else { a };
            (a, u32::from(k) % n, over)
        }),
        overrides,
    }
}

fn appr_json(a: Appr) -> Value {
    match a {
        Appr::Never => json!("never"),
        Appr::Always => json!("always"),
        Appr::AtOrBelow(k) => json!({"at_or_below": k}),
    }
}

fn sources(spec: &Spec) -> Vec<Source> {
    let eps: Vec<Value> = spec
        .eps
        .iter()
        .enumerate()
        .map(|(i, e)| {
            json!({
                "id": format!("e{i}"), "provider": format!("p{}", e.provider), "model": format!("m{i}"),
                "region": REGIONS[e.region as usize % REGIONS.len()],
                "capabilities": {"context_window": e.window, "max_output_tokens": e.max_out.min(e.window),
                    "tools": e.tools, "parallel_tool_calls": e.parallel, "vision": e.vision,
                    "json_mode": e.json_mode},
                "pricing": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
                "quality": {"*": e.quality, "code_generation": e.code_quality},
                "data": {"deployment": if e.self_hosted { "self_hosted" } else { "cloud" },
                         "retains_prompts": e.retains}
            })
        })
        .collect();
    let catalog = json!({"kind": "catalog", "endpoints": eps});
    let mut platform = json!({
        "kind": "policy", "id": "platform", "version": "1", "level": "platform",
        "task_kinds": TASKS,
        "continuity": {"fit_to_smaller_window": spec.fit},
        "retry": {"attempts_per_endpoint": spec.attempts_per_endpoint, "max_attempts": spec.max_attempts},
        "recovery": {"promotion": {"healthy_for": format!("{}s", spec.healthy_for_s),
            "min_dwell": format!("{}s", spec.min_dwell_s),
            "mode": if spec.straight_up { "straight_up" } else { "one_tier" }}}
    });
    if let Some(share) = spec.herd {
        platform["herd"] = json!({"max_fallback_share": share, "min_moved_calls": 3});
    }
    let tiers: Vec<Value> = spec
        .tiers()
        .iter()
        .enumerate()
        .map(|(k, t)| {
            let mut v = json!({
                "name": format!("tier{k}"),
                "endpoints": t.eps.iter().map(|i| format!("e{i}")).collect::<Vec<_>>(),
                "selection": if t.least_latency { "least_latency" } else { "in_order" }
            });
            if let Some(ts) = &t.tasks {
                v["tasks"] = json!(ts);
            }
            v
        })
        .collect();
    let mut template = json!({
        "kind": "policy", "id": "agents", "version": "1", "level": "template",
        "extends": "platform", "tiers": tiers
    });
    if spec.suspension {
        template["suspension"] = json!({"max_duration": "4h"});
    }
    let mut out = vec![
        Source::new("catalog.json", catalog.to_string()),
        Source::new("platform.json", platform.to_string()),
        Source::new("agents.json", template.to_string()),
    ];
    for (k, t) in spec.tenants.iter().enumerate() {
        let m = meant(spec, t);
        let mut c = json!({
            "floor": m.floor,
            "approval": appr_json(m.approval),
            "when_exhausted": if m.suspend { "suspend" } else { "reject" },
            "on_approval_timeout": if spec.suspension { "suspend" } else { "reject" },
            "probe_eligible": t.probe_eligible,
            "notification": if t.realtime { "realtime" } else { "silent" },
            "data": {"forbid_prompt_retention": t.forbid_retention, "self_hosted_only": t.self_hosted_only}
        });
        if !m.forbid.is_empty() {
            c["forbid_tiers"] = json!(m.forbid);
        }
        if let Some(r) = &m.regions {
            c["allowed_regions"] = json!(r);
        }
        if let Some((a, k, _)) = m.budget {
            let on = match a {
                0 => json!({"downshift_to": k}),
                1 => json!("suspend"),
                _ => json!("reject"),
            };
            c["budget"] = json!({"tenant": {"limit_usd": 1.0, "window": "1h"}, "on_exceeded": on});
        }
        let mut sla = json!({});
        if let Some(ms) = t.p95_ceiling_ms {
            sla["p95_ceiling"] = json!(format!("{ms}ms"));
        }
        if let Some(s) = t.default_deadline_s {
            sla["default_deadline"] = json!(format!("{s}s"));
        }
        c["sla"] = sla;
        let mut tasks = serde_json::Map::new();
        for (task, o) in &m.overrides {
            let mut v = json!({});
            if let Some(f) = o.floor {
                v["floor"] = json!(f);
            }
            if let Some(a) = &o.allowed {
                v["allowed_tiers"] = json!(a);
            }
            if let Some(q) = o.min_quality {
                v["min_quality"] = json!(q);
            }
            if let Some(a) = o.approval {
                v["approval"] = appr_json(a);
            }
            if let Some(s) = o.suspend {
                v["when_exhausted"] = json!(if s { "suspend" } else { "reject" });
            }
            if let Some(d) = o.deadline_s {
                v["deadline"] = json!(format!("{d}s"));
            }
            tasks.insert((*task).to_string(), v);
        }
        if !tasks.is_empty() {
            c["tasks"] = Value::Object(tasks);
        }
        let layer = json!({
            "kind": "policy", "id": format!("t{k}"), "version": "1", "level": "tenant",
            "extends": "agents", "constraints": c
        });
        out.push(Source::new(format!("t{k}.json"), layer.to_string()));
    }
    out
}

fn ep_strategy() -> impl Strategy<Value = Ep> {
    (
        0u8..4,
        0u8..5,
        prop::sample::select(vec![8_000u32, 32_000, 128_000, 200_000]),
        prop::sample::select(vec![2_048u32, 4_096, 8_192]),
        prop::bool::weighted(0.75),
        prop::bool::weighted(0.5),
        prop::bool::weighted(0.4),
        prop::bool::weighted(0.6),
        prop::sample::select(vec![0.5, 0.7, 0.85, 1.0]),
        prop::sample::select(vec![0.5, 0.7, 0.85, 1.0]),
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(
                provider,
                region,
                window,
                max_out,
                tools,
                parallel,
                vision,
                json_mode,
                quality,
                code_quality,
                self_hosted,
                retains,
            )| Ep {
                provider,
                region,
                window,
                max_out,
                tools,
                parallel,
                vision,
                json_mode,
                quality,
                code_quality,
                self_hosted,
                retains,
            },
        )
}

fn appr_strategy() -> impl Strategy<Value = Appr> {
    prop_oneof![
        6 => Just(Appr::Never),
        1 => Just(Appr::Always),
        3 => (0u8..5).prop_map(Appr::AtOrBelow),
    ]
}

fn override_strategy() -> impl Strategy<Value = TaskOv> {
    (
        0u8..4,
        prop::option::weighted(0.4, 0u8..5),
        prop::option::weighted(0.25, prop::collection::vec(0u8..5, 1..4)),
        prop::option::weighted(0.25, prop::sample::select(vec![0.6, 0.8, 0.9])),
        prop::option::weighted(0.3, appr_strategy()),
        prop::option::weighted(0.3, any::<bool>()),
        prop::option::weighted(0.2, 1u64..60),
    )
        .prop_map(
            |(task, floor, allowed, min_quality, approval, suspend, deadline_s)| TaskOv {
                task,
                floor,
                allowed,
                min_quality,
                approval,
                suspend,
                deadline_s,
            },
        )
}

fn tenant_strategy() -> impl Strategy<Value = TenantSpec> {
    (
        (
            prop::option::weighted(0.7, 0u8..5),
            prop::option::weighted(0.2, 0u8..5).prop_map(|f| f.into_iter().collect::<Vec<u8>>()),
            prop::option::weighted(0.25, prop::collection::vec(0u8..5, 1..3)),
            appr_strategy(),
            any::<bool>(),
            prop::option::weighted(0.3, (0u8..3, 0u8..5, any::<bool>())),
            prop::bool::weighted(0.8),
        ),
        (
            any::<bool>(),
            prop::collection::vec(override_strategy(), 0..3),
            prop::option::weighted(0.3, 500u64..5_000),
            prop::bool::weighted(0.15),
            prop::bool::weighted(0.08),
            prop::option::weighted(0.2, 1u64..60),
        ),
    )
        .prop_map(
            |(
                (floor, forbid, regions, approval, suspend, budget, probe_eligible),
                (realtime, overrides, p95_ceiling_ms, forbid_retention, self_hosted_only, dd),
            )| TenantSpec {
                floor,
                forbid,
                regions,
                approval,
                suspend,
                budget,
                probe_eligible,
                realtime,
                overrides,
                p95_ceiling_ms,
                forbid_retention,
                self_hosted_only,
                default_deadline_s: dd,
            },
        )
}

fn spec_strategy() -> impl Strategy<Value = Spec> {
    (
        prop::collection::vec(ep_strategy(), 3..=12),
        prop::collection::vec(
            (
                0usize..3,
                prop::option::weighted(0.2, 1u8..16),
                prop::bool::weighted(0.3),
            )
                .prop_map(|(extra, tasks, least_latency)| TierSpec {
                    extra,
                    tasks,
                    least_latency,
                }),
            2..=5,
        ),
        (
            prop::bool::weighted(0.6),
            any::<bool>(),
            1u32..3,
            1u32..7,
            prop::sample::select(vec![30u64, 120, 300]),
            prop::sample::select(vec![60u64, 300, 600]),
            any::<bool>(),
            prop::option::weighted(0.2, prop::sample::select(vec![0.3, 0.5, 0.8])),
        ),
        prop::collection::vec(tenant_strategy(), 1..=3),
    )
        .prop_map(
            |(
                eps,
                tiers_raw,
                (suspension, fit, ape, max_attempts, healthy_for_s, min_dwell_s, straight_up, herd),
                tenants,
            )| Spec {
                eps,
                tiers_raw,
                suspension,
                fit,
                attempts_per_endpoint: ape,
                max_attempts,
                healthy_for_s,
                min_dwell_s,
                straight_up,
                herd,
                tenants,
            },
        )
}

/// Something wrong with one endpoint at `T0`.
#[derive(Debug, Clone, Copy)]
enum Health {
    /// A 429 with retry-after.
    RetryAfter { ep: u8, secs: u16 },
    /// Five `overloaded` in a row, `ago_s` seconds before `T0` (open, or past its wait).
    Open { ep: u8, ago_s: u16 },
    /// Recent successful calls at this latency.
    Slow { ep: u8, ms: u32 },
    /// The status page reports this state.
    Status { ep: u8, state: u8 },
    /// An operator forced the breaker open.
    Forced { ep: u8 },
}

fn health_strategy() -> impl Strategy<Value = Health> {
    prop_oneof![
        3 => (any::<u8>(), 1u16..600).prop_map(|(ep, secs)| Health::RetryAfter { ep, secs }),
        2 => (any::<u8>(), 0u16..120).prop_map(|(ep, ago_s)| Health::Open { ep, ago_s }),
        2 => (any::<u8>(), 100u32..9_000).prop_map(|(ep, ms)| Health::Slow { ep, ms }),
        1 => (any::<u8>(), 0u8..5).prop_map(|(ep, state)| Health::Status { ep, state }),
        1 => any::<u8>().prop_map(|ep| Health::Forced { ep }),
    ]
}

const OUTCOMES: [OutcomeClass; 5] = [
    OutcomeClass::RateLimited,
    OutcomeClass::Overloaded,
    OutcomeClass::ServerError,
    OutcomeClass::Timeout,
    OutcomeClass::QuotaExhausted,
];

#[derive(Debug, Clone)]
struct Call {
    tenant: u8,
    /// 0..4: `TASKS`; 4: `UNLISTED`.
    task: u8,
    req: Requirements,
    deadline_ms: Option<u64>,
    session: Option<u8>,
    session_tier: Option<(u8, u32)>,
    boundary: bool,
    approved_to: Option<u8>,
    attempts: Vec<(u8, u8)>,
}

fn call_strategy() -> impl Strategy<Value = Call> {
    (
        (
            0u8..3,
            0u8..5,
            prop::sample::select(vec![0u32, 1_000, 20_000, 60_000, 150_000, 250_000]),
            prop::sample::select(vec![0u32, 500, 3_000, 6_000]),
            prop::bool::weighted(0.3),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.15),
            prop::bool::weighted(0.2),
        ),
        (
            prop::option::weighted(0.3, 200u64..60_000),
            prop::option::weighted(0.6, 0u8..3),
            prop::option::weighted(0.5, (0u8..5, 0u32..1_200)),
            prop::bool::weighted(0.7),
            prop::option::weighted(0.2, 0u8..5),
            prop::collection::vec((any::<u8>(), 0u8..5), 0..4),
        ),
    )
        .prop_map(
            |(
                (tenant, task, input, output, tools, parallel, vision, json_mode),
                (deadline_ms, session, session_tier, boundary, approved_to, attempts),
            )| Call {
                tenant,
                task,
                req: Requirements {
                    input_tokens: input,
                    output_tokens: output,
                    tools,
                    parallel_tool_calls: parallel,
                    vision,
                    json_mode,
                },
                deadline_ms,
                session,
                session_tier,
                boundary,
                approved_to,
                attempts,
            },
        )
}

// ---------------------------------------------------------------------------------------------
// Building and querying a world

struct World {
    router: TierRouter,
    eval: Arc<TriggerEvaluator>,
    set: Arc<PolicySet>,
}

fn world(spec: &Spec) -> Option<World> {
    let set = PolicySet::from_sources(sources(spec)).ok()?;
    let eval = Arc::new(
        TriggerEvaluator::for_catalog(&set.evaluator_settings(), set.catalog(), 11).unwrap(),
    );
    let store = Arc::new(PolicyStore::new(set));
    let set = store.current();
    Some(World {
        router: TierRouter::new(store, Arc::clone(&eval), 5),
        eval,
        set,
    })
}

fn ep_idx(w: &World, i: usize) -> EndpointIdx {
    w.set.catalog().index_of(&format!("e{i}")).unwrap()
}

fn ep_num(w: &World, e: EndpointIdx) -> usize {
    w.set.catalog().endpoint(e).id.as_str()[1..]
        .parse()
        .unwrap()
}

fn at_ms(ms: i64) -> Timestamp {
    Timestamp::from_millis((T0.as_millis() as i64 + ms) as u64)
}

/// Applies the health events (in time order) and each tenant's spending.
fn apply(w: &World, spec: &Spec, health: &[Health]) {
    let ops = TenantId::new("ops");
    let n = spec.eps.len();
    let mut timed: Vec<(i64, Health)> = health
        .iter()
        .map(|h| {
            let t = match *h {
                Health::Open { ago_s, .. } => -i64::from(ago_s) * 1000 - 10,
                Health::Slow { .. } => -10_000,
                _ => -1_000,
            };
            (t, *h)
        })
        .collect();
    timed.sort_by_key(|(t, _)| *t);
    for (t, h) in timed {
        let at = at_ms(t);
        match h {
            Health::RetryAfter { ep, secs } => {
                let obs = Observation::new(
                    ep_idx(w, ep as usize % n),
                    &ops,
                    OutcomeClass::RateLimited,
                    at,
                    Duration::from_millis(5),
                )
                .retry_after(Duration::from_secs(u64::from(secs)));
                w.eval.observe(&obs, at_ms(t + 5)).unwrap();
            }
            Health::Open { ep, .. } => {
                for i in 0..5 {
                    let obs = Observation::new(
                        ep_idx(w, ep as usize % n),
                        &ops,
                        OutcomeClass::Overloaded,
                        at_ms(t + i),
                        Duration::ZERO,
                    );
                    w.eval.observe(&obs, at_ms(t + i)).unwrap();
                }
            }
            Health::Slow { ep, ms } => {
                for i in 0..25 {
                    let obs = Observation::new(
                        ep_idx(w, ep as usize % n),
                        &ops,
                        OutcomeClass::Ok,
                        at_ms(t + i),
                        Duration::from_millis(u64::from(ms)),
                    );
                    w.eval.observe(&obs, at_ms(t + i + i64::from(ms))).unwrap();
                }
            }
            Health::Status { ep, state } => {
                let state = [
                    StatusPageState::Operational,
                    StatusPageState::DegradedPerformance,
                    StatusPageState::PartialOutage,
                    StatusPageState::MajorOutage,
                    StatusPageState::UnderMaintenance,
                ][state as usize % 5];
                w.eval
                    .signal(
                        &ProviderSignal::StatusPage {
                            endpoint: ep_idx(w, ep as usize % n),
                            state,
                        },
                        at,
                    )
                    .unwrap();
            }
            Health::Forced { ep } => {
                w.eval
                    .set_mode(ep_idx(w, ep as usize % n), BreakerMode::ForcedOpen, at)
                    .unwrap();
            }
        }
    }
    spend(w, spec);
}

fn spend(w: &World, spec: &Spec) {
    for (k, t) in spec.tenants.iter().enumerate() {
        let m = meant(spec, t);
        let Some((_, _, over)) = m.budget else {
            continue;
        };
        let tenant = TenantId::new(format!("t{k}"));
        let view = w.set.view(tenant.as_str(), UNLISTED).unwrap();
        let budget = view.tenant_triggers.budget.clone().unwrap();
        let at = at_ms(-30_000);
        let obs = Observation::new(
            ep_idx(w, 0),
            &tenant,
            OutcomeClass::Ok,
            at,
            Duration::from_millis(1),
        )
        .cost(if over { 1.5 } else { 0.2 })
        .budget(&budget);
        w.eval.observe(&obs, at).unwrap();
    }
}

/// Owned ids a call borrows.
struct Ids {
    tenant: TenantId,
    task: TaskKind,
    session: SessionId,
    attempts: Vec<Attempt>,
}

fn ids(w: &World, spec: &Spec, call: &Call) -> Ids {
    let n = spec.eps.len();
    Ids {
        tenant: TenantId::new(format!("t{}", call.tenant as usize % spec.tenants.len())),
        task: TaskKind::new(task_name(call)),
        session: SessionId::new(format!("s{}", call.session.unwrap_or(0))),
        attempts: call
            .attempts
            .iter()
            .map(|&(e, o)| Attempt {
                endpoint: ep_idx(w, e as usize % n),
                outcome: OUTCOMES[o as usize % OUTCOMES.len()],
            })
            .collect(),
    }
}

fn task_name(call: &Call) -> &'static str {
    TASKS.get(call.task as usize).copied().unwrap_or(UNLISTED)
}

fn ctx<'a>(spec: &Spec, call: &Call, ids: &'a Ids, now: Timestamp) -> CallContext<'a> {
    let mut c = CallContext::new(&ids.tenant, &ids.task)
        .requirements(call.req)
        .step_boundary(call.boundary)
        .attempts(&ids.attempts);
    if call.session.is_some() {
        c = c.session(&ids.session);
    }
    if let Some(d) = call.deadline_ms {
        c = c.deadline(now.saturating_add(Duration::from_millis(d)));
    }
    if let Some((tier, ago)) = call.session_tier {
        c = c.on_tier(
            u32::from(tier) % spec.n(),
            now.saturating_sub(Duration::from_secs(u64::from(ago))),
        );
    }
    if let Some(a) = call.approved_to {
        c = c.approved_to(u32::from(a) % spec.n());
    }
    c
}

// ---------------------------------------------------------------------------------------------
// The oracle: what the spec permits

fn region_ok(pattern: &str, region: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(p) => region.starts_with(p),
        None => pattern == region,
    }
}

/// Whether the spec permits `ep` at `tier` for this tenant and task; `Err` says why not.
fn permitted(
    spec: &Spec,
    tenant: &Meant,
    t: &TenantSpec,
    task: &str,
    tier: u32,
    ep: usize,
) -> Result<(), String> {
    let ladder = spec.tiers();
    let ov = tenant
        .overrides
        .iter()
        .find(|(k, _)| *k == task)
        .map(|(_, o)| o);
    if tier > tenant.floor {
        return Err(format!(
            "tier {tier} below the tenant floor {}",
            tenant.floor
        ));
    }
    if let Some(f) = ov.and_then(|o| o.floor) {
        if tier > f {
            return Err(format!("tier {tier} below the task floor {f}"));
        }
    }
    if tenant.forbid.contains(&tier) {
        return Err(format!("tier {tier} forbidden"));
    }
    if let Some(a) = ov.and_then(|o| o.allowed.as_ref()) {
        if !a.contains(&tier) {
            return Err(format!("tier {tier} not allowed for {task}"));
        }
    }
    let lt = &ladder[tier as usize];
    if let Some(ts) = &lt.tasks {
        if !ts.contains(&task) {
            return Err(format!("tier {tier} does not serve {task}"));
        }
    }
    if !lt.eps.contains(&ep) {
        return Err(format!("e{ep} is not in tier {tier}"));
    }
    let e = &spec.eps[ep];
    let region = REGIONS[e.region as usize % REGIONS.len()];
    if let Some(rs) = &tenant.regions {
        if !rs.iter().any(|p| region_ok(p, region)) {
            return Err(format!("e{ep} in {region}, outside {rs:?}"));
        }
    }
    if t.forbid_retention && e.retains {
        return Err(format!("e{ep} retains prompts"));
    }
    if t.self_hosted_only && !e.self_hosted {
        return Err(format!("e{ep} is not self-hosted"));
    }
    if let Some(min) = ov.and_then(|o| o.min_quality) {
        let q = if task == "code_generation" {
            e.code_quality
        } else {
            e.quality
        };
        if q < min {
            return Err(format!("e{ep} quality {q} < {min}"));
        }
    }
    Ok(())
}

/// What the request lacks at this endpoint, computed from the spec.
fn lacks(e: &Ep, r: &Requirements) -> Option<&'static str> {
    if (r.tools && !e.tools)
        || (r.parallel_tool_calls && !e.parallel)
        || (r.vision && !e.vision)
        || (r.json_mode && !e.json_mode)
        || r.output_tokens > e.max_out.min(e.window)
    {
        return Some("capability");
    }
    (u64::from(r.input_tokens) + u64::from(r.output_tokens) > u64::from(e.window))
        .then_some("window")
}

fn covers(approved_to: Option<u32>, tier: u32) -> bool {
    approved_to.is_some_and(|a| a >= tier)
}

/// Checks a decision against everything the spec and the pre-route health say.
#[allow(clippy::too_many_arguments)]
fn check_decision(
    w: &World,
    spec: &Spec,
    call: &Call,
    c: &CallContext<'_>,
    pre: &[Verdict],
    p95: &[Option<Duration>],
    now: Timestamp,
    d: &Decision,
) -> Result<(), TestCaseError> {
    let tk = call.tenant as usize % spec.tenants.len();
    let t = &spec.tenants[tk];
    let m = meant(spec, t);
    let task = task_name(call);
    let task_key = if TASKS.contains(&task) {
        task
    } else {
        UNLISTED
    };
    let view = w.set.view(c.tenant.as_str(), c.task.as_str()).unwrap();
    let top = view.top_tier().unwrap();
    let from = c.session_tier.map_or(top, |s| s.tier);
    let over_budget = m.budget.is_some_and(|(_, _, over)| over);
    match d {
        Decision::Route(r) => {
            let ep = ep_num(w, r.endpoint);
            if let Err(why) = permitted(spec, &m, t, task_key, r.tier, ep) {
                return Err(TestCaseError::fail(format!(
                    "routed to a forbidden place: {why}; {d:?}"
                )));
            }
            prop_assert!(r.tier <= view.floor);
            if let Some(rs) = &view.allowed_regions {
                let region = &w.set.catalog().endpoint(r.endpoint).region;
                prop_assert!(
                    rs.iter().any(|p| region_ok(p, region)),
                    "{region} not in {rs:?}"
                );
            }
            match lacks(&spec.eps[ep], &c.requirements) {
                Some("window") => prop_assert!(
                    spec.fit && r.fit_context,
                    "routed to a window too small without fitting: {d:?}"
                ),
                Some(what) => {
                    return Err(TestCaseError::fail(format!(
                        "routed to an endpoint lacking a {what}: {d:?}"
                    )));
                }
                _ => prop_assert!(!r.fit_context, "fit_context without a window gap"),
            }
            // The library's own capability check agrees with the spec's.
            let gap = w
                .set
                .catalog()
                .endpoint(r.endpoint)
                .capabilities
                .gap(&c.requirements);
            let window_gap = matches!(gap, Some(CapabilityGap::ContextWindow { .. }));
            prop_assert!(gap.is_none() || window_gap, "library gap {:?}", gap);
            match pre[r.endpoint.0 as usize] {
                Verdict::Unusable(tr) => {
                    return Err(TestCaseError::fail(format!(
                        "routed to an unusable endpoint ({tr}): {d:?}"
                    )));
                }
                Verdict::ProbeOnly(_) => {
                    prop_assert!(
                        view.probe_eligible,
                        "a probe by an ineligible tenant: {d:?}"
                    );
                }
                Verdict::Usable => prop_assert!(r.probe.is_none(), "probe of a usable endpoint"),
            }
            if let Some(pt) = r.probe {
                prop_assert_eq!(pt.endpoint, r.endpoint);
            }
            // Deadline: never an endpoint whose P95 cannot finish in the time left.
            let deadline = c
                .deadline
                .or_else(|| view.sla.default_deadline.map(|x| now.saturating_add(x)));
            if let (Some(dl), Some(p)) = (deadline, p95[r.endpoint.0 as usize]) {
                prop_assert!(p < dl.duration_since(now), "P95 {p:?} >= time left");
            }
            // Attempts: bounded per endpoint and per call.
            let tried = c
                .attempts
                .iter()
                .filter(|a| a.endpoint == r.endpoint)
                .count() as u32;
            prop_assert!(
                tried < spec.attempts_per_endpoint,
                "endpoint tried {tried} times already"
            );
            prop_assert!((c.attempts.len() as u32) < spec.max_attempts);
            // Budget.
            if over_budget {
                match m.budget {
                    Some((0, k, _)) => {
                        prop_assert!(r.tier >= k, "over budget, tier {} above {k}", r.tier)
                    }
                    _ => {
                        return Err(TestCaseError::fail(format!(
                            "over budget with suspend/reject, yet routed: {d:?}"
                        )));
                    }
                }
            }
            // Approval: a switch that needs it is never routed.
            prop_assert!(
                !(r.tier != from
                    && view.approval.requires(from, r.tier)
                    && !covers(c.approved_to, r.tier)),
                "a switch {from} -> {} needing approval was routed: {d:?}",
                r.tier
            );
            prop_assert_eq!(r.switched, r.tier != from);
            prop_assert_eq!(r.degraded, r.tier > top);
        }
        Decision::AwaitApproval {
            current,
            proposed_tier,
            proposed_endpoint,
            ..
        } => {
            prop_assert_eq!(*current, from);
            prop_assert!(view.approval.requires(*current, *proposed_tier));
            prop_assert!(!covers(c.approved_to, *proposed_tier));
            let ep = ep_num(w, *proposed_endpoint);
            if let Err(why) = permitted(spec, &m, t, task_key, *proposed_tier, ep) {
                return Err(TestCaseError::fail(format!(
                    "proposed a forbidden place: {why}; {d:?}"
                )));
            }
            prop_assert!(!matches!(
                pre[proposed_endpoint.0 as usize],
                Verdict::Unusable(_)
            ));
        }
        Decision::Suspend { reason, .. } => {
            let suspends = view.when_exhausted == Exhausted::Suspend && view.suspension.is_some();
            match reason.kind {
                ReasonKind::Budget => prop_assert!(over_budget),
                ReasonKind::NothingUsable | ReasonKind::AttemptsExhausted => prop_assert!(suspends),
                other => return Err(TestCaseError::fail(format!("suspended for {other:?}"))),
            }
        }
        Decision::Reject { reason } => {
            if matches!(
                reason.kind,
                ReasonKind::NothingUsable | ReasonKind::AttemptsExhausted
            ) {
                prop_assert!(
                    !(view.when_exhausted == Exhausted::Suspend && view.suspension.is_some()),
                    "rejected a tenant whose policy suspends: {d:?}"
                );
            }
        }
    }
    Ok(())
}

fn snapshot(
    w: &World,
    c: &CallContext<'_>,
    now: Timestamp,
) -> (Vec<Verdict>, Vec<Option<Duration>>) {
    let view = w.set.view(c.tenant.as_str(), c.task.as_str()).unwrap();
    (0..w.set.catalog().len())
        .map(|i| {
            let e = EndpointIdx(i as u32);
            (
                w.eval.check(e, &view.tenant_triggers, now).unwrap(),
                w.eval.recent_p95(e, now).unwrap(),
            )
        })
        .unzip()
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, max_global_rejects: 4096, ..ProptestConfig::default() })]

    /// A route never leaves what the tenant's policy permits, never lands on an endpoint the
    /// evaluator calls unusable or that cannot serve the request, and a switch that needs
    /// approval is never routed (and is routed once approved).
    #[test]
    fn a_route_stays_within_the_policy_and_the_health(
        spec in spec_strategy(),
        health in prop::collection::vec(health_strategy(), 0..10),
        calls in prop::collection::vec(call_strategy(), 1..6),
    ) {
        let w = world(&spec);
        prop_assume!(w.is_some());
        let w = w.unwrap();
        apply(&w, &spec, &health);
        let now = T0;
        for (k, call) in calls.iter().enumerate() {
            let own = ids(&w, &spec, call);
            let c = ctx(&spec, call, &own, now);
            let (pre, p95) = snapshot(&w, &c, now);
            let d = w.router.route(&c, now);
            check_decision(&w, &spec, call, &c, &pre, &p95, now, &d)?;
            if let Decision::AwaitApproval { proposed_tier, proposed_endpoint, .. } = d {
                // Approved, the same switch is made (on a world in the same state: the earlier
                // calls routed again, so the half-open probe permits they took are taken).
                let w2 = world(&spec).unwrap();
                apply(&w2, &spec, &health);
                for earlier in &calls[..k] {
                    let ids2 = ids(&w2, &spec, earlier);
                    let _ = w2.router.route(&ctx(&spec, earlier, &ids2, now), now);
                }
                let approved = c.approved_to(proposed_tier);
                match w2.router.route(&approved, now) {
                    Decision::Route(r) => {
                        prop_assert_eq!(r.tier, proposed_tier);
                        prop_assert_eq!(r.endpoint, proposed_endpoint);
                    }
                    other => return Err(TestCaseError::fail(format!("approved, yet {other:?}"))),
                }
            }
        }
    }

    /// When every endpoint is unusable, the call is suspended or rejected exactly as the
    /// tenant's policy says — never routed, never sent for approval.
    #[test]
    fn with_every_endpoint_down_the_call_is_suspended_or_rejected_per_policy(
        spec in spec_strategy(),
        how in prop::collection::vec(0u8..4, 12),
        call in call_strategy(),
    ) {
        let w = world(&spec);
        prop_assume!(w.is_some());
        let w = w.unwrap();
        let ops = TenantId::new("ops");
        for (i, how) in how.iter().enumerate().take(spec.eps.len()) {
            let e = ep_idx(&w, i);
            let at = at_ms(-1_000);
            match how {
                0 => {
                    let obs = Observation::new(e, &ops, OutcomeClass::RateLimited, at, Duration::ZERO)
                        .retry_after(Duration::from_secs(3_600));
                    w.eval.observe(&obs, at).unwrap();
                }
                1 => w.eval.set_mode(e, BreakerMode::ForcedOpen, at).unwrap(),
                2 => {
                    for k in 0..5 {
                        let obs = Observation::new(e, &ops, OutcomeClass::Overloaded, at_ms(-1_000 + k), Duration::ZERO);
                        w.eval.observe(&obs, at_ms(-1_000 + k)).unwrap();
                    }
                }
                _ => w.eval.signal(&ProviderSignal::StatusPage { endpoint: e, state: StatusPageState::MajorOutage }, at).unwrap(),
            }
        }
        spend(&w, &spec);
        let ids = ids(&w, &spec, &call);
        let c = ctx(&spec, &call, &ids, T0);
        let (pre, p95) = snapshot(&w, &c, T0);
        prop_assert!(pre.iter().all(|v| matches!(v, Verdict::Unusable(_))));
        let d = w.router.route(&c, T0);
        prop_assert!(
            matches!(d, Decision::Suspend { .. } | Decision::Reject { .. }),
            "everything is down, yet {d:?}"
        );
        check_decision(&w, &spec, &call, &c, &pre, &p95, T0, &d)?;
        if let Decision::Suspend { reason, retry_at } = d {
            if reason.kind == ReasonKind::NothingUsable {
                // The earliest known time something may be back, never in the past.
                prop_assert!(retry_at.is_none_or(|t| t > T0));
            }
        }
    }

    /// The same inputs give the same decisions: two worlds built and damaged the same way route
    /// the same sequence of calls identically, and `explain` agrees with `route`.
    #[test]
    fn decisions_are_deterministic(
        spec in spec_strategy(),
        health in prop::collection::vec(health_strategy(), 0..10),
        calls in prop::collection::vec(call_strategy(), 1..6),
    ) {
        let a = world(&spec);
        prop_assume!(a.is_some());
        let (a, b, x) = (a.unwrap(), world(&spec).unwrap(), world(&spec).unwrap());
        for w in [&a, &b, &x] {
            apply(w, &spec, &health);
        }
        for (k, call) in calls.iter().enumerate() {
            let now = T0.saturating_add(Duration::from_millis(k as u64 * 250));
            let ids_a = ids(&a, &spec, call);
            let ids_b = ids(&b, &spec, call);
            let da = a.router.route(&ctx(&spec, call, &ids_a, now), now);
            let db = b.router.route(&ctx(&spec, call, &ids_b, now), now);
            prop_assert_eq!(da, db);
            if k == 0 {
                // Explaining takes no probe permit; otherwise it is the same decision.
                let ids_x = ids(&x, &spec, call);
                let ex = x.router.explain(&ctx(&spec, call, &ids_x, now), now);
                let mut expect = da;
                if let Decision::Route(r) = &mut expect {
                    r.probe = None;
                }
                prop_assert_eq!(ex.decision, expect);
            }
        }
    }

    /// No loops by construction: failing every attempt, a call ends within `max_attempts`
    /// routes, never routes one endpoint more than `attempts_per_endpoint` times, and ends in
    /// exactly one of suspend / reject / await approval — or a route once a call succeeds.
    #[test]
    fn a_failing_call_ends_within_its_attempt_budget(
        spec in spec_strategy(),
        health in prop::collection::vec(health_strategy(), 0..6),
        call in call_strategy(),
        outcomes in prop::collection::vec(0u8..5, 8),
        succeed_at in prop::option::weighted(0.3, 0usize..6),
        feed_back in any::<bool>(),
    ) {
        let w = world(&spec);
        prop_assume!(w.is_some());
        let w = w.unwrap();
        apply(&w, &spec, &health);
        let mut call = call.clone();
        call.attempts.clear();
        let base = ids(&w, &spec, &call);
        let mut attempts: Vec<Attempt> = Vec::new();
        let mut now = T0;
        let mut routes = 0u32;
        let end = loop {
            prop_assert!(routes <= spec.max_attempts, "more routes than max_attempts");
            let c = ctx(&spec, &call, &base, now).attempts(&attempts);
            let (pre, p95) = snapshot(&w, &c, now);
            let d = w.router.route(&c, now);
            check_decision(&w, &spec, &call, &c, &pre, &p95, now, &d)?;
            let Decision::Route(r) = d else { break d };
            routes += 1;
            let per = attempts.iter().filter(|a| a.endpoint == r.endpoint).count() as u32 + 1;
            prop_assert!(per <= spec.attempts_per_endpoint, "endpoint routed {per} times");
            if succeed_at == Some(attempts.len()) {
                break d;
            }
            let outcome = OUTCOMES[outcomes[attempts.len() % outcomes.len()] as usize];
            if feed_back {
                // The failure is also reported to the evaluator, as the engine would.
                let mut obs = Observation::new(r.endpoint, c.tenant, outcome, now, Duration::from_millis(40));
                if let Some(p) = r.probe {
                    obs = obs.probe(p);
                }
                w.eval.observe(&obs, now.saturating_add(Duration::from_millis(40))).unwrap();
            }
            attempts.push(Attempt { endpoint: r.endpoint, outcome });
            now = now.saturating_add(Duration::from_millis(50));
        };
        prop_assert!(routes <= spec.max_attempts);
        match end {
            Decision::Route(_) => prop_assert!(succeed_at.is_some(), "a failing call ended routed"),
            Decision::Suspend { .. } | Decision::Reject { .. } | Decision::AwaitApproval { .. } => {}
        }
    }
}

/// The generators are not vacuous: most generated sets load, most calls on a healthy world are
/// routed, and on damaged worlds every kind of decision (a probe among the routes) turns up.
#[test]
fn generated_policy_sets_mostly_load_and_route() {
    let mut runner = TestRunner::deterministic();
    let strategy = (
        spec_strategy(),
        prop::collection::vec(call_strategy(), 4),
        prop::collection::vec(health_strategy(), 0..10),
    );
    let (mut loaded, mut total, mut routed, mut calls) = (0, 0, 0, 0);
    let mut kinds = [0u32; 5]; // route, probe, approval, suspend, reject (damaged worlds)
    for _ in 0..400 {
        let (spec, cs, health) = strategy.new_tree(&mut runner).unwrap().current();
        total += 1;
        let Some(w) = world(&spec) else {
            continue;
        };
        loaded += 1;
        let damaged = world(&spec).unwrap();
        apply(&damaged, &spec, &health);
        for call in &cs {
            let mut call = call.clone();
            call.attempts.clear();
            let ids = ids(&w, &spec, &call);
            calls += 1;
            if matches!(
                w.router.route(&ctx(&spec, &call, &ids, T0), T0),
                Decision::Route(_)
            ) {
                routed += 1;
            }
            let k = match damaged.router.route(&ctx(&spec, &call, &ids, T0), T0) {
                Decision::Route(r) if r.probe.is_some() => 1,
                Decision::Route(_) => 0,
                Decision::AwaitApproval { .. } => 2,
                Decision::Suspend { .. } => 3,
                Decision::Reject { .. } => 4,
            };
            kinds[k] += 1;
        }
    }
    assert!(
        loaded * 100 >= total * 45,
        "only {loaded} of {total} generated sets load"
    );
    assert!(
        routed * 100 >= calls * 40,
        "only {routed} of {calls} calls were routed"
    );
    assert!(
        kinds.iter().all(|&k| k >= 5),
        "decision kinds (route, probe, approval, suspend, reject): {kinds:?}"
    );
    eprintln!("{loaded}/{total} sets loaded; {routed}/{calls} calls routed; damaged: {kinds:?}");
}

// ---------------------------------------------------------------------------------------------
// No flapping

/// How an endpoint is made unusable during its bad phases.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mech {
    /// The provider answers 429 with a retry-after as long as the bad phase.
    RetryAfter,
    /// The status page reports a major outage, then operational again.
    StatusPage,
}

/// An endpoint alternating bad / good: bad for `bad_s`, good for `good_s`, starting `offset_s`
/// after the start (healthy before).
#[derive(Debug, Clone, Copy)]
struct Flap {
    bad_s: u64,
    good_s: u64,
    offset_s: u64,
    mech: Mech,
}

impl Flap {
    fn period(&self) -> u64 {
        self.bad_s + self.good_s
    }
    /// Whether the endpoint is bad `t` seconds after the start.
    fn bad(&self, t: u64) -> bool {
        t >= self.offset_s && (t - self.offset_s) % self.period() < self.bad_s
    }
    /// Since when (seconds after the start; `None` = before the start) the endpoint has been
    /// good, at a time `t` when it is good.
    fn good_since(&self, t: u64) -> Option<u64> {
        if t < self.offset_s + self.bad_s {
            return None;
        }
        let k = (t - self.offset_s) / self.period();
        Some(self.offset_s + k * self.period() + self.bad_s)
    }
}

fn mech_strategy() -> impl Strategy<Value = Mech> {
    prop_oneof![Just(Mech::RetryAfter), Just(Mech::StatusPage)]
}

/// A ladder of three tiers (tier 0 with one or two endpoints), one tenant.
fn flap_sources(
    two_primaries: bool,
    healthy_for: u64,
    min_dwell: u64,
    straight_up: bool,
) -> Vec<Source> {
    let ep = |id: &str, provider: &str| {
        json!({"id": id, "provider": provider, "model": "m", "region": "eu-west-1",
               "capabilities": {"context_window": 100000, "max_output_tokens": 4096},
               "pricing": {"input_per_mtok": 1.0, "output_per_mtok": 1.0}})
    };
    let primaries: Vec<&str> = if two_primaries {
        vec!["a0", "a1"]
    } else {
        vec!["a0"]
    };
    let catalog = json!({"kind": "catalog", "endpoints": [
        ep("a0", "pa"), ep("a1", "pa2"), ep("b", "pb"), ep("c", "pc")]});
    let platform = json!({
        "kind": "policy", "id": "platform", "version": "1", "level": "platform",
        "tiers": [
            {"name": "primary", "endpoints": primaries},
            {"name": "standby", "endpoints": ["b"]},
            {"name": "small", "endpoints": ["c"]}
        ],
        "recovery": {"promotion": {"healthy_for": format!("{healthy_for}s"),
            "min_dwell": format!("{min_dwell}s"),
            "mode": if straight_up { "straight_up" } else { "one_tier" }}}
    });
    let tenant = json!({"kind": "policy", "id": "s", "version": "1", "level": "tenant", "extends": "platform"});
    vec![
        Source::new("catalog.json", catalog.to_string()),
        Source::new("platform.json", platform.to_string()),
        Source::new("s.json", tenant.to_string()),
    ]
}

/// What one simulated session went through.
#[derive(Debug, Default)]
struct SessionLog {
    changes: u32,
    promotions: u32,
}

/// Runs one session for an hour of virtual time: calls every `step_s` seconds (each a step
/// boundary, or within a step when `within(step)`), its tier fed back into every call, while
/// the endpoints alternate as `flaps` says (`None`: always healthy). Checks every tier change
/// as it happens: a change the session's own tier did not force is a promotion, at a step
/// boundary, after `min_dwell` on its tier, to a tier with an endpoint good for `healthy_for`
/// (by the schedule, not by the evaluator), one tier at a time unless `straight_up`; a forced
/// change goes to the best tier that has a good endpoint.
#[allow(clippy::too_many_arguments)]
fn run_session(
    flaps: [Option<Flap>; 4],
    two_primaries: bool,
    healthy_for: u64,
    min_dwell: u64,
    straight_up: bool,
    step_s: u64,
    within: &dyn Fn(u64) -> bool,
) -> Result<SessionLog, TestCaseError> {
    const HOUR: u64 = 3_600;
    let set = PolicySet::from_sources(flap_sources(
        two_primaries,
        healthy_for,
        min_dwell,
        straight_up,
    ))
    .unwrap();
    let eval = Arc::new(
        TriggerEvaluator::for_catalog(&set.evaluator_settings(), set.catalog(), 3).unwrap(),
    );
    let store = Arc::new(PolicyStore::new(set));
    let set = store.current();
    let router = TierRouter::new(store, Arc::clone(&eval), 1);
    let idx = |id: &str| set.catalog().index_of(id).unwrap();
    let names = ["a0", "a1", "b", "c"];
    let tiers: [Vec<usize>; 3] = [
        if two_primaries { vec![0, 1] } else { vec![0] },
        vec![2],
        vec![3],
    ];
    let bad = |e: usize, t: u64| flaps[e].is_some_and(|f| f.bad(t));
    let good_for = |e: usize, t: u64| -> u64 {
        match flaps[e] {
            None => u64::MAX,
            Some(f) if f.bad(t) => 0,
            Some(f) => f.good_since(t).map_or(u64::MAX, |s| t - s),
        }
    };
    let at = |s: u64| T0.saturating_add(Duration::from_secs(s));

    // Every time something happens: schedule transitions first, then the call.
    let mut events: Vec<(u64, u8, usize)> = Vec::new(); // (second, 0 = bad starts / 1 = good starts / 2 = call, endpoint)
    for (e, f) in flaps.iter().enumerate() {
        if let Some(f) = f {
            let mut s = f.offset_s;
            while s <= HOUR {
                events.push((s, 0, e));
                events.push((s + f.bad_s, 1, e));
                s += f.period();
            }
        }
    }
    let mut s = step_s;
    while s <= HOUR {
        events.push((s, 2, 0));
        s += step_s;
    }
    events.sort_unstable();

    let (tenant, task, session) = (
        TenantId::new("s"),
        TaskKind::new("summarization"),
        SessionId::new("s-1"),
    );
    let (mut tier, mut since) = (0u32, 0u64);
    let mut log = SessionLog::default();
    for (t, what, e) in events {
        match what {
            0 => match flaps[e].map(|f| (f.mech, f.bad_s)) {
                Some((Mech::RetryAfter, b)) => eval
                    .signal(
                        &ProviderSignal::RetryAfter {
                            endpoint: idx(names[e]),
                            after: Duration::from_secs(b),
                        },
                        at(t),
                    )
                    .unwrap(),
                Some((Mech::StatusPage, _)) => eval
                    .signal(
                        &ProviderSignal::StatusPage {
                            endpoint: idx(names[e]),
                            state: StatusPageState::MajorOutage,
                        },
                        at(t),
                    )
                    .unwrap(),
                None => {}
            },
            1 => {
                if flaps[e].is_some_and(|f| f.mech == Mech::StatusPage) {
                    eval.signal(
                        &ProviderSignal::StatusPage {
                            endpoint: idx(names[e]),
                            state: StatusPageState::Operational,
                        },
                        at(t),
                    )
                    .unwrap();
                }
            }
            _ => {
                let boundary = !within(t);
                let c = CallContext::new(&tenant, &task)
                    .session(&session)
                    .on_tier(tier, at(since))
                    .step_boundary(boundary);
                let d = router.route(&c, at(t));
                let best = (0..3).find(|&k| tiers[k].iter().any(|&e| !bad(e, t)));
                let Decision::Route(r) = d else {
                    prop_assert!(best.is_none(), "at {t}s: {d:?} while tier {best:?} is good");
                    continue;
                };
                let chosen = names
                    .iter()
                    .position(|n| set.catalog().endpoint(r.endpoint).id.as_str() == *n)
                    .unwrap();
                prop_assert!(
                    !bad(chosen, t),
                    "at {t}s: routed to {} while it is bad",
                    names[chosen]
                );
                if r.tier == tier {
                    continue;
                }
                let forced = tiers[tier as usize].iter().all(|&e| bad(e, t));
                if forced {
                    prop_assert_eq!(
                        Some(r.tier as usize),
                        best,
                        "at {}s: forced off tier {} to tier {}",
                        t,
                        tier,
                        r.tier
                    );
                } else {
                    // A promotion: only these make a session move while its own tier serves.
                    prop_assert!(
                        r.tier < tier,
                        "at {t}s: demoted from a good tier {tier} to {}",
                        r.tier
                    );
                    prop_assert!(boundary, "at {t}s: promoted within a step");
                    prop_assert!(
                        t - since >= min_dwell,
                        "at {t}s: promoted after {}s on tier {tier} (min_dwell {min_dwell}s)",
                        t - since
                    );
                    let longest = tiers[r.tier as usize]
                        .iter()
                        .map(|&e| good_for(e, t))
                        .max()
                        .unwrap();
                    prop_assert!(
                        longest >= healthy_for,
                        "at {t}s: promoted from tier {tier} to tier {} whose best endpoint has been good for {longest}s only (healthy_for {healthy_for}s)",
                        r.tier
                    );
                    if !straight_up {
                        prop_assert_eq!(r.tier, tier - 1, "one tier at a time");
                    }
                    log.promotions += 1;
                }
                log.changes += 1;
                tier = r.tier;
                since = t;
            }
        }
    }
    prop_assert!(
        u64::from(log.promotions) <= HOUR / min_dwell,
        "{} promotions in an hour with min_dwell {min_dwell}s",
        log.promotions
    );
    Ok(log)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// The promise: with the primary alternating healthy/unhealthy faster than the
    /// hysteresis (good phases shorter than `healthy_for`), a session on it moves down once and
    /// stays down — at most one tier change in the hour, far within one per `min_dwell`.
    #[test]
    fn a_primary_flapping_faster_than_the_hysteresis_moves_a_session_at_most_once(
        healthy_for in 30u64..600,
        min_dwell in 30u64..900,
        bad_s in 1u64..100,
        good_frac in 0.0f64..1.0,
        offset_s in 0u64..600,
        mech in mech_strategy(),
        step_s in 1u64..15,
        straight_up in any::<bool>(),
        within_every in prop::option::of(2u64..5),
    ) {
        let good_s = 1 + ((healthy_for - 1) as f64 * good_frac) as u64;
        prop_assume!(good_s < healthy_for);
        let flap = Flap { bad_s, good_s, offset_s, mech };
        let within = move |t: u64| within_every.is_some_and(|k| (t / step_s) % k != 0);
        let log = run_session([Some(flap), None, None, None], false, healthy_for, min_dwell, straight_up, step_s, &within)?;
        // Down once, at the first call that finds the primary bad, and never back up.
        let seen_bad = (1..=3_600 / step_s).any(|k| flap.bad(k * step_s));
        prop_assert_eq!(log.changes, u32::from(seen_bad));
        prop_assert_eq!(log.promotions, 0);
        prop_assert!(u64::from(log.changes) <= 3_600 / min_dwell + 1);
    }

    /// Any mix of endpoints alternating at any pace: every tier change is either forced (the
    /// session's own tier had nothing good, and it moved to the best tier that had) or a
    /// promotion that honours the step boundary, `min_dwell` and `healthy_for`, so promotions
    /// number at most one per `min_dwell`.
    #[test]
    fn every_tier_change_is_forced_or_a_promotion_the_hysteresis_allows(
        flaps in prop::collection::vec(
            prop::option::weighted(0.6, (1u64..100, 1u64..900, 0u64..900, mech_strategy())
                .prop_map(|(bad_s, good_s, offset_s, mech)| Flap { bad_s, good_s, offset_s, mech })),
            4,
        ),
        two_primaries in any::<bool>(),
        healthy_for in 30u64..600,
        min_dwell in 30u64..900,
        step_s in 1u64..15,
        straight_up in any::<bool>(),
        within_every in prop::option::of(2u64..5),
    ) {
        let within = move |t: u64| within_every.is_some_and(|k| (t / step_s) % k != 0);
        run_session([flaps[0], flaps[1], flaps[2], flaps[3]], two_primaries, healthy_for, min_dwell, straight_up, step_s, &within)?;
    }
}

/// The other side of the hysteresis: a primary that recovers for good draws the session back up,
/// once, after both `healthy_for` and `min_dwell`.
#[test]
fn a_primary_that_recovers_for_good_draws_the_session_back_up_once() {
    for mech in [Mech::RetryAfter, Mech::StatusPage] {
        let flap = Flap {
            bad_s: 60,
            good_s: 100_000,
            offset_s: 100,
            mech,
        };
        let log = run_session(
            [Some(flap), None, None, None],
            false,
            300,
            600,
            false,
            5,
            &|_| false,
        )
        .unwrap();
        assert_eq!((log.changes, log.promotions), (2, 1), "{mech:?}");
    }
}
