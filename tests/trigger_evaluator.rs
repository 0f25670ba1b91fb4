//! The trigger evaluator's acceptance scenarios: breaker, retry-after, provider signals, latency
//! windows, budgets and operator modes. Every test is sleep-free: time is a value.

use std::time::Duration;

use downshift::policy::{
    Breaker, Budget, BudgetAction, Constraints, HalfOpen, LatencyWindow, OpenWait,
    RateLimitRemaining, SlowCalls, StatusPageState, Triggers, Window, WindowBudget,
};
use downshift::trigger::{
    BreakerEvent, BreakerMode, BreakerState, BudgetScope, EvaluatorSettings, Observation,
    OutcomeClass, Probe, ProbePermit, ProviderSignal, RateLimitState, StatusSet, TenantTriggers,
    TriggerEvaluator, TriggerKind, Verdict,
};
use downshift::{
    Clock, EndpointIdx, ManualClock, SessionId, TenantId, Timestamp, TriggerError, WorkflowId,
};

const E0: EndpointIdx = EndpointIdx(0);
const E1: EndpointIdx = EndpointIdx(1);
const T0: u64 = 1_700_000_000_000;

fn at(ms_after_t0: u64) -> Timestamp {
    Timestamp::from_millis(T0 + ms_after_t0)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A breaker with a count window of `window` calls, `min_calls`, a 50% failure threshold, no
/// consecutive-failure trigger, 3 probes and a fixed (jitter-free) open wait of 10 s doubling up
/// to 30 s.
fn settings(window: u32, min_calls: u32) -> EvaluatorSettings {
    EvaluatorSettings {
        breaker: Breaker {
            window: Window::Calls(window),
            min_calls,
            failure_rate: 0.5,
            consecutive_failures: None,
            ..Breaker::default()
        },
        half_open: HalfOpen {
            probes: 3,
            timeout: secs(60),
        },
        open_wait: OpenWait {
            initial: secs(10),
            multiplier: 2.0,
            max: secs(30),
            jitter: 0.0,
        },
        ..EvaluatorSettings::default()
    }
}

fn evaluator(s: &EvaluatorSettings) -> TriggerEvaluator {
    TriggerEvaluator::new(s, 4, 7).unwrap()
}

fn call(
    eval: &TriggerEvaluator,
    ep: EndpointIdx,
    tenant: &TenantId,
    outcome: OutcomeClass,
    now: Timestamp,
) {
    let obs = Observation::new(ep, tenant, outcome, now, Duration::from_millis(100));
    eval.observe(&obs, now).unwrap();
}

fn state(eval: &TriggerEvaluator, ep: EndpointIdx, now: Timestamp) -> BreakerState {
    eval.health(ep, now).unwrap().state
}

fn any_tenant() -> TenantTriggers {
    TenantTriggers::default()
}

#[test]
fn below_min_calls_the_breaker_never_opens_even_at_full_failure() {
    let eval = evaluator(&settings(20, 10));
    let t = TenantId::new("acme");
    for i in 0..9 {
        call(&eval, E0, &t, OutcomeClass::ServerError, at(i));
    }
    assert_eq!(state(&eval, E0, at(10)), BreakerState::Closed);
    assert_eq!(
        eval.check(E0, &any_tenant(), at(10)).unwrap(),
        Verdict::Usable
    );
    let h = eval.health(E0, at(10)).unwrap();
    assert_eq!((h.calls, h.failures, h.failure_rate), (9, 9, None));
    assert!(eval.drain_events().is_empty());
}

#[test]
fn at_min_calls_the_breaker_opens_iff_the_failure_rate_reaches_the_threshold() {
    for (failures, opens) in [(6, true), (4, false), (5, true)] {
        let eval = evaluator(&settings(20, 10));
        let t = TenantId::new("acme");
        for i in 0..10u64 {
            let outcome = if i < failures {
                OutcomeClass::Overloaded
            } else {
                OutcomeClass::Ok
            };
            call(&eval, E0, &t, outcome, at(i));
        }
        let verdict = eval.check(E0, &any_tenant(), at(10)).unwrap();
        assert_eq!(!verdict.is_usable(), opens, "{failures} failures of 10");
        let events = eval.drain_events();
        if opens {
            assert_eq!(events.len(), 1);
            let e = events[0];
            assert_eq!((e.from, e.to), (BreakerState::Closed, BreakerState::Open));
            assert_eq!(e.trigger.kind, TriggerKind::FailureRate);
            assert_eq!(e.trigger.measured, failures as f64 / 10.0);
            assert_eq!(e.trigger.threshold, 0.5);
            assert_eq!(e.trigger.samples, 10);
            assert_eq!(e.trigger.until, Some(at(10_009)));
            assert!(matches!(verdict, Verdict::Unusable(t) if t.kind == TriggerKind::BreakerOpen));
        } else {
            assert!(events.is_empty());
        }
    }
}

#[test]
fn slow_calls_count_whatever_their_outcome() {
    let mut s = settings(10, 5);
    s.breaker.slow_calls = Some(SlowCalls {
        latency: secs(2),
        rate: 0.5,
    });
    let eval = evaluator(&s);
    let t = TenantId::new("acme");
    let lat = [3_000, 100, 2_000, 100, 2_500];
    for (i, ms) in lat.iter().enumerate() {
        let now = at(i as u64 * 10);
        let obs = Observation::new(E0, &t, OutcomeClass::Ok, now, Duration::from_millis(*ms));
        eval.observe(&obs, now).unwrap();
    }
    let events = eval.drain_events();
    assert_eq!(events.len(), 1, "3 slow of 5 opens with 0% failures");
    assert_eq!(events[0].trigger.kind, TriggerKind::SlowCallRate);
    assert_eq!(events[0].trigger.measured, 0.6);
    let h = eval.health(E0, at(50)).unwrap();
    assert_eq!(h.state, BreakerState::Open);
    assert_eq!(h.last_trip.unwrap().kind, TriggerKind::SlowCallRate);
}

fn open_breaker(eval: &TriggerEvaluator, t: &TenantId, now: Timestamp) {
    for _ in 0..10 {
        call(eval, E0, t, OutcomeClass::ServerError, now);
    }
    assert_eq!(state(eval, E0, now), BreakerState::Open);
}

fn granted(p: Probe) -> ProbePermit {
    match p {
        Probe::Granted(p) => p,
        other => panic!("expected a permit, got {other:?}"),
    }
}

#[test]
fn open_rejects_until_the_wait_then_admits_exactly_n_probes_across_all_tenants() {
    let eval = evaluator(&settings(20, 10));
    let tenants: Vec<TenantId> = (0..5).map(|i| TenantId::new(format!("t{i}"))).collect();
    open_breaker(&eval, &tenants[0], at(0));
    eval.drain_events();

    // Open: refused, with when to ask again.
    for s in [0, 5_000, 9_999] {
        match eval.check(E0, &any_tenant(), at(s)).unwrap() {
            Verdict::Unusable(t) => {
                assert_eq!(t.kind, TriggerKind::BreakerOpen);
                assert_eq!(t.until, Some(at(10_000)));
            }
            v => panic!("{v:?}"),
        }
        assert!(
            matches!(eval.try_acquire_probe(E0, at(s)).unwrap(), Probe::Refused(t) if t.kind == TriggerKind::BreakerOpen)
        );
    }

    // After the wait: probe-only, and exactly 3 permits platform-wide.
    assert!(matches!(
        eval.check(E0, &any_tenant(), at(10_000)).unwrap(),
        Verdict::ProbeOnly(_)
    ));
    let permits: Vec<ProbePermit> = (0..3)
        .map(|_| granted(eval.try_acquire_probe(E0, at(10_000)).unwrap()))
        .collect();
    for _ in 0..4 {
        match eval.try_acquire_probe(E0, at(10_001)).unwrap() {
            Probe::Refused(t) => assert_eq!(t.kind, TriggerKind::ProbesExhausted),
            p => panic!("{p:?}"),
        }
    }
    assert!(
        matches!(eval.check(E0, &any_tenant(), at(10_001)).unwrap(), Verdict::Unusable(t) if t.kind == TriggerKind::ProbesExhausted)
    );

    // Three tenants' probes succeed: closed.
    for (i, p) in permits.iter().enumerate() {
        let now = at(10_100 + i as u64);
        let obs = Observation::new(
            E0,
            &tenants[i + 1],
            OutcomeClass::Ok,
            now,
            Duration::from_millis(90),
        )
        .probe(*p);
        eval.observe(&obs, now).unwrap();
    }
    assert_eq!(state(&eval, E0, at(10_200)), BreakerState::Closed);
    assert_eq!(
        eval.check(E0, &any_tenant(), at(10_200)).unwrap(),
        Verdict::Usable
    );
    let path: Vec<(BreakerState, BreakerState, TriggerKind)> = eval
        .drain_events()
        .iter()
        .map(|e| (e.from, e.to, e.trigger.kind))
        .collect();
    assert_eq!(
        path,
        [
            (
                BreakerState::Open,
                BreakerState::HalfOpen,
                TriggerKind::OpenWaitElapsed
            ),
            (
                BreakerState::HalfOpen,
                BreakerState::Closed,
                TriggerKind::ProbesSucceeded
            ),
        ]
    );
    assert_eq!(
        eval.try_acquire_probe(E0, at(10_200)).unwrap(),
        Probe::NotNeeded
    );
}

#[test]
fn a_failed_probe_reopens_with_a_longer_wait_capped_at_max() {
    let eval = evaluator(&settings(20, 10));
    let t = TenantId::new("acme");
    open_breaker(&eval, &t, at(0));
    let mut now = at(0);
    let mut waits = vec![10_000];
    for _ in 0..3 {
        let open_until = eval.health(E0, now).unwrap().open_until.unwrap();
        now = open_until;
        let p = granted(eval.try_acquire_probe(E0, now).unwrap());
        let obs = Observation::new(E0, &t, OutcomeClass::RateLimited, now, Duration::ZERO).probe(p);
        eval.observe(&obs, now).unwrap();
        let h = eval.health(E0, now).unwrap();
        assert_eq!(h.state, BreakerState::Open);
        waits.push(h.open_until.unwrap().as_millis() - now.as_millis());
    }
    assert_eq!(waits, [10_000, 20_000, 30_000, 30_000]);
    let reopen = eval
        .drain_events()
        .into_iter()
        .rev()
        .find(|e| e.from == BreakerState::HalfOpen)
        .unwrap();
    assert_eq!(reopen.trigger.kind, TriggerKind::ProbeFailed);
    assert_eq!(reopen.reopens, 3);
}

#[test]
fn a_half_open_round_that_outlives_its_timeout_reopens() {
    let eval = evaluator(&settings(20, 10));
    let t = TenantId::new("acme");
    open_breaker(&eval, &t, at(0));
    let leaked = granted(eval.try_acquire_probe(E0, at(10_000)).unwrap());
    // The permit is never reported (the caller crashed). One minute later the round times out.
    assert!(matches!(
        eval.check(E0, &any_tenant(), at(69_999)).unwrap(),
        Verdict::ProbeOnly(_)
    ));
    assert!(
        matches!(eval.try_acquire_probe(E0, at(70_000)).unwrap(), Probe::Refused(t) if t.kind == TriggerKind::BreakerOpen)
    );
    let h = eval.health(E0, at(70_000)).unwrap();
    assert_eq!((h.state, h.reopens), (BreakerState::Open, 1));
    assert_eq!(h.open_until, Some(at(90_000)));
    // The late report of the old permit changes nothing.
    let obs = Observation::new(E0, &t, OutcomeClass::Ok, at(70_001), Duration::ZERO).probe(leaked);
    eval.observe(&obs, at(70_001)).unwrap();
    assert_eq!(state(&eval, E0, at(70_001)), BreakerState::Open);
    let last = eval.drain_events().pop().unwrap();
    assert_eq!(last.trigger.kind, TriggerKind::ProbeTimeout);
}

#[test]
fn a_permit_reported_twice_counts_once_and_an_inconclusive_probe_frees_its_permit() {
    let eval = evaluator(&settings(20, 10));
    let t = TenantId::new("acme");
    open_breaker(&eval, &t, at(0));
    let now = at(10_000);
    let p1 = granted(eval.try_acquire_probe(E0, now).unwrap());
    // A permit reported on another endpoint's call counts for neither.
    let elsewhere = Observation::new(E1, &t, OutcomeClass::Ok, now, Duration::ZERO).probe(p1);
    eval.observe(&elsewhere, now).unwrap();
    assert_eq!(eval.health(E0, now).unwrap().probes_left, Some(2));
    let ok = Observation::new(E0, &t, OutcomeClass::Ok, now, Duration::ZERO).probe(p1);
    eval.observe(&ok, now).unwrap();
    eval.observe(&ok, now).unwrap();
    eval.observe(&ok, now).unwrap();
    assert_eq!(state(&eval, E0, now), BreakerState::HalfOpen);
    assert_eq!(eval.health(E0, now).unwrap().probes_left, Some(2));
    // A context-length error says nothing about recovery: the permit goes back.
    let p2 = granted(eval.try_acquire_probe(E0, now).unwrap());
    assert_eq!(eval.health(E0, now).unwrap().probes_left, Some(1));
    let bad = Observation::new(
        E0,
        &t,
        OutcomeClass::ContextLengthExceeded,
        now,
        Duration::ZERO,
    )
    .probe(p2);
    eval.observe(&bad, now).unwrap();
    assert_eq!(eval.health(E0, now).unwrap().probes_left, Some(2));
    assert_eq!(state(&eval, E0, now), BreakerState::HalfOpen);
}

#[test]
fn a_429_with_retry_after_30s_blocks_30s_and_a_later_5s_retry_after_does_not_shorten_it() {
    let eval = evaluator(&settings(20, 10));
    let t = TenantId::new("acme");
    let obs = Observation::new(E0, &t, OutcomeClass::RateLimited, at(0), Duration::ZERO)
        .retry_after(secs(30));
    eval.observe(&obs, at(0)).unwrap();
    let later = Observation::new(
        E0,
        &t,
        OutcomeClass::RateLimited,
        at(10_000),
        Duration::ZERO,
    )
    .retry_after(secs(5));
    eval.observe(&later, at(10_000)).unwrap();
    for s in [0, 10_000, 15_000, 29_999] {
        match eval.check(E0, &any_tenant(), at(s)).unwrap() {
            Verdict::Unusable(tr) => {
                assert_eq!(tr.kind, TriggerKind::RetryAfter);
                assert_eq!(tr.until, Some(at(30_000)));
            }
            v => panic!("at +{s} ms: {v:?}"),
        }
    }
    assert_eq!(
        eval.check(E0, &any_tenant(), at(30_000)).unwrap(),
        Verdict::Usable
    );
    // Another endpoint is untouched.
    assert_eq!(
        eval.check(E1, &any_tenant(), at(0)).unwrap(),
        Verdict::Usable
    );
    assert_eq!(eval.health(E0, at(0)).unwrap().not_before, Some(at(30_000)));
}

#[test]
fn retry_after_is_ignored_when_the_platform_does_not_honour_it() {
    let mut s = settings(20, 10);
    s.honour_retry_after = false;
    let eval = evaluator(&s);
    let t = TenantId::new("acme");
    let obs = Observation::new(E0, &t, OutcomeClass::RateLimited, at(0), Duration::ZERO)
        .retry_after(secs(30));
    eval.observe(&obs, at(0)).unwrap();
    assert_eq!(
        eval.check(E0, &any_tenant(), at(1)).unwrap(),
        Verdict::Usable
    );
}

#[test]
fn context_length_and_other_request_errors_never_open_the_primary() {
    let mut s = settings(20, 10);
    s.breaker.consecutive_failures = Some(3);
    let eval = evaluator(&s);
    let t = TenantId::new("acme");
    for (i, outcome) in [
        OutcomeClass::ContextLengthExceeded,
        OutcomeClass::ContentFiltered,
        OutcomeClass::Auth,
        OutcomeClass::BadRequest,
    ]
    .into_iter()
    .cycle()
    .take(100)
    .enumerate()
    {
        call(&eval, E0, &t, outcome, at(i as u64));
    }
    let h = eval.health(E0, at(100)).unwrap();
    assert_eq!(h.state, BreakerState::Closed);
    assert_eq!((h.calls, h.failures, h.consecutive_failures), (0, 0, 0));
    assert_eq!(
        eval.check(E0, &any_tenant(), at(100)).unwrap(),
        Verdict::Usable
    );
    assert!(eval.drain_events().is_empty());
}

#[test]
fn request_errors_neither_count_as_failures_nor_dilute_a_real_outage() {
    let eval = evaluator(&settings(20, 10));
    let t = TenantId::new("acme");
    for i in 0..40 {
        call(&eval, E0, &t, OutcomeClass::BadRequest, at(i));
    }
    for i in 0..10 {
        call(&eval, E0, &t, OutcomeClass::Overloaded, at(100 + i));
    }
    assert_eq!(state(&eval, E0, at(200)), BreakerState::Open);
}

#[test]
fn consecutive_failures_open_the_breaker_whatever_the_window_says() {
    let mut s = settings(100, 50);
    s.breaker.consecutive_failures = Some(5);
    let eval = evaluator(&s);
    let t = TenantId::new("acme");
    for i in 0..4 {
        call(&eval, E0, &t, OutcomeClass::Timeout, at(i));
    }
    call(&eval, E0, &t, OutcomeClass::Ok, at(4));
    for i in 0..4 {
        call(&eval, E0, &t, OutcomeClass::Timeout, at(10 + i));
    }
    assert_eq!(
        state(&eval, E0, at(20)),
        BreakerState::Closed,
        "a success breaks the run"
    );
    call(&eval, E0, &t, OutcomeClass::Timeout, at(20));
    let e = eval.drain_events();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].trigger.kind, TriggerKind::ConsecutiveFailures);
    assert_eq!((e[0].trigger.measured, e[0].trigger.threshold), (5.0, 5.0));
}

#[test]
fn a_time_window_forgets_failures_older_than_the_window() {
    let mut s = settings(20, 4);
    s.breaker.window = Window::Time(secs(60));
    let eval = evaluator(&s);
    let t = TenantId::new("acme");
    for i in 0..3 {
        call(&eval, E0, &t, OutcomeClass::ServerError, at(i));
    }
    // 63 s later (window + one 3 s bucket) those failures are gone.
    call(&eval, E0, &t, OutcomeClass::ServerError, at(63_000));
    let h = eval.health(E0, at(63_000)).unwrap();
    assert_eq!((h.calls, h.state), (1, BreakerState::Closed));
    for i in 0..3 {
        call(&eval, E0, &t, OutcomeClass::ServerError, at(63_001 + i));
    }
    let e = eval.drain_events();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].trigger.window, Some(secs(60)));
}

#[test]
fn rate_limit_headroom_below_the_tenants_threshold_marks_the_endpoint_pressured_before_any_429() {
    let eval = evaluator(&settings(20, 10));
    let t = TenantId::new("acme");
    let cautious = TenantTriggers {
        rate_limit_remaining: Some(RateLimitRemaining {
            min_requests_fraction: Some(0.1),
            min_tokens_fraction: Some(0.05),
        }),
        ..TenantTriggers::default()
    };
    let rl = RateLimitState {
        requests_limit: Some(1_000),
        requests_remaining: Some(50),
        requests_reset: Some(secs(20)),
        tokens_limit: Some(100_000),
        tokens_remaining: Some(80_000),
        tokens_reset: None,
        ..RateLimitState::default()
    };
    let obs = Observation::new(E0, &t, OutcomeClass::Ok, at(0), Duration::from_millis(400))
        .rate_limit(rl);
    eval.observe(&obs, at(400)).unwrap();
    match eval.check(E0, &cautious, at(500)).unwrap() {
        Verdict::Unusable(tr) => {
            assert_eq!(tr.kind, TriggerKind::RateLimitRequests);
            assert_eq!((tr.measured, tr.threshold), (0.05, 0.1));
            assert_eq!(tr.until, Some(at(20_400)));
        }
        v => panic!("{v:?}"),
    }
    // A tenant without the threshold still uses it; nothing counted as a failure.
    assert_eq!(
        eval.check(E0, &any_tenant(), at(500)).unwrap(),
        Verdict::Usable
    );
    assert_eq!(eval.health(E0, at(500)).unwrap().failures, 0);
    // The window resets: headroom is back.
    assert_eq!(
        eval.check(E0, &cautious, at(20_400)).unwrap(),
        Verdict::Usable
    );

    // Tokens, pushed as a signal from elsewhere.
    let low_tokens = RateLimitState {
        tokens_limit: Some(100_000),
        tokens_remaining: Some(1_000),
        ..RateLimitState::default()
    };
    eval.signal(
        &ProviderSignal::RateLimit {
            endpoint: E0,
            state: low_tokens,
        },
        at(30_000),
    )
    .unwrap();
    assert!(matches!(eval.check(E0, &cautious, at(30_001)).unwrap(),
        Verdict::Unusable(tr) if tr.kind == TriggerKind::RateLimitTokens));
    // Without a reset time the reading holds for the signal TTL (2 minutes by default).
    assert_eq!(
        eval.check(E0, &cautious, at(150_000)).unwrap(),
        Verdict::Usable
    );
}

#[test]
fn status_page_and_queue_depth_apply_each_tenants_thresholds_and_expire() {
    let eval = evaluator(&settings(20, 10));
    let strict = TenantTriggers::from_policy(
        &Triggers {
            queue_depth: Some(100),
            status_page: vec![StatusPageState::PartialOutage, StatusPageState::MajorOutage],
            ..Triggers::default()
        },
        &Constraints::default(),
    );
    let relaxed = TenantTriggers {
        status_page: StatusSet::EMPTY.with(StatusPageState::MajorOutage),
        ..TenantTriggers::default()
    };
    eval.signal(
        &ProviderSignal::StatusPage {
            endpoint: E0,
            state: StatusPageState::PartialOutage,
        },
        at(0),
    )
    .unwrap();
    match eval.check(E0, &strict, at(1)).unwrap() {
        Verdict::Unusable(t) => {
            assert_eq!(t.kind, TriggerKind::StatusPage);
            assert_eq!(t.status, Some(StatusPageState::PartialOutage));
        }
        v => panic!("{v:?}"),
    }
    assert_eq!(eval.check(E0, &relaxed, at(1)).unwrap(), Verdict::Usable);
    eval.signal(
        &ProviderSignal::StatusPage {
            endpoint: E0,
            state: StatusPageState::Operational,
        },
        at(2),
    )
    .unwrap();
    assert_eq!(eval.check(E0, &strict, at(3)).unwrap(), Verdict::Usable);

    eval.signal(
        &ProviderSignal::QueueDepth {
            endpoint: E1,
            depth: 100,
        },
        at(0),
    )
    .unwrap();
    match eval.check(E1, &strict, at(1)).unwrap() {
        Verdict::Unusable(t) => {
            assert_eq!(t.kind, TriggerKind::QueueDepth);
            assert_eq!((t.measured, t.threshold), (100.0, 100.0));
        }
        v => panic!("{v:?}"),
    }
    assert_eq!(eval.check(E1, &relaxed, at(1)).unwrap(), Verdict::Usable);
    // The poller stopped: after the TTL the old reading no longer counts.
    assert_eq!(
        eval.check(E1, &strict, at(120_000)).unwrap(),
        Verdict::Usable
    );
}

#[test]
fn an_explicit_not_before_signal_blocks_and_never_shortens() {
    let eval = evaluator(&settings(20, 10));
    eval.signal(
        &ProviderSignal::NotBefore {
            endpoint: E0,
            until: at(60_000),
        },
        at(0),
    )
    .unwrap();
    eval.signal(
        &ProviderSignal::RetryAfter {
            endpoint: E0,
            after: secs(1),
        },
        at(0),
    )
    .unwrap();
    assert!(matches!(eval.check(E0, &any_tenant(), at(59_999)).unwrap(),
        Verdict::Unusable(t) if t.until == Some(at(60_000))));
    assert_eq!(
        eval.check(E0, &any_tenant(), at(60_000)).unwrap(),
        Verdict::Usable
    );
}

fn latency_settings() -> EvaluatorSettings {
    let mut s = settings(20, 10);
    s.latency = LatencyWindow {
        window: secs(60),
        min_samples: 20,
    };
    s
}

fn sample(eval: &TriggerEvaluator, ep: EndpointIdx, ms: u64, now: Timestamp) {
    let t = TenantId::new("any");
    let obs = Observation::new(ep, &t, OutcomeClass::Ok, now, Duration::from_millis(ms));
    eval.observe(&obs, now).unwrap();
}

fn ceiling(d: Duration) -> TenantTriggers {
    TenantTriggers {
        p95_ceiling: Some(d),
        ..TenantTriggers::default()
    }
}

#[test]
fn p95_needs_the_minimum_samples_and_is_checked_against_each_tenants_ceiling() {
    let eval = evaluator(&latency_settings());
    let hospital = ceiling(secs(3));
    let agency = ceiling(secs(10));
    // 19 samples of 4.2 s: not enough to trust.
    for i in 0..19 {
        sample(&eval, E0, 4_200, at(i * 100));
    }
    assert_eq!(
        eval.check(E0, &hospital, at(2_000)).unwrap(),
        Verdict::Usable
    );
    assert_eq!(eval.recent_p95(E0, at(2_000)).unwrap(), None);
    sample(&eval, E0, 4_200, at(1_900));
    // Now one endpoint is too slow for the hospital and fine for the agency, at once.
    match eval.check(E0, &hospital, at(2_000)).unwrap() {
        Verdict::Unusable(t) => {
            assert_eq!(t.kind, TriggerKind::LatencyP95);
            assert_eq!(t.threshold, 3_000.0);
            assert!(
                (t.measured - 4_200.0).abs() <= 4_200.0 / 32.0,
                "{}",
                t.measured
            );
            assert_eq!((t.window, t.samples), (Some(secs(60)), 20));
            assert!(
                t.to_string()
                    .starts_with("p95 4.2 s >= ceiling 3.0 s over 1m, 20 samples"),
                "{t}"
            );
        }
        v => panic!("{v:?}"),
    }
    assert_eq!(eval.check(E0, &agency, at(2_000)).unwrap(), Verdict::Usable);
    assert_eq!(
        eval.check(E0, &any_tenant(), at(2_000)).unwrap(),
        Verdict::Usable
    );
}

#[test]
fn p95_is_the_95th_percentile_not_the_worst_call() {
    let eval = evaluator(&latency_settings());
    // 19 fast calls and one very slow one: the 19th of 20 is fast.
    for i in 0..19 {
        sample(&eval, E0, 200, at(i));
    }
    sample(&eval, E0, 30_000, at(19));
    assert_eq!(
        eval.check(E0, &ceiling(secs(1)), at(20)).unwrap(),
        Verdict::Usable
    );
    let h = eval.health(E0, at(20)).unwrap();
    assert_eq!(h.latency.p50, Some(Duration::from_millis(200)));
    assert_eq!(h.latency.p95, Some(Duration::from_millis(200)));
    assert_eq!(h.latency.p99, Some(secs(30)));
    // A second slow call makes the 19th slow.
    sample(&eval, E0, 30_000, at(21));
    assert!(
        !eval
            .check(E0, &ceiling(secs(1)), at(22))
            .unwrap()
            .is_usable()
    );
}

#[test]
fn latency_samples_older_than_the_window_no_longer_count() {
    let eval = evaluator(&latency_settings());
    let clock = ManualClock::new(at(0));
    for _ in 0..20 {
        sample(&eval, E0, 5_000, clock.now());
    }
    assert!(
        !eval
            .check(E0, &ceiling(secs(3)), clock.now())
            .unwrap()
            .is_usable()
    );
    clock.advance(secs(60));
    // Still inside window + one 6 s slice.
    assert!(
        !eval
            .check(E0, &ceiling(secs(3)), clock.now())
            .unwrap()
            .is_usable()
    );
    clock.advance(secs(6));
    // No new observation arrived, yet the old samples are gone for queries too.
    assert_eq!(
        eval.check(E0, &ceiling(secs(3)), clock.now()).unwrap(),
        Verdict::Usable
    );
    assert_eq!(eval.recent_p95(E0, clock.now()).unwrap(), None);
    assert_eq!(eval.health(E0, clock.now()).unwrap().latency.samples, 0);
    // Fresh fast samples: usable on their own merit.
    for _ in 0..20 {
        sample(&eval, E0, 300, clock.now());
    }
    assert_eq!(
        eval.recent_p95(E0, clock.now()).unwrap(),
        Some(Duration::from_millis(300))
    );
}

#[test]
fn fast_errors_do_not_make_a_failing_endpoint_look_fast() {
    let eval = evaluator(&latency_settings());
    let t = TenantId::new("x");
    for i in 0..20 {
        sample(&eval, E0, 5_000, at(i));
        let obs = Observation::new(
            E0,
            &t,
            OutcomeClass::RateLimited,
            at(i),
            Duration::from_millis(20),
        );
        eval.observe(&obs, at(i)).unwrap();
    }
    let h = eval.health(E0, at(30)).unwrap();
    assert_eq!(h.latency.samples, 20);
    assert!(h.latency.p50.unwrap() >= Duration::from_millis(4_800));
}

fn hourly_budget(limit: f64) -> TenantTriggers {
    TenantTriggers {
        budget: Some(Budget {
            tenant: Some(WindowBudget {
                limit_usd: limit,
                window: secs(3600),
            }),
            session_usd: Some(2.0),
            workflow_usd: Some(3.0),
            on_exceeded: BudgetAction::Reject,
        }),
        ..TenantTriggers::default()
    }
}

fn spend(
    eval: &TriggerEvaluator,
    view: &TenantTriggers,
    tenant: &TenantId,
    session: Option<&SessionId>,
    workflow: Option<&WorkflowId>,
    usd: f64,
    now: Timestamp,
) {
    let mut obs = Observation::new(
        E0,
        tenant,
        OutcomeClass::Ok,
        now,
        Duration::from_millis(100),
    )
    .cost(usd)
    .budget(view.budget.as_ref().unwrap());
    obs.session = session;
    obs.workflow = workflow;
    eval.observe(&obs, now).unwrap();
}

#[test]
fn a_tenants_hourly_cost_guardrail_fires_when_crossed_and_clears_when_the_window_slides() {
    let eval = evaluator(&settings(20, 10));
    let view = hourly_budget(10.0);
    let acme = TenantId::new("acme");
    let other = TenantId::new("other");
    let scope = BudgetScope::tenant(&acme);
    spend(&eval, &view, &acme, None, None, 4.0, at(0));
    spend(&eval, &view, &acme, None, None, 4.0, at(600_000));
    assert_eq!(eval.check_budget(&scope, &view, at(600_000)), None);
    spend(&eval, &view, &acme, None, None, 2.0, at(1_200_000));
    let t = eval.check_budget(&scope, &view, at(1_200_000)).unwrap();
    assert_eq!(t.kind, TriggerKind::TenantBudget);
    assert_eq!(
        (t.measured, t.threshold, t.window),
        (10.0, 10.0, Some(secs(3600)))
    );
    assert_eq!(t.to_string(), "tenant spend $10.00 >= limit $10.00 over 1h");
    // Another tenant is unaffected.
    assert_eq!(
        eval.check_budget(&BudgetScope::tenant(&other), &view, at(1_200_000)),
        None
    );
    // Still crossed just before an hour has passed since the first $4.
    assert!(eval.check_budget(&scope, &view, at(3_599_999)).is_some());
    // Once the first charge has left the window (an hour plus at most one 3.75-minute slice),
    // the guardrail clears.
    assert_eq!(
        eval.check_budget(&scope, &view, at(3_600_000 + 225_000)),
        None
    );
    assert_eq!(
        eval.spend(&scope, at(3_600_000 + 225_000))
            .tenant_window_usd,
        6.0
    );
}

#[test]
fn session_and_workflow_budgets_count_totals_per_tenant() {
    let eval = evaluator(&settings(20, 10));
    let view = hourly_budget(100.0);
    let (a, b) = (TenantId::new("a"), TenantId::new("b"));
    let s = SessionId::new("session-1");
    let w = WorkflowId::new("wf");
    spend(&eval, &view, &a, Some(&s), Some(&w), 1.5, at(0));
    spend(&eval, &view, &b, Some(&s), None, 1.9, at(0));
    let sa = BudgetScope::tenant(&a).session(&s).workflow(&w);
    assert_eq!(eval.check_budget(&sa, &view, at(1)), None);
    spend(&eval, &view, &a, Some(&s), Some(&w), 0.5, at(2));
    let t = eval.check_budget(&sa, &view, at(3)).unwrap();
    assert_eq!(
        (t.kind, t.measured, t.threshold),
        (TriggerKind::SessionBudget, 2.0, 2.0)
    );
    // The same session id under another tenant is another session.
    assert_eq!(
        eval.check_budget(&BudgetScope::tenant(&b).session(&s), &view, at(3)),
        None
    );
    let w2 = SessionId::new("session-2");
    spend(&eval, &view, &a, Some(&w2), Some(&w), 1.0, at(4));
    let t = eval
        .check_budget(
            &BudgetScope::tenant(&a).session(&w2).workflow(&w),
            &view,
            at(5),
        )
        .unwrap();
    assert_eq!((t.kind, t.measured), (TriggerKind::WorkflowBudget, 3.0));
}

#[test]
fn idle_budget_state_is_evicted_but_never_while_spend_still_counts() {
    let eval = evaluator(&settings(20, 10));
    let view = hourly_budget(10.0);
    let a = TenantId::new("a");
    let s = SessionId::new("s");
    spend(&eval, &view, &a, Some(&s), None, 9.0, at(0));
    let gone = eval.evict_idle(at(600_000), secs(300));
    assert_eq!((gone.tenants, gone.sessions), (0, 1));
    assert_eq!(eval.tracked_tenants(), 1);
    spend(&eval, &view, &a, None, None, 1.0, at(600_000));
    assert!(
        eval.check_budget(&BudgetScope::tenant(&a), &view, at(600_001))
            .is_some()
    );
    let gone = eval.evict_idle(at(5_000_000), secs(300));
    assert_eq!(gone.tenants, 1);
    assert_eq!(eval.tracked_tenants(), 0);
    // A resumed session gets its spend back from its checkpoint.
    eval.restore_spend(
        &BudgetScope::tenant(&a).session(&s),
        1.25,
        f64::NAN,
        at(5_000_001),
    );
    assert_eq!(
        eval.spend(&BudgetScope::tenant(&a).session(&s), at(5_000_002))
            .session_usd,
        1.25
    );
}

#[test]
fn operators_can_force_open_disable_or_watch_a_breaker() {
    let eval = evaluator(&settings(20, 10));
    let t = TenantId::new("acme");
    eval.set_mode(E0, BreakerMode::ForcedOpen, at(0)).unwrap();
    eval.set_mode(E0, BreakerMode::ForcedOpen, at(1)).unwrap();
    assert!(
        matches!(eval.check(E0, &any_tenant(), at(2)).unwrap(), Verdict::Unusable(t) if t.kind == TriggerKind::ForcedOpen)
    );
    assert!(matches!(
        eval.try_acquire_probe(E0, at(2)).unwrap(),
        Probe::Refused(_)
    ));
    let e = eval.drain_events();
    assert_eq!(e.len(), 1, "setting the same mode twice is not a change");
    assert_eq!(
        (e[0].from, e[0].to, e[0].trigger.kind),
        (
            BreakerState::Closed,
            BreakerState::ForcedOpen,
            TriggerKind::Manual
        )
    );

    // Disabled: failures and retry-after never block, nothing is counted.
    eval.set_mode(E0, BreakerMode::Disabled, at(3)).unwrap();
    for i in 0..30 {
        let obs = Observation::new(E0, &t, OutcomeClass::RateLimited, at(4 + i), Duration::ZERO)
            .retry_after(secs(60));
        eval.observe(&obs, at(4 + i)).unwrap();
    }
    assert_eq!(
        eval.check(E0, &any_tenant(), at(40)).unwrap(),
        Verdict::Usable
    );
    assert_eq!(eval.health(E0, at(40)).unwrap().calls, 0);

    // Metrics only: counted, rates computed, never blocks.
    eval.set_mode(E0, BreakerMode::MetricsOnly, at(41)).unwrap();
    for i in 0..20 {
        call(&eval, E0, &t, OutcomeClass::ServerError, at(42 + i));
    }
    let h = eval.health(E0, at(70)).unwrap();
    assert_eq!(
        (h.state, h.calls, h.failure_rate),
        (BreakerState::MetricsOnly, 20, Some(1.0))
    );
    assert_eq!(
        eval.check(E0, &any_tenant(), at(70)).unwrap(),
        Verdict::Usable
    );

    // Back to automatic: closed and fresh, but the provider's retry-after still stands.
    eval.set_mode(E0, BreakerMode::Auto, at(71)).unwrap();
    assert_eq!(eval.health(E0, at(71)).unwrap().calls, 0);
    assert!(
        matches!(eval.check(E0, &any_tenant(), at(72)).unwrap(), Verdict::Unusable(t) if t.kind == TriggerKind::RetryAfter)
    );
    eval.reset(E0, at(73)).unwrap();
    assert_eq!(
        eval.check(E0, &any_tenant(), at(74)).unwrap(),
        Verdict::Usable
    );
    let kinds: Vec<(BreakerState, BreakerState)> = eval
        .drain_events()
        .iter()
        .map(|e: &BreakerEvent| (e.from, e.to))
        .collect();
    assert_eq!(
        kinds,
        [
            (BreakerState::ForcedOpen, BreakerState::Disabled),
            (BreakerState::Disabled, BreakerState::MetricsOnly),
            (BreakerState::MetricsOnly, BreakerState::Closed),
        ],
        "a reset of a closed breaker is not a state change"
    );
}

#[test]
fn bad_input_is_a_typed_error_and_records_nothing() {
    let eval = evaluator(&settings(20, 10));
    let t = TenantId::new("acme");
    let ghost = EndpointIdx(99);
    assert_eq!(
        eval.check(ghost, &any_tenant(), at(0)).unwrap_err(),
        TriggerError::UnknownEndpoint {
            endpoint: ghost,
            len: 4
        }
    );
    let obs = Observation::new(ghost, &t, OutcomeClass::Ok, at(0), Duration::ZERO);
    assert!(eval.observe(&obs, at(0)).is_err());
    assert!(eval.try_acquire_probe(ghost, at(0)).is_err());
    assert!(eval.health(ghost, at(0)).is_err());
    assert!(
        eval.signal(
            &ProviderSignal::QueueDepth {
                endpoint: ghost,
                depth: 1
            },
            at(0)
        )
        .is_err()
    );
    let view = hourly_budget(10.0);
    for cost in [f64::NAN, -1.0, f64::INFINITY] {
        let obs = Observation::new(E0, &t, OutcomeClass::ServerError, at(0), Duration::ZERO)
            .cost(cost)
            .budget(view.budget.as_ref().unwrap());
        let err = eval.observe(&obs, at(0)).unwrap_err();
        assert!(err.to_string().contains("tenant `acme`"), "{err}");
    }
    assert_eq!(eval.health(E0, at(0)).unwrap().calls, 0);
    assert_eq!(eval.tracked_tenants(), 0);
    assert!(matches!(
        TriggerEvaluator::new(&EvaluatorSettings::default(), usize::MAX, 0),
        Err(TriggerError::TooManyEndpoints { .. })
    ));
}

#[test]
fn odd_settings_do_not_panic() {
    let s = EvaluatorSettings {
        breaker: Breaker {
            capacity_errors: vec![OutcomeClass::ContextLengthExceeded, OutcomeClass::Timeout],
            window: Window::Calls(0),
            min_calls: 0,
            failure_rate: f64::NAN,
            slow_calls: Some(SlowCalls {
                latency: Duration::ZERO,
                rate: -1.0,
            }),
            consecutive_failures: Some(0),
        },
        half_open: HalfOpen {
            probes: 0,
            timeout: Duration::ZERO,
        },
        open_wait: OpenWait {
            initial: Duration::MAX,
            multiplier: f64::INFINITY,
            max: Duration::ZERO,
            jitter: f64::NAN,
        },
        latency: LatencyWindow {
            window: Duration::ZERO,
            min_samples: 0,
        },
        ..EvaluatorSettings::default()
    };
    let eval = TriggerEvaluator::new(&s, 1, u64::MAX).unwrap();
    let t = TenantId::new("t");
    for (i, o) in OutcomeClass::ALL.into_iter().cycle().take(50).enumerate() {
        let now = at(i as u64);
        let obs = Observation::new(E0, &t, o, now, Duration::MAX).retry_after(Duration::MAX);
        eval.observe(&obs, now).unwrap();
        let _ = eval.check(E0, &ceiling(Duration::ZERO), now).unwrap();
        let _ = eval.try_acquire_probe(E0, now).unwrap();
    }
    // The context-length class listed as a capacity error is still never counted.
    let h = eval.health(E0, at(100)).unwrap();
    assert!(h.calls <= 1);
}

#[test]
fn the_evaluator_is_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<TriggerEvaluator>();
    let eval = std::sync::Arc::new(evaluator(&settings(1000, 10)));
    let handles: Vec<_> = (0..2)
        .map(|k| {
            let eval = eval.clone();
            std::thread::spawn(move || {
                let t = TenantId::new(format!("t{k}"));
                for i in 0..500 {
                    call(&eval, E0, &t, OutcomeClass::Ok, at(i));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(eval.health(E0, at(600)).unwrap().calls, 1000);
}

#[test]
fn a_budget_handle_charges_the_same_spend_as_ids_and_survives_eviction() {
    let eval = evaluator(&settings(20, 10));
    let view = hourly_budget(10.0);
    let budget = view.budget.as_ref().unwrap();
    let a = TenantId::new("a");
    let s = SessionId::new("s");
    let scope = BudgetScope::tenant(&a).session(&s);
    let handle = eval.budget_handle(&scope, at(0));
    assert_eq!((handle.tenant(), handle.session()), (&a, Some(&s)));
    for (i, with_handle) in [true, false, true].into_iter().enumerate() {
        let now = at(i as u64);
        let obs = Observation::new(E0, &a, OutcomeClass::Ok, now, Duration::ZERO)
            .session(&s)
            .cost(0.75)
            .budget(budget);
        let obs = if with_handle {
            obs.budget_handle(&handle)
        } else {
            obs
        };
        eval.observe(&obs, now).unwrap();
    }
    let by_handle = eval
        .check_budget(&scope.with_handle(&handle), &view, at(3))
        .unwrap();
    let by_id = eval.check_budget(&scope, &view, at(3)).unwrap();
    assert_eq!(by_handle, by_id);
    assert_eq!(
        (by_id.kind, by_id.measured),
        (TriggerKind::SessionBudget, 2.25)
    );
    // Evicted while idle; the engine still holds the old handle.
    eval.evict_idle(at(10_000_000), secs(60));
    assert_eq!(eval.tracked_tenants(), 0);
    let now = at(10_000_001);
    let obs = Observation::new(E0, &a, OutcomeClass::Ok, now, Duration::ZERO)
        .session(&s)
        .cost(0.5)
        .budget(budget)
        .budget_handle(&handle);
    eval.observe(&obs, now).unwrap();
    assert_eq!(eval.spend(&scope, now).session_usd, 0.5);
    assert_eq!(
        eval.spend(&scope.with_handle(&handle), now).session_usd,
        0.5
    );
}
