//! Invariants of the shared breaker, checked on generated histories: it never opens below
//! `min_calls`, it reports a transition exactly when its state really changes, and its open
//! wait always stays within `[initial, max * (1 + jitter)]`.

use std::time::Duration;

use downshift::policy::{Breaker, HalfOpen, OpenWait, SlowCalls, Window};
use downshift::trigger::{
    BreakerMode, BreakerState, EvaluatorSettings, Observation, OutcomeClass, Probe, ProbePermit,
    TriggerEvaluator, TriggerKind, open_wait,
};
use downshift::{EndpointIdx, TenantId, Timestamp};
use proptest::prelude::*;

const E: EndpointIdx = EndpointIdx(0);

fn outcome() -> impl Strategy<Value = OutcomeClass> {
    proptest::sample::select(OutcomeClass::ALL.to_vec())
}

fn settings(min_calls: u32, extra: u32, rate: f64, slow_rate: f64) -> EvaluatorSettings {
    EvaluatorSettings {
        breaker: Breaker {
            window: Window::Calls(min_calls + extra),
            min_calls,
            failure_rate: rate,
            slow_calls: Some(SlowCalls {
                latency: Duration::from_millis(1_000),
                rate: slow_rate,
            }),
            consecutive_failures: None,
            ..Breaker::default()
        },
        ..EvaluatorSettings::default()
    }
}

proptest! {
    #[test]
    fn the_breaker_never_opens_below_min_calls(
        min_calls in 1u32..40,
        extra in 0u32..40,
        rate in 0.01f64..=1.0,
        slow_rate in 0.01f64..=1.0,
        calls in proptest::collection::vec((outcome(), 0u64..3_000), 0..40),
    ) {
        let eval = TriggerEvaluator::new(&settings(min_calls, extra, rate, slow_rate), 1, 1).unwrap();
        let t = TenantId::new("t");
        let below = calls.iter().take(min_calls as usize - 1);
        for (i, (o, ms)) in below.enumerate() {
            let now = Timestamp::from_millis(1_000 + i as u64);
            let obs = Observation::new(E, &t, *o, now, Duration::from_millis(*ms));
            eval.observe(&obs, now).unwrap();
        }
        prop_assert!(eval.drain_events().is_empty());
        prop_assert_eq!(eval.health(E, Timestamp::from_millis(5_000)).unwrap().state, BreakerState::Closed);
    }

    #[test]
    fn a_rate_trip_is_always_measured_on_at_least_min_calls(
        min_calls in 1u32..30,
        extra in 0u32..30,
        rate in 0.01f64..=1.0,
        slow_rate in 0.01f64..=1.0,
        calls in proptest::collection::vec((outcome(), 0u64..3_000), 0..120),
    ) {
        let eval = TriggerEvaluator::new(&settings(min_calls, extra, rate, slow_rate), 1, 1).unwrap();
        let t = TenantId::new("t");
        for (i, (o, ms)) in calls.iter().enumerate() {
            let now = Timestamp::from_millis(1_000 + i as u64);
            let obs = Observation::new(E, &t, *o, now, Duration::from_millis(*ms));
            eval.observe(&obs, now).unwrap();
        }
        for e in eval.drain_events() {
            prop_assert!(matches!(e.trigger.kind, TriggerKind::FailureRate | TriggerKind::SlowCallRate));
            prop_assert!(e.trigger.samples >= min_calls);
            prop_assert!(e.trigger.measured >= e.trigger.threshold);
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Observe {
        outcome: OutcomeClass,
        ms: u64,
        with_permit: bool,
    },
    Advance(u64),
    Acquire,
    Mode(BreakerMode),
    Reset,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (outcome(), 0u64..3_000, any::<bool>())
            .prop_map(|(outcome, ms, with_permit)| Op::Observe { outcome, ms, with_permit }),
        3 => (0u64..40_000).prop_map(Op::Advance),
        3 => Just(Op::Acquire),
        1 => proptest::sample::select(vec![
            BreakerMode::Auto,
            BreakerMode::ForcedOpen,
            BreakerMode::Disabled,
            BreakerMode::MetricsOnly,
        ])
        .prop_map(Op::Mode),
        1 => Just(Op::Reset),
    ]
}

proptest! {
    #[test]
    fn state_transitions_are_reported_exactly_when_the_state_changes(
        ops in proptest::collection::vec(op(), 1..200),
        seed in any::<u64>(),
    ) {
        let mut s = settings(4, 4, 0.5, 0.5);
        s.breaker.consecutive_failures = Some(3);
        s.half_open = HalfOpen { probes: 2, timeout: Duration::from_secs(20) };
        s.open_wait = OpenWait {
            initial: Duration::from_secs(5),
            multiplier: 2.0,
            max: Duration::from_secs(60),
            jitter: 0.5,
        };
        let eval = TriggerEvaluator::new(&s, 1, seed).unwrap();
        let t = TenantId::new("t");
        let mut now = Timestamp::from_millis(1_000_000);
        let mut permits: Vec<ProbePermit> = Vec::new();
        for op in ops {
            let before = eval.health(E, now).unwrap().state;
            match op {
                Op::Observe { outcome, ms, with_permit } => {
                    let mut obs = Observation::new(E, &t, outcome, now, Duration::from_millis(ms));
                    if with_permit {
                        obs.probe = permits.pop();
                    }
                    eval.observe(&obs, now).unwrap();
                }
                Op::Advance(ms) => now = now.saturating_add(Duration::from_millis(ms)),
                Op::Acquire => {
                    if let Probe::Granted(p) = eval.try_acquire_probe(E, now).unwrap() {
                        permits.push(p);
                    }
                }
                Op::Mode(m) => eval.set_mode(E, m, now).unwrap(),
                Op::Reset => eval.reset(E, now).unwrap(),
            }
            let after = eval.health(E, now).unwrap().state;
            let events = eval.drain_events();
            let mut cur = before;
            for e in &events {
                prop_assert_ne!(e.from, e.to);
                prop_assert_eq!(e.from, cur);
                prop_assert_eq!(e.at, now);
                cur = e.to;
            }
            prop_assert_eq!(cur, after);
        }
    }

    #[test]
    fn the_open_wait_stays_within_initial_and_max_times_one_plus_jitter(
        initial_ms in 0u64..3_600_000,
        max_ms in 0u64..7_200_000,
        multiplier in prop_oneof![0.0f64..20.0, Just(f64::NAN), Just(f64::INFINITY)],
        jitter in 0.0f64..=1.0,
        seed in any::<u64>(),
        endpoint in any::<u32>(),
        reopens in any::<u32>(),
    ) {
        let w = OpenWait {
            initial: Duration::from_millis(initial_ms),
            multiplier,
            max: Duration::from_millis(max_ms),
            jitter,
        };
        let d = open_wait(&w, seed, EndpointIdx(endpoint), reopens).as_secs_f64();
        let initial = initial_ms as f64 / 1000.0;
        let max = (max_ms as f64 / 1000.0).max(initial);
        prop_assert!(d >= initial - 1e-9, "{d} < {initial}");
        prop_assert!(d <= max * (1.0 + jitter) + 1e-9, "{d} > {max} * (1 + {jitter})");
        // Deterministic: the same inputs give the same wait.
        prop_assert_eq!(open_wait(&w, seed, EndpointIdx(endpoint), reopens).as_secs_f64(), d);
    }

    #[test]
    fn the_evaluators_open_periods_respect_the_wait_bounds(
        seed in any::<u64>(),
        failed_probes in 0usize..8,
    ) {
        let mut s = settings(1, 0, 1.0, 1.0);
        s.open_wait = OpenWait {
            initial: Duration::from_secs(10),
            multiplier: 3.0,
            max: Duration::from_secs(100),
            jitter: 0.25,
        };
        let eval = TriggerEvaluator::new(&s, 1, seed).unwrap();
        let t = TenantId::new("t");
        let mut now = Timestamp::from_millis(1_000);
        let fail = |now| Observation::new(E, &t, OutcomeClass::ServerError, now, Duration::ZERO);
        eval.observe(&fail(now), now).unwrap();
        for _ in 0..failed_probes {
            now = eval.health(E, now).unwrap().open_until.unwrap();
            let Probe::Granted(p) = eval.try_acquire_probe(E, now).unwrap() else {
                return Err(TestCaseError::fail("no permit after the wait"));
            };
            eval.observe(&fail(now).probe(p), now).unwrap();
        }
        for e in eval.drain_events().into_iter().filter(|e| e.to == BreakerState::Open) {
            let wait = e.trigger.until.unwrap().as_millis() - e.at.as_millis();
            prop_assert!((10_000..=125_000).contains(&wait), "wait {wait} ms");
        }
    }
}

#[test]
fn different_seeds_spread_replicas_apart() {
    let w = OpenWait::default();
    let waits: std::collections::BTreeSet<Duration> =
        (0..16).map(|seed| open_wait(&w, seed, E, 0)).collect();
    assert!(waits.len() > 8, "{waits:?}");
}
