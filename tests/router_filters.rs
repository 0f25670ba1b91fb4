//! Router filters and limits: deadlines, capabilities, attempts, budgets, probes, herd control.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use downshift::policy::{PolicySet, PolicyStore};
use downshift::router::{Attempt, CallContext, CandidateVerdict, Decision, ReasonKind, TierRouter};
use downshift::trigger::{Observation, Probe, TriggerEvaluator};
use downshift::{
    EndpointIdx, OutcomeClass, Requirements, SessionId, TaskKind, TenantId, Timestamp, TriggerKind,
};
use serde_json::{Value, json};

struct World {
    router: TierRouter,
    eval: Arc<TriggerEvaluator>,
    set: Arc<PolicySet>,
}

fn world(files: &[(String, Value)]) -> World {
    let set = load(files);
    let eval = Arc::new(
        TriggerEvaluator::for_catalog(&set.evaluator_settings(), set.catalog(), 3).unwrap(),
    );
    let store = Arc::new(PolicyStore::new(set));
    let set = store.current();
    World {
        router: TierRouter::new(store, Arc::clone(&eval), 9),
        eval,
        set,
    }
}

impl World {
    fn idx(&self, id: &str) -> EndpointIdx {
        self.set.catalog().index_of(id).unwrap()
    }
    fn name(&self, e: EndpointIdx) -> String {
        self.set.catalog().endpoint(e).id.to_string()
    }
    fn observe(&self, id: &str, outcome: OutcomeClass, now: Timestamp, latency_ms: u64) {
        let who = TenantId::new("someone");
        self.eval
            .observe(
                &Observation::new(
                    self.idx(id),
                    &who,
                    outcome,
                    now,
                    Duration::from_millis(latency_ms),
                ),
                now,
            )
            .unwrap();
    }
    fn block(&self, id: &str, now: Timestamp, secs: u64) {
        let who = TenantId::new("someone");
        let obs = Observation::new(
            self.idx(id),
            &who,
            OutcomeClass::RateLimited,
            now,
            Duration::from_millis(5),
        )
        .retry_after(Duration::from_secs(secs));
        self.eval.observe(&obs, now).unwrap();
    }
}

const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);

fn acme() -> (TenantId, TaskKind) {
    (TenantId::new("acme"), TaskKind::new("summarization"))
}

#[test]
fn an_endpoint_too_slow_for_the_deadline_is_skipped_and_an_unreachable_deadline_is_rejected_at_once()
 {
    let w = world(&base());
    // frontier-a-eu's P95 is ~8 s.
    for k in 0..40 {
        w.observe(
            "frontier-a-eu",
            OutcomeClass::Ok,
            T0.saturating_add(Duration::from_millis(k)),
            8_000,
        );
    }
    let (t, k) = acme();
    let ctx = CallContext::new(&t, &k).deadline(T0.saturating_add(Duration::from_secs(5)));
    match w.router.route(&ctx, T0) {
        Decision::Route(r) => {
            assert_eq!(w.name(r.endpoint), "frontier-b-eu");
            let trig = r.reason.triggers.first().unwrap();
            assert_eq!(trig.kind, TriggerKind::Deadline);
            assert_eq!(trig.measured, 5000.0);
            assert!(trig.threshold >= 8000.0 * 0.9, "{trig}");
        }
        other => panic!("{other:?}"),
    }
    // Every permitted endpoint is slower than the time left: rejected now, no attempt wasted.
    for id in ["frontier-b-eu", "mid-eu"] {
        for k in 0..40 {
            w.observe(
                id,
                OutcomeClass::Ok,
                T0.saturating_add(Duration::from_millis(k)),
                9_000,
            );
        }
    }
    match w.router.route(&ctx, T0) {
        Decision::Reject { reason } => assert_eq!(reason.kind, ReasonKind::DeadlineUnreachable),
        other => panic!("{other:?}"),
    }
    // A deadline already past is rejected too.
    let past = CallContext::new(&t, &k).deadline(T0);
    assert!(matches!(w.router.route(&past, T0), Decision::Reject { .. }));
}

#[test]
fn a_request_no_permitted_endpoint_can_serve_is_rejected_as_incapable() {
    let w = world(&base());
    let (t, k) = acme();
    let ctx = CallContext::new(&t, &k).requirements(Requirements {
        vision: true,
        ..Default::default()
    });
    match w.router.route(&ctx, T0) {
        Decision::Reject { reason } => assert_eq!(reason.kind, ReasonKind::Incapable),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_context_too_large_for_a_tier_is_fitted_only_when_the_policy_allows_it() {
    let mut files = base();
    let w = world(&files);
    w.block("frontier-a-eu", T0, 60);
    w.block("frontier-b-eu", T0, 60);
    let (t, k) = acme();
    let big = Requirements {
        input_tokens: 100_000,
        output_tokens: 2_000,
        ..Default::default()
    };
    match w
        .router
        .route(&CallContext::new(&t, &k).requirements(big), T0)
    {
        Decision::Route(r) => {
            assert_eq!(w.name(r.endpoint), "mid-eu");
            assert!(
                r.fit_context,
                "fitting into the 32k window is allowed by the platform"
            );
        }
        other => panic!("{other:?}"),
    }
    set(
        &mut files,
        "platform.json",
        "/continuity/fit_to_smaller_window",
        json!(false),
    );
    let w = world(&files);
    w.block("frontier-a-eu", T0, 60);
    w.block("frontier-b-eu", T0, 60);
    match w
        .router
        .route(&CallContext::new(&t, &k).requirements(big), T0)
    {
        Decision::Reject { reason } => assert_eq!(reason.kind, ReasonKind::NothingUsable),
        other => panic!("never a request that cannot fit: {other:?}"),
    }
}

#[test]
fn attempts_never_return_to_a_tried_endpoint_and_are_bounded() {
    let mut files = base();
    set(&mut files, "acme.json", "/retry/max_attempts", json!(2));
    let w = world(&files);
    let (t, k) = acme();
    let a = w.idx("frontier-a-eu");
    let tried = [Attempt {
        endpoint: a,
        outcome: OutcomeClass::ServerError,
    }];
    match w
        .router
        .route(&CallContext::new(&t, &k).attempts(&tried), T0)
    {
        Decision::Route(r) => assert_eq!(w.name(r.endpoint), "frontier-b-eu"),
        other => panic!("{other:?}"),
    }
    let b = w.idx("frontier-b-eu");
    let tried2 = [
        tried[0],
        Attempt {
            endpoint: b,
            outcome: OutcomeClass::Timeout,
        },
    ];
    match w
        .router
        .route(&CallContext::new(&t, &k).attempts(&tried2), T0)
    {
        Decision::Reject { reason } => assert_eq!(reason.kind, ReasonKind::AttemptsExhausted),
        other => panic!("{other:?}"),
    }
}

#[test]
fn over_budget_the_call_moves_to_the_cheaper_tier_the_policy_names() {
    let mut files = base();
    set(
        &mut files,
        "acme.json",
        "/constraints/budget",
        json!({"tenant": {"limit_usd": 1.0, "window": "1h"}, "on_exceeded": {"downshift_to": "mid"}}),
    );
    let w = world(&files);
    let (t, k) = acme();
    let budget = w
        .set
        .view("acme", "summarization")
        .unwrap()
        .tenant_triggers
        .budget
        .clone()
        .unwrap();
    let obs = Observation::new(
        w.idx("frontier-a-eu"),
        &t,
        OutcomeClass::Ok,
        T0,
        Duration::from_millis(900),
    )
    .cost(1.25)
    .budget(&budget);
    w.eval.observe(&obs, T0).unwrap();
    match w.router.route(&CallContext::new(&t, &k), T0) {
        Decision::Route(r) => {
            assert_eq!((r.tier, w.name(r.endpoint).as_str()), (2, "mid-eu"));
            assert_eq!(r.reason.kind, ReasonKind::Budget);
            let trig = r.reason.triggers.first().unwrap();
            assert_eq!(
                (trig.kind, trig.measured, trig.threshold),
                (TriggerKind::TenantBudget, 1.25, 1.0)
            );
        }
        other => panic!("{other:?}"),
    }
    // The window slides (it moves in slices of 1/16 of the window): back to the primary.
    let later = T0.saturating_add(Duration::from_secs(3600 + 300));
    match w.router.route(&CallContext::new(&t, &k), later) {
        Decision::Route(r) => assert_eq!(r.tier, 0),
        other => panic!("{other:?}"),
    }
}

fn open_breaker(w: &World, id: &str, now: Timestamp) {
    // The default breaker opens after 5 consecutive capacity failures.
    for i in 0..5 {
        w.observe(
            id,
            OutcomeClass::Overloaded,
            now.saturating_add(Duration::from_millis(i)),
            20,
        );
    }
}

#[test]
fn a_tenant_that_is_not_probe_eligible_is_never_sent_to_test_a_recovering_endpoint() {
    let mut files = base();
    set(
        &mut files,
        "acme.json",
        "/constraints/probe_eligible",
        json!(false),
    );
    let mut other = tenant();
    other["id"] = json!("beta");
    files.push(("beta.json".into(), other));
    let w = world(&files);
    open_breaker(&w, "frontier-a-eu", T0);
    let after_wait = T0.saturating_add(Duration::from_secs(120));
    let (t, k) = acme();
    match w.router.route(&CallContext::new(&t, &k), after_wait) {
        Decision::Route(r) => {
            assert_eq!(w.name(r.endpoint), "frontier-b-eu");
            assert!(r.probe.is_none());
        }
        other => panic!("{other:?}"),
    }
    let beta = TenantId::new("beta");
    match w.router.route(&CallContext::new(&beta, &k), after_wait) {
        Decision::Route(r) => {
            assert_eq!(w.name(r.endpoint), "frontier-a-eu");
            assert!(r.probe.is_some(), "beta probes the recovering primary");
            assert_eq!(r.reason.kind, ReasonKind::Probe);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_sticky_probe_eligible_session_probes_the_recovering_tier_above_at_a_step_boundary() {
    let mut files = base();
    let mut beta = tenant();
    beta["id"] = json!("beta");
    beta["constraints"]["probe_eligible"] = json!(false);
    files.push(("beta.json".into(), beta));
    let w = world(&files);
    open_breaker(&w, "frontier-a-eu", T0);
    // The open wait is over: the primary wants a probe. Sessions have dwelt long on tier 1.
    let now = T0.saturating_add(Duration::from_secs(120));
    let long_ago = Timestamp::from_millis(T0.as_millis() - 3_600_000);
    let (t, k) = acme();
    let s = SessionId::new("s-1");
    let sticky = |tenant: &TenantId, since: Timestamp, boundary: bool| {
        let c = CallContext::new(tenant, &k)
            .session(&s)
            .on_tier(1, since)
            .step_boundary(boundary);
        w.router.route(&c, now)
    };
    // Within a step: the session stays where it is.
    match sticky(&t, long_ago, false) {
        Decision::Route(r) => assert_eq!((r.tier, r.probe), (1, None)),
        other => panic!("{other:?}"),
    }
    // Before its dwell is over: it stays too.
    match sticky(&t, now.saturating_sub(Duration::from_secs(10)), true) {
        Decision::Route(r) => assert_eq!((r.tier, r.probe), (1, None)),
        other => panic!("{other:?}"),
    }
    // A tenant that is not probe-eligible is never the one to test the primary.
    match sticky(&TenantId::new("beta"), long_ago, true) {
        Decision::Route(r) => assert_eq!((r.tier, r.probe), (1, None)),
        other => panic!("{other:?}"),
    }
    // At a step boundary after its dwell, the eligible session probes the primary.
    match sticky(&t, long_ago, true) {
        Decision::Route(r) => {
            assert_eq!(w.name(r.endpoint), "frontier-a-eu");
            assert_eq!(r.tier, 0);
            assert!(r.probe.is_some(), "a platform-wide permit is taken");
            assert_eq!(r.reason.kind, ReasonKind::Probe);
            assert!(r.switched);
        }
        other => panic!("{other:?}"),
    }
    // Permits are shared: once they are taken, sessions stay sticky on tier 1.
    let mut probes = 1;
    for _ in 0..10 {
        if let Decision::Route(r) = sticky(&t, long_ago, true) {
            if r.probe.is_some() {
                probes += 1;
            } else {
                assert_eq!(r.tier, 1);
            }
        }
    }
    assert_eq!(probes, 3, "the platform's half_open.probes");
}

#[test]
fn half_open_probes_are_limited_platform_wide() {
    let w = world(&base());
    open_breaker(&w, "frontier-a-eu", T0);
    let after_wait = T0.saturating_add(Duration::from_secs(120));
    let (t, k) = acme();
    let mut probes = 0;
    for _ in 0..10 {
        if let Decision::Route(r) = w.router.route(&CallContext::new(&t, &k), after_wait) {
            if r.probe.is_some() {
                probes += 1;
            }
        }
    }
    assert_eq!(probes, 3, "the platform's half_open.probes");
    assert!(matches!(
        w.eval
            .try_acquire_probe(w.idx("frontier-a-eu"), after_wait)
            .unwrap(),
        Probe::Refused(_)
    ));
}

#[test]
fn herd_control_caps_the_share_of_moved_calls_one_fallback_endpoint_takes() {
    let mut files = base();
    set(
        &mut files,
        "platform.json",
        "/herd",
        json!({"max_fallback_share": 0.5, "min_moved_calls": 4}),
    );
    set(
        &mut files,
        "agents.json",
        "/tiers/1/endpoints",
        json!(["frontier-b-eu", "mid-eu"]),
    );
    set(
        &mut files,
        "agents.json",
        "/tiers/2/endpoints",
        json!(["small-global"]),
    );
    set(
        &mut files,
        "agents.json",
        "/tiers/3/endpoints",
        json!(["small-eu"]),
    );
    set(
        &mut files,
        "acme.json",
        "/constraints/floor",
        json!("standby"),
    );
    let w = world(&files);
    w.block("frontier-a-eu", T0, 60);
    let (t, k) = acme();
    let mut to_b = 0;
    for _ in 0..100 {
        match w.router.route(&CallContext::new(&t, &k), T0) {
            Decision::Route(r) => {
                if w.name(r.endpoint) == "frontier-b-eu" {
                    to_b += 1;
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        (45..=55).contains(&to_b),
        "frontier-b-eu took {to_b} of 100 moved calls with a 50% cap"
    );
    // Without the cap every moved call lands on the first standby endpoint.
    let mut files = base();
    set(
        &mut files,
        "agents.json",
        "/tiers/1/endpoints",
        json!(["frontier-b-eu", "mid-eu"]),
    );
    set(
        &mut files,
        "agents.json",
        "/tiers/2/endpoints",
        json!(["small-global"]),
    );
    set(
        &mut files,
        "agents.json",
        "/tiers/3/endpoints",
        json!(["small-eu"]),
    );
    set(
        &mut files,
        "acme.json",
        "/constraints/floor",
        json!("standby"),
    );
    let w = world(&files);
    w.block("frontier-a-eu", T0, 60);
    for _ in 0..20 {
        let Decision::Route(r) = w.router.route(&CallContext::new(&t, &k), T0) else {
            panic!()
        };
        assert_eq!(w.name(r.endpoint), "frontier-b-eu");
    }
}

#[test]
fn explain_gives_every_candidate_and_why() {
    let w = world(&base());
    w.block("frontier-a-eu", T0, 30);
    let (t, k) = acme();
    let s = SessionId::new("s1");
    let ex = w.router.explain(&CallContext::new(&t, &k).session(&s), T0);
    assert!(matches!(ex.decision, Decision::Route(r) if w.name(r.endpoint) == "frontier-b-eu"));
    let find = |id: &str| {
        ex.candidates
            .iter()
            .find(|c| c.endpoint.as_str() == id)
            .unwrap()
            .verdict
            .clone()
    };
    assert!(
        matches!(find("frontier-a-eu"), CandidateVerdict::Unusable { trigger } if trigger.kind == TriggerKind::RetryAfter)
    );
    assert!(
        matches!(find("frontier-a-us"), CandidateVerdict::Removed { reason } if reason.contains("not in allowed regions"))
    );
    assert_eq!(find("frontier-b-eu"), CandidateVerdict::Chosen);
    assert!(matches!(
        find("small-eu"),
        CandidateVerdict::TierExcluded { .. }
    ));
    assert!(
        ex.reason
            .starts_with("fallback: provider asked to retry later"),
        "{}",
        ex.reason
    );
    assert!(ex.policy_digest.unwrap().starts_with("sha256:"));
    // Explaining takes no probe permit and changes nothing.
    assert_eq!(
        w.router.route(&CallContext::new(&t, &k).session(&s), T0),
        ex.decision
    );
}
