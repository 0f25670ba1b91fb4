//! The hash chain finds any edit, deletion, insertion, reordering or truncation and names the
//! first bad record (and line, for files); a valid log verifies; a reopened log continues its
//! chain; a torn last line is reported, never dropped.

mod audit_events;

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use audit_events::{event, trigger};
use downshift::audit::{
    AuditEvent, AuditEventKind, AuditHead, AuditRecord, AuditSink, FsyncPolicy, JsonlAuditSink,
    JsonlOptions, MemoryAuditSink, OpenVerify, genesis, verify, verify_against_head, verify_file,
    verify_record_digest,
};
use downshift::digest::canonical_json;
use downshift::{AuditError, ContentDigest, TenantId, Timestamp};
use futures::executor::block_on;
use proptest::prelude::*;
use sha2::{Digest as _, Sha256};

fn memory_log(n: u64) -> Vec<AuditRecord> {
    let sink = MemoryAuditSink::new();
    for i in 0..n {
        sink.append_now(event(i)).unwrap();
    }
    sink.records()
}

fn fast() -> JsonlOptions {
    JsonlOptions::default().fsync(FsyncPolicy::Never)
}

fn file_log(path: &Path, n: u64) -> Vec<AuditRecord> {
    let sink = JsonlAuditSink::open_with(path, fast()).unwrap();
    let out = (0..n)
        .map(|i| block_on(sink.append(event(i))).unwrap())
        .collect();
    drop(sink);
    out
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    fs::write(path, s).unwrap();
}

/// The canonical line a sink writes for `record`.
fn line_of(record: &AuditRecord) -> String {
    canonical_json(&serde_json::to_value(record).unwrap())
}

fn assert_tampered_at(
    r: Result<impl std::fmt::Debug, AuditError>,
    want_seq: u64,
    want_line: Option<u64>,
    reason_has: &str,
) {
    match r {
        Err(AuditError::Tampered {
            seq, line, reason, ..
        }) => {
            assert_eq!(seq, want_seq, "{reason}");
            assert_eq!(line, want_line, "{reason}");
            assert!(
                reason.contains(reason_has),
                "reason `{reason}` lacks `{reason_has}`"
            );
        }
        other => panic!("expected Tampered at {want_seq}, got {other:?}"),
    }
}

#[test]
fn a_record_digest_is_sha256_of_its_canonical_json_without_digest() {
    let sink = MemoryAuditSink::new();
    let r = sink
        .append_now(
            AuditEvent::new(
                Timestamp::EPOCH,
                AuditEventKind::Rejection { reason: "x".into() },
            )
            .tenant(TenantId::new("acme")),
        )
        .unwrap();
    let canonical = format!(
        "{{\"event\":{{\"reason\":\"x\",\"type\":\"rejection\"}},\"prev\":\"{}\",\"seq\":0,\"tenant\":\"acme\",\"time\":\"1970-01-01T00:00:00.000Z\"}}",
        genesis()
    );
    let hex: String = Sha256::digest(canonical.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(r.digest.as_str(), format!("sha256:{hex}"));
    assert_eq!(genesis().as_str(), format!("sha256:{}", "0".repeat(64)));
    assert_eq!(verify_record_digest(&r).unwrap(), r.digest);
}

#[test]
fn a_valid_log_verifies_in_memory_and_on_file() {
    let records = memory_log(30);
    let report = verify(&records).unwrap();
    assert_eq!(report.records, 30);
    assert_eq!(report.head, Some(records[29].head()));
    assert_eq!(report.first_time, Some(records[0].event.time));
    assert!(verify(&[]).unwrap().head.is_none());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let written = file_log(&path, 30);
    assert_eq!(written, records, "same events, same chain, on every sink");
    let report = verify_file(&path, None).unwrap();
    assert_eq!(report.records, 30);
    let kept = written[12].head();
    let report = verify_file(&path, Some(&kept)).unwrap();
    assert_eq!(report.checked_head, Some(kept));
    assert!(report.to_string().starts_with("ok: 30 record(s) verified"));
}

#[test]
fn an_edited_record_is_detected_at_that_record() {
    // In memory.
    let mut records = memory_log(12);
    records[7].event.tenant = Some(TenantId::new("someone-else"));
    assert_tampered_at(verify(&records), 7, None, "altered");
    let mut records = memory_log(12);
    records[4].event.trigger = Some(trigger(1.0));
    assert_tampered_at(verify(&records), 4, None, "altered");

    // On file: a value changed inside a line.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    file_log(&path, 12);
    let mut l = lines(&path);
    assert!(l[7].contains("\"tenant\":\"tenant-1\""));
    l[7] = l[7].replace("\"tenant\":\"tenant-1\"", "\"tenant\":\"tenant-2\"");
    write_lines(&path, &l);
    assert_tampered_at(verify_file(&path, None), 7, Some(8), "altered");
}

#[test]
fn an_edit_that_keeps_the_json_equal_but_not_canonical_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    file_log(&path, 5);
    let mut l = lines(&path);
    l[2] = l[2].replacen(":", ": ", 1);
    write_lines(&path, &l);
    assert_tampered_at(verify_file(&path, None), 2, Some(3), "canonical");
}

#[test]
fn an_edited_record_with_a_recomputed_digest_breaks_the_next_link() {
    let mut records = memory_log(10);
    records[3].event.tenant = Some(TenantId::new("forged"));
    records[3].digest = verify_record_digest(&records[3]).unwrap();
    assert_tampered_at(verify(&records), 4, None, "prev");
}

#[test]
fn a_deleted_record_is_detected_where_it_is_missing() {
    let mut records = memory_log(10);
    records.remove(5);
    assert_tampered_at(verify(&records), 5, None, "deleted");
    let mut records = memory_log(10);
    records.remove(0);
    assert_tampered_at(verify(&records), 0, None, "deleted");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    file_log(&path, 10);
    let mut l = lines(&path);
    l.remove(5);
    write_lines(&path, &l);
    assert_tampered_at(verify_file(&path, None), 5, Some(6), "deleted");
}

#[test]
fn an_inserted_record_is_detected_where_it_was_inserted() {
    // A duplicate of an earlier record.
    let mut records = memory_log(10);
    let dup = records[3].clone();
    records.insert(6, dup);
    assert_tampered_at(verify(&records), 6, None, "inserted");

    // A forged record with the right seq, prev and a valid digest of its own: the original
    // record after it no longer fits.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let written = file_log(&path, 10);
    let mut forged = written[6].clone();
    forged.event.tenant = Some(TenantId::new("forged"));
    forged.digest = verify_record_digest(&forged).unwrap();
    let mut l = lines(&path);
    l.insert(6, line_of(&forged));
    write_lines(&path, &l);
    assert_tampered_at(verify_file(&path, None), 7, Some(8), "inserted");
}

#[test]
fn reordered_records_are_detected_at_the_first_swapped_one() {
    let mut records = memory_log(10);
    records.swap(4, 5);
    assert_tampered_at(verify(&records), 4, None, "reordered");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    file_log(&path, 10);
    let mut l = lines(&path);
    l.swap(4, 5);
    write_lines(&path, &l);
    assert_tampered_at(verify_file(&path, None), 4, Some(5), "reordered");
}

#[test]
fn truncation_after_a_kept_head_is_detected_only_against_the_head() {
    let records = memory_log(20);
    let kept = records[15].head();
    let cut = &records[..12];
    // Without the head a cut-back log is a valid shorter log: that is what the head is for.
    assert_eq!(verify(cut).unwrap().records, 12);
    assert_tampered_at(verify_against_head(cut, &kept), 15, None, "cut back");
    assert_tampered_at(verify_against_head(&[], &kept), 15, None, "empty");
    assert_eq!(
        verify_against_head(&records, &kept).unwrap().checked_head,
        Some(kept.clone())
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    file_log(&path, 20);
    let l = lines(&path);
    write_lines(&path, &l[..12]);
    assert!(verify_file(&path, None).is_ok());
    assert_tampered_at(verify_file(&path, Some(&kept)), 15, None, "cut back");
}

#[test]
fn a_log_rewritten_up_to_the_kept_head_is_detected() {
    let records = memory_log(20);
    let kept = records[19].head();
    // The writer rewrites record 10 and re-chains everything after it.
    let sink = MemoryAuditSink::new();
    for (i, r) in records.iter().enumerate() {
        let mut e = r.event.clone();
        if i == 10 {
            e.tenant = Some(TenantId::new("rewritten"));
        }
        sink.append_now(e).unwrap();
    }
    let rewritten = sink.records();
    assert!(
        verify(&rewritten).is_ok(),
        "a full rewrite is internally consistent"
    );
    assert_tampered_at(
        verify_against_head(&rewritten, &kept),
        19,
        None,
        "rewritten",
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_lines(&path, &rewritten.iter().map(line_of).collect::<Vec<_>>());
    assert_tampered_at(verify_file(&path, Some(&kept)), 19, Some(20), "rewritten");
}

#[test]
fn a_torn_last_line_is_reported_and_repaired_only_explicitly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let written = file_log(&path, 6);
    let complete = fs::read(&path).unwrap();
    let extra = line_of(&written[0]);
    let mut torn = complete.clone();
    torn.extend_from_slice(&extra.as_bytes()[..40]);
    fs::write(&path, &torn).unwrap();

    for r in [
        verify_file(&path, None).map(|_| ()),
        JsonlAuditSink::open(&path).map(|_| ()),
    ] {
        match r {
            Err(AuditError::TornTail { line, bytes, .. }) => assert_eq!((line, bytes), (7, 40)),
            other => panic!("expected TornTail, got {other:?}"),
        }
    }
    let tail_open = JsonlAuditSink::open_with(&path, fast().verify(OpenVerify::Tail));
    assert!(matches!(
        tail_open,
        Err(AuditError::TornTail {
            line: 7,
            bytes: 40,
            ..
        })
    ));
    assert_eq!(
        fs::read(&path).unwrap(),
        torn,
        "nothing is dropped by reading"
    );

    let side = JsonlAuditSink::repair_torn_tail(&path).unwrap().unwrap();
    assert_eq!(fs::read(&side).unwrap(), &extra.as_bytes()[..40]);
    assert_eq!(fs::read(&path).unwrap(), complete);
    assert!(JsonlAuditSink::repair_torn_tail(&path).unwrap().is_none());

    let sink = JsonlAuditSink::open_with(&path, fast()).unwrap();
    assert_eq!(block_on(sink.append(event(6))).unwrap().seq, 6);
    drop(sink);
    assert_eq!(verify_file(&path, None).unwrap().records, 7);
}

#[test]
fn garbage_lines_are_named_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    file_log(&path, 4);
    let mut l = lines(&path);
    l.insert(2, String::new());
    write_lines(&path, &l);
    assert_tampered_at(verify_file(&path, None), 2, Some(3), "empty line");
    l[2] = "{not json".to_string();
    write_lines(&path, &l);
    assert_tampered_at(verify_file(&path, None), 2, Some(3), "not JSON");
    assert!(matches!(
        JsonlAuditSink::open(&path),
        Err(AuditError::Tampered { line: Some(3), .. })
    ));
}

#[test]
fn a_reopened_log_continues_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let first = file_log(&path, 10);
    let sink = JsonlAuditSink::open_with(&path, fast()).unwrap();
    assert_eq!(block_on(sink.head()).unwrap(), Some(first[9].head()));
    let r = block_on(sink.append(event(10))).unwrap();
    assert_eq!((r.seq, &r.prev), (10, &first[9].digest));
    for i in 11..15 {
        block_on(sink.append(event(i))).unwrap();
    }
    drop(sink);
    let tail = JsonlAuditSink::open_with(&path, fast().verify(OpenVerify::Tail)).unwrap();
    let r = block_on(tail.append(event(15))).unwrap();
    assert_eq!(r.seq, 15);
    block_on(tail.sync()).unwrap();
    drop(tail);
    let report = verify_file(&path, None).unwrap();
    assert_eq!(report.records, 16);
    // The same events in one memory log give the very same chain.
    assert_eq!(report.head, Some(memory_log(16)[15].head()));
}

#[test]
fn tail_open_refuses_an_altered_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    file_log(&path, 5);
    let mut l = lines(&path);
    l[4] = l[4].replace("tenant-1", "tenant-2");
    write_lines(&path, &l);
    let r = JsonlAuditSink::open_with(&path, fast().verify(OpenVerify::Tail));
    assert!(
        matches!(
            r,
            Err(AuditError::Tampered {
                seq: 4,
                line: Some(5),
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn a_second_sink_on_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let sink = JsonlAuditSink::open_with(&path, fast()).unwrap();
    assert!(matches!(
        JsonlAuditSink::open(&path),
        Err(AuditError::Io { .. })
    ));
    drop(sink);
    assert!(JsonlAuditSink::open(&path).is_ok());
}

#[test]
fn a_non_finite_measurement_is_refused_and_leaves_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let sink = JsonlAuditSink::open_with(&path, fast()).unwrap();
    let memory = MemoryAuditSink::new();
    block_on(sink.append(event(0))).unwrap();
    let bad = event(1).trigger(trigger(f64::NAN));
    assert!(matches!(
        block_on(sink.append(bad.clone())),
        Err(AuditError::InvalidEvent { .. })
    ));
    assert!(matches!(
        memory.append_now(bad),
        Err(AuditError::InvalidEvent { .. })
    ));
    let inf = event(1).trigger(trigger(f64::INFINITY));
    assert!(matches!(
        block_on(sink.append(inf)),
        Err(AuditError::InvalidEvent { .. })
    ));
    assert_eq!(block_on(sink.append(event(2))).unwrap().seq, 1);
    drop(sink);
    assert_eq!(verify_file(&path, None).unwrap().records, 2);
}

#[test]
fn every_fsync_policy_writes_a_verifiable_log_and_head_tracks_it() {
    for policy in [
        FsyncPolicy::EveryRecord,
        FsyncPolicy::Batch {
            records: 3,
            interval: std::time::Duration::from_millis(5),
        },
        FsyncPolicy::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let sink = JsonlAuditSink::open_with(&path, JsonlOptions::default().fsync(policy)).unwrap();
        assert_eq!(block_on(sink.head()).unwrap(), None);
        let mut last = None;
        for i in 0..10 {
            last = Some(block_on(sink.append(event(i))).unwrap());
        }
        assert_eq!(block_on(sink.head()).unwrap(), last.map(|r| r.head()));
        drop(sink);
        assert_eq!(verify_file(&path, None).unwrap().records, 10, "{policy:?}");
    }
}

#[test]
fn a_kept_head_is_read_from_json() {
    let dir = tempfile::tempdir().unwrap();
    let head_path = dir.path().join("HEAD.json");
    let head = AuditHead {
        seq: 41,
        digest: ContentDigest::of_bytes(b"x"),
    };
    let mut v = serde_json::to_value(&head).unwrap();
    v["signed_by"] = "auditor@example".into();
    fs::write(&head_path, v.to_string()).unwrap();
    assert_eq!(AuditHead::read(&head_path).unwrap(), head);
    fs::write(&head_path, "{\"seq\": 1}").unwrap();
    assert!(matches!(
        AuditHead::read(&head_path),
        Err(AuditError::InvalidHead { .. })
    ));
}

#[derive(Debug, Clone)]
enum Mutation {
    Edit(prop::sample::Index),
    Delete(prop::sample::Index),
    Duplicate(prop::sample::Index, prop::sample::Index),
    Swap(prop::sample::Index),
    Truncate(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Mutation::Edit),
        any::<prop::sample::Index>().prop_map(Mutation::Delete),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(a, b)| Mutation::Duplicate(a, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Swap),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
    ]
}

/// A log of 12 records on file, made once, for the byte-mutation property.
fn pristine_file() -> &'static Vec<u8> {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        file_log(&path, 12);
        fs::read(&path).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_event_sequences_always_verify(ns in proptest::collection::vec(any::<u64>(), 0..40)) {
        let sink = MemoryAuditSink::new();
        for n in &ns {
            sink.append_now(event(*n)).unwrap();
        }
        let records = sink.records();
        let report = verify(&records).unwrap();
        prop_assert_eq!(report.records, ns.len() as u64);
        if let Some(last) = records.last() {
            prop_assert!(verify_against_head(&records, &last.head()).is_ok());
        }
    }

    #[test]
    fn any_single_mutation_is_detected(ns in proptest::collection::vec(any::<u64>(), 2..30), m in mutation()) {
        let sink = MemoryAuditSink::new();
        for n in &ns {
            sink.append_now(event(*n)).unwrap();
        }
        let mut records = sink.records();
        let head = records.last().unwrap().head();
        let len = records.len();
        let expected_seq = match m {
            Mutation::Edit(i) => {
                let i = i.index(len);
                records[i].event.time = Timestamp::from_millis(records[i].event.time.as_millis() + 1);
                i
            }
            Mutation::Delete(i) => {
                let i = i.index(len);
                records.remove(i);
                if i == len - 1 { len - 1 } else { i }
            }
            Mutation::Duplicate(from, to) => {
                let (from, to) = (from.index(len), to.index(len + 1));
                let dup = records[from].clone();
                records.insert(to, dup);
                // Next to its original, the first of the two copies is in the right place.
                if to == from || to == from + 1 { from + 1 } else { to }
            }
            Mutation::Swap(i) => {
                let i = i.index(len - 1);
                records.swap(i, i + 1);
                i
            }
            Mutation::Truncate(i) => {
                let keep = i.index(len);
                records.truncate(keep);
                len - 1
            }
        };
        match verify_against_head(&records, &head) {
            Err(AuditError::Tampered { seq, .. }) => prop_assert_eq!(seq, expected_seq as u64),
            other => prop_assert!(false, "{:?} not detected: {:?}", m, other),
        }
    }

    #[test]
    fn any_byte_change_in_a_log_file_is_detected(idx in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let pristine = pristine_file();
        let i = idx.index(pristine.len());
        prop_assume!(pristine[i] != byte);
        let mut bytes = pristine.clone();
        bytes[i] = byte;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        fs::write(&path, &bytes).unwrap();
        let r = verify_file(&path, None);
        prop_assert!(
            matches!(r, Err(AuditError::Tampered { .. } | AuditError::TornTail { .. })),
            "byte {} set to {:#04x} went unnoticed: {:?}", i, byte, r
        );
    }
}

#[test]
fn odd_bytes_in_a_timestamp_are_reported_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    file_log(&path, 3);
    let pristine = lines(&path);
    assert!(pristine[1].contains("\"time\":\"2027-01-15T08:00:00.250Z\""));
    for odd in [
        "2026-11-28T02:14:00é+01:0",
        "ééééééé",
        "",
        "+01:00",
        "2026-11-28T02:14:00+99:99",
    ] {
        let mut l = pristine.clone();
        l[1] = l[1].replace("2027-01-15T08:00:00.250Z", odd);
        write_lines(&path, &l);
        assert_tampered_at(
            verify_file(&path, None),
            1,
            Some(2),
            "not a valid audit record",
        );
    }
}
