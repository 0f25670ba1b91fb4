//! [`JsonlAuditSink`]: an append-only JSON-lines file, one canonical record per line.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::channel::oneshot;
use parking_lot::Mutex;

use super::chain::{genesis, parse_line, seal, verify_file};
use super::{AuditEvent, AuditHead, AuditRecord, AuditSink};
use crate::digest::ContentDigest;
use crate::error::AuditError;

/// When the sink `fsync`s the log file.
///
/// A record acknowledged by [`AuditSink::append`] has always been written to the operating
/// system, so it survives a crash of the process. The policy decides what survives a power loss
/// or kernel crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `fsync` before acknowledging each record (records appended concurrently share one
    /// `fsync`: group commit). Nothing acknowledged is ever lost. The default.
    #[default]
    EveryRecord,
    /// `fsync` once `records` records are unsynced or the oldest unsynced record is `interval`
    /// old, whichever comes first. At most that much is lost on power loss.
    Batch {
        /// Records between syncs (at least 1).
        records: u32,
        /// Longest time a record stays unsynced.
        interval: Duration,
    },
    /// Never `fsync` (the operating system writes back on its own schedule); an explicit
    /// [`JsonlAuditSink::sync`] still does.
    Never,
}

/// How much of an existing log [`JsonlAuditSink::open`] verifies before continuing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpenVerify {
    /// The whole chain (reads the whole file). The default.
    #[default]
    Full,
    /// Only the last record's own digest and form, to continue the chain from it quickly; run
    /// [`verify_file`] separately (e.g. nightly) for the whole chain.
    Tail,
}

/// Options for [`JsonlAuditSink::open_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JsonlOptions {
    /// When to `fsync`.
    pub fsync: FsyncPolicy,
    /// How much of an existing log to verify on open.
    pub verify: OpenVerify,
}

impl JsonlOptions {
    /// The same options with `fsync`.
    #[must_use]
    pub fn fsync(mut self, fsync: FsyncPolicy) -> Self {
        self.fsync = fsync;
        self
    }

    /// The same options with `verify`.
    #[must_use]
    pub fn verify(mut self, verify: OpenVerify) -> Self {
        self.verify = verify;
        self
    }
}

type WriteResult = Result<(), (io::ErrorKind, String)>;

enum Msg {
    Write {
        line: String,
        head: AuditHead,
        done: oneshot::Sender<WriteResult>,
    },
    Sync {
        done: oneshot::Sender<WriteResult>,
    },
}

struct Chain {
    next_seq: u64,
    prev: ContentDigest,
    /// `None` once the sink is being dropped.
    writer: Option<Sender<Msg>>,
}

#[derive(Debug, Default)]
struct Status {
    written: Option<AuditHead>,
    failed: Option<String>,
}

/// An [`AuditSink`] appending one canonical JSON record per line to a file.
///
/// - **Atomic sequencing.** `seq`, `prev` and `digest` are assigned under one lock and lines are
///   queued to the writer in that order, so concurrent appends are never lost or reordered.
/// - **Off the executor.** A dedicated writer thread owned by the sink does every `write` and
///   `fsync`; `append` awaits a oneshot channel, so no async runtime is needed and none is
///   blocked. Lines queued together are written with one `write` (and one `fsync`).
/// - **Continuing a log.** [`open`](Self::open) verifies an existing file (whole chain by
///   default, see [`OpenVerify`]) and continues its chain. A torn last line (an interrupted
///   write) is reported as [`AuditError::TornTail`], never silently dropped;
///   [`repair_torn_tail`](Self::repair_torn_tail) moves it aside explicitly.
/// - **One writer.** The sink holds an exclusive advisory lock on the file while open, so a
///   second sink (in this or another process) cannot fork the chain.
/// - **After a failed write** the sink refuses further appends ([`AuditError::Failed`]): reopen
///   it, which verifies what reached the file.
///
/// ```
/// use downshift::audit::{AuditEvent, AuditEventKind, AuditSink, JsonlAuditSink, verify_file};
/// use downshift::{TenantId, Timestamp};
///
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("audit.jsonl");
/// # futures::executor::block_on(async {
/// let sink = JsonlAuditSink::open(&path)?;
/// let event = AuditEvent::new(
///     Timestamp::from_millis(0),
///     AuditEventKind::Rejection { reason: "nothing permissible left".into() },
/// )
/// .tenant(TenantId::new("acme"));
/// sink.append(event).await?;
/// drop(sink);
/// assert_eq!(verify_file(&path, None)?.records, 1);
/// # Ok::<(), downshift::AuditError>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct JsonlAuditSink {
    path: PathBuf,
    chain: Mutex<Chain>,
    status: Arc<Mutex<Status>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("next_seq", &self.next_seq)
            .field("prev", &self.prev)
            .finish_non_exhaustive()
    }
}

impl JsonlAuditSink {
    /// Opens (creating if needed) the log at `path` with default options: `fsync` every record,
    /// verify the whole existing chain.
    ///
    /// This is blocking (it reads and verifies the file): call it at startup or inside your
    /// runtime's `spawn_blocking`.
    ///
    /// # Errors
    /// [`AuditError::Tampered`] / [`AuditError::TornTail`] when the existing log does not
    /// verify; [`AuditError::Io`] (including when another sink holds the log open).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, AuditError> {
        Self::open_with(path, JsonlOptions::default())
    }

    /// [`open`](Self::open) with options.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with(path: impl AsRef<Path>, options: JsonlOptions) -> Result<Self, AuditError> {
        let path = path.as_ref().to_path_buf();
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_at(&path))?;
        lock_exclusive(&file, &path)?;
        if !existed {
            sync_parent(&path)?;
        }
        let head = match options.verify {
            OpenVerify::Full => verify_file(&path, None)?.head,
            OpenVerify::Tail => tail_head(&path)?,
        };
        let (next_seq, prev) = match &head {
            Some(h) => (h.seq.saturating_add(1), h.digest.clone()),
            None => (0, genesis()),
        };
        let status = Arc::new(Mutex::new(Status {
            written: head,
            failed: None,
        }));
        let (tx, rx) = mpsc::channel();
        let writer_status = Arc::clone(&status);
        let writer_path = path.clone();
        let policy = options.fsync;
        let thread = std::thread::Builder::new()
            .name("downshift-audit".to_string())
            .spawn(move || writer_loop(file, &writer_path, policy, &rx, &writer_status))
            .map_err(io_at(&path))?;
        Ok(JsonlAuditSink {
            path,
            chain: Mutex::new(Chain {
                next_seq,
                prev,
                writer: Some(tx),
            }),
            status,
            thread: Some(thread),
        })
    }

    /// The log file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes and `fsync`s everything appended so far, whatever the policy (e.g. before taking
    /// a head for an auditor).
    ///
    /// # Errors
    /// [`AuditError::Io`] or [`AuditError::Failed`].
    pub async fn sync(&self) -> Result<(), AuditError> {
        let rx = {
            let chain = self.chain.lock();
            self.refuse_if_failed()?;
            let (done, rx) = oneshot::channel();
            chain
                .writer
                .as_ref()
                .and_then(|w| w.send(Msg::Sync { done }).ok())
                .ok_or_else(|| self.writer_gone())?;
            rx
        };
        self.outcome(rx.await)
    }

    /// Syncs the log and closes it, releasing the file's lock.
    ///
    /// Dropping the sink also closes it, but waits on the calling thread for the writer thread
    /// to finish (at most the final `fsync`); `close` does that wait's I/O off the executor
    /// first.
    ///
    /// # Errors
    /// As [`sync`](Self::sync); the log is closed either way.
    pub async fn close(self) -> Result<(), AuditError> {
        let r = self.sync().await;
        drop(self);
        r
    }

    /// Moves an incomplete last line (left by an interrupted write) out of the log into
    /// `<file>.torn-<offset>` beside it and truncates the log to its last complete line. Returns
    /// the side file, or `None` when the log ends cleanly. This is the explicit, operator-run
    /// repair for [`AuditError::TornTail`]; nothing is ever dropped silently.
    ///
    /// Blocking. Fails if a sink holds the log open.
    ///
    /// # Errors
    /// [`AuditError::Io`].
    pub fn repair_torn_tail(path: impl AsRef<Path>) -> Result<Option<PathBuf>, AuditError> {
        let path = path.as_ref();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_at(path))?;
        lock_exclusive(&file, path)?;
        let len = file.metadata().map_err(io_at(path))?.len();
        let start = match last_newline(&mut file, len).map_err(io_at(path))? {
            Some(p) if p + 1 == len => return Ok(None),
            Some(p) => p + 1,
            None if len == 0 => return Ok(None),
            None => 0,
        };
        let mut torn = Vec::new();
        file.seek(SeekFrom::Start(start)).map_err(io_at(path))?;
        file.read_to_end(&mut torn).map_err(io_at(path))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "audit.jsonl".to_string());
        let side = path.with_file_name(format!("{name}.torn-{start}"));
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&side)
            .map_err(io_at(&side))?;
        out.write_all(&torn).map_err(io_at(&side))?;
        out.sync_all().map_err(io_at(&side))?;
        file.set_len(start).map_err(io_at(path))?;
        file.sync_all().map_err(io_at(path))?;
        sync_parent(path)?;
        Ok(Some(side))
    }

    fn refuse_if_failed(&self) -> Result<(), AuditError> {
        match &self.status.lock().failed {
            Some(reason) => Err(AuditError::Failed {
                path: self.path.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn writer_gone(&self) -> AuditError {
        AuditError::Failed {
            path: self.path.clone(),
            reason: "the writer thread has stopped".to_string(),
        }
    }

    fn outcome(&self, r: Result<WriteResult, oneshot::Canceled>) -> Result<(), AuditError> {
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err((kind, msg))) => Err(AuditError::Io {
                path: self.path.clone(),
                source: io::Error::new(kind, msg),
            }),
            Err(_) => Err(self.writer_gone()),
        }
    }
}

impl Drop for JsonlAuditSink {
    /// Stops the writer thread after it has written everything queued, so the file is closed
    /// and unlocked when `drop` returns (a new sink can open it at once).
    fn drop(&mut self) {
        drop(self.chain.get_mut().writer.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[async_trait]
impl AuditSink for JsonlAuditSink {
    async fn append(&self, event: AuditEvent) -> Result<AuditRecord, AuditError> {
        let (rx, record) = {
            let mut chain = self.chain.lock();
            self.refuse_if_failed()?;
            let seq = chain.next_seq;
            let (digest, line) = seal(seq, &event, &chain.prev, true)?;
            let mut line = line.unwrap_or_default();
            line.push('\n');
            let (done, rx) = oneshot::channel();
            let head = AuditHead {
                seq,
                digest: digest.clone(),
            };
            chain
                .writer
                .as_ref()
                .and_then(|w| w.send(Msg::Write { line, head, done }).ok())
                .ok_or_else(|| self.writer_gone())?;
            let prev = std::mem::replace(&mut chain.prev, digest.clone());
            chain.next_seq = seq.saturating_add(1);
            (
                rx,
                AuditRecord {
                    seq,
                    event,
                    prev,
                    digest,
                },
            )
        };
        self.outcome(rx.await)?;
        Ok(record)
    }

    async fn head(&self) -> Result<Option<AuditHead>, AuditError> {
        Ok(self.status.lock().written.clone())
    }
}

const MAX_BATCH: usize = 4096;

fn writer_loop(
    mut file: File,
    path: &Path,
    policy: FsyncPolicy,
    rx: &Receiver<Msg>,
    status: &Mutex<Status>,
) {
    let mut unsynced: u64 = 0;
    let mut oldest: Option<Instant> = None;
    let mut broken: Option<(io::ErrorKind, String)> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let fail = |e: io::Error, broken: &mut Option<(io::ErrorKind, String)>| {
        let reason = format!("{}: {e}", path.display());
        status.lock().failed = Some(reason.clone());
        *broken = Some((e.kind(), reason));
    };
    loop {
        let deadline = match (policy, oldest) {
            (FsyncPolicy::Batch { interval, .. }, Some(t0)) if broken.is_none() => {
                Some(t0 + interval)
            }
            _ => None,
        };
        let first = match deadline {
            Some(d) => match rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    match file.sync_data() {
                        Ok(()) => {
                            unsynced = 0;
                            oldest = None;
                        }
                        Err(e) => fail(e, &mut broken),
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            },
            None => match rx.recv() {
                Ok(m) => m,
                Err(_) => break,
            },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        buf.clear();
        let mut writes: u64 = 0;
        let mut sync_asked = false;
        let mut last_head = None;
        for m in &batch {
            match m {
                Msg::Write { line, head, .. } => {
                    buf.extend_from_slice(line.as_bytes());
                    writes += 1;
                    last_head = Some(head);
                }
                Msg::Sync { .. } => sync_asked = true,
            }
        }
        // Waiters need the fsync before their reply only when the policy is EveryRecord or they
        // asked for it; a Batch sync that falls due is done after replying, off their path.
        let mut batch_sync_due = false;
        let result: WriteResult = match &broken {
            Some(b) => Err(b.clone()),
            None => {
                let r = (|| -> io::Result<()> {
                    if writes > 0 {
                        file.write_all(&buf)?;
                        unsynced += writes;
                        oldest.get_or_insert_with(Instant::now);
                    }
                    let sync_now =
                        sync_asked || (policy == FsyncPolicy::EveryRecord && unsynced > 0);
                    if sync_now {
                        file.sync_data()?;
                        unsynced = 0;
                        oldest = None;
                    } else if let FsyncPolicy::Batch { records, interval } = policy {
                        batch_sync_due = unsynced >= u64::from(records.max(1))
                            || oldest.is_some_and(|t| t.elapsed() >= interval);
                    }
                    Ok(())
                })();
                match r {
                    Ok(()) => {
                        if let Some(h) = last_head {
                            status.lock().written = Some(h.clone());
                        }
                        Ok(())
                    }
                    Err(e) => {
                        fail(e, &mut broken);
                        Err(broken
                            .clone()
                            .unwrap_or((io::ErrorKind::Other, String::new())))
                    }
                }
            }
        };
        for m in batch {
            let done = match m {
                Msg::Write { done, .. } | Msg::Sync { done } => done,
            };
            let _ = done.send(result.clone());
        }
        if batch_sync_due {
            match file.sync_data() {
                Ok(()) => {
                    unsynced = 0;
                    oldest = None;
                }
                // Acknowledged records reached the OS; later appends learn of the failure.
                Err(e) => fail(e, &mut broken),
            }
        }
    }
    if broken.is_none() && unsynced > 0 {
        let _ = file.sync_data();
    }
}

/// The head of an existing log from its last line only (for [`OpenVerify::Tail`]).
fn tail_head(path: &Path) -> Result<Option<AuditHead>, AuditError> {
    let mut file = File::open(path).map_err(io_at(path))?;
    let len = file.metadata().map_err(io_at(path))?.len();
    if len == 0 {
        return Ok(None);
    }
    let last_nl = last_newline(&mut file, len).map_err(io_at(path))?;
    let lines_before = |end: u64, file: &mut File| -> Result<u64, AuditError> {
        count_newlines(file, end).map_err(io_at(path))
    };
    if last_nl != Some(len - 1) {
        let start = last_nl.map_or(0, |p| p + 1);
        return Err(AuditError::TornTail {
            path: path.to_path_buf(),
            line: lines_before(start, &mut file)? + 1,
            bytes: len - start,
        });
    }
    let end = len - 1;
    let start = match last_newline(&mut file, end).map_err(io_at(path))? {
        Some(p) => p + 1,
        None => 0,
    };
    let mut line = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
    file.seek(SeekFrom::Start(start)).map_err(io_at(path))?;
    file.read_exact(&mut line).map_err(io_at(path))?;
    let line_no = lines_before(start, &mut file)? + 1;
    let at = |seq: u64, reason: String| AuditError::Tampered {
        seq,
        path: Some(path.to_path_buf()),
        line: Some(line_no),
        reason,
    };
    let (record, computed) = parse_line(&line).map_err(|r| at(line_no - 1, r))?;
    if record.digest != computed {
        return Err(at(
            record.seq,
            format!(
                "content does not match its digest (recorded {}, computed {computed}): the record was altered",
                record.digest
            ),
        ));
    }
    if record.seq != line_no - 1 {
        return Err(at(
            line_no - 1,
            format!(
                "the last line holds record {}, not record {}",
                record.seq,
                line_no - 1
            ),
        ));
    }
    Ok(Some(record.head()))
}

/// Position of the last `\n` strictly before `end`, reading backwards in chunks.
fn last_newline(file: &mut File, end: u64) -> io::Result<Option<u64>> {
    const CHUNK: u64 = 64 * 1024;
    let mut hi = end;
    let mut buf = Vec::new();
    while hi > 0 {
        let lo = hi.saturating_sub(CHUNK);
        buf.resize(usize::try_from(hi - lo).unwrap_or(0), 0);
        file.seek(SeekFrom::Start(lo))?;
        file.read_exact(&mut buf)?;
        if let Some(i) = buf.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(lo + i as u64));
        }
        hi = lo;
    }
    Ok(None)
}

/// How many `\n` bytes the first `end` bytes of the file hold.
fn count_newlines(file: &mut File, end: u64) -> io::Result<u64> {
    file.seek(SeekFrom::Start(0))?;
    let mut remaining = end;
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    while remaining > 0 {
        let want = usize::try_from(remaining.min(buf.len() as u64)).unwrap_or(buf.len());
        let chunk = buf.get_mut(..want).unwrap_or_default();
        file.read_exact(chunk)?;
        n += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        remaining -= want as u64;
    }
    Ok(n)
}

fn lock_exclusive(file: &File, path: &Path) -> Result<(), AuditError> {
    match fs4::FileExt::try_lock(file) {
        Ok(()) => Ok(()),
        Err(fs4::TryLockError::WouldBlock) => Err(AuditError::Io {
            path: path.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::WouldBlock,
                "the audit log is held open by another sink (in this or another process)",
            ),
        }),
        Err(fs4::TryLockError::Error(e)) => Err(io_at(path)(e)),
    }
}

fn sync_parent(path: &Path) -> Result<(), AuditError> {
    #[cfg(unix)]
    {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        File::open(&parent)
            .and_then(|d| d.sync_all())
            .map_err(io_at(&parent))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}
