//! Durable state: audit appends (memory and JSONL file sinks) and checkpoint save/load of a
//! 100 KB state in the file store.
//!
//! Run: `cargo bench --bench durability`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use downshift::audit::{
    AuditEvent, AuditEventKind, AuditSink, FsyncPolicy, JsonlAuditSink, JsonlOptions,
    MemoryAuditSink, PolicyRef,
};
use downshift::checkpoint::{Checkpoint, CheckpointStore, FileCheckpointStore, TierAt};
use downshift::{
    ContentDigest, EndpointId, LayerId, SessionId, TaskKind, TenantId, Timestamp, TriggerKind,
    TriggerRecord,
};
use futures::executor::block_on;

/// A typical degradation record: tier change with trigger and policy reference.
fn event(n: u64) -> AuditEvent {
    AuditEvent::new(
        Timestamp::from_millis(1_800_000_000_000 + n),
        AuditEventKind::TierChange {
            from: TierAt::new(0, "primary").on(EndpointId::new("frontier-eu-west")),
            to: TierAt::new(1, "hot-standby").on(EndpointId::new("frontier-eu-central")),
        },
    )
    .tenant(TenantId::new("acme-health"))
    .session(SessionId::new("sess-01HZX3"))
    .task(TaskKind::new("clinical_summarization"))
    .trigger(TriggerRecord {
        kind: TriggerKind::LatencyP95,
        endpoint: Some(EndpointId::new("frontier-eu-west")),
        measured: 4200.0,
        threshold: 3000.0,
        unit: "ms".to_string(),
        window_ms: Some(60_000),
        samples: 212,
        until: None,
        text: "p95 4.2 s >= ceiling 3.0 s over 1m, 212 samples".to_string(),
    })
    .policy(PolicyRef {
        id: LayerId::new("acme-health"),
        version: "2027-01-15".to_string(),
        digest: ContentDigest::of_bytes(b"resolved policy"),
    })
}

fn audit(c: &mut Criterion) {
    let mut g = c.benchmark_group("audit_append");
    g.throughput(Throughput::Elements(1));
    // Baseline: plain (non-canonical) serde_json serialization of the same event, to calibrate
    // the machine the figures come from.
    let sample = event(0);
    g.bench_function("baseline_serde_json_to_vec", |b| {
        b.iter(|| black_box(serde_json::to_vec(black_box(&sample)).unwrap()))
    });
    // A fresh sink per sample, so the figure is the append (with the amortized growth of a log
    // of a few thousand records), not the reallocation of a log grown to millions.
    g.bench_function("memory", |b| {
        b.iter_custom(|iters| {
            let memory = MemoryAuditSink::new();
            let events: Vec<AuditEvent> = (0..iters).map(event).collect();
            let start = Instant::now();
            for e in events {
                black_box(memory.append_now(e).unwrap());
            }
            start.elapsed()
        })
    });
    let mut n = 0u64;

    let dir = tempfile::tempdir().unwrap();
    let opts = JsonlOptions::default().fsync(FsyncPolicy::Batch {
        records: 100,
        interval: Duration::from_millis(10),
    });
    let file = JsonlAuditSink::open_with(dir.path().join("audit.jsonl"), opts).unwrap();
    g.bench_function("jsonl_fsync_every_100_or_10ms", |b| {
        b.iter_batched(
            || {
                n += 1;
                event(n)
            },
            |e| black_box(block_on(file.append(e)).unwrap()),
            BatchSize::SmallInput,
        )
    });
    // 32 appends in flight at once: the writer groups them into one write (and fsync).
    g.throughput(Throughput::Elements(32));
    g.bench_function("jsonl_fsync_every_100_or_10ms_32_concurrent", |b| {
        b.iter_batched(
            || {
                (0..32)
                    .map(|_| {
                        n += 1;
                        event(n)
                    })
                    .collect::<Vec<_>>()
            },
            |events| {
                block_on(futures::future::join_all(
                    events.into_iter().map(|e| file.append(e)),
                ))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn checkpoints(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = FileCheckpointStore::open(dir.path()).unwrap();
    let session = SessionId::new("bench-session");
    let messages: Vec<_> = (0..400)
        .map(|i| serde_json::json!({"role": "assistant", "id": i, "text": "x".repeat(200)}))
        .collect();
    let state = serde_json::json!({"goal": "summarize the filing", "messages": messages});
    let size = serde_json::to_vec(&state).unwrap().len();
    assert!((95_000..130_000).contains(&size), "state is {size} bytes");
    let cp = Checkpoint::new(
        TenantId::new("acme-health"),
        session.clone(),
        Timestamp::from_millis(1_800_000_000_000),
        TierAt::new(1, "hot-standby"),
        ContentDigest::of_bytes(b"policy"),
        state,
    );
    let mut version = block_on(store.save(cp.clone(), None)).unwrap();

    let mut g = c.benchmark_group("checkpoint_file_100kb");
    g.throughput(Throughput::Bytes(size as u64));
    g.sample_size(30);
    g.bench_function("save_fsync", |b| {
        b.iter(|| {
            version = block_on(store.save(cp.clone(), Some(version))).unwrap();
        })
    });
    g.bench_function("load", |b| {
        b.iter(|| black_box(block_on(store.load(&session)).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, audit, checkpoints);
criterion_main!(benches);
