//! Appends from many tasks at once are never lost: `seq` stays contiguous, each task's records
//! keep its order, and the chain verifies, on both sinks.

mod audit_events;

use std::sync::Arc;
use std::time::Duration;

use audit_events::event;
use downshift::audit::{
    AuditRecord, AuditSink, FsyncPolicy, JsonlAuditSink, JsonlOptions, MemoryAuditSink, verify,
    verify_file,
};

async fn hammer(sink: Arc<dyn AuditSink>, tasks: u64, per_task: u64) -> Vec<Vec<AuditRecord>> {
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let sink = Arc::clone(&sink);
            tokio::spawn(async move {
                let mut mine = Vec::with_capacity(per_task as usize);
                for i in 0..per_task {
                    mine.push(sink.append(event(t * 1_000_000 + i)).await.unwrap());
                }
                mine
            })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

fn assert_contiguous_and_ordered(per_task: &[Vec<AuditRecord>], total: u64) {
    let mut seqs: Vec<u64> = per_task.iter().flatten().map(|r| r.seq).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (0..total).collect::<Vec<_>>(),
        "no seq lost or repeated"
    );
    for mine in per_task {
        assert!(
            mine.windows(2).all(|w| w[0].seq < w[1].seq),
            "a task's appends keep their order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_tasks_append_a_thousand_each_to_memory() {
    let sink = MemoryAuditSink::new();
    let per_task = hammer(Arc::new(sink.clone()), 32, 1_000).await;
    assert_contiguous_and_ordered(&per_task, 32_000);
    let records = sink.records();
    assert_eq!(verify(&records).unwrap().records, 32_000);
    // What each task was told is exactly what the log holds.
    for r in per_task.iter().flatten() {
        assert_eq!(&records[r.seq as usize], r);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_tasks_append_two_hundred_each_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let opts = JsonlOptions::default().fsync(FsyncPolicy::Batch {
        records: 100,
        interval: Duration::from_millis(10),
    });
    let sink = Arc::new(JsonlAuditSink::open_with(&path, opts).unwrap());
    let per_task = hammer(sink.clone(), 32, 200).await;
    assert_contiguous_and_ordered(&per_task, 6_400);
    let head = sink.head().await.unwrap().unwrap();
    assert_eq!(head.seq, 6_399);
    drop(sink);
    let report = verify_file(&path, Some(&head)).unwrap();
    assert_eq!(report.records, 6_400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_fsyncs_when_every_record_is_synced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let sink = Arc::new(JsonlAuditSink::open(&path).unwrap());
    let per_task = hammer(sink.clone(), 16, 20).await;
    assert_contiguous_and_ordered(&per_task, 320);
    drop(sink);
    assert_eq!(verify_file(&path, None).unwrap().records, 320);
}

#[test]
fn appends_under_block_on_from_threads_stay_contiguous() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let sink = Arc::new(
        JsonlAuditSink::open_with(&path, JsonlOptions::default().fsync(FsyncPolicy::Never))
            .unwrap(),
    );
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let sink = Arc::clone(&sink);
            std::thread::spawn(move || {
                (0..100)
                    .map(|i| futures::executor::block_on(sink.append(event(t * 1000 + i))).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let per_task: Vec<_> = threads.into_iter().map(|h| h.join().unwrap()).collect();
    assert_contiguous_and_ordered(&per_task, 800);
    drop(sink);
    assert_eq!(verify_file(&path, None).unwrap().records, 800);
}
