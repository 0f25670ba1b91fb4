//! The `tokio` feature's `TokioSleeper`: with it, the engine races each call against its deadline
//! on Tokio's timer, so a call that outlives its deadline ends there as a timeout.
//!
//! Time is paused (`tokio::time::pause`): the runtime jumps to the next timer when every task is
//! idle, so these tests measure virtual time exactly and never sleep for real.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use downshift::engine::{
    Call, CallResult, Engine, ModelClient, ModelError, ModelRequest, ModelResponse, RejectKind,
    TokenUsage, TokioSleeper,
};
use downshift::policy::{PolicySet, Source};
use downshift::router::ReasonKind;
use downshift::{Clock, Timestamp};
use serde_json::{Value, json};

/// The engine's clock, reading Tokio's (paused) time.
#[derive(Debug)]
struct TokioClock {
    base: Timestamp,
    start: tokio::time::Instant,
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        self.base.saturating_add(self.start.elapsed())
    }
}

/// A provider that answers after `latency` of Tokio time.
struct Slow {
    latency: Duration,
    calls: Arc<AtomicUsize>,
}

#[async_trait]
impl ModelClient for Slow {
    async fn call(&self, _req: ModelRequest<Value>) -> Result<ModelResponse<Value>, ModelError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(self.latency).await;
        Ok(ModelResponse::new(
            json!({"text": "late"}),
            TokenUsage::default(),
        ))
    }
}

const CATALOG: &str = r#"{"kind":"catalog","endpoints":[
  {"id":"only-eu","provider":"vendor-a","model":"frontier-1","region":"eu-west-1",
   "capabilities":{"context_window":200000,"max_output_tokens":8192},"pricing":{"input_per_mtok":3.0,"output_per_mtok":15.0}}]}"#;
const PLATFORM: &str = r#"{"kind":"policy","id":"platform","version":"1","level":"platform",
  "tiers":[{"name":"primary","endpoints":["only-eu"]}]}"#;
const TENANT: &str =
    r#"{"kind":"policy","id":"acme","version":"1","level":"tenant","extends":"platform"}"#;

fn engine(latency: Duration, calls: &Arc<AtomicUsize>) -> (Engine, Arc<TokioClock>) {
    let set = PolicySet::from_sources(vec![
        Source::new("catalog.json", CATALOG),
        Source::new("platform.json", PLATFORM),
        Source::new("acme.json", TENANT),
    ])
    .unwrap();
    let clock = Arc::new(TokioClock {
        base: Timestamp::from_millis(1_795_000_000_000),
        start: tokio::time::Instant::now(),
    });
    let client = Slow {
        latency,
        calls: Arc::clone(calls),
    };
    let engine = Engine::builder(set, Arc::new(client))
        .clock(clock.clone())
        .sleeper(Arc::new(TokioSleeper))
        .build()
        .unwrap();
    (engine, clock)
}

/// Tokio's timer has millisecond granularity and rounds a sleep up to the next tick.
fn assert_at(elapsed: Duration, expected: Duration) {
    assert!(
        elapsed >= expected && elapsed <= expected + Duration::from_millis(2),
        "{elapsed:?}, expected {expected:?}"
    );
}

#[tokio::test]
async fn a_call_that_outlives_its_deadline_ends_as_a_timeout_at_the_deadline() {
    tokio::time::pause();
    let calls = Arc::new(AtomicUsize::new(0));
    let (engine, clock) = engine(Duration::from_secs(10), &calls);
    let started = tokio::time::Instant::now();
    let deadline = clock.now().saturating_add(Duration::from_secs(2));
    let result = engine
        .call(Call::new("acme", "summarization", json!({})).deadline(deadline))
        .await;

    // The engine stopped waiting at the deadline, not when the provider would have answered.
    assert_at(started.elapsed(), Duration::from_secs(2));
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    // Nothing is left to try before the deadline: a defined refusal, never a late answer.
    match &result {
        CallResult::Rejected(r) => {
            assert_eq!(r.kind, RejectKind::Policy, "{r:?}");
            assert_eq!(
                r.reason.as_ref().map(|x| x.kind),
                Some(ReasonKind::DeadlineUnreachable),
                "{r:?}"
            );
            // Not a bare `deadline_unreachable`: the endpoint tried, how long it was given and
            // how it ended.
            assert!(
                r.message.ends_with(
                    "1 attempt(s) made: only-eu timed out after 2s (the call's deadline)"
                ),
                "{}",
                r.message
            );
        }
        other => panic!("expected a rejection at the deadline, got {other:?}"),
    }
    // The attempt was observed as a timeout (a capacity failure) lasting exactly the deadline.
    let idx = engine
        .policies()
        .current()
        .catalog()
        .index_of("only-eu")
        .unwrap();
    let health = engine.evaluator().health(idx, clock.now()).unwrap();
    assert_eq!(health.failures, 1, "{health:?}");
    assert_eq!(health.consecutive_failures, 1);
    // (Latency percentiles come from a histogram accurate to ~3%.)
    let p50 = health.latency.p50.unwrap();
    assert!(
        p50 >= Duration::from_millis(1940) && p50 <= Duration::from_millis(2060),
        "{p50:?}"
    );
}

#[tokio::test]
async fn a_call_that_finishes_before_its_deadline_is_not_cut() {
    tokio::time::pause();
    let calls = Arc::new(AtomicUsize::new(0));
    let (engine, clock) = engine(Duration::from_millis(1500), &calls);
    let started = tokio::time::Instant::now();
    let deadline = clock.now().saturating_add(Duration::from_secs(2));
    let result = engine
        .call(Call::new("acme", "summarization", json!({})).deadline(deadline))
        .await;
    assert_at(started.elapsed(), Duration::from_millis(1500));
    match &result {
        CallResult::Completed(c) => {
            assert_eq!(c.served_by.endpoint.as_str(), "only-eu");
            assert_eq!(c.attempts, 1);
        }
        other => panic!("expected the answer, got {other:?}"),
    }
}
