//! The adoption path: `observe_only` never changes where a call goes yet reports the would-be
//! decision; `platform_breaker` uses one fallback for all tenants within their policies;
//! switching mode is a policy activation in the audit log.

mod visibility;

use std::time::Duration;

use downshift::audit::{AuditEventKind, verify};
use downshift::engine::{Call, CallResult, EngineMode, RejectKind};
use downshift::error::EngineError;
use downshift::{Error, OutcomeClass};
use futures::executor::block_on;
use proptest::prelude::*;
use visibility::{payload, world};

#[test]
fn observe_only_never_changes_where_a_call_goes_yet_reports_the_would_be_decision() {
    let w = visibility::world_with(|b| b.mode(EngineMode::ObserveOnly));
    assert_eq!(w.engine.mode(), EngineMode::ObserveOnly);
    // Healthy: the primary serves, the policy agrees.
    let r = block_on(w.engine.call(Call::new("acme", "summarization", payload())));
    assert_eq!(r.completed().unwrap().served_by.endpoint.as_str(), "big");
    // The outage: the primary answers 429 for ten minutes.
    w.script.fail(
        "big",
        OutcomeClass::RateLimited,
        Some(Duration::from_secs(600)),
    );
    for _ in 0..3 {
        let r = block_on(w.engine.call(Call::new("acme", "summarization", payload())));
        let CallResult::Rejected(rej) = &r else {
            panic!("observe_only returns the primary's failure, got {r:?}")
        };
        assert_eq!(
            rej.kind,
            RejectKind::Provider {
                class: OutcomeClass::RateLimited
            }
        );
        w.clock.advance(Duration::from_secs(1));
    }
    // Every call went to the primary, once.
    assert_eq!(w.script.calls(), vec!["big"; 4]);
    // What the policy would have done: the first failing call was routed to big (healthy
    // then); the next two would have gone to `small`.
    let s = w.engine.stats();
    let t = s.tenant("acme").unwrap();
    assert_eq!(t.would_be.degraded, 2);
    let last = t.would_be.last.as_ref().unwrap();
    assert_eq!(last.decision, "route");
    assert_eq!(last.tier, Some(1));
    assert_eq!(last.endpoint.as_ref().map(|e| e.as_str()), Some("small"));
    assert!(last.reason.contains("retry"), "{}", last.reason);
    // And it recorded everything: attempts, outcomes, nothing degraded, no audit tier change.
    assert_eq!(t.calls, 4);
    assert_eq!(t.degraded, 0);
    assert_eq!(t.outcomes.get("rate_limited"), Some(3));
    assert!(
        w.audit
            .records()
            .iter()
            .all(|r| r.event.kind.name() != "tier_change")
    );

    // Switching to per_tenant at run time: the same call now falls back.
    block_on(w.engine.set_mode(EngineMode::PerTenant)).unwrap();
    let r = block_on(w.engine.call(Call::new("acme", "summarization", payload())));
    assert_eq!(r.completed().unwrap().served_by.endpoint.as_str(), "small");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn observe_only_sends_every_call_to_the_primary_whatever_fails(
        steps in proptest::collection::vec((any::<bool>(), any::<bool>(), 0u8..4, 0u64..120), 1..12)
    ) {
        let w = visibility::world_with(|b| b.mode(EngineMode::ObserveOnly));
        let classes = [OutcomeClass::RateLimited, OutcomeClass::Overloaded, OutcomeClass::ServerError, OutcomeClass::Timeout];
        for (i, (big_down, small_down, class, wait)) in steps.iter().enumerate() {
            for (id, down) in [("big", big_down), ("small", small_down)] {
                if *down {
                    w.script.fail(id, classes[*class as usize], Some(Duration::from_secs(*wait)));
                } else {
                    w.script.heal(id);
                }
            }
            let session = format!("s{}", i % 3);
            let r = block_on(w.engine.call(Call::new("acme", "summarization", payload()).session(session)));
            prop_assert!(matches!(r, CallResult::Completed(_) | CallResult::Rejected(_)));
            if let CallResult::Completed(c) = &r {
                prop_assert_eq!(c.served_by.endpoint.as_str(), "big");
                prop_assert!(!c.degraded);
            }
            w.clock.advance(Duration::from_secs(*wait));
        }
        let calls = w.script.calls();
        prop_assert_eq!(calls.len(), steps.len());
        prop_assert!(calls.iter().all(|c| c == "big"));
    }
}

#[test]
fn a_mode_switch_is_a_policy_activation_in_the_audit_log() {
    let w = world();
    let mode = EngineMode::PlatformBreaker {
        fallback: "small".into(),
    };
    block_on(w.engine.set_mode(mode.clone())).unwrap();
    assert_eq!(w.engine.mode(), mode);
    let records = w.audit.records();
    let digest = w.engine.policies().current().digest().clone();
    match &records.last().unwrap().event.kind {
        AuditEventKind::PolicyActivation {
            digest: d,
            mode: Some(m),
            ..
        } => {
            assert_eq!(d, &digest);
            assert_eq!(m, &mode);
        }
        other => panic!("expected a policy activation, got {other:?}"),
    }
    verify(&records).unwrap();
    let line = serde_json::to_value(&records.last().unwrap().event.kind).unwrap();
    assert_eq!(line["mode"]["mode"], "platform_breaker");
    assert_eq!(line["mode"]["fallback"], "small");
}

#[test]
fn a_platform_fallback_outside_the_catalog_is_refused_and_the_mode_is_unchanged() {
    let w = world();
    let err = block_on(w.engine.set_mode(EngineMode::PlatformBreaker {
        fallback: "no-such".into(),
    }))
    .unwrap_err();
    assert!(
        matches!(&err, Error::Engine(EngineError::UnknownEndpoint { endpoint }) if endpoint.as_str() == "no-such"),
        "{err}"
    );
    assert!(err.to_string().contains("no-such"));
    assert_eq!(w.engine.mode(), EngineMode::PerTenant);
    assert!(w.audit.records().is_empty());
}

#[test]
fn platform_breaker_sends_everyone_to_one_fallback_within_their_policies() {
    let w = visibility::world_with(|b| {
        b.mode(EngineMode::PlatformBreaker {
            fallback: "small".into(),
        })
    });
    let r = block_on(w.engine.call(Call::new("acme", "summarization", payload())));
    assert_eq!(r.completed().unwrap().served_by.endpoint.as_str(), "big");
    w.script.fail(
        "big",
        OutcomeClass::Overloaded,
        Some(Duration::from_secs(600)),
    );
    // The first call meets the failure and falls back; later calls skip the primary.
    for _ in 0..2 {
        let r = block_on(w.engine.call(Call::new("acme", "summarization", payload())));
        let c = r.completed().unwrap();
        assert_eq!(c.served_by.endpoint.as_str(), "small");
        assert!(c.degraded);
        assert_eq!(c.served_by.tier, 1);
    }
    assert_eq!(w.script.calls(), vec!["big", "big", "small", "small"]);
    // `hold` may not leave its primary: the platform fallback never bypasses that.
    let r = block_on(w.engine.call(Call::new("hold", "summarization", payload())));
    let CallResult::Rejected(rej) = &r else {
        panic!("{r:?}")
    };
    assert!(rej.message.contains("does not permit"), "{}", rej.message);
    assert_eq!(w.script.calls().len(), 4);
    let s = w.engine.stats();
    assert_eq!(s.tenant("acme").unwrap().degraded, 2);
    assert_eq!(s.mode.name(), "platform_breaker");
}

fn kinds(w: &visibility::World) -> Vec<&'static str> {
    w.audit
        .records()
        .iter()
        .map(|r| r.event.kind.name())
        .filter(|k| *k != "policy_activation")
        .collect()
}

#[test]
fn platform_breaker_audits_each_fallback_transition_once_not_once_per_call() {
    let w = visibility::world_with(|b| {
        b.mode(EngineMode::PlatformBreaker {
            fallback: "small".into(),
        })
    });
    w.script.fail(
        "big",
        OutcomeClass::Overloaded,
        Some(Duration::from_secs(60)),
    );
    // Session-less traffic: three calls served by the fallback, one transition record, cited
    // by every call served on it.
    let mut cited = Vec::new();
    for _ in 0..3 {
        let r = block_on(w.engine.call(Call::new("acme", "summarization", payload())));
        let c = r.completed().unwrap();
        assert_eq!(c.served_by.endpoint.as_str(), "small");
        cited.push(c.audit.clone());
    }
    assert_eq!(kinds(&w), ["tier_change"]);
    assert_eq!(cited[0].len(), 1);
    assert!(cited.iter().all(|a| *a == cited[0]), "{cited:?}");
    // A session: one tier change on its first fallback call, none on the next.
    for _ in 0..2 {
        let r = block_on(
            w.engine
                .call(Call::new("acme", "summarization", payload()).session("s-1")),
        );
        assert_eq!(r.completed().unwrap().served_by.endpoint.as_str(), "small");
    }
    assert_eq!(kinds(&w), ["tier_change", "tier_change"]);
    // Capacity returns: each moves back up once.
    w.clock.advance(Duration::from_secs(120));
    w.script.heal("big");
    for _ in 0..2 {
        block_on(w.engine.call(Call::new("acme", "summarization", payload())));
        block_on(
            w.engine
                .call(Call::new("acme", "summarization", payload()).session("s-1")),
        );
    }
    assert_eq!(
        kinds(&w),
        ["tier_change", "tier_change", "promotion", "promotion"]
    );
    verify(&w.audit.records()).unwrap();
}

fn oversized(input_tokens: u32) -> Call<serde_json::Value> {
    Call::new("acme", "summarization", payload()).requirements(downshift::Requirements {
        input_tokens,
        output_tokens: 500,
        ..Default::default()
    })
}

#[test]
fn platform_breaker_never_sends_a_request_the_fallback_window_cannot_hold() {
    let w = visibility::world_with(|b| {
        b.mode(EngineMode::PlatformBreaker {
            fallback: "small".into(),
        })
    });
    w.script.fail(
        "big",
        OutcomeClass::Overloaded,
        Some(Duration::from_secs(60)),
    );
    // 100,000 input tokens fit `big` (200,000) but not `small` (32,000), and the policy does
    // not allow fitting: the primary is tried, the fallback never called.
    let r = block_on(w.engine.call(oversized(100_000)));
    let CallResult::Rejected(rej) = &r else {
        panic!("{r:?}")
    };
    assert_eq!(rej.kind, RejectKind::Context, "{}", rej.message);
    assert!(rej.message.contains("not sent"), "{}", rej.message);
    assert_eq!(w.script.calls(), ["big"]);
    // A request that fits goes to the fallback as before.
    let r = block_on(w.engine.call(oversized(10_000)));
    assert_eq!(r.completed().unwrap().served_by.endpoint.as_str(), "small");
}

#[test]
fn observe_only_never_sends_a_request_the_primary_window_cannot_hold() {
    let w = world();
    block_on(w.engine.set_mode(EngineMode::ObserveOnly)).unwrap();
    let r = block_on(w.engine.call(oversized(250_000)));
    let CallResult::Rejected(rej) = &r else {
        panic!("{r:?}")
    };
    assert_eq!(rej.kind, RejectKind::Context, "{}", rej.message);
    assert!(w.script.calls().is_empty(), "nothing was sent");
    let r = block_on(w.engine.call(oversized(100_000)));
    assert_eq!(r.completed().unwrap().served_by.endpoint.as_str(), "big");
}
