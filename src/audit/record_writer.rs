//! The canonical JSON of an audit record, written by hand.
//!
//! Every record is sealed on the append path, so its canonical form is written here field by
//! field, in the sorted key order the canonical form requires, straight into a reused buffer:
//! no `serde_json::Value`, no per-object scratch buffer, no sorting, no allocation for the
//! timestamp. The output is byte for byte what the generic canonical serializer
//! ([`super::canonical`]) writes for the same record — the tests below check it for every
//! event kind and arbitrary strings, numbers and times — and the event kinds that are rare
//! (everything but tier changes and promotions) go through that serializer.

use super::canonical::write_canonical;
use super::{AuditEvent, AuditEventKind, ConsentRef, PolicyRef};
use crate::checkpoint::{CheckpointRef, TierAt};
use crate::clock::Timestamp;
use crate::digest::ContentDigest;
use crate::trigger::TriggerRecord;

type Error = serde_json::Error;

/// Writes the canonical JSON of record `seq` holding `event` after `prev`, with its `digest`
/// when given (the line a sink stores) or without it (what the digest is computed over).
pub(crate) fn write_record(
    out: &mut Vec<u8>,
    seq: u64,
    event: &AuditEvent,
    prev: &ContentDigest,
    digest: Option<&ContentDigest>,
) -> Result<(), Error> {
    // Keys in byte order: approval, checkpoint, consent, digest, event, policy, prev, seq,
    // session, task, tenant, time, trigger, workflow.
    let mut o = Obj::open(out);
    if let Some(a) = &event.approval {
        o.key("approval");
        write_str(o.out, a);
    }
    if let Some(c) = &event.checkpoint {
        o.key("checkpoint");
        checkpoint_ref(o.out, c);
    }
    if let Some(c) = &event.consent {
        o.key("consent");
        consent_ref(o.out, c);
    }
    if let Some(d) = digest {
        o.key("digest");
        write_str(o.out, d.as_str());
    }
    o.key("event");
    kind(o.out, &event.kind)?;
    if let Some(p) = &event.policy {
        o.key("policy");
        policy_ref(o.out, p);
    }
    o.key("prev");
    write_str(o.out, prev.as_str());
    o.key("seq");
    write_u64(o.out, seq);
    if let Some(s) = &event.session {
        o.key("session");
        write_str(o.out, s.as_str());
    }
    if let Some(t) = &event.task {
        o.key("task");
        write_str(o.out, t.as_str());
    }
    if let Some(t) = &event.tenant {
        o.key("tenant");
        write_str(o.out, t.as_str());
    }
    o.key("time");
    timestamp(o.out, event.time)?;
    if let Some(t) = &event.trigger {
        o.key("trigger");
        trigger(o.out, t)?;
    }
    if let Some(w) = &event.workflow {
        o.key("workflow");
        write_str(o.out, w.as_str());
    }
    o.close();
    Ok(())
}

/// An object being written; keys must be given in byte order.
struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Obj<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Obj { out, first: true }
    }

    /// `"key":` (after a comma unless first). Keys are plain ASCII identifiers.
    fn key(&mut self, key: &'static str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

fn kind(out: &mut Vec<u8>, kind: &AuditEventKind) -> Result<(), Error> {
    let (tag, from, to) = match kind {
        AuditEventKind::TierChange { from, to } => ("tier_change", from, to),
        AuditEventKind::Promotion { from, to } => ("promotion", from, to),
        other => return write_canonical(out, other),
    };
    let mut o = Obj::open(out);
    o.key("from");
    tier_at(o.out, from);
    o.key("to");
    tier_at(o.out, to);
    o.key("type");
    write_str(o.out, tag);
    o.close();
    Ok(())
}

fn tier_at(out: &mut Vec<u8>, t: &TierAt) {
    let mut o = Obj::open(out);
    if let Some(e) = &t.endpoint {
        o.key("endpoint");
        write_str(o.out, e.as_str());
    }
    o.key("index");
    write_u64(o.out, u64::from(t.index));
    o.key("name");
    write_str(o.out, &t.name);
    o.close();
}

fn policy_ref(out: &mut Vec<u8>, p: &PolicyRef) {
    let mut o = Obj::open(out);
    o.key("digest");
    write_str(o.out, p.digest.as_str());
    o.key("id");
    write_str(o.out, p.id.as_str());
    o.key("version");
    write_str(o.out, &p.version);
    o.close();
}

fn consent_ref(out: &mut Vec<u8>, c: &ConsentRef) {
    let mut o = Obj::open(out);
    o.key("agreement_id");
    write_str(o.out, &c.agreement_id);
    o.key("document_digest");
    write_str(o.out, &c.document_digest);
    o.key("version");
    write_str(o.out, &c.version);
    o.close();
}

fn checkpoint_ref(out: &mut Vec<u8>, c: &CheckpointRef) {
    let mut o = Obj::open(out);
    o.key("digest");
    write_str(o.out, c.digest.as_str());
    o.key("session");
    write_str(o.out, c.session.as_str());
    o.key("version");
    write_u64(o.out, c.version);
    o.close();
}

fn trigger(out: &mut Vec<u8>, t: &TriggerRecord) -> Result<(), Error> {
    // endpoint, kind, measured, samples, text, threshold, unit, until, window_ms
    let mut o = Obj::open(out);
    if let Some(e) = &t.endpoint {
        o.key("endpoint");
        write_str(o.out, e.as_str());
    }
    o.key("kind");
    write_canonical(o.out, &t.kind)?;
    o.key("measured");
    write_f64(o.out, t.measured)?;
    o.key("samples");
    write_u64(o.out, u64::from(t.samples));
    o.key("text");
    write_str(o.out, &t.text);
    o.key("threshold");
    write_f64(o.out, t.threshold)?;
    o.key("unit");
    write_str(o.out, &t.unit);
    if let Some(u) = t.until {
        o.key("until");
        timestamp(o.out, u)?;
    }
    if let Some(w) = t.window_ms {
        o.key("window_ms");
        write_u64(o.out, w);
    }
    o.close();
    Ok(())
}

/// A JSON string as `serde_json` escapes it: only control characters, `"` and `\` are escaped,
/// everything else (including non-ASCII) is written as is.
fn write_str(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a string to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Whether any byte is a control character, `"` or `\`, eight bytes at a time.
fn needs_escape(bytes: &[u8]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(LO) & !x & HI != 0;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let x = u64::from_le_bytes(w);
        // A byte below 0x20 (its high bit clear and x - 0x20 borrowing), `"` or `\`.
        let below = x.wrapping_sub(0x20 * LO) & !x & HI != 0;
        if below || has_zero(x ^ (u64::from(b'"') * LO)) || has_zero(x ^ (u64::from(b'\\') * LO)) {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

fn write_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        if let Some(slot) = buf.get_mut(i) {
            *slot = b'0' + (v % 10) as u8;
        }
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    out.extend_from_slice(buf.get(i..).unwrap_or_default());
}

fn write_f64(out: &mut Vec<u8>, v: f64) -> Result<(), Error> {
    write_canonical(out, &v)
}

/// The last second RFC 3339 (and `humantime`) can write: 9999-12-31T23:59:59. A later time
/// cannot be recorded (its `Display` would fail); the event is refused with an error.
const MAX_FAST_SECS: u64 = 253_402_300_799;

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, exactly as `Timestamp`'s `Display` writes it.
fn timestamp(out: &mut Vec<u8>, t: Timestamp) -> Result<(), Error> {
    let ms = t.as_millis();
    let secs = ms / 1000;
    if secs > MAX_FAST_SECS {
        return Err(<Error as serde::ser::Error>::custom(format!(
            "the time {ms} ms after the epoch is after 9999-12-31 and cannot be written as RFC 3339"
        )));
    }
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let mut b = *b"\"0000-00-00T00:00:00.000Z\"";
    let mut put = |at: usize, v: u64, width: usize| {
        let mut v = v;
        for k in (0..width).rev() {
            if let Some(slot) = b.get_mut(at + k) {
                *slot = b'0' + (v % 10) as u8;
            }
            v /= 10;
        }
    };
    put(1, y, 4);
    put(6, m, 2);
    put(9, d, 2);
    put(12, rem / 3600, 2);
    put(15, rem % 3600 / 60, 2);
    put(18, rem % 60, 2);
    put(21, ms % 1000, 3);
    out.extend_from_slice(&b);
    Ok(())
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's algorithm), for non-negative day counts.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::Serialize;

    use super::*;
    use crate::audit::ReplayOutcome;
    use crate::id::{EndpointId, LayerId, SessionId, TaskKind, TenantId, WorkflowId};
    use crate::trigger::TriggerKind;

    fn generic<T: Serialize + ?Sized>(v: &T) -> String {
        super::super::canonical::to_canonical_string(v).unwrap()
    }

    #[derive(Serialize)]
    struct Signed<'a> {
        seq: u64,
        #[serde(flatten)]
        event: &'a AuditEvent,
        prev: &'a ContentDigest,
        #[serde(skip_serializing_if = "Option::is_none")]
        digest: Option<&'a ContentDigest>,
    }

    fn fast(seq: u64, e: &AuditEvent, prev: &ContentDigest, d: Option<&ContentDigest>) -> String {
        let mut out = Vec::new();
        write_record(&mut out, seq, e, prev, d).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn kinds(s: &str) -> Vec<AuditEventKind> {
        let t = |i: u32| TierAt::new(i, s).on(EndpointId::new(s));
        vec![
            AuditEventKind::TierChange {
                from: TierAt::new(0, s),
                to: t(2),
            },
            AuditEventKind::Promotion {
                from: t(3),
                to: TierAt::new(1, "x"),
            },
            AuditEventKind::Suspension {
                from: t(1),
                reason: s.into(),
                retry_at: Some(Timestamp::from_millis(5)),
            },
            AuditEventKind::Resume { to: t(0) },
            AuditEventKind::ApprovalRequested {
                from: t(0),
                proposed: t(1),
                expires_at: None,
            },
            AuditEventKind::ApprovalGranted { approver: s.into() },
            AuditEventKind::ApprovalDenied {
                approver: s.into(),
                reason: Some(s.into()),
            },
            AuditEventKind::ApprovalExpired {},
            AuditEventKind::Rejection { reason: s.into() },
            AuditEventKind::PolicyActivation {
                digest: ContentDigest::of_bytes(s.as_bytes()),
                previous: None,
                mode: Some(crate::engine::EngineMode::ObserveOnly),
            },
            AuditEventKind::ContextTransform {
                from_tokens: 9,
                to_tokens: 3,
                target_window: 4,
                messages_dropped: 1,
                summarized: true,
                strategy: Some(crate::audit::ContextStrategy::Summarize),
                summarizer: Some(s.into()),
                dropped_digest: Some(ContentDigest::of_bytes(b"dropped")),
            },
            AuditEventKind::ReplayResult {
                step: s.into(),
                original: t(0),
                outcome: ReplayOutcome::Differs,
                diff: Some(ContentDigest::of_bytes(b"d")),
            },
            AuditEventKind::StepReviewed {
                step: s.into(),
                served_by: t(2),
                reviewer: s.into(),
            },
        ]
    }

    fn full(kind: AuditEventKind, s: &str, ms: u64, x: f64, n: u64) -> AuditEvent {
        AuditEvent::new(Timestamp::from_millis(ms), kind)
            .tenant(TenantId::new(s))
            .session(SessionId::new(s))
            .workflow(WorkflowId::new(s))
            .task(TaskKind::new(s))
            .trigger(TriggerRecord {
                kind: TriggerKind::LatencyP95,
                endpoint: Some(EndpointId::new(s)),
                measured: x,
                threshold: -x / 3.0,
                unit: s.into(),
                window_ms: Some(n),
                samples: u32::try_from(n % 100_000).unwrap(),
                until: Some(Timestamp::from_millis(ms / 2)),
                text: s.into(),
            })
            .policy(PolicyRef {
                id: LayerId::new(s),
                version: s.into(),
                digest: ContentDigest::of_bytes(b"p"),
            })
            .consent(ConsentRef {
                agreement_id: s.into(),
                version: s.into(),
                document_digest: s.into(),
            })
            .checkpoint(CheckpointRef {
                session: SessionId::new(s),
                version: n,
                digest: ContentDigest::of_bytes(b"c"),
            })
            .approval(s)
    }

    fn check(seq: u64, e: &AuditEvent) {
        let prev = ContentDigest::of_bytes(b"prev");
        let d = ContentDigest::of_bytes(b"digest");
        for digest in [None, Some(&d)] {
            let want = generic(&Signed {
                seq,
                event: e,
                prev: &prev,
                digest,
            });
            assert_eq!(fast(seq, e, &prev, digest), want);
        }
    }

    #[test]
    fn every_kind_with_every_field_matches_the_generic_canonical_form() {
        for k in kinds("é\"\\\n\u{1}\u{7f}🚀 x") {
            check(7, &full(k.clone(), "a\"b", 1_800_000_000_123, 4200.5, 212));
            check(0, &AuditEvent::new(Timestamp::EPOCH, k));
        }
    }

    #[test]
    fn the_escape_scan_finds_every_byte_that_needs_escaping_at_every_position() {
        for len in 0..20 {
            for at in 0..len {
                for b in (0u8..0x20).chain([b'"', b'\\']) {
                    let mut v = vec![b'a'; len];
                    v[at] = b;
                    assert!(needs_escape(&v), "{len} {at} {b}");
                }
                let mut v = vec![b'a'; len];
                v[at] = 0x7f;
                assert!(!needs_escape(&v));
                v[at] = 0xc3;
                assert!(!needs_escape(&v));
            }
        }
    }

    #[test]
    fn a_time_beyond_year_9999_is_refused_not_a_panic() {
        let e = AuditEvent::new(
            Timestamp::from_millis(253_402_300_800_000),
            AuditEventKind::ApprovalExpired {},
        );
        let err = crate::audit::MemoryAuditSink::new()
            .append_now(e)
            .unwrap_err();
        assert!(err.to_string().contains("9999-12-31"), "{err}");
    }

    proptest! {
        #[test]
        fn arbitrary_records_match_the_generic_canonical_form(
            s in any::<String>(),
            ms in 0u64..=253_402_300_799_999,
            x in -1e300f64..1e300,
            n in any::<u64>(),
            seq in any::<u64>(),
            k in 0usize..12,
        ) {
            let kind = kinds(&s).swap_remove(k);
            let e = full(kind, &s, ms, x, n);
            let prev = ContentDigest::of_bytes(s.as_bytes());
            let want = generic(&Signed { seq, event: &e, prev: &prev, digest: None });
            prop_assert_eq!(fast(seq, &e, &prev, None), want);
        }
    }
}
