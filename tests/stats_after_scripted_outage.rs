//! Stats after a scripted outage match hand-computed counts and costs exactly; the saving is
//! computed against the tenant's primary prices.

mod visibility;

use std::time::Duration;

use downshift::OutcomeClass;
use downshift::alerts::{AlertRule, evaluate};
use downshift::engine::{Call, CallResult};
use downshift::stats::StatsSnapshot;
use futures::executor::block_on;
use visibility::{T0, payload, world};

// Hand-computed prices for 1,000 input and 200 output tokens.
// big:   (1000 * 3.00 + 200 * 15.00) / 1e6 = 0.006 USD
// small: (1000 * 0.25 + 200 *  1.25) / 1e6 = 0.0005 USD
const BIG: f64 = 0.006;
const SMALL: f64 = 0.0005;

fn sum(n: usize, v: f64) -> f64 {
    (0..n).fold(0.0, |a, _| a + v)
}

fn served_by(r: &CallResult<serde_json::Value>) -> String {
    r.completed()
        .map(|c| c.served_by.endpoint.to_string())
        .unwrap_or_else(|| r.outcome().to_string())
}

#[test]
fn stats_after_a_scripted_outage_match_hand_computed_counts_and_costs() {
    let w = world();
    // The prices in the catalog are the ones computed by hand above.
    let set = w.engine.policies().current();
    assert_eq!(set.catalog().endpoints()[0].pricing.cost(1000, 200), BIG);
    assert_eq!(set.catalog().endpoints()[1].pricing.cost(1000, 200), SMALL);

    // 3 healthy calls at the primary.
    for _ in 0..3 {
        let r = block_on(w.engine.call(Call::new("acme", "summarization", payload())));
        assert_eq!(served_by(&r), "big");
    }
    // The outage: `big` answers 429 with retry-after 60 s. The first call tries it and falls
    // back; the next two go straight to `small` while the retry-after is in force.
    w.clock.advance(Duration::from_secs(10));
    w.script.fail(
        "big",
        OutcomeClass::RateLimited,
        Some(Duration::from_secs(60)),
    );
    for i in 0..3 {
        let r = block_on(w.engine.call(Call::new("acme", "summarization", payload())));
        assert_eq!(served_by(&r), "small", "outage call {i}");
        if i < 2 {
            w.clock.advance(Duration::from_secs(10));
        }
    }
    // Capacity returns at T0 + 130 s.
    w.clock.advance(Duration::from_secs(100));
    w.script.heal("big");
    let r = block_on(w.engine.call(Call::new("acme", "summarization", payload())));
    assert_eq!(served_by(&r), "big");

    let s = w.engine.stats();
    let t = s.tenant("acme").expect("acme has stats");
    assert_eq!(t.calls, 7);
    assert_eq!(t.completed, 7);
    assert_eq!(t.degraded, 3);
    assert_eq!(t.rejected, 0);
    assert_eq!(t.outcomes.get("ok"), Some(7));
    assert_eq!(t.outcomes.get("rate_limited"), Some(1));
    // Tokens of every answered attempt (the 429 reported none).
    assert_eq!(t.input_tokens, 7000);
    assert_eq!(t.output_tokens, 1400);
    // Cost: 4 calls at big, 3 at small; primary: all 7 at big's prices.
    let cost = sum(4, BIG) + sum(3, SMALL);
    let primary = sum(4, BIG) + sum(3, BIG);
    assert_eq!(t.cost_usd, cost);
    assert_eq!(t.primary_cost_usd, primary);
    assert_eq!(t.saving_usd, primary - cost);
    assert!((t.saving_usd - 3.0 * (BIG - SMALL)).abs() < 1e-12);
    // Degraded from the first fallback (T0+10 s) to the first call back at big (T0+130 s).
    assert_eq!(t.time_degraded_ms, 120_000);

    // Per (tier, endpoint).
    assert_eq!(t.routes.len(), 2);
    let big = &t.routes[0];
    assert_eq!(
        (big.tier, &*big.tier_name, big.endpoint.as_str()),
        (0, "primary", "big")
    );
    assert_eq!(big.attempts, 5);
    assert_eq!(big.degraded, 0);
    assert_eq!(big.outcomes.get("rate_limited"), Some(1));
    assert_eq!(big.cost_usd, sum(4, BIG));
    assert_eq!(big.saving_usd, 0.0);
    let small = &t.routes[1];
    assert_eq!((small.tier, small.endpoint.as_str()), (1, "small"));
    assert_eq!(small.attempts, 3);
    assert_eq!(small.degraded, 3);
    assert_eq!(small.cost_usd, sum(3, SMALL));
    assert_eq!(small.primary_cost_usd, sum(3, BIG));
    assert_eq!(small.saving_usd, sum(3, BIG) - sum(3, SMALL));

    // The degradation episode, with the audit record that opened it.
    assert_eq!(s.degradation_events.len(), 1);
    let ev = &s.degradation_events[0];
    assert_eq!(ev.tenant.as_str(), "acme");
    assert_eq!(ev.session, None);
    assert_eq!(ev.started_at.as_millis(), T0 + 10_000);
    assert_eq!(ev.ended_at.map(|t| t.as_millis()), Some(T0 + 130_000));
    assert_eq!(ev.duration_ms, 120_000);
    assert_eq!(ev.calls_affected, 3);
    assert_eq!(ev.lowest_tier, Some(1));
    assert_eq!(ev.cost_usd, sum(3, SMALL));
    assert_eq!(ev.primary_cost_usd, sum(3, BIG));
    assert_eq!(ev.cost_delta_usd, sum(3, SMALL) - sum(3, BIG));
    let records = w.audit.records();
    let seq = ev.audit_seq.expect("the tier change was audited");
    assert_eq!(records[seq as usize].event.kind.name(), "tier_change");

    // Endpoints: attempts of all tenants, health.
    let e = s.endpoint("big").unwrap();
    assert_eq!(e.attempts, 5);
    assert_eq!(e.state, "closed");
    assert_eq!(s.endpoint("small").unwrap().attempts, 3);
    assert_eq!(s.endpoint("elsewhere").unwrap().attempts, 0);
}

#[test]
fn a_suspension_counts_once_and_a_resume_clears_it() {
    let w = world();
    w.script.fail(
        "big",
        OutcomeClass::RateLimited,
        Some(Duration::from_secs(600)),
    );
    // Another tenant's call meets the 429 and falls back; `big` is now out for 10 minutes.
    let r = block_on(w.engine.call(Call::new("acme", "summarization", payload())));
    assert_eq!(served_by(&r), "small");
    // `hold` may not leave the primary: its session is suspended.
    let r = block_on(
        w.engine
            .call(Call::new("hold", "summarization", payload()).session("s1")),
    );
    let CallResult::Suspended { resume_token, .. } = r else {
        panic!("expected a suspension, got {r:?}");
    };
    // A second call of the suspended session is suspended too, but is not a new suspension.
    let again = block_on(
        w.engine
            .call(Call::new("hold", "summarization", payload()).session("s1")),
    );
    assert_eq!(again.outcome(), "suspended");
    let s = w.engine.stats();
    let t = s.tenant("hold").unwrap();
    assert_eq!((t.calls, t.calls_suspended, t.suspensions), (2, 2, 1));
    assert_eq!(s.suspended_sessions(), 1);
    let alerts = evaluate(&[AlertRule::SuspendedSessions { at_least: 1 }], &s);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].measured, 1.0);

    w.clock.advance(Duration::from_secs(60));
    block_on(w.engine.resume(&"s1".into(), &resume_token)).unwrap();
    let s = w.engine.stats();
    assert_eq!(s.tenant("hold").unwrap().resumes, 1);
    assert_eq!(s.suspended_sessions(), 0);
    assert!(evaluate(&[AlertRule::SuspendedSessions { at_least: 1 }], &s).is_empty());
    // The session's episode is still open until it is served at the top tier again.
    let ev = s
        .degradation_events
        .iter()
        .find(|e| e.tenant.as_str() == "hold")
        .unwrap();
    assert_eq!(ev.session.as_ref().map(|s| s.as_str()), Some("s1"));
    assert_eq!((ev.calls_suspended, ev.ended_at), (2, None));
    assert_eq!(ev.duration_ms, 60_000);
}

#[test]
fn alert_rules_fire_on_the_thresholds_and_read_from_json() {
    let w = world();
    w.script.fail(
        "big",
        OutcomeClass::Overloaded,
        Some(Duration::from_secs(3600)),
    );
    for _ in 0..4 {
        block_on(w.engine.call(Call::new("acme", "summarization", payload())));
        w.clock.advance(Duration::from_secs(100));
    }
    let s = w.engine.stats();
    // Degraded since the first call: 400 s at the snapshot.
    assert_eq!(s.tenant("acme").unwrap().time_degraded_ms, 400_000);
    let rules: Vec<AlertRule> = serde_json::from_value(serde_json::json!([
        {"rule": "degraded_for", "tenant": "acme", "at_least": "5m"},
        {"rule": "degraded_for", "tenant": "acme", "at_least": "7m"},
        {"rule": "fallback_share", "at_least": 0.5, "min_calls": 4},
        {"rule": "fallback_share", "at_least": 0.5, "min_calls": 5},
        {"rule": "cost", "tenant": "acme", "at_least_usd": 0.002},
        {"rule": "breaker_not_closed", "endpoint": "small"}
    ]))
    .unwrap();
    let fired: Vec<(String, f64)> = evaluate(&rules, &s)
        .into_iter()
        .map(|a| (a.rule, a.measured))
        .collect();
    assert_eq!(
        fired,
        vec![
            ("degraded_for".to_string(), 400.0),
            ("fallback_share".to_string(), 1.0),
            ("cost".to_string(), sum(4, SMALL)),
        ]
    );
    assert!(
        serde_json::from_value::<AlertRule>(serde_json::json!({"rule": "nope"})).is_err(),
        "an unknown rule is an error, not ignored"
    );
}

#[test]
fn a_snapshot_round_trips_through_json() {
    let w = world();
    block_on(w.engine.call(Call::new("acme", "summarization", payload())));
    let s = w.engine.stats();
    let text = serde_json::to_string(&s).unwrap();
    let back: StatsSnapshot = serde_json::from_str(&text).unwrap();
    assert_eq!(back, s);
    assert_eq!(s.since.as_millis(), T0);
}

#[test]
fn disabled_stats_count_nothing_and_unknown_tenants_cost_no_memory() {
    let w = visibility::world_with(|b| b.stats(false));
    block_on(w.engine.call(Call::new("acme", "summarization", payload())));
    assert!(w.engine.stats().tenants.is_empty());
    w.engine.set_stats_enabled(true);
    for i in 0..50 {
        let r = block_on(w.engine.call(Call::new(
            format!("ghost-{i}"),
            "summarization",
            payload(),
        )));
        assert_eq!(r.outcome(), "rejected");
    }
    let s = w.engine.stats();
    assert!(s.tenants.is_empty());
    assert_eq!(s.unknown_tenant_calls, 50);
}

#[test]
fn a_snapshot_taken_into_a_reused_one_equals_a_fresh_one() {
    let w = world();
    block_on(w.engine.call(Call::new("acme", "summarization", payload())));
    // A snapshot from elsewhere (another tenant list, routes of its own) is fully replaced.
    let mut out: StatsSnapshot =
        serde_json::from_str(&serde_json::to_string(&w.engine.stats()).unwrap()).unwrap();
    out.tenants.push(out.tenants[0].clone());
    w.engine.stats_into(&mut out);
    assert_eq!(out, w.engine.stats());
    // Taken again into itself after more calls (its routes array reused), including a new
    // tenant and a second route of a tenant.
    w.script.fail(
        "big",
        OutcomeClass::RateLimited,
        Some(Duration::from_secs(60)),
    );
    for tenant in ["acme", "hold", "acme"] {
        block_on(w.engine.call(Call::new(tenant, "summarization", payload())));
    }
    w.engine.stats_into(&mut out);
    let mut fresh = w.engine.stats();
    assert_eq!(out, fresh);
    fresh.sort_by_tenant();
    let acme = fresh.tenant("acme").unwrap();
    assert_eq!(acme.calls, 3);
    assert_eq!(acme.routes.len(), 2);
    assert_eq!(StatsSnapshot::default().tenants.len(), 0);
}
