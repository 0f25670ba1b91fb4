//! Digests and verification of the hash chain.
//!
//! A record's digest is `sha256(canonical_json(record without "digest"))`, where the record's
//! JSON has the event's fields at the top level and includes `seq` and `prev`. Verification
//! recomputes every digest, checks that `seq` runs 0, 1, 2, … without gaps and that every `prev`
//! is the digest of the record before it (the first record's is [`genesis`]).

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use super::canonical::with_buffer;
use super::record_writer::write_record;
use super::{AuditEvent, AuditHead, AuditRecord};
use crate::clock::Timestamp;
use crate::digest::ContentDigest;
use crate::error::AuditError;

const GENESIS: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// The `prev` of record 0: `sha256:` followed by 64 zeros.
#[must_use]
pub fn genesis() -> ContentDigest {
    // The constant is well-formed; the fallback is unreachable.
    ContentDigest::parse(GENESIS).unwrap_or_else(|_| ContentDigest::of_bytes(&[]))
}

fn unencodable(e: &serde_json::Error) -> AuditError {
    AuditError::InvalidEvent {
        reason: format!("the event cannot be serialized: {e}"),
    }
}

/// The digest of record `seq` holding `event` after `prev`.
fn digest_of(
    seq: u64,
    event: &AuditEvent,
    prev: &ContentDigest,
) -> Result<ContentDigest, AuditError> {
    event.validate()?;
    with_buffer(|out| {
        write_record(out, seq, event, prev, None).map(|()| ContentDigest::of_bytes(out))
    })
    .map_err(|e| unencodable(&e))
}

/// Seals `event` as record `seq` after `prev`: its digest and, when asked, its canonical JSON
/// line (without the trailing newline).
pub(crate) fn seal(
    seq: u64,
    event: &AuditEvent,
    prev: &ContentDigest,
    with_line: bool,
) -> Result<(ContentDigest, Option<String>), AuditError> {
    let digest = digest_of(seq, event, prev)?;
    let line = if with_line {
        let mut out = Vec::with_capacity(640);
        write_record(&mut out, seq, event, prev, Some(&digest)).map_err(|e| unencodable(&e))?;
        // Every byte written is UTF-8 (escaped strings, ASCII punctuation and numbers).
        Some(
            String::from_utf8(out).map_err(|e| AuditError::InvalidEvent {
                reason: format!("the event's canonical form is not UTF-8: {e}"),
            })?,
        )
    } else {
        None
    };
    Ok((digest, line))
}

/// Recomputes `record`'s digest from its content (ignoring its `digest` field).
///
/// # Errors
/// [`AuditError::InvalidEvent`] when the record cannot be serialized (a non-finite number).
pub fn verify_record_digest(record: &AuditRecord) -> Result<ContentDigest, AuditError> {
    digest_of(record.seq, &record.event, &record.prev)
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// How many records verified.
    pub records: u64,
    /// The log's head (its last record), `None` for an empty log.
    pub head: Option<AuditHead>,
    /// The first record's time.
    pub first_time: Option<Timestamp>,
    /// The last record's time.
    pub last_time: Option<Timestamp>,
    /// The kept head the log was checked against, if one was given.
    pub checked_head: Option<AuditHead>,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ok: {} record(s) verified", self.records)?;
        if let Some(h) = &self.head {
            write!(f, "; head {h}")?;
        }
        if let (Some(a), Some(b)) = (self.first_time, self.last_time) {
            write!(f, "; {a} .. {b}")?;
        }
        if let Some(h) = &self.checked_head {
            write!(f, "; contains the kept head (seq {})", h.seq)?;
        }
        Ok(())
    }
}

/// The chain state while walking a log.
struct Walker<'h> {
    next_seq: u64,
    prev: ContentDigest,
    report: VerifyReport,
    head: Option<&'h AuditHead>,
}

impl<'h> Walker<'h> {
    fn new(head: Option<&'h AuditHead>) -> Self {
        Walker {
            next_seq: 0,
            prev: genesis(),
            report: VerifyReport::default(),
            head,
        }
    }

    /// Checks one record whose own digest (`computed`) was recomputed by the caller.
    fn step(
        &mut self,
        record: &AuditRecord,
        computed: &ContentDigest,
    ) -> Result<(), (u64, String)> {
        let at = self.next_seq;
        if record.seq != at {
            let what = if record.seq > at {
                format!(
                    "expected record {at} here, found record {}: record(s) deleted, or records reordered",
                    record.seq
                )
            } else {
                format!(
                    "expected record {at} here, found record {}: a record was inserted, duplicated or moved",
                    record.seq
                )
            };
            return Err((at, what));
        }
        if &record.digest != computed {
            return Err((
                at,
                format!(
                    "content does not match its digest (recorded {}, computed {}): the record was altered",
                    record.digest, computed
                ),
            ));
        }
        if record.prev != self.prev {
            return Err((
                at,
                format!(
                    "prev is {} but the record before it has digest {}: a record was inserted, removed or replaced before it",
                    record.prev, self.prev
                ),
            ));
        }
        if let Some(h) = self.head {
            if h.seq == at {
                if h.digest != record.digest {
                    return Err((
                        at,
                        format!(
                            "record {at} has digest {} but the kept head says {}: the log was rewritten",
                            record.digest, h.digest
                        ),
                    ));
                }
                self.report.checked_head = Some(h.clone());
            }
        }
        if self.report.first_time.is_none() {
            self.report.first_time = Some(record.event.time);
        }
        self.report.last_time = Some(record.event.time);
        self.report.records += 1;
        self.report.head = Some(record.head());
        self.prev = record.digest.clone();
        self.next_seq = at.saturating_add(1);
        Ok(())
    }

    fn finish(self) -> Result<VerifyReport, (u64, String)> {
        if let Some(h) = self.head {
            if self.report.checked_head.is_none() {
                let end = match &self.report.head {
                    Some(last) => format!("the log ends at record {}", last.seq),
                    None => "the log is empty".to_string(),
                };
                return Err((
                    h.seq,
                    format!(
                        "{end} but the kept head is record {}: the log was cut back (truncated)",
                        h.seq
                    ),
                ));
            }
        }
        Ok(self.report)
    }
}

fn tampered(seq: u64, reason: String) -> AuditError {
    AuditError::Tampered {
        seq,
        path: None,
        line: None,
        reason,
    }
}

/// Verifies a whole log held in memory: digests, contiguous `seq` from 0, and `prev` links.
///
/// Truncation at the end can only be detected against a kept head: see
/// [`verify_against_head`].
///
/// # Errors
/// [`AuditError::Tampered`] naming the first record that does not verify.
pub fn verify(records: &[AuditRecord]) -> Result<VerifyReport, AuditError> {
    walk(records, None)
}

/// [`verify`], and also checks that the log still contains the kept `head` unchanged: a log cut
/// back before it, or rewritten up to it, fails.
///
/// # Errors
/// [`AuditError::Tampered`] naming the first bad record, or the head's `seq` when the log no
/// longer reaches it.
pub fn verify_against_head(
    records: &[AuditRecord],
    head: &AuditHead,
) -> Result<VerifyReport, AuditError> {
    walk(records, Some(head))
}

fn walk(records: &[AuditRecord], head: Option<&AuditHead>) -> Result<VerifyReport, AuditError> {
    let mut w = Walker::new(head);
    for r in records {
        let computed = match verify_record_digest(r) {
            Ok(d) => d,
            Err(e) => {
                return Err(tampered(
                    w.next_seq,
                    format!("the record cannot be serialized: {e}"),
                ));
            }
        };
        w.step(r, &computed)
            .map_err(|(s, reason)| tampered(s, reason))?;
    }
    w.finish().map_err(|(s, reason)| tampered(s, reason))
}

/// Verifies a JSON-lines audit log file, streaming it line by line, optionally against a kept
/// head. This is what `downshift audit verify FILE [--head HEAD.json]` runs. It is blocking.
///
/// Beyond [`verify`], every line must be exactly the canonical JSON the sink writes (no extra
/// fields, whitespace or escapes), so any change to the file's bytes is found.
///
/// # Errors
/// [`AuditError::Tampered`] with the path, the 1-based line and the record's expected `seq`;
/// [`AuditError::TornTail`] when the last line is incomplete; [`AuditError::Io`].
pub fn verify_file(
    path: impl AsRef<Path>,
    head: Option<&AuditHead>,
) -> Result<VerifyReport, AuditError> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut w = Walker::new(head);
    let mut buf = Vec::with_capacity(1024);
    let mut line_no: u64 = 0;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| AuditError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.last() != Some(&b'\n') {
            return Err(AuditError::TornTail {
                path: path.to_path_buf(),
                line: line_no,
                bytes: buf.len() as u64,
            });
        }
        buf.pop();
        let at = |seq: u64, reason: String| AuditError::Tampered {
            seq,
            path: Some(path.to_path_buf()),
            line: Some(line_no),
            reason,
        };
        let (record, computed) = parse_line(&buf).map_err(|reason| at(w.next_seq, reason))?;
        w.step(&record, &computed)
            .map_err(|(s, reason)| at(s, reason))?;
    }
    w.finish().map_err(|(seq, reason)| AuditError::Tampered {
        seq,
        path: Some(path.to_path_buf()),
        line: None,
        reason,
    })
}

/// Parses one line (without its newline): the record and its recomputed digest. The line must
/// be exactly the canonical JSON of the record.
pub(crate) fn parse_line(line: &[u8]) -> Result<(AuditRecord, ContentDigest), String> {
    if line.is_empty() {
        return Err("empty line".to_string());
    }
    let record: AuditRecord = serde_json::from_slice(line).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => format!("not a valid audit record: {e}"),
        _ => format!("the line is not JSON: {e}"),
    })?;
    let canonical = with_buffer(|out| {
        write_record(
            out,
            record.seq,
            &record.event,
            &record.prev,
            Some(&record.digest),
        )
        .map(|()| out.as_slice() == line)
    })
    .map_err(|e| e.to_string())?;
    if !canonical {
        return Err(
            "the line is not the canonical form of its record (whitespace, escapes, key order or \
             fields the format does not define): it was edited"
                .to_string(),
        );
    }
    let computed = verify_record_digest(&record).map_err(|e| e.to_string())?;
    Ok((record, computed))
}
