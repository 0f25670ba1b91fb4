//! Both built-in checkpoint stores pass the public conformance suite, under a multi-threaded
//! tokio runtime and under `futures::executor::block_on`, and the compare-and-swap holds across
//! processes sharing one directory.

use std::sync::Arc;

use downshift::blocking::Offload;
use downshift::checkpoint::{
    Checkpoint, CheckpointStore, FileCheckpointStore, FileStoreOptions, MemoryCheckpointStore,
    TierAt, conformance,
};
use downshift::{CheckpointError, ContentDigest, SessionId, TenantId, Timestamp};

fn assert_full_report(report: &conformance::ConformanceReport) {
    for check in [
        "create",
        "update",
        "stale_version_refused",
        "create_when_exists_refused",
        "update_of_missing_refused",
        "store_assigns_versions",
        "session_never_changes_tenant",
        "non_finite_trigger_refused",
        "list_tenant_isolation",
        "list_suspended_filter",
        "list_workflow_filter",
        "delete_with_cas",
        "large_state",
        "odd_ids",
        "concurrent_writers",
        "concurrent_creators",
    ] {
        assert!(report.checks.contains(&check), "missing check {check}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conforms_under_tokio() {
    let store = MemoryCheckpointStore::new();
    let report = conformance::run(&store).await.unwrap();
    assert_full_report(&report);
    assert!(store.is_empty(), "the suite cleans up after itself");
}

#[test]
fn memory_store_conforms_under_block_on() {
    let store = MemoryCheckpointStore::new();
    assert_full_report(&futures::executor::block_on(conformance::run(&store)).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_conforms_under_tokio_with_its_own_workers() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        FileCheckpointStore::open_with(dir.path(), FileStoreOptions::default().threads(4)).unwrap();
    assert_full_report(&conformance::run(&store).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_conforms_with_tokio_spawn_blocking_hook() {
    let dir = tempfile::tempdir().unwrap();
    let offload = Offload::spawner(|job| {
        tokio::task::spawn_blocking(job);
    });
    let store =
        FileCheckpointStore::open_with(dir.path(), FileStoreOptions::default().offload(offload))
            .unwrap();
    assert_full_report(&conformance::run(&store).await.unwrap());
}

#[test]
fn file_store_conforms_under_block_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileCheckpointStore::open(dir.path()).unwrap();
    assert_full_report(&futures::executor::block_on(conformance::run(&store)).unwrap());
}

#[test]
fn file_store_conforms_with_inline_offload() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileCheckpointStore::open_with(
        dir.path(),
        FileStoreOptions::default().offload(Offload::inline()),
    )
    .unwrap();
    assert_full_report(&futures::executor::block_on(conformance::run(&store)).unwrap());
}

#[test]
fn a_shared_trait_object_conforms() {
    let store: Arc<dyn CheckpointStore> = Arc::new(MemoryCheckpointStore::new());
    assert_full_report(&futures::executor::block_on(conformance::run(&store)).unwrap());
}

/// A store that silently accepts stale writes must fail the suite: the suite can fail.
#[derive(Debug, Default)]
struct LastWriterWins(MemoryCheckpointStore);

#[async_trait::async_trait]
impl CheckpointStore for LastWriterWins {
    async fn load(&self, s: &SessionId) -> Result<Option<Checkpoint>, CheckpointError> {
        self.0.load(s).await
    }
    async fn save(&self, cp: Checkpoint, _expected: Option<u64>) -> Result<u64, CheckpointError> {
        let current = self.0.load(&cp.session).await?.map(|c| c.version);
        self.0.save(cp, current).await
    }
    async fn list(
        &self,
        t: &TenantId,
        f: &downshift::checkpoint::ListFilter,
    ) -> Result<downshift::checkpoint::CheckpointList, CheckpointError> {
        self.0.list(t, f).await
    }
    async fn delete(&self, s: &SessionId, v: u64) -> Result<(), CheckpointError> {
        self.0.delete(s, v).await
    }
}

#[test]
fn a_store_without_compare_and_swap_fails_the_suite() {
    let store = LastWriterWins::default();
    let failure = futures::executor::block_on(conformance::run(&store)).unwrap_err();
    assert_eq!(failure.check, "stale_version_refused");
}

/// Two store instances on one directory (separate workers and file handles, as two processes
/// would have) race on the same session: exactly one wins each round.
#[test]
fn two_store_instances_on_one_directory_never_both_win() {
    let dir = tempfile::tempdir().unwrap();
    let a = FileCheckpointStore::open(dir.path()).unwrap();
    let b = FileCheckpointStore::open(dir.path()).unwrap();
    let s = SessionId::new("shared");
    let cp = |n: u64| {
        Checkpoint::new(
            TenantId::new("t"),
            s.clone(),
            Timestamp::from_millis(n),
            TierAt::new(0, "primary"),
            ContentDigest::of_bytes(b"p"),
            serde_json::json!({ "n": n }),
        )
    };
    futures::executor::block_on(async {
        let mut v = a.save(cp(0), None).await.unwrap();
        for round in 0..10 {
            let (ra, rb) = futures::join!(a.save(cp(round), Some(v)), b.save(cp(round), Some(v)));
            assert!(ra.is_ok() ^ rb.is_ok(), "round {round}: {ra:?} / {rb:?}");
            v += 1;
        }
        assert_eq!(b.load(&s).await.unwrap().unwrap().version, v);
    });
}

const CHILD_DIR: &str = "DOWNSHIFT_TEST_CHECKPOINT_DIR";
const INCREMENTS: u64 = 25;

/// Run by `cas_holds_across_processes` in child processes: increments a shared counter with
/// load + compare-and-swap, retrying on conflict.
#[test]
#[ignore = "helper run in child processes by cas_holds_across_processes"]
fn child_increments_a_shared_counter() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let store = FileCheckpointStore::open(&dir).unwrap();
    let s = SessionId::new("counter");
    futures::executor::block_on(async {
        let mut done = 0;
        while done < INCREMENTS {
            let cp = store.load(&s).await.unwrap().unwrap();
            let n = cp.state["n"].as_u64().unwrap();
            let mut next = cp.clone();
            next.state = serde_json::json!({ "n": n + 1 });
            match store.save(next, Some(cp.version)).await {
                Ok(_) => done += 1,
                Err(CheckpointError::Conflict { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
    });
}

#[test]
fn cas_holds_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileCheckpointStore::open(dir.path()).unwrap();
    let s = SessionId::new("counter");
    let cp = Checkpoint::new(
        TenantId::new("t"),
        s.clone(),
        Timestamp::from_millis(0),
        TierAt::new(0, "primary"),
        ContentDigest::of_bytes(b"p"),
        serde_json::json!({ "n": 0 }),
    );
    futures::executor::block_on(store.save(cp, None)).unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "child_increments_a_shared_counter",
                    "--ignored",
                    "--quiet",
                    "--test-threads=1",
                ])
                .env(CHILD_DIR, dir.path())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let end = futures::executor::block_on(store.load(&s))
        .unwrap()
        .unwrap();
    // No increment was lost: every successful compare-and-swap saw the latest version.
    assert_eq!(end.state["n"].as_u64(), Some(3 * INCREMENTS));
    assert_eq!(end.version, 1 + 3 * INCREMENTS);
}
