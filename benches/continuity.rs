//! Context fitting: a 150K-token session (301 messages, tool exchanges every fifth turn) fitted
//! to a 32K window, with per-message estimates cached (`annotate_tokens`) and counted afresh;
//! and the estimate alone (what the engine does on every call that carries an agent state).
//!
//! Run: `cargo bench --bench continuity`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use downshift::catalog::Capabilities;
use downshift::checkpoint::{
    AgentState, FitPolicy, Fitted, HeuristicCounter, Message, ToolCall, estimate, fit,
};

fn session(turns: usize) -> AgentState {
    let mut s = AgentState::new("Reconcile the March invoices of every supplier");
    s.messages
        .push(Message::system("You are a careful accounts-payable agent."));
    for i in 0..turns {
        if i % 5 == 4 {
            let id = format!("call-{i}");
            s.messages.push(Message::tool_calls(vec![ToolCall {
                id: id.clone(),
                name: "fetch_invoice".into(),
                arguments: serde_json::json!({ "n": i }),
            }]));
            s.messages
                .push(Message::tool_result(id, "line item ".repeat(195)));
        } else {
            s.messages
                .push(Message::user("reconcile this ".repeat(132)));
        }
    }
    s.messages.push(Message::user("Now write the gap report."));
    s
}

fn bench(c: &mut Criterion) {
    let caps = Capabilities {
        context_window: 32_000,
        max_output_tokens: 4096,
        tools: true,
        parallel_tool_calls: false,
        vision: false,
        json_mode: true,
    };
    let policy = FitPolicy::default();
    let fresh = session(300);
    let mut cached = fresh.clone();
    cached.annotate_tokens(&HeuristicCounter);
    assert!(matches!(
        fit(&fresh, &caps, &HeuristicCounter, &policy),
        Fitted::Fits(_)
    ));
    let mut g = c.benchmark_group("continuity");
    g.bench_function("estimate_150k_counted", |b| {
        b.iter(|| estimate(black_box(&fresh), &HeuristicCounter))
    });
    g.bench_function("estimate_150k_cached", |b| {
        b.iter(|| estimate(black_box(&cached), &HeuristicCounter))
    });
    g.bench_function("fit_150k_to_32k_counted", |b| {
        b.iter(|| fit(black_box(&fresh), &caps, &HeuristicCounter, &policy))
    });
    g.bench_function("fit_150k_to_32k_cached", |b| {
        b.iter(|| fit(black_box(&cached), &caps, &HeuristicCounter, &policy))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
