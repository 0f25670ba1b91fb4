//! [`FileCheckpointStore`]: the embedded durable store, one checksummed file per session.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::{Checkpoint, CheckpointList, CheckpointStore, ListFilter, next_version};
use crate::blocking::Offload;
use crate::clock::Timestamp;
use crate::error::CheckpointError;
use crate::id::{SessionId, TenantId};

const MAGIC: &str = "downshift-checkpoint";
const FORMAT: &str = "v1";
const MAX_HEADER: usize = 128;
const MAX_NAME: usize = 160;

/// How a [`FileCheckpointStore`] runs its blocking work.
///
/// ```
/// use downshift::blocking::Offload;
/// use downshift::checkpoint::FileStoreOptions;
///
/// // Default: two dedicated worker threads.
/// let default = FileStoreOptions::default();
/// // Under tokio, reuse its blocking pool instead:
/// // FileStoreOptions::default().offload(Offload::spawner(|job| { tokio::task::spawn_blocking(job); }))
/// let inline = FileStoreOptions::default().offload(Offload::inline());
/// # let _ = (default, inline);
/// ```
#[derive(Debug, Clone)]
pub struct FileStoreOptions {
    offload: Option<Offload>,
    threads: usize,
}

impl Default for FileStoreOptions {
    fn default() -> Self {
        FileStoreOptions {
            offload: None,
            threads: 2,
        }
    }
}

impl FileStoreOptions {
    /// Run the store's blocking work on `offload` (e.g. a `tokio::task::spawn_blocking` hook).
    #[must_use]
    pub fn offload(mut self, offload: Offload) -> Self {
        self.offload = Some(offload);
        self
    }

    /// Use a dedicated pool of `threads` workers (default 2; ignored when an
    /// [`offload`](Self::offload) is given).
    #[must_use]
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }
}

/// The embedded durable [`CheckpointStore`]: one checksummed file per session in a directory,
/// written atomically, safe across tasks and processes (see also `docs/checkpoints.md`).
/// Clones share the same directory and workers.
///
/// # Layout
///
/// ```text
/// <root>/sessions/<name>.ckpt     the checkpoint (header line + JSON payload)
/// <root>/sessions/<name>.lock     advisory lock serializing writers of this session
/// <root>/sessions/<name>.tmp      a write in progress (or left by a crash; ignored, cleaned)
/// <root>/tenants/<tenant>/<name>  empty marker: the session belongs to the tenant (for `list`)
/// <root>/quarantine/              corrupt checkpoints moved aside by `quarantine`
/// ```
///
/// `<name>` is the session id with every byte outside `[a-z0-9_-]` percent-encoded (`%2F`), so
/// no id can climb out of the directory (`..`, `/`, `\`, NUL) and ids that differ only in case
/// stay distinct on case-insensitive file systems. An id whose encoding would exceed 160
/// characters is named `~<sha256 hex>` instead; the session id inside the file is checked on
/// every read.
///
/// # File format
///
/// ```text
/// downshift-checkpoint v1 sha256:<64 hex> <payload length>\n
/// <payload: the checkpoint as JSON, exactly <payload length> bytes>
/// ```
///
/// A file whose header is malformed, whose version is unknown, whose payload is shorter or
/// longer than declared, or whose payload does not hash to the declared digest is reported as
/// [`CheckpointError::Corrupt`] naming the file; it is never half-read.
///
/// # Crash safety
///
/// A save writes the whole file to `<name>.tmp`, `fsync`s it, renames it over `<name>.ckpt` and
/// `fsync`s the directory. A crash at any point leaves either the previous good file or the new
/// one, never a mix. Leftover `.tmp` files are ignored by reads, overwritten by the next save of
/// the session and removed when a store is opened on the directory.
///
/// # Concurrency
///
/// Writers of one session (save, delete) hold an exclusive advisory lock on `<name>.lock`
/// (`flock(2)` on Unix, `LockFileEx` on Windows, through the `fs4` crate). The kernel releases
/// such a lock when its holder exits or crashes, so there is no stale-lock heuristic that could
/// let two writers in at once. The compare-and-swap therefore holds across tasks, threads and
/// processes sharing the directory on a local file system (not over NFS). Readers need no lock:
/// `rename` is atomic, so a reader sees the old file or the new one.
///
/// # Keeping blocking I/O off the executor
///
/// Every operation runs on the store's [`Offload`](crate::blocking::Offload): by default two dedicated worker threads
/// owned by the store (or a caller-supplied `spawn_blocking` hook, see [`FileStoreOptions`]); the
/// async method only awaits a oneshot channel. No async runtime is required.
///
/// # Example
///
/// ```
/// use downshift::checkpoint::{Checkpoint, CheckpointStore, FileCheckpointStore, TierAt};
/// use downshift::{ContentDigest, SessionId, TenantId, Timestamp};
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = FileCheckpointStore::open(dir.path()).unwrap();
/// # futures::executor::block_on(async {
/// let cp = Checkpoint::new(
///     TenantId::new("acme"),
///     SessionId::new("s-1"),
///     Timestamp::from_millis(0),
///     TierAt::new(1, "mid"),
///     ContentDigest::of_bytes(b"policy"),
///     serde_json::json!({"goal": "triage"}),
/// );
/// let v = store.save(cp, None).await?;
/// let back = store.load(&SessionId::new("s-1")).await?.unwrap();
/// assert_eq!((back.version, back.tier.name.as_str()), (v, "mid"));
/// # Ok::<(), downshift::CheckpointError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct FileCheckpointStore {
    dirs: Arc<Dirs>,
    offload: Offload,
}

#[derive(Debug)]
struct Dirs {
    root: PathBuf,
    sessions: PathBuf,
    tenants: PathBuf,
    quarantine: PathBuf,
}

impl FileCheckpointStore {
    /// Opens (creating if needed) a store in `root` with default options, and removes temporary
    /// files left by crashed writers.
    ///
    /// This is blocking: call it at startup (or inside your runtime's `spawn_blocking`).
    ///
    /// # Errors
    /// [`CheckpointError::Io`] naming the directory that cannot be created or read, or
    /// `Unavailable` when the worker threads cannot be started.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        Self::open_with(root, FileStoreOptions::default())
    }

    /// [`open`](Self::open) with options.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with(
        root: impl AsRef<Path>,
        options: FileStoreOptions,
    ) -> Result<Self, CheckpointError> {
        let root = root.as_ref().to_path_buf();
        let dirs = Dirs {
            sessions: root.join("sessions"),
            tenants: root.join("tenants"),
            quarantine: root.join("quarantine"),
            root,
        };
        for d in [&dirs.root, &dirs.sessions, &dirs.tenants] {
            fs::create_dir_all(d).map_err(io_at(d))?;
        }
        sync_dir(&dirs.root).map_err(io_at(&dirs.root))?;
        dirs.sweep_temp_files()?;
        let offload = match options.offload {
            Some(o) => o,
            None => Offload::pool("checkpoint", options.threads).map_err(|e| {
                CheckpointError::Unavailable {
                    reason: format!("cannot start checkpoint worker threads: {e}"),
                }
            })?,
        };
        Ok(FileCheckpointStore {
            dirs: Arc::new(dirs),
            offload,
        })
    }

    /// The store's root directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.dirs.root
    }

    /// The file that holds `session`'s checkpoint (whether or not it exists).
    #[must_use]
    pub fn path_of(&self, session: &SessionId) -> PathBuf {
        self.dirs.ckpt_path(&file_name(session.as_str()))
    }

    /// Moves a *corrupt* checkpoint of `session` aside into `<root>/quarantine/` so the session
    /// can be saved afresh, and returns where it went. Readable checkpoints are never moved
    /// (delete them with their version instead); returns `None` when there is no file.
    ///
    /// # Errors
    /// [`CheckpointError::Invalid`] when the checkpoint is readable; `Io`; `Unavailable`.
    pub async fn quarantine(
        &self,
        session: &SessionId,
    ) -> Result<Option<PathBuf>, CheckpointError> {
        let dirs = Arc::clone(&self.dirs);
        let session = session.clone();
        self.run(move || dirs.quarantine_blocking(&session)).await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, CheckpointError> + Send + 'static,
    ) -> Result<T, CheckpointError> {
        self.offload
            .run(work)
            .await
            .map_err(|_| CheckpointError::Unavailable {
                reason: "the checkpoint store's worker dropped the operation".to_string(),
            })?
    }
}

#[async_trait]
impl CheckpointStore for FileCheckpointStore {
    async fn load(&self, session: &SessionId) -> Result<Option<Checkpoint>, CheckpointError> {
        let dirs = Arc::clone(&self.dirs);
        let session = session.clone();
        self.run(move || {
            let path = dirs.ckpt_path(&file_name(session.as_str()));
            read_checkpoint(&path, &session)
        })
        .await
    }

    async fn save(
        &self,
        checkpoint: Checkpoint,
        expected_version: Option<u64>,
    ) -> Result<u64, CheckpointError> {
        let dirs = Arc::clone(&self.dirs);
        self.run(move || dirs.save_blocking(checkpoint, expected_version))
            .await
    }

    async fn list(
        &self,
        tenant: &TenantId,
        filter: &ListFilter,
    ) -> Result<CheckpointList, CheckpointError> {
        let dirs = Arc::clone(&self.dirs);
        let tenant = tenant.clone();
        let filter = filter.clone();
        self.run(move || dirs.list_blocking(&tenant, &filter)).await
    }

    async fn delete(
        &self,
        session: &SessionId,
        expected_version: u64,
    ) -> Result<(), CheckpointError> {
        let dirs = Arc::clone(&self.dirs);
        let session = session.clone();
        self.run(move || dirs.delete_blocking(&session, expected_version))
            .await
    }
}

impl Dirs {
    fn ckpt_path(&self, name: &str) -> PathBuf {
        self.sessions.join(format!("{name}.ckpt"))
    }

    fn tmp_path(&self, name: &str) -> PathBuf {
        self.sessions.join(format!("{name}.tmp"))
    }

    fn lock_path(&self, name: &str) -> PathBuf {
        self.sessions.join(format!("{name}.lock"))
    }

    fn tenant_dir(&self, tenant: &TenantId) -> PathBuf {
        self.tenants.join(file_name(tenant.as_str()))
    }

    /// Removes `.tmp` files whose session no writer holds: they are leftovers of crashes.
    fn sweep_temp_files(&self) -> Result<(), CheckpointError> {
        let entries = fs::read_dir(&self.sessions).map_err(io_at(&self.sessions))?;
        for entry in entries {
            let entry = entry.map_err(io_at(&self.sessions))?;
            let file = entry.file_name();
            let Some(name) = file.to_str().and_then(|n| n.strip_suffix(".tmp")) else {
                continue;
            };
            let lock_path = self.lock_path(name);
            if let Some(guard) = lock_session(&lock_path, false)? {
                match fs::remove_file(entry.path()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_at(&entry.path())(e)),
                }
                if !self.ckpt_path(name).exists() {
                    remove_lock_file(&lock_path);
                }
                drop(guard);
            }
        }
        Ok(())
    }

    fn save_blocking(
        &self,
        mut checkpoint: Checkpoint,
        expected: Option<u64>,
    ) -> Result<u64, CheckpointError> {
        checkpoint.validate()?;
        let name = file_name(checkpoint.session.as_str());
        let path = self.ckpt_path(&name);
        let _guard = lock_session(&self.lock_path(&name), true)?;
        let stored = read_checkpoint(&path, &checkpoint.session)?;
        if let Some(s) = &stored {
            if s.tenant != checkpoint.tenant {
                return Err(CheckpointError::TenantMismatch {
                    session: checkpoint.session.clone(),
                    stored: s.tenant.clone(),
                    given: checkpoint.tenant.clone(),
                });
            }
        }
        let version = next_version(
            &checkpoint.session,
            stored.as_ref().map(|s| s.version),
            expected,
        )?;
        checkpoint.version = version;
        let payload = serde_json::to_vec(&checkpoint).map_err(|e| CheckpointError::Invalid {
            session: checkpoint.session.clone(),
            reason: format!("cannot encode the checkpoint as JSON: {e}"),
        })?;
        if stored.is_none() {
            self.add_marker(&checkpoint.tenant, &name)?;
        }
        self.write_atomically(&name, &payload)?;
        Ok(version)
    }

    fn add_marker(&self, tenant: &TenantId, name: &str) -> Result<(), CheckpointError> {
        let dir = self.tenant_dir(tenant);
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(io_at(&dir))?;
            sync_dir(&self.tenants).map_err(io_at(&self.tenants))?;
        }
        let marker = dir.join(name);
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&marker)
            .map_err(io_at(&marker))?;
        sync_dir(&dir).map_err(io_at(&dir))
    }

    fn write_atomically(&self, name: &str, payload: &[u8]) -> Result<(), CheckpointError> {
        let tmp = self.tmp_path(name);
        let dst = self.ckpt_path(name);
        let header = format!(
            "{MAGIC} {FORMAT} {} {}\n",
            crate::digest::ContentDigest::of_bytes(payload),
            payload.len()
        );
        let written = (|| -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(header.as_bytes())?;
            f.write_all(payload)?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_at(&tmp)(e));
        }
        fs::rename(&tmp, &dst).map_err(io_at(&dst))?;
        sync_dir(&self.sessions).map_err(io_at(&self.sessions))
    }

    fn delete_blocking(&self, session: &SessionId, expected: u64) -> Result<(), CheckpointError> {
        let name = file_name(session.as_str());
        let path = self.ckpt_path(&name);
        let lock_path = self.lock_path(&name);
        let guard = lock_session(&lock_path, true)?;
        let stored = match read_checkpoint(&path, session)? {
            Some(s) if s.version == expected => s,
            other => {
                return Err(CheckpointError::Conflict {
                    session: session.clone(),
                    expected: Some(expected),
                    actual: other.map(|s| s.version),
                });
            }
        };
        fs::remove_file(&path).map_err(io_at(&path))?;
        sync_dir(&self.sessions).map_err(io_at(&self.sessions))?;
        // The marker is only an index entry: a stale one is skipped (and cleaned) by `list`.
        let marker = self.tenant_dir(&stored.tenant).join(&name);
        let _ = fs::remove_file(&marker);
        remove_lock_file(&lock_path);
        drop(guard);
        Ok(())
    }

    fn list_blocking(
        &self,
        tenant: &TenantId,
        filter: &ListFilter,
    ) -> Result<CheckpointList, CheckpointError> {
        let dir = self.tenant_dir(tenant);
        let mut out = CheckpointList::default();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_at(&dir)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_at(&dir))?;
            if let Some(n) = entry.file_name().to_str() {
                names.push(n.to_string());
            }
        }
        names.sort();
        for name in names {
            let path = self.ckpt_path(&name);
            match read_file_checked(&path) {
                Ok(Some(cp)) => {
                    if &cp.tenant != tenant || file_name(cp.session.as_str()) != name {
                        // A stale marker for a session now owned elsewhere: not this tenant's.
                        continue;
                    }
                    if filter.matches(&cp) {
                        out.sessions.push(cp.summary());
                    }
                }
                Ok(None) => self.drop_stale_marker(&dir, &name)?,
                Err(e) => out.unreadable.push(e),
            }
        }
        out.sessions.sort_by(|a, b| a.session.cmp(&b.session));
        Ok(out)
    }

    /// Removes a marker whose checkpoint is gone, under the session's lock so that a concurrent
    /// first save (marker written, checkpoint about to be) is never undone.
    fn drop_stale_marker(&self, dir: &Path, name: &str) -> Result<(), CheckpointError> {
        let lock_path = self.lock_path(name);
        let Some(guard) = lock_session(&lock_path, false)? else {
            return Ok(());
        };
        if !self.ckpt_path(name).exists() {
            let _ = fs::remove_file(dir.join(name));
            remove_lock_file(&lock_path);
        }
        drop(guard);
        Ok(())
    }

    fn quarantine_blocking(&self, session: &SessionId) -> Result<Option<PathBuf>, CheckpointError> {
        let name = file_name(session.as_str());
        let path = self.ckpt_path(&name);
        let _guard = lock_session(&self.lock_path(&name), true)?;
        match read_checkpoint(&path, session) {
            Ok(None) => Ok(None),
            Ok(Some(_)) => Err(CheckpointError::Invalid {
                session: session.clone(),
                reason: format!(
                    "{} is readable; only corrupt checkpoints are quarantined",
                    path.display()
                ),
            }),
            Err(CheckpointError::Corrupt { .. }) => {
                fs::create_dir_all(&self.quarantine).map_err(io_at(&self.quarantine))?;
                let now = Timestamp::from_system_time(std::time::SystemTime::now()).as_millis();
                let dst = self.quarantine.join(format!("{name}.{now}.ckpt"));
                fs::rename(&path, &dst).map_err(io_at(&path))?;
                sync_dir(&self.sessions).map_err(io_at(&self.sessions))?;
                sync_dir(&self.quarantine).map_err(io_at(&self.quarantine))?;
                Ok(Some(dst))
            }
            Err(e) => Err(e),
        }
    }
}

/// Reads and verifies the checkpoint at `path`, which must hold `session`.
fn read_checkpoint(
    path: &Path,
    session: &SessionId,
) -> Result<Option<Checkpoint>, CheckpointError> {
    let cp = read_file_checked(path)?;
    if let Some(cp) = &cp {
        if &cp.session != session {
            return Err(corrupt(
                path,
                format!("holds session `{}`, not `{session}`", cp.session),
            ));
        }
    }
    Ok(cp)
}

/// Reads and verifies any checkpoint file: `None` if there is no file.
fn read_file_checked(path: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_at(path)(e)),
    };
    decode(&bytes)
        .map(Some)
        .map_err(|reason| corrupt(path, reason))
}

/// Decodes a checkpoint file's bytes, checking header, length and checksum before parsing.
pub(crate) fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
    let nl = bytes
        .iter()
        .take(MAX_HEADER)
        .position(|&b| b == b'\n')
        .ok_or_else(|| {
            if bytes.is_empty() {
                "the file is empty (torn write)".to_string()
            } else {
                "no header line: not a downshift checkpoint, or torn".to_string()
            }
        })?;
    let header = std::str::from_utf8(bytes.get(..nl).unwrap_or_default())
        .map_err(|_| "the header line is not UTF-8".to_string())?;
    let payload = bytes.get(nl + 1..).unwrap_or_default();
    let parts: Vec<&str> = header.split(' ').collect();
    let [magic, format, digest, len] = parts.as_slice() else {
        return Err(format!("malformed header `{}`", header.escape_debug()));
    };
    if *magic != MAGIC {
        return Err(format!(
            "malformed header `{}`: not a downshift checkpoint",
            header.escape_debug()
        ));
    }
    if *format != FORMAT {
        return Err(format!(
            "unsupported format version `{}` (this build reads {FORMAT})",
            format.escape_debug()
        ));
    }
    let declared: usize = len
        .parse()
        .ok()
        .filter(|_| {
            len.bytes().all(|b| b.is_ascii_digit()) && !(len.len() > 1 && len.starts_with('0'))
        })
        .ok_or_else(|| format!("malformed payload length `{}`", len.escape_debug()))?;
    if payload.len() != declared {
        return Err(format!(
            "the payload has {} bytes but the header declares {declared} (torn or altered)",
            payload.len()
        ));
    }
    let expected = crate::digest::ContentDigest::parse(digest)?;
    let actual = crate::digest::ContentDigest::of_bytes(payload);
    if actual != expected {
        return Err(format!(
            "checksum mismatch: the header declares {expected}, the payload hashes to {actual}"
        ));
    }
    let cp: Checkpoint = serde_json::from_slice(payload)
        .map_err(|e| format!("the payload is not a checkpoint: {e}"))?;
    if cp.version == 0 {
        return Err("the payload has version 0; stored checkpoints start at 1".to_string());
    }
    Ok(cp)
}

/// Takes the session's lock (blocking or not). `Ok(None)`: not blocking and someone holds it.
fn lock_session(path: &Path, blocking: bool) -> Result<Option<File>, CheckpointError> {
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_at(path))?;
        if blocking {
            fs4::FileExt::lock(&file).map_err(io_at(path))?;
        } else {
            match fs4::FileExt::try_lock(&file) {
                Ok(()) => {}
                Err(fs4::TryLockError::WouldBlock) => return Ok(None),
                Err(fs4::TryLockError::Error(e)) => return Err(io_at(path)(e)),
            }
        }
        if still_linked(&file, path).map_err(io_at(path))? {
            return Ok(Some(file));
        }
        // A delete removed the lock file while we waited on it: lock the new one.
    }
}

/// Removes a lock file its caller holds, for a session that has no checkpoint left. Waiters
/// re-check the lock file's identity after locking (see [`still_linked`]), so it can go while
/// held. Elsewhere lock files stay: Windows cannot remove an open file.
fn remove_lock_file(path: &Path) {
    #[cfg(unix)]
    let _ = fs::remove_file(path);
    #[cfg(not(unix))]
    let _ = path;
}

/// Whether `path` still names the file we locked (a delete may have unlinked it meanwhile).
#[cfg(unix)]
fn still_linked(file: &File, path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let held = file.metadata()?;
    match fs::metadata(path) {
        Ok(m) => Ok(m.ino() == held.ino() && m.dev() == held.dev()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Lock files are never removed on non-Unix platforms, so the one locked is always current.
#[cfg(not(unix))]
fn still_linked(_file: &File, _path: &Path) -> io::Result<bool> {
    Ok(true)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened for `fsync` portably elsewhere; NTFS journals renames.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, reason: String) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason,
    }
}

/// The file-system-safe name for an id: `[a-z0-9_-]` kept, every other byte `%XX`; ids whose
/// encoding is too long are named by their SHA-256.
pub(crate) fn file_name(id: &str) -> String {
    let mut out = String::with_capacity(id.len() + 2);
    for b in id.bytes() {
        if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 0x0f)]));
        }
    }
    if out.is_empty() {
        // The empty id: `%` alone is never produced by any other id.
        out.push('%');
    }
    if out.len() > MAX_NAME {
        let d = crate::digest::ContentDigest::of_bytes(id.as_bytes());
        let hex = d.as_str().strip_prefix("sha256:").unwrap_or(d.as_str());
        return format!("~{hex}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_cannot_escape_and_stay_distinct() {
        assert_eq!(file_name("abc-1_2"), "abc-1_2");
        assert_eq!(file_name("../x"), "%2E%2E%2Fx");
        assert_eq!(file_name("A"), "%41");
        assert_ne!(file_name("A"), file_name("a"));
        assert_ne!(file_name("%41"), file_name("A"));
        assert_eq!(file_name(""), "%");
        assert_eq!(file_name("a\\b\0"), "a%5Cb%00");
        let long = "x".repeat(500);
        let n = file_name(&long);
        assert!(n.starts_with('~') && n.len() == 65);
        for id in ["..", ".", "/", "con", "日本"] {
            let n = file_name(id);
            assert!(!n.contains('/') && !n.contains('\\') && n != "." && n != "..");
        }
    }

    #[test]
    fn decode_rejects_malformed_headers() {
        for bad in [
            &b""[..],
            b"garbage",
            b"downshift-checkpoint v2 sha256:00 0\n",
            b"downshift-checkpoint v1 sha256:00 0\n",
            b"downshift-checkpoint v1 x 1\n{",
            b"other v1 sha256:0000000000000000000000000000000000000000000000000000000000000000 0\n",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }
}
