//! Each call gets a span with the documented fields (OpenTelemetry GenAI names where they apply),
//! tier changes are events inside it, and neither the prompt nor the output ever appears.
#![cfg(feature = "tracing")]

mod visibility;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use downshift::OutcomeClass;
use downshift::engine::{Call, EngineMode};
use futures::executor::block_on;
use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use visibility::{SECRET_PROMPT, payload, world};

#[derive(Debug, Default, Clone)]
struct SpanRec {
    meta: Option<&'static Metadata<'static>>,
    name: String,
    fields: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone)]
struct EventRec {
    parent: Option<u64>,
    fields: BTreeMap<String, String>,
}

#[derive(Default)]
struct Captured {
    spans: Mutex<BTreeMap<u64, SpanRec>>,
    events: Mutex<Vec<EventRec>>,
    stack: Mutex<Vec<u64>>,
    next: AtomicU64,
}

struct Capture(Arc<Captured>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        self.0.insert(f.name().to_string(), format!("{v:?}"));
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.insert(f.name().to_string(), v.to_string());
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.0.insert(f.name().to_string(), v.to_string());
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.0.insert(f.name().to_string(), v.to_string());
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.0.insert(f.name().to_string(), v.to_string());
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.0.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut rec = SpanRec {
            meta: Some(span.metadata()),
            name: span.metadata().name().to_string(),
            ..SpanRec::default()
        };
        span.record(&mut Fields(&mut rec.fields));
        self.0.spans.lock().insert(id, rec);
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some(rec) = self.0.spans.lock().get_mut(&span.into_u64()) {
            values.record(&mut Fields(&mut rec.fields));
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut rec = EventRec {
            parent: event
                .parent()
                .map(Id::into_u64)
                .or_else(|| self.0.stack.lock().last().copied()),
            ..EventRec::default()
        };
        event.record(&mut Fields(&mut rec.fields));
        self.0.events.lock().push(rec);
    }
    fn current_span(&self) -> tracing_core::span::Current {
        let top = self.0.stack.lock().last().copied();
        match top.and_then(|id| {
            self.0
                .spans
                .lock()
                .get(&id)
                .and_then(|s| s.meta)
                .map(|m| (id, m))
        }) {
            Some((id, meta)) => tracing_core::span::Current::new(Id::from_u64(id), meta),
            None => tracing_core::span::Current::none(),
        }
    }
    fn enter(&self, span: &Id) {
        self.0.stack.lock().push(span.into_u64());
    }
    fn exit(&self, span: &Id) {
        let mut s = self.0.stack.lock();
        if let Some(i) = s.iter().rposition(|x| *x == span.into_u64()) {
            s.remove(i);
        }
    }
}

fn capture<T>(f: impl FnOnce() -> T) -> (T, Arc<Captured>) {
    let c = Arc::new(Captured::default());
    let out = tracing::subscriber::with_default(Capture(Arc::clone(&c)), f);
    (out, c)
}

fn no_secret_anywhere(c: &Captured) {
    let spans = c.spans.lock();
    let events = c.events.lock();
    let all = spans
        .values()
        .flat_map(|s| s.fields.values())
        .chain(events.iter().flat_map(|e| e.fields.values()));
    for v in all {
        assert!(!v.contains(SECRET_PROMPT), "the prompt leaked: {v}");
        assert!(!v.contains("PATIENT"), "part of the prompt leaked: {v}");
        assert!(!v.contains("an answer"), "the output leaked: {v}");
    }
}

#[test]
fn a_degraded_call_span_carries_the_documented_fields_and_a_tier_change_event() {
    let w = world();
    w.script.fail(
        "big",
        OutcomeClass::RateLimited,
        Some(Duration::from_secs(60)),
    );
    let (r, c) = capture(|| {
        block_on(
            w.engine
                .call(Call::new("acme", "summarization", payload()).session("s-42")),
        )
    });
    assert_eq!(r.outcome(), "completed");
    let spans = c.spans.lock().clone();
    let calls: Vec<(&u64, &SpanRec)> = spans
        .iter()
        .filter(|(_, s)| s.name == "downshift.call")
        .collect();
    assert_eq!(calls.len(), 1, "one span per call");
    let (&id, span) = calls[0];
    let f = &span.fields;
    let expect = [
        ("downshift.tenant", "acme"),
        ("downshift.session", "s-42"),
        ("gen_ai.conversation.id", "s-42"),
        ("downshift.task", "summarization"),
        ("downshift.mode", "per_tenant"),
        ("downshift.tier", "1"),
        ("downshift.tier_name", "fallback"),
        ("downshift.endpoint", "small"),
        ("downshift.degraded", "true"),
        ("downshift.attempts", "2"),
        ("downshift.reason", "fallback"),
        ("downshift.outcome", "completed"),
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.request.model", "frontier-1"),
        ("gen_ai.response.model", "small-8b"),
        ("gen_ai.provider.name", "selfhost"),
        ("gen_ai.usage.input_tokens", "1000"),
        ("gen_ai.usage.output_tokens", "200"),
        ("otel.name", "chat frontier-1"),
    ];
    for (k, v) in expect {
        assert_eq!(f.get(k).map(String::as_str), Some(v), "field {k} in {f:#?}");
    }
    // The tier change is an event inside the call's span.
    let events = c.events.lock().clone();
    let changes: Vec<&EventRec> = events
        .iter()
        .filter(|e| e.fields.get("downshift.event").map(String::as_str) == Some("tier_change"))
        .collect();
    assert_eq!(changes.len(), 1, "{events:#?}");
    let e = changes[0];
    assert_eq!(e.parent, Some(id));
    assert_eq!(e.fields["downshift.from_tier"], "0");
    assert_eq!(e.fields["downshift.to_tier"], "1");
    assert_eq!(e.fields["downshift.endpoint"], "small");
    no_secret_anywhere(&c);
}

#[test]
fn rejected_and_suspended_calls_say_why_without_the_prompt() {
    let w = world();
    w.script.fail(
        "big",
        OutcomeClass::RateLimited,
        Some(Duration::from_secs(600)),
    );
    let (_, c) = capture(|| {
        block_on(w.engine.call(Call::new("acme", "summarization", payload())));
        block_on(
            w.engine
                .call(Call::new("hold", "summarization", payload()).session("h-1")),
        );
        block_on(
            w.engine
                .call(Call::new("nobody", "summarization", payload())),
        );
    });
    let spans = c.spans.lock().clone();
    let by_tenant = |t: &str| {
        spans
            .values()
            .find(|s| s.fields.get("downshift.tenant").map(String::as_str) == Some(t))
            .cloned()
            .unwrap()
    };
    let hold = by_tenant("hold");
    assert_eq!(hold.fields["downshift.outcome"], "suspended");
    assert_eq!(hold.fields["downshift.reason"], "suspended");
    let nobody = by_tenant("nobody");
    assert_eq!(nobody.fields["downshift.outcome"], "rejected");
    assert_eq!(nobody.fields["error.type"], "policy");
    assert_eq!(nobody.fields["downshift.reason"], "unknown_tenant");
    let events = c.events.lock().clone();
    assert!(
        events
            .iter()
            .any(|e| e.fields.get("downshift.event").map(String::as_str) == Some("suspension"))
    );
    no_secret_anywhere(&c);
}

#[test]
fn observe_only_spans_report_the_would_be_decision() {
    let w = world();
    block_on(w.engine.set_mode(EngineMode::ObserveOnly)).unwrap();
    w.script.fail(
        "big",
        OutcomeClass::RateLimited,
        Some(Duration::from_secs(600)),
    );
    // The first call meets the 429 at the primary (no fallback in this mode); the second is
    // still sent to the primary, while the policy would have used `small`.
    let (_, c) = capture(|| {
        block_on(w.engine.call(Call::new("acme", "summarization", payload())));
        block_on(w.engine.call(Call::new("acme", "summarization", payload())));
    });
    let spans = c.spans.lock().clone();
    let second = spans.values().nth(1).unwrap();
    assert_eq!(second.fields["downshift.mode"], "observe_only");
    let would = &second.fields["downshift.would_be"];
    assert!(would.starts_with("route tier 1 `small`"), "{would}");
    no_secret_anywhere(&c);
}

fn drain(events: downshift::engine::EventStream<serde_json::Value>) -> Vec<String> {
    use futures::StreamExt;
    block_on(
        events
            .map(|e| match e {
                downshift::engine::StreamEvent::Chunk(_) => "chunk".to_string(),
                downshift::engine::StreamEvent::Switched { .. } => "switched".to_string(),
                downshift::engine::StreamEvent::End(e) => format!("end {}", e.outcome_name()),
            })
            .collect(),
    )
}

#[test]
fn a_degraded_stream_span_carries_the_same_fields_as_a_call_and_a_tier_change_event() {
    let w = world();
    w.script.fail(
        "big",
        OutcomeClass::RateLimited,
        Some(Duration::from_secs(60)),
    );
    let (events, c) = capture(|| {
        drain(
            w.engine
                .call_stream(Call::new("acme", "summarization", payload()).session("s-42")),
        )
    });
    assert_eq!(events, ["chunk", "chunk", "end completed"]);
    let spans = c.spans.lock().clone();
    let calls: Vec<(&u64, &SpanRec)> = spans
        .iter()
        .filter(|(_, s)| s.name == "downshift.call")
        .collect();
    assert_eq!(calls.len(), 1, "one span per streamed call");
    let (&id, span) = calls[0];
    let f = &span.fields;
    let expect = [
        ("downshift.tenant", "acme"),
        ("downshift.session", "s-42"),
        ("gen_ai.conversation.id", "s-42"),
        ("downshift.task", "summarization"),
        ("downshift.mode", "per_tenant"),
        ("downshift.tier", "1"),
        ("downshift.tier_name", "fallback"),
        ("downshift.endpoint", "small"),
        ("downshift.degraded", "true"),
        ("downshift.attempts", "2"),
        ("downshift.reason", "fallback"),
        ("downshift.outcome", "completed"),
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.request.model", "frontier-1"),
        ("gen_ai.response.model", "small-8b"),
        ("gen_ai.provider.name", "selfhost"),
        ("gen_ai.usage.input_tokens", "1000"),
        ("gen_ai.usage.output_tokens", "200"),
        ("otel.name", "chat frontier-1"),
    ];
    for (k, v) in expect {
        assert_eq!(f.get(k).map(String::as_str), Some(v), "field {k} in {f:#?}");
    }
    let events = c.events.lock().clone();
    let changes: Vec<&EventRec> = events
        .iter()
        .filter(|e| e.fields.get("downshift.event").map(String::as_str) == Some("tier_change"))
        .collect();
    assert_eq!(changes.len(), 1, "{events:#?}");
    assert_eq!(
        changes[0].parent,
        Some(id),
        "the event is inside the stream's span"
    );
    assert_eq!(changes[0].fields["downshift.to_tier"], "1");
    no_secret_anywhere(&c);
}

#[test]
fn a_stream_cut_mid_answer_is_recorded_with_its_class_without_the_output() {
    let w = world();
    w.script.cut("big", true);
    let (events, c) = capture(|| {
        drain(
            w.engine
                .call_stream(Call::new("acme", "summarization", payload())),
        )
    });
    assert_eq!(events, ["chunk", "end interrupted"]);
    let spans = c.spans.lock().clone();
    let span = spans
        .values()
        .find(|s| s.name == "downshift.call")
        .expect("the stream has a span");
    let f = &span.fields;
    assert_eq!(f["downshift.outcome"], "interrupted");
    assert_eq!(f["error.type"], "server_error");
    assert_eq!(f["downshift.endpoint"], "big");
    assert_eq!(f["downshift.degraded"], "false");
    assert_eq!(f["downshift.attempts"], "1");
    no_secret_anywhere(&c);
}
