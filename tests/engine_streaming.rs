//! Streaming through the engine: chunks forwarded as they arrive, and a stream that fails
//! mid-answer never passed off as a clean answer — surfaced with its partial output, or
//! continued on the next endpoint as the tenant's policy says.

// The scripted streams are built from `Result<Chunk, ModelError>` items, as a real client's are.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use downshift::audit::{AuditEventKind, MemoryAuditSink, verify};
use downshift::engine::{
    Call, Chunk, ChunkStream, Engine, FinishReason, ModelClient, ModelError, ModelRequest,
    ModelResponse, RejectKind, Sleeper, StreamEnd, StreamEvent, StreamOutcome, TokenUsage,
};
use downshift::policy::{PolicySet, Source};
use downshift::trigger::BreakerMode;
use downshift::{Clock, ManualClock, OutcomeClass, Timestamp};
use futures::StreamExt;
use futures::executor::block_on;
use parking_lot::Mutex;
use proptest::prelude::*;
use serde_json::{Value, json};

/// What one endpoint's stream does.
#[derive(Debug, Clone)]
enum Behaviour {
    /// Streams the pieces, the last one with a finish reason.
    Clean(Vec<&'static str>),
    /// Streams the pieces, then ends without a final chunk.
    Cut(Vec<&'static str>),
    /// Streams the pieces, then yields an error of the class.
    ErrorAfter(Vec<&'static str>, OutcomeClass),
    /// Streams the pieces, then never yields again.
    Stall(Vec<&'static str>),
    /// Streams the pieces, the last one finished by the provider's content filter.
    Filtered(Vec<&'static str>),
    /// The stream does not open.
    FailOpen(OutcomeClass),
}

#[derive(Debug, Clone, PartialEq)]
struct Seen {
    endpoint: String,
    continue_from: Option<String>,
}

#[derive(Default)]
struct Script {
    behaviour: Mutex<HashMap<String, Behaviour>>,
    seen: Mutex<Vec<Seen>>,
}

impl Script {
    fn set(&self, endpoint: &str, b: Behaviour) {
        self.behaviour.lock().insert(endpoint.to_string(), b);
    }
    fn endpoints_called(&self) -> Vec<String> {
        self.seen
            .lock()
            .iter()
            .map(|s| s.endpoint.clone())
            .collect()
    }
}

struct Scripted(Arc<Script>);

fn usage() -> TokenUsage {
    TokenUsage {
        input_tokens: 100,
        output_tokens: 20,
    }
}

#[async_trait]
impl ModelClient for Scripted {
    async fn call(&self, _req: ModelRequest<Value>) -> Result<ModelResponse<Value>, ModelError> {
        Err(ModelError::of(
            OutcomeClass::BadRequest,
            "this test client only streams",
        ))
    }

    async fn call_stream(
        &self,
        req: ModelRequest<Value>,
    ) -> Result<ChunkStream<Value>, ModelError> {
        self.0.seen.lock().push(Seen {
            endpoint: req.endpoint.to_string(),
            continue_from: req.continue_from.clone(),
        });
        let b = self
            .0
            .behaviour
            .lock()
            .get(req.endpoint.as_str())
            .cloned()
            .unwrap_or(Behaviour::Clean(vec!["ok"]));
        let pieces = |v: &[&'static str]| -> Vec<Result<Chunk<Value>, ModelError>> {
            v.iter().map(|p| Ok(Chunk::delta(*p))).collect()
        };
        let finish_last = |mut v: Vec<Result<Chunk<Value>, ModelError>>, f: FinishReason| {
            if let Some(Ok(last)) = v.pop() {
                v.push(Ok(last.finished(f).with_usage(usage())));
            }
            v
        };
        Ok(match b {
            Behaviour::Clean(v) => {
                futures::stream::iter(finish_last(pieces(&v), FinishReason::Stop)).boxed()
            }
            Behaviour::Filtered(v) => {
                futures::stream::iter(finish_last(pieces(&v), FinishReason::ContentFilter)).boxed()
            }
            Behaviour::Cut(v) => futures::stream::iter(pieces(&v)).boxed(),
            Behaviour::ErrorAfter(v, class) => {
                let mut items = pieces(&v);
                items.push(Err(ModelError::of(class, format!("scripted {class}"))));
                futures::stream::iter(items).boxed()
            }
            Behaviour::Stall(v) => futures::stream::iter(pieces(&v))
                .chain(futures::stream::pending())
                .boxed(),
            Behaviour::FailOpen(class) => {
                return Err(ModelError::of(class, format!("scripted {class}")));
            }
        })
    }
}

/// A sleeper that keeps (virtual) time but never waits: a deadline timer fires as soon as the
/// stream it races is pending.
struct Instant;

#[async_trait]
impl Sleeper for Instant {
    async fn sleep(&self, _d: Duration) {}
}

const CATALOG: &str = r#"{"kind":"catalog","endpoints":[
  {"id":"primary-eu","provider":"vendor-a","model":"frontier-1","region":"eu-west-1",
   "capabilities":{"context_window":200000,"max_output_tokens":8192},"pricing":{"input_per_mtok":3.0,"output_per_mtok":15.0}},
  {"id":"second-eu","provider":"cloud-b","model":"frontier-1","region":"eu-central-1",
   "capabilities":{"context_window":200000,"max_output_tokens":8192},"pricing":{"input_per_mtok":3.3,"output_per_mtok":16.5}},
  {"id":"standby-eu","provider":"selfhost","model":"mid-70b","region":"eu-west-1",
   "capabilities":{"context_window":128000,"max_output_tokens":4096},"pricing":{"input_per_mtok":0.6,"output_per_mtok":0.8}}
]}"#;

const PLATFORM: &str = r#"{"kind":"policy","id":"platform","version":"1","level":"platform",
  "tiers":[{"name":"primary","endpoints":["primary-eu","second-eu"]},{"name":"standby","endpoints":["standby-eu"]}]}"#;

fn tenant(id: &str, extra: Value) -> String {
    let mut t =
        json!({"kind":"policy","id":id,"version":"1","level":"tenant","extends":"platform"});
    if let (Some(t), Some(e)) = (t.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            t.insert(k.clone(), v.clone());
        }
    }
    t.to_string()
}

struct World {
    engine: Engine,
    script: Arc<Script>,
    audit: Arc<MemoryAuditSink>,
    clock: ManualClock,
}

fn world_with(sleeper: Option<Arc<dyn Sleeper>>) -> World {
    let set = PolicySet::from_sources(vec![
        Source::new("catalog.json", CATALOG),
        Source::new("platform.json", PLATFORM),
        Source::new("surfacing.json", tenant("surfacing", json!({}))),
        Source::new(
            "continuing.json",
            tenant(
                "continuing",
                json!({"continuity": {"mid_stream": "continue"}}),
            ),
        ),
        Source::new(
            "pinned.json",
            tenant(
                "pinned",
                json!({"constraints": {"floor": "primary", "when_exhausted": "reject"},
                       "continuity": {"mid_stream": "continue"}}),
            ),
        ),
    ])
    .unwrap();
    let script = Arc::new(Script::default());
    let clock = ManualClock::new(Timestamp::from_millis(1_795_000_000_000));
    let audit = Arc::new(MemoryAuditSink::new());
    let mut b = Engine::builder(set, Arc::new(Scripted(Arc::clone(&script))))
        .clock(Arc::new(clock.clone()))
        .audit(audit.clone());
    if let Some(s) = sleeper {
        b = b.sleeper(s);
    }
    World {
        engine: b.build().unwrap(),
        script,
        audit,
        clock,
    }
}

fn world() -> World {
    world_with(None)
}

fn run(w: &World, call: Call<Value>) -> Vec<StreamEvent<Value>> {
    block_on(w.engine.call_stream(call).collect::<Vec<_>>())
}

fn end(events: &[StreamEvent<Value>]) -> &StreamEnd {
    match events.last() {
        Some(StreamEvent::End(e)) => e,
        other => panic!("the last event is not the end: {other:?}"),
    }
}

fn chunk_texts(events: &[StreamEvent<Value>]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Chunk(c) => Some(c.text.clone()),
            _ => None,
        })
        .collect()
}

fn failures(w: &World, endpoint: &str) -> u32 {
    let idx = w
        .engine
        .policies()
        .current()
        .catalog()
        .index_of(endpoint)
        .unwrap();
    w.engine
        .evaluator()
        .health(idx, w.clock.now())
        .unwrap()
        .failures
}

#[test]
fn a_clean_stream_completes_unflagged() {
    let w = world();
    w.script
        .set("primary-eu", Behaviour::Clean(vec!["Hel", "lo"]));
    let events = run(&w, Call::new("surfacing", "summarization", json!({})));
    assert_eq!(chunk_texts(&events), vec!["Hel", "lo"]);
    assert_eq!(events.len(), 3, "two chunks and the end: {events:?}");
    let end = end(&events);
    let done = end.completed().expect("completed");
    assert_eq!(done.served_by.endpoint.as_str(), "primary-eu");
    assert!(!done.degraded && !done.flags.degraded && !done.flags.needs_review);
    assert_eq!(done.finish, FinishReason::Stop);
    assert!(!end.partial && !end.continued);
    assert_eq!(end.text, "Hello");
    assert_eq!(end.attempts, 1);
    assert_eq!(end.usage, usage());
    assert_eq!(end.segments.len(), 1);
    assert!(w.audit.records().is_empty(), "nothing to audit");
    assert_eq!(failures(&w, "primary-eu"), 0);
}

#[test]
fn a_cut_stream_under_surface_ends_interrupted_with_the_partial_output() {
    let w = world();
    w.script
        .set("primary-eu", Behaviour::Cut(vec!["The dose is ", "5"]));
    let events = run(&w, Call::new("surfacing", "summarization", json!({})));
    assert_eq!(chunk_texts(&events), vec!["The dose is ", "5"]);
    let end = end(&events);
    assert!(end.completed().is_none(), "a cut stream is never completed");
    match &end.outcome {
        StreamOutcome::Interrupted(i) => {
            assert_eq!(i.error.class(), OutcomeClass::ServerError);
            assert_eq!(i.served_by.endpoint.as_str(), "primary-eu");
            assert!(i.message.contains("surface"), "{}", i.message);
        }
        other => panic!("{other:?}"),
    }
    assert!(end.partial);
    assert!(!end.continued);
    assert_eq!(end.text, "The dose is 5");
    assert_eq!(end.segments[0].outcome, OutcomeClass::ServerError);
    assert_eq!(
        w.script.endpoints_called(),
        vec!["primary-eu"],
        "surfaced, not continued elsewhere"
    );
    assert_eq!(failures(&w, "primary-eu"), 1, "the breaker saw the cut");
}

#[test]
fn a_mid_stream_error_under_continue_switches_to_the_fallback() {
    let w = world();
    // The whole primary tier fails: the first endpoint mid-answer, the second before it opens.
    w.script.set(
        "primary-eu",
        Behaviour::ErrorAfter(vec!["Part one, "], OutcomeClass::Overloaded),
    );
    w.script
        .set("second-eu", Behaviour::FailOpen(OutcomeClass::RateLimited));
    w.script
        .set("standby-eu", Behaviour::Clean(vec!["part ", "two."]));
    let events = run(
        &w,
        Call::new("continuing", "summarization", json!({"q": 1})).session("s-1"),
    );
    assert_eq!(chunk_texts(&events), vec!["Part one, ", "part ", "two."]);
    // The first endpoint's chunks, the switch, then the fallback's chunks.
    match &events[1] {
        StreamEvent::Switched {
            from, to, class, ..
        } => {
            assert_eq!(from.endpoint.as_str(), "primary-eu");
            assert_eq!((to.endpoint.as_str(), to.tier), ("standby-eu", 1));
            assert_eq!(*class, OutcomeClass::Overloaded);
        }
        other => panic!("expected the switch second, got {other:?}"),
    }
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, StreamEvent::Switched { .. }))
            .count(),
        1
    );
    let end = end(&events);
    let done = end.completed().expect("completed");
    assert!(end.continued && !end.partial);
    assert!(done.degraded && done.flags.degraded);
    assert_eq!(done.served_by.endpoint.as_str(), "standby-eu");
    assert_eq!(end.text, "Part one, part two.");
    assert_eq!(end.attempts, 3);
    let parts: Vec<(&str, usize, OutcomeClass)> = end
        .segments
        .iter()
        .map(|s| (s.served_by.endpoint.as_str(), s.bytes, s.outcome))
        .collect();
    assert_eq!(
        parts,
        vec![
            ("primary-eu", 10, OutcomeClass::Overloaded),
            ("standby-eu", 9, OutcomeClass::Ok)
        ]
    );
    // The fallback was handed the partial output; the first endpoint was not.
    let seen = w.script.seen.lock().clone();
    assert_eq!(seen[0].continue_from, None);
    assert_eq!(seen[1].continue_from.as_deref(), Some("Part one, "));
    assert_eq!(seen[2].continue_from.as_deref(), Some("Part one, "));
    // The tier change is audited, as a fallback of `call` is.
    let records = w.audit.records();
    verify(&records).unwrap();
    assert_eq!(records.len(), 1);
    assert!(matches!(
        &records[0].event.kind,
        AuditEventKind::TierChange { from, to } if from.index == 0 && to.index == 1
    ));
    assert_eq!(done.audit, vec![records[0].seq]);
    assert_eq!(failures(&w, "primary-eu"), 1);
    assert_eq!(failures(&w, "second-eu"), 1);
}

#[test]
fn a_request_error_mid_stream_is_surfaced_not_continued() {
    let w = world();
    w.script.set(
        "primary-eu",
        Behaviour::ErrorAfter(vec!["Here is how to "], OutcomeClass::ContentFiltered),
    );
    let events = run(&w, Call::new("continuing", "summarization", json!({})));
    let end = end(&events);
    match &end.outcome {
        StreamOutcome::Interrupted(i) => {
            assert_eq!(i.error.class(), OutcomeClass::ContentFiltered)
        }
        other => panic!("{other:?}"),
    }
    assert!(end.partial && !end.continued);
    assert_eq!(end.text, "Here is how to ");
    assert_eq!(w.script.endpoints_called(), vec!["primary-eu"]);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, StreamEvent::Switched { .. }))
    );
}

#[test]
fn a_content_filter_finish_is_not_a_clean_completion() {
    let w = world();
    w.script
        .set("primary-eu", Behaviour::Filtered(vec!["I can", "not"]));
    let events = run(&w, Call::new("continuing", "summarization", json!({})));
    let end = end(&events);
    assert!(end.completed().is_none());
    assert!(end.partial);
    assert!(matches!(
        &end.outcome,
        StreamOutcome::Interrupted(i) if i.error.class() == OutcomeClass::ContentFiltered
    ));
    assert_eq!(w.script.endpoints_called(), vec!["primary-eu"]);
}

#[test]
fn a_failure_before_the_first_chunk_falls_back_like_a_call() {
    let w = world();
    // An error as the very first item: nothing reached the caller, so even under `surface`
    // this is an ordinary failed attempt.
    w.script.set(
        "primary-eu",
        Behaviour::ErrorAfter(vec![], OutcomeClass::ServerError),
    );
    w.script.set("second-eu", Behaviour::Clean(vec!["fine"]));
    let events = run(&w, Call::new("surfacing", "summarization", json!({})));
    let end = end(&events);
    let done = end.completed().expect("completed");
    assert_eq!(done.served_by.endpoint.as_str(), "second-eu");
    assert!(!done.degraded, "the same tier served it");
    assert!(!end.continued && !end.partial);
    assert_eq!(end.text, "fine");
    assert_eq!(end.attempts, 2);
    assert_eq!(w.script.seen.lock()[1].continue_from, None);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, StreamEvent::Switched { .. }))
    );
    assert_eq!(failures(&w, "primary-eu"), 1);
}

#[test]
fn a_request_error_before_the_first_chunk_is_rejected_without_retry() {
    let w = world();
    w.script.set(
        "primary-eu",
        Behaviour::FailOpen(OutcomeClass::ContextLengthExceeded),
    );
    let events = run(&w, Call::new("continuing", "summarization", json!({})));
    assert_eq!(events.len(), 1);
    let end = end(&events);
    assert!(matches!(
        &end.outcome,
        StreamOutcome::Rejected(r) if r.kind == RejectKind::Provider { class: OutcomeClass::ContextLengthExceeded }
    ));
    assert!(!end.partial);
    assert_eq!(w.script.endpoints_called(), vec!["primary-eu"]);
}

#[test]
fn routing_that_refuses_before_the_first_byte_is_the_streams_end() {
    let w = world();
    for ep in ["primary-eu", "second-eu"] {
        w.script
            .set(ep, Behaviour::FailOpen(OutcomeClass::Overloaded));
    }
    // `pinned` may not leave the primary tier and rejects when nothing is left.
    let events = run(&w, Call::new("pinned", "summarization", json!({})));
    assert_eq!(events.len(), 1, "{events:?}");
    let end = end(&events);
    assert!(matches!(
        &end.outcome,
        StreamOutcome::Rejected(r) if r.kind == RejectKind::Policy
    ));
    assert!(!end.partial);
    // Unknown tenants end the same way, in one defined outcome.
    let events = run(&w, Call::new("nobody", "summarization", json!({})));
    assert_eq!(end_name(&events), "rejected");
}

fn end_name(events: &[StreamEvent<Value>]) -> &'static str {
    end(events).outcome_name()
}

#[test]
fn a_continuation_nothing_permissible_can_take_ends_as_the_router_decides_with_the_partial_flagged()
{
    let w = world();
    w.script
        .set("primary-eu", Behaviour::Cut(vec!["Half an answer"]));
    w.script
        .set("second-eu", Behaviour::FailOpen(OutcomeClass::Overloaded));
    let events = run(&w, Call::new("pinned", "summarization", json!({})));
    assert_eq!(chunk_texts(&events), vec!["Half an answer"]);
    let end = end(&events);
    assert_eq!(end.outcome_name(), "rejected");
    assert!(end.partial, "the caller got part of an answer");
    assert_eq!(end.text, "Half an answer");
    assert!(!end.continued);
}

#[test]
fn a_stalled_stream_times_out_at_the_deadline_and_is_surfaced() {
    let w = world_with(Some(Arc::new(Instant)));
    w.script
        .set("primary-eu", Behaviour::Stall(vec!["Waiting for"]));
    let deadline = w.clock.now().saturating_add(Duration::from_secs(30));
    let events = run(
        &w,
        Call::new("surfacing", "summarization", json!({})).deadline(deadline),
    );
    let end = end(&events);
    assert!(matches!(
        &end.outcome,
        StreamOutcome::Interrupted(i) if i.error.class() == OutcomeClass::Timeout
    ));
    assert!(end.partial);
    assert_eq!(end.text, "Waiting for");
    assert_eq!(failures(&w, "primary-eu"), 1);
}

#[test]
fn a_client_without_streaming_streams_its_whole_answer_as_one_final_chunk() {
    struct Plain;
    #[async_trait]
    impl ModelClient for Plain {
        async fn call(&self, req: ModelRequest<Value>) -> Result<ModelResponse<Value>, ModelError> {
            Ok(ModelResponse::new(
                json!({"by": req.endpoint.as_str()}),
                usage(),
            ))
        }
    }
    let set = PolicySet::from_sources(vec![
        Source::new("catalog.json", CATALOG),
        Source::new("platform.json", PLATFORM),
        Source::new("surfacing.json", tenant("surfacing", json!({}))),
    ])
    .unwrap();
    let engine: Engine = Engine::builder(set, Arc::new(Plain)).build().unwrap();
    let events = block_on(
        engine
            .call_stream(Call::new("surfacing", "summarization", json!({})))
            .collect::<Vec<_>>(),
    );
    assert_eq!(events.len(), 2);
    match &events[0] {
        StreamEvent::Chunk(c) => {
            assert_eq!(c.data, Some(json!({"by": "primary-eu"})));
            assert_eq!(c.finish, Some(FinishReason::Stop));
        }
        other => panic!("{other:?}"),
    }
    assert!(end(&events).completed().is_some());
    assert_eq!(end(&events).usage, usage());
}

#[test]
fn with_every_stream_cut_continuations_stay_within_the_retry_budget() {
    let w = world();
    let catalog = w.engine.policies().current().catalog().clone();
    for ep in ["primary-eu", "second-eu", "standby-eu"] {
        w.script.set(ep, Behaviour::Cut(vec!["a"]));
        // Breakers that never open, so only the retry budget stands between an outage and a
        // storm of continuations.
        let idx = catalog.index_of(ep).unwrap();
        w.engine
            .evaluator()
            .set_mode(idx, BreakerMode::Disabled, w.clock.now())
            .unwrap();
    }
    let n = 400;
    for i in 0..n {
        let events = run(
            &w,
            Call::new("continuing", "summarization", json!({})).session(format!("s{i}")),
        );
        assert!(end(&events).completed().is_none());
    }
    let upstream = w.script.seen.lock().len();
    assert!(
        upstream <= n + n / 5 + 100,
        "{upstream} streams opened for {n} calls"
    );
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    let pieces = prop::collection::vec(prop::sample::select(vec!["a", "bc", "", "déf"]), 0..4);
    let class = prop::sample::select(vec![
        OutcomeClass::Overloaded,
        OutcomeClass::ServerError,
        OutcomeClass::RateLimited,
        OutcomeClass::ContentFiltered,
        OutcomeClass::BadRequest,
    ]);
    prop_oneof![
        pieces.clone().prop_map(Behaviour::Clean),
        pieces.clone().prop_map(Behaviour::Cut),
        (pieces.clone(), class.clone()).prop_map(|(p, c)| Behaviour::ErrorAfter(p, c)),
        pieces.prop_map(Behaviour::Filtered),
        class.prop_map(Behaviour::FailOpen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Whatever the providers do: exactly one end, always last; its text is what the caller
    /// was sent; a completed end is never partial, and one after a failure mid-answer is
    /// flagged continued.
    #[test]
    fn every_stream_ends_in_exactly_one_outcome_that_accounts_for_what_was_sent(
        primary in behaviour(),
        second in behaviour(),
        standby in behaviour(),
        tenant in prop::sample::select(vec!["surfacing", "continuing", "pinned"]),
    ) {
        let w = world();
        w.script.set("primary-eu", primary);
        w.script.set("second-eu", second);
        w.script.set("standby-eu", standby);
        let events = run(&w, Call::new(tenant, "summarization", json!({})));
        let ends = events.iter().filter(|e| matches!(e, StreamEvent::End(_))).count();
        prop_assert_eq!(ends, 1);
        let end = end(&events);
        prop_assert_eq!(&end.text, &chunk_texts(&events).concat());
        let switches = events.iter().filter(|e| matches!(e, StreamEvent::Switched { .. })).count();
        prop_assert_eq!(end.continued, switches > 0);
        let failed_mid_answer = end.segments.iter().any(|s| s.outcome != OutcomeClass::Ok);
        if let Some(done) = end.completed() {
            prop_assert!(!end.partial);
            prop_assert_eq!(end.continued, failed_mid_answer);
            prop_assert_eq!(end.segments.last().map(|s| s.outcome), Some(OutcomeClass::Ok));
            prop_assert_eq!(
                done.degraded,
                end.segments.iter().any(|s| s.degraded)
            );
        } else {
            prop_assert_eq!(end.partial, !end.segments.is_empty());
        }
        if tenant == "surfacing" {
            prop_assert_eq!(switches, 0);
        }
        let bytes: usize = end.segments.iter().map(|s| s.bytes).sum();
        prop_assert_eq!(bytes, end.text.len());
    }
}
