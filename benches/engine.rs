//! Engine overhead per call against a no-op `ModelClient`.
//!
//! `cargo bench --bench engine`

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use criterion::{Criterion, criterion_group, criterion_main};
use downshift::engine::{
    Call, CallResult, Engine, ModelClient, ModelError, ModelRequest, ModelResponse, TokenUsage,
};
use downshift::policy::PolicySet;
use downshift::{ManualClock, OutcomeClass, Timestamp};
use futures::executor::block_on;

/// Answers at once; fails on the listed endpoint.
struct Noop {
    fail: Option<&'static str>,
    usage: TokenUsage,
}

#[async_trait]
impl ModelClient<(), ()> for Noop {
    async fn call(&self, req: ModelRequest<()>) -> Result<ModelResponse<()>, ModelError> {
        if self.fail == Some(req.endpoint.as_str()) {
            return Err(ModelError::of(OutcomeClass::RateLimited, "429"));
        }
        Ok(ModelResponse::new((), self.usage))
    }
}

/// `usage`: what every answer reports. The healthy engine's answers report no tokens: the
/// marketing tenant has a session budget ($3) and a daily one, and with the clock standing
/// still a million priced calls would exhaust both and move the "healthy" calls to the budget
/// tier (the budget is still checked and charged on every call).
fn engine(fail: Option<&'static str>, usage: TokenUsage) -> Engine<(), ()> {
    let set = PolicySet::load(&["examples/policies"]).expect("example policies");
    let clock = ManualClock::new(Timestamp::from_millis(1_795_000_000_000));
    Engine::builder(set, Arc::new(Noop { fail, usage }))
        .clock(Arc::new(clock))
        .build()
        .expect("engine")
}

/// An engine whose primary tier is blocked (the EU endpoint fails, the US one has a retry-after
/// in force), so the marketing tenant's calls are served by tier 2.
fn degraded_engine() -> Engine<(), ()> {
    let degraded = engine(
        Some("frontier-vendor-eu"),
        TokenUsage {
            input_tokens: 500,
            output_tokens: 100,
        },
    );
    let _ = block_on(degraded.call(Call::new("marketing-agency", "copywriting", ())));
    let someone = downshift::TenantId::new("x");
    let blocked = downshift::Observation::new(
        degraded
            .policies()
            .current()
            .catalog()
            .index_of("frontier-vendor-us")
            .expect("endpoint"),
        &someone,
        OutcomeClass::RateLimited,
        Timestamp::from_millis(1_795_000_000_000),
        Duration::ZERO,
    )
    .retry_after(Duration::from_secs(3600));
    degraded
        .evaluator()
        .observe(&blocked, Timestamp::from_millis(1_795_000_000_000))
        .expect("observe");
    let _ = block_on(degraded.call(Call::new("marketing-agency", "copywriting", ())));
    degraded
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    g.measurement_time(Duration::from_secs(4));

    // Callers keep their ids (cheap `Arc<str>` clones), so building a call allocates nothing.
    let tenant = downshift::TenantId::new("marketing-agency");
    let task = downshift::TaskKind::new("copywriting");
    let session = downshift::SessionId::new("s-1");
    let healthy = engine(None, TokenUsage::default());
    g.bench_function("healthy_call", |b| {
        b.iter(|| {
            let r = block_on(healthy.call(Call::new(tenant.clone(), task.clone(), ())));
            // Healthy means served on the top tier: a bench that drifts onto another path fails.
            assert!(matches!(r, CallResult::Completed(ref c) if !c.degraded));
        });
    });
    g.bench_function("healthy_session_call", |b| {
        b.iter(|| {
            let r = block_on(
                healthy.call(Call::new(tenant.clone(), task.clone(), ()).session(session.clone())),
            );
            assert!(matches!(r, CallResult::Completed(ref c) if !c.degraded));
        });
    });

    // The primary is blocked (retry-after in force), so every call falls to tier 2.
    let degraded = degraded_engine();
    // Sessionless traffic records its transition once: these calls write no record.
    g.bench_function("degraded_sessionless_call", |b| {
        b.iter(|| {
            let r = block_on(degraded.call(Call::new(tenant.clone(), task.clone(), ())));
            match r {
                CallResult::Completed(c) => assert!(c.degraded),
                other => panic!("{}", other.outcome()),
            }
        });
    });
    // Every call is a new session's first, served below its top tier: a tier change with its
    // audit record in the in-memory sink (no state given, so no checkpoint). Sessions are
    // forgotten outside the timed loop.
    // Every call is a session's first, served below its top tier: a tier change with its
    // audit record in the in-memory sink (no state given, so no checkpoint). As in the
    // durability bench, each sample starts from a fresh engine and log, and 1,024 session ids
    // are reused, each forgotten (outside the timed loop) before it calls again.
    g.bench_function("degraded_session_call_audited", |b| {
        let sessions: Vec<downshift::SessionId> = (0..1024)
            .map(|i| downshift::SessionId::new(format!("d-{i}")))
            .collect();
        b.iter_custom(|iters| {
            let engine = degraded_engine();
            let mut elapsed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = usize::try_from(left.min(1024)).unwrap();
                let start = std::time::Instant::now();
                for s in &sessions[..n] {
                    let r = block_on(
                        engine.call(Call::new(tenant.clone(), task.clone(), ()).session(s.clone())),
                    );
                    match r {
                        CallResult::Completed(c) => assert!(c.degraded && c.audit.len() == 1),
                        other => panic!("{}", other.outcome()),
                    }
                }
                elapsed += start.elapsed();
                for s in &sessions[..n] {
                    engine.forget_session(s);
                }
                left -= n as u64;
            }
            elapsed
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
