//! The article's 2 a.m. batch throttle, decided by the router over the example policies.

use std::sync::Arc;
use std::time::Duration;

use downshift::policy::{PolicySet, PolicyStore};
use downshift::router::{CallContext, Decision, ReasonKind, TierRouter};
use downshift::trigger::{Observation, TriggerEvaluator};
use downshift::{EndpointIdx, OutcomeClass, SessionId, TaskKind, TenantId, Timestamp, TriggerKind};

struct World {
    router: TierRouter,
    eval: Arc<TriggerEvaluator>,
    set: Arc<PolicySet>,
}

fn world() -> World {
    let set = PolicySet::load(&["examples/policies"]).unwrap();
    let eval = Arc::new(
        TriggerEvaluator::for_catalog(&set.evaluator_settings(), set.catalog(), 7).unwrap(),
    );
    let store = Arc::new(PolicyStore::new(set));
    let set = store.current();
    World {
        router: TierRouter::new(store, Arc::clone(&eval), 1),
        eval,
        set,
    }
}

impl World {
    fn idx(&self, id: &str) -> EndpointIdx {
        self.set.catalog().index_of(id).unwrap()
    }
    fn name(&self, e: EndpointIdx) -> &str {
        self.set.catalog().endpoint(e).id.as_str()
    }
    /// The provider answers 429 with retry-after.
    fn throttle(&self, id: &str, now: Timestamp, retry_after: Duration) {
        let who = TenantId::new("batch-pipeline");
        let obs = Observation::new(
            self.idx(id),
            &who,
            OutcomeClass::RateLimited,
            now,
            Duration::from_millis(80),
        )
        .retry_after(retry_after);
        self.eval.observe(&obs, now).unwrap();
    }
}

const T0: u64 = 1_795_000_000_000; // 2026-11-18T...: any fixed instant

fn at(secs: u64) -> Timestamp {
    Timestamp::from_millis(T0 + secs * 1000)
}

fn route(w: &World, tenant: &str, task: &str, now: Timestamp) -> Decision {
    let (t, k) = (TenantId::new(tenant), TaskKind::new(task));
    w.router.route(&CallContext::new(&t, &k), now)
}

#[test]
fn with_every_provider_healthy_each_tenant_gets_its_primary() {
    let w = world();
    for (tenant, task, ep) in [
        ("marketing-agency", "copywriting", "frontier-vendor-eu"),
        (
            "hospital-network",
            "clinical_summarization",
            "frontier-vendor-eu",
        ),
        ("fintech", "risk_assessment", "frontier-vendor-us"),
    ] {
        match route(&w, tenant, task, at(0)) {
            Decision::Route(r) => {
                assert_eq!(w.name(r.endpoint), ep);
                assert_eq!(r.tier, 0);
                assert!(!r.degraded && !r.switched && !r.notice);
                assert_eq!(r.reason.kind, ReasonKind::Healthy);
            }
            other => panic!("{tenant}: {other:?}"),
        }
    }
}

#[test]
fn the_2am_throttle_moves_each_tenant_exactly_as_its_policy_allows() {
    let w = world();
    let now = at(0);
    w.throttle("frontier-vendor-eu", now, Duration::from_secs(30));
    w.throttle("frontier-vendor-us", now, Duration::from_secs(30));

    // The marketing agency skips the pricier hot standby: silently to tier 2.
    match route(&w, "marketing-agency", "copywriting", now) {
        Decision::Route(r) => {
            assert_eq!((r.tier, w.name(r.endpoint)), (2, "mid70b-selfhosted-eu"));
            assert!(r.degraded && r.switched && !r.notice);
            assert_eq!(r.reason.kind, ReasonKind::Fallback);
            let t = r.reason.triggers.first().unwrap();
            assert_eq!(t.kind, TriggerKind::RetryAfter);
            assert_eq!(t.until, Some(at(30)));
        }
        other => panic!("{other:?}"),
    }
    // The hospital goes to the same model at the second provider, and is told in real time.
    match route(&w, "hospital-network", "clinical_summarization", now) {
        Decision::Route(r) => {
            assert_eq!((r.tier, w.name(r.endpoint)), (1, "frontier-cloud-eu"));
            assert!(r.degraded && r.notice);
        }
        other => panic!("{other:?}"),
    }
    // The fintech's risk assessment needs approval before leaving the primary...
    let (t, k) = (TenantId::new("fintech"), TaskKind::new("risk_assessment"));
    match w.router.route(&CallContext::new(&t, &k), now) {
        Decision::AwaitApproval {
            current,
            proposed_tier,
            proposed_endpoint,
            reason,
            ticket,
        } => {
            assert_eq!((current, proposed_tier), (0, 1));
            assert_eq!(w.name(proposed_endpoint), "frontier-cloud-us");
            assert_eq!(reason.kind, ReasonKind::ApprovalRequired);
            // The same pending switch always has the same ticket.
            match w.router.route(&CallContext::new(&t, &k), now) {
                Decision::AwaitApproval { ticket: again, .. } => assert_eq!(again, ticket),
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
    // ...and once approved, the switch is made.
    match w
        .router
        .route(&CallContext::new(&t, &k).approved_to(1), now)
    {
        Decision::Route(r) => assert_eq!((r.tier, w.name(r.endpoint)), (1, "frontier-cloud-us")),
        other => panic!("{other:?}"),
    }
    // Its summarization may use tier 2 but tier 1 is healthy; code generation stops at tier 1.
    for task in ["summarization", "code_generation"] {
        match route(&w, "fintech", task, now) {
            Decision::Route(r) => assert_eq!(r.tier, 1, "{task}"),
            other => panic!("{task}: {other:?}"),
        }
    }
}

#[test]
fn when_the_standby_fails_too_the_hospital_suspends_and_the_fintech_splits_by_task() {
    let w = world();
    let now = at(0);
    for id in ["frontier-vendor-eu", "frontier-vendor-us"] {
        w.throttle(id, now, Duration::from_secs(30));
    }
    for id in ["frontier-cloud-eu", "frontier-cloud-us", "frontier-alt-us"] {
        w.throttle(id, now, Duration::from_secs(90));
    }
    match route(&w, "hospital-network", "clinical_summarization", now) {
        Decision::Suspend { reason, retry_at } => {
            assert_eq!(reason.kind, ReasonKind::NothingUsable);
            assert_eq!(retry_at, Some(at(30)), "the primary may be back first");
        }
        other => panic!("{other:?}"),
    }
    match route(&w, "fintech", "summarization", now) {
        Decision::Route(r) => assert_eq!((r.tier, w.name(r.endpoint)), (2, "mid70b-selfhosted-us")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        route(&w, "fintech", "code_generation", now),
        Decision::Suspend { .. }
    ));
}

#[test]
fn after_recovery_a_session_moves_back_up_only_after_the_hysteresis_and_never_mid_step() {
    let w = world();
    w.throttle("frontier-vendor-eu", at(0), Duration::from_secs(30));
    let (t, k, s) = (
        TenantId::new("marketing-agency"),
        TaskKind::new("copywriting"),
        SessionId::new("copy-1"),
    );
    let on_mid = |now: Timestamp, boundary: bool| {
        w.router.route(
            &CallContext::new(&t, &k)
                .session(&s)
                .on_tier(2, at(0))
                .step_boundary(boundary),
            now,
        )
    };
    // The primary is back at 00:30, but the template wants 3 min healthy and 10 min dwell.
    for (secs, boundary) in [(60, true), (200, true), (400, true), (700, false)] {
        match on_mid(at(secs), boundary) {
            Decision::Route(r) => {
                assert_eq!(r.tier, 2, "at {secs}s");
                assert_eq!(r.reason.kind, ReasonKind::Sticky);
                assert!(!r.switched);
            }
            other => panic!("{other:?}"),
        }
    }
    match on_mid(at(700), true) {
        Decision::Route(r) => {
            assert_eq!((r.tier, w.name(r.endpoint)), (0, "frontier-vendor-eu"));
            assert_eq!(r.reason.kind, ReasonKind::Promotion);
            assert!(r.switched && !r.degraded);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unknown_tenant_is_rejected_with_the_reason() {
    let w = world();
    match route(&w, "nobody", "copywriting", at(0)) {
        Decision::Reject { reason } => assert_eq!(reason.kind, ReasonKind::UnknownTenant),
        other => panic!("{other:?}"),
    }
}
