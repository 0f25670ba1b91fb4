//! A streamed call counts in the stats exactly like a unary call: calls, outcome, latency to
//! the end of the stream, tokens and cost when the stream reports usage, a fallback as a
//! degraded call with its episode, and a stream cut mid-answer as a failed call whose attempt
//! counts under its outcome class.

mod visibility;

use std::time::Duration;

use downshift::OutcomeClass;
use downshift::engine::{Call, StreamEnd, StreamEvent};
use downshift::stats::TenantStats;
use futures::StreamExt;
use futures::executor::block_on;
use visibility::{T0, World, payload, world};

// Hand-computed prices for 1,000 input and 200 output tokens (see stats_after_scripted_outage).
const BIG: f64 = 0.006;
const SMALL: f64 = 0.0005;

fn stream(w: &World, tenant: &str) -> StreamEnd {
    let mut events = w
        .engine
        .call_stream(Call::new(tenant, "summarization", payload()));
    block_on(async {
        let mut end = None;
        while let Some(e) = events.next().await {
            if let StreamEvent::End(e) = e {
                end = Some(*e);
            }
        }
        end.expect("every stream ends with an End")
    })
}

/// The script shared by both tests: two healthy answers, a 429 with retry-after on the
/// primary (the next call falls back), then, once capacity is back, one more healthy answer.
/// `unary` drives it with `Engine::call`, otherwise with `Engine::call_stream`.
fn outage(w: &World, unary: bool) -> Vec<String> {
    w.script.answer_takes(Duration::from_millis(250));
    let run = |w: &World| {
        if unary {
            block_on(w.engine.call(Call::new("acme", "summarization", payload())))
                .completed()
                .map_or_else(
                    || "not completed".into(),
                    |c| c.served_by.endpoint.to_string(),
                )
        } else {
            stream(w, "acme").completed().map_or_else(
                || "not completed".into(),
                |c| c.served_by.endpoint.to_string(),
            )
        }
    };
    let mut served = vec![run(w), run(w)];
    w.clock.advance(Duration::from_secs(10));
    w.script.fail(
        "big",
        OutcomeClass::RateLimited,
        Some(Duration::from_secs(60)),
    );
    served.push(run(w));
    w.clock.advance(Duration::from_secs(100));
    w.script.heal("big");
    served.push(run(w));
    served
}

fn tenant(w: &World) -> TenantStats {
    w.engine
        .stats()
        .tenant("acme")
        .cloned()
        .expect("acme has stats")
}

#[test]
fn a_streamed_call_counts_exactly_like_the_same_unary_call() {
    let unary = world();
    let streamed = world();
    let a = outage(&unary, true);
    let b = outage(&streamed, false);
    assert_eq!(a, ["big", "big", "small", "big"]);
    assert_eq!(a, b);
    // Every figure — calls, outcomes, latency percentiles, tokens, cost, saving, time
    // degraded, per-route counts — is the same for the streams as for the calls.
    assert_eq!(tenant(&streamed), tenant(&unary));
    let (su, ss) = (unary.engine.stats(), streamed.engine.stats());
    assert_eq!(ss.degradation_events, su.degradation_events);
    assert_eq!(ss.degradation_events.len(), 1);
    assert_eq!(ss.endpoints, su.endpoints);
}

#[test]
fn stream_stats_match_hand_computed_counts_including_a_mid_stream_cut() {
    let w = world();
    outage(&w, false);
    // A fifth stream: the primary sends one chunk, then the stream is cut. The policy
    // surfaces mid-stream failures (the default), so the call ends interrupted.
    w.script.cut("big", true);
    let end = stream(&w, "acme");
    assert_eq!(end.outcome_name(), "interrupted");
    assert!(end.partial);
    w.script.cut("big", false);

    let t = tenant(&w);
    assert_eq!(t.calls, 5);
    assert_eq!(t.completed, 4);
    assert_eq!(t.degraded, 1);
    assert_eq!(t.rejected, 1, "the interrupted stream is a failed call");
    assert_eq!(
        t.calls,
        t.completed + t.calls_suspended + t.awaiting_approval + t.rejected
    );
    // Attempts: 4 answered, the 429 before the fallback, the cut (a server error).
    assert_eq!(t.outcomes.get("ok"), Some(4));
    assert_eq!(t.outcomes.get("rate_limited"), Some(1));
    assert_eq!(t.outcomes.get("server_error"), Some(1));
    assert_eq!(t.outcomes.total(), 6);
    // Latency to the end of each stream: 250 ms for the four answered ones (the clock moves
    // when the final chunk is sent), 0 ms for the cut one; 250 ms falls in the bucket whose
    // upper bound is 255 ms.
    assert_eq!(t.latency.samples, 5);
    assert_eq!(t.latency.p50_ms, Some(255));
    // Tokens and cost as the streams reported them (the cut stream reported none).
    assert_eq!((t.input_tokens, t.output_tokens), (4000, 800));
    assert_eq!(t.cost_usd, BIG + BIG + SMALL + BIG);
    assert_eq!(t.primary_cost_usd, BIG + BIG + BIG + BIG);
    assert_eq!(t.saving_usd, t.primary_cost_usd - t.cost_usd);
    // Degraded from the end of the fallback stream (T0 + 10.75 s) to the end of the first
    // stream back at the primary (T0 + 111 s).
    assert_eq!(t.time_degraded_ms, 100_250);
    let big = t
        .routes
        .iter()
        .find(|r| r.endpoint.as_str() == "big")
        .unwrap();
    assert_eq!(big.attempts, 5);
    assert_eq!(big.outcomes.get("server_error"), Some(1));
    let small = t
        .routes
        .iter()
        .find(|r| r.endpoint.as_str() == "small")
        .unwrap();
    assert_eq!((small.attempts, small.degraded), (1, 1));

    let s = w.engine.stats();
    let ev = &s.degradation_events[0];
    assert_eq!(ev.started_at.as_millis(), T0 + 10_750);
    assert_eq!(ev.ended_at.map(|t| t.as_millis()), Some(T0 + 111_000));
    assert_eq!(ev.calls_affected, 1);
    assert_eq!((ev.cost_usd, ev.primary_cost_usd), (SMALL, BIG));
    assert!(
        ev.audit_seq.is_some(),
        "the fallback's tier change was audited"
    );
}

#[test]
fn a_stream_of_an_unknown_tenant_is_counted_apart() {
    let w = world();
    let end = stream(&w, "nobody");
    assert_eq!(end.outcome_name(), "rejected");
    let s = w.engine.stats();
    assert_eq!(s.unknown_tenant_calls, 1);
    assert!(s.tenant("nobody").is_none());
}
