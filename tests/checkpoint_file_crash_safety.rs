//! The file store never half-reads a checkpoint: torn, corrupt or altered files are reported as
//! `Corrupt` naming the file, the previous good version survives an interrupted write, and temp
//! files left by crashes are ignored and cleaned.

use std::fs;
use std::path::{Path, PathBuf};

use downshift::blocking::Offload;
use downshift::checkpoint::{
    Checkpoint, CheckpointStore, FileCheckpointStore, FileStoreOptions, ListFilter, TierAt,
};
use downshift::{CheckpointError, ContentDigest, SessionId, TenantId, Timestamp};
use futures::executor::block_on;
use proptest::prelude::*;

fn store(dir: &Path) -> FileCheckpointStore {
    // Inline: these tests are synchronous; the point here is the file handling.
    FileCheckpointStore::open_with(dir, FileStoreOptions::default().offload(Offload::inline()))
        .unwrap()
}

fn cp(session: &str, n: u64) -> Checkpoint {
    Checkpoint::new(
        TenantId::new("acme"),
        SessionId::new(session),
        Timestamp::from_millis(1_800_000_000_000 + n),
        TierAt::new(2, "minimal"),
        ContentDigest::of_bytes(b"policy"),
        serde_json::json!({ "n": n, "goal": "triage the claim", "ratio": 0.1 + 0.2 }),
    )
}

fn saved(store: &FileCheckpointStore, session: &str, versions: u64) -> (SessionId, PathBuf) {
    let s = SessionId::new(session);
    block_on(store.save(cp(session, 1), None)).unwrap();
    for v in 1..versions {
        block_on(store.save(cp(session, v + 1), Some(v))).unwrap();
    }
    let path = store.path_of(&s);
    (s, path)
}

fn assert_corrupt_naming(r: Result<Option<Checkpoint>, CheckpointError>, path: &Path) {
    match r {
        Err(CheckpointError::Corrupt { path: p, reason }) => {
            assert_eq!(p, path, "{reason}");
        }
        other => panic!("expected Corrupt for {}, got {other:?}", path.display()),
    }
}

#[test]
fn truncated_file_is_reported_as_corrupt_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path());
    let (s, path) = saved(&st, "s-trunc", 1);
    let bytes = fs::read(&path).unwrap();
    for keep in [0, 10, bytes.len() / 2, bytes.len() - 1] {
        fs::write(&path, &bytes[..keep]).unwrap();
        assert_corrupt_naming(block_on(st.load(&s)), &path);
    }
}

#[test]
fn flipped_byte_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path());
    let (s, path) = saved(&st, "s-flip", 2);
    let mut bytes = fs::read(&path).unwrap();
    let i = bytes.len() - 5;
    bytes[i] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    assert_corrupt_naming(block_on(st.load(&s)), &path);
    // A corrupt checkpoint is never overwritten or deleted blindly: CAS cannot be decided.
    assert!(matches!(
        block_on(st.save(cp("s-flip", 9), Some(2))),
        Err(CheckpointError::Corrupt { .. })
    ));
    assert!(matches!(
        block_on(st.delete(&s, 2)),
        Err(CheckpointError::Corrupt { .. })
    ));
}

#[test]
fn quarantine_moves_only_corrupt_checkpoints_aside() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path());
    let (s, path) = saved(&st, "s-q", 1);
    assert!(matches!(
        block_on(st.quarantine(&s)),
        Err(CheckpointError::Invalid { .. })
    ));
    fs::write(&path, b"downshift-checkpoint v1 garbage").unwrap();
    let moved = block_on(st.quarantine(&s)).unwrap().unwrap();
    assert!(moved.starts_with(dir.path().join("quarantine")));
    assert_eq!(
        fs::read(&moved).unwrap(),
        b"downshift-checkpoint v1 garbage"
    );
    assert!(block_on(st.load(&s)).unwrap().is_none());
    assert_eq!(block_on(st.save(cp("s-q", 1), None)).unwrap(), 1);
    assert!(
        block_on(st.quarantine(&SessionId::new("absent")))
            .unwrap()
            .is_none()
    );
}

#[test]
fn temp_file_left_behind_is_ignored_and_cleaned_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path());
    let (s, path) = saved(&st, "s-tmp", 2);
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, b"downshift-checkpoint v1 sha256:half-written").unwrap();
    let got = block_on(st.load(&s)).unwrap().unwrap();
    assert_eq!((got.version, got.state["n"].as_u64()), (2, Some(2)));
    drop(st);
    let reopened = store(dir.path());
    assert!(!tmp.exists(), "open removes temp files no writer holds");
    assert_eq!(block_on(reopened.save(cp("s-tmp", 3), Some(2))).unwrap(), 3);
    assert!(!tmp.exists(), "a completed save leaves no temp file");
}

#[test]
fn rename_not_done_keeps_the_previous_version() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path());
    let (s, path) = saved(&st, "s-rename", 1);
    let good = fs::read(&path).unwrap();
    // Produce a complete version-2 file, then put it where an interrupted save leaves it: in the
    // temp file, with the rename never done.
    block_on(st.save(cp("s-rename", 2), Some(1))).unwrap();
    let v2 = fs::read(&path).unwrap();
    fs::write(&path, &good).unwrap();
    fs::write(path.with_extension("tmp"), &v2).unwrap();

    let got = block_on(st.load(&s)).unwrap().unwrap();
    assert_eq!(got.version, 1, "the last renamed file is the truth");
    // The session carries on from version 1: the unrenamed write never happened.
    assert_eq!(block_on(st.save(cp("s-rename", 7), Some(1))).unwrap(), 2);
    assert_eq!(block_on(st.load(&s)).unwrap().unwrap().state["n"], 7);
}

#[test]
fn listing_reports_a_corrupt_entry_and_still_lists_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path());
    saved(&st, "a-good", 1);
    let (_, bad) = saved(&st, "b-bad", 1);
    saved(&st, "c-good", 1);
    fs::write(&bad, b"").unwrap();
    let list = block_on(st.list(&TenantId::new("acme"), &ListFilter::all())).unwrap();
    let names: Vec<&str> = list.sessions.iter().map(|s| s.session.as_str()).collect();
    assert_eq!(names, ["a-good", "c-good"]);
    assert_eq!(list.unreadable.len(), 1);
    assert!(matches!(&list.unreadable[0], CheckpointError::Corrupt { path, .. } if *path == bad));
}

#[test]
fn a_file_holding_another_session_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path());
    let (_, a) = saved(&st, "s-a", 1);
    let (b_id, b) = saved(&st, "s-b", 1);
    fs::copy(&a, &b).unwrap();
    assert_corrupt_naming(block_on(st.load(&b_id)), &b);
}

#[test]
fn bare_dot_and_slash_session_ids_stay_inside_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let st = store(&root);
    for (i, id) in ["..", ".", "/", "", "../../escape", "a/../../b"]
        .iter()
        .enumerate()
    {
        let s = SessionId::new(*id);
        block_on(st.save(cp(id, i as u64), None)).unwrap();
        assert_eq!(block_on(st.load(&s)).unwrap().unwrap().session, s);
        assert!(st.path_of(&s).starts_with(root.join("sessions")));
    }
    // Nothing was written outside the store's directory.
    let outside: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside, vec![std::ffi::OsString::from("store")]);
}

#[test]
fn deleting_removes_the_lock_file_and_waiters_do_not_lose_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let st =
        FileCheckpointStore::open_with(dir.path(), FileStoreOptions::default().threads(4)).unwrap();
    block_on(async {
        for round in 0..20u64 {
            let s = SessionId::new("churn");
            st.save(cp("churn", round), None).await.unwrap();
            // A delete races a stale update and a fresh create: the lock file is unlinked under
            // the waiters, who must re-lock the new file rather than proceed unlocked.
            let (d, u, c) = futures::join!(
                st.delete(&s, 1),
                st.save(cp("churn", 100), Some(1)),
                st.save(cp("churn", 200), None)
            );
            let outcomes = [d.is_ok(), u.is_ok(), c.is_ok()];
            // Each outcome must match one serial order of the three operations, and so must the
            // stored result: D,C(,U fails) | D,C,U (ABA: the update lands on the new v1) |
            // U(,D and C fail) | C fails,D(,U fails).
            let stored = st
                .load(&s)
                .await
                .unwrap()
                .map(|c| (c.version, c.state["n"].as_u64()));
            let expected = match outcomes {
                [true, false, true] => Some((1, Some(200))),
                [true, true, true] | [false, true, false] => Some((2, Some(100))),
                [true, false, false] => None,
                _ => panic!("round {round}: no serial order gives {d:?} {u:?} {c:?}"),
            };
            assert_eq!(stored, expected, "round {round}: {d:?} {u:?} {c:?}");
            if let Some(cur) = st.load(&s).await.unwrap() {
                st.delete(&s, cur.version).await.unwrap();
            }
        }
    });
    let locks = fs::read_dir(dir.path().join("sessions"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("lock".as_ref()))
        .count();
    assert_eq!(locks, 0, "deleted sessions leave no lock files");
}

/// A checkpoint saved at version 3 and its file's bytes, made once.
fn pristine() -> &'static (Checkpoint, Vec<u8>) {
    static PRISTINE: std::sync::OnceLock<(Checkpoint, Vec<u8>)> = std::sync::OnceLock::new();
    PRISTINE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let st = store(dir.path());
        let (s, path) = saved(&st, "s-prop", 3);
        (
            block_on(st.load(&s)).unwrap().unwrap(),
            fs::read(path).unwrap(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any mutation of the bytes of a checkpoint file reads back as the exact original (when the
    /// bytes are unchanged) or as `Corrupt` naming the file; never a different checkpoint.
    #[test]
    fn byte_mutations_give_the_original_or_corrupt(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..4),
    ) {
        let (original, pristine) = pristine();
        let dir = tempfile::tempdir().unwrap();
        let st = store(dir.path());
        let s = original.session.clone();
        let path = st.path_of(&s);
        let mut bytes = pristine.clone();
        for (idx, byte, op) in edits {
            if bytes.is_empty() { break; }
            let i = idx.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => bytes[i] ^= 1 << (byte % 8),
                2 => { bytes.insert(i, byte); }
                _ => { bytes.truncate(i); }
            }
        }
        fs::write(&path, &bytes).unwrap();
        match block_on(st.load(&s)) {
            Ok(Some(got)) => {
                prop_assert_eq!(&bytes, pristine);
                prop_assert_eq!(&got, original);
            }
            Err(CheckpointError::Corrupt { path: p, .. }) => {
                prop_assert_ne!(&bytes, pristine);
                prop_assert_eq!(p, path);
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }
}

#[test]
fn listing_cleans_index_entries_whose_checkpoint_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path());
    let (_, path) = saved(&st, "s-gone", 1);
    saved(&st, "s-kept", 1);
    // A crash between removing the checkpoint and its index entry leaves a stale entry.
    fs::remove_file(&path).unwrap();
    let list = block_on(st.list(&TenantId::new("acme"), &ListFilter::all())).unwrap();
    let names: Vec<&str> = list.sessions.iter().map(|s| s.session.as_str()).collect();
    assert_eq!(names, ["s-kept"]);
    assert!(list.unreadable.is_empty());
    let tenant_dir = dir.path().join("tenants").join("acme");
    let entries: Vec<_> = fs::read_dir(&tenant_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("s-kept")]);
    assert!(
        !path.with_extension("lock").exists(),
        "no lock file is left for the gone session"
    );
}
