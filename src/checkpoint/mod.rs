//! Durable session state: the [`CheckpointStore`] trait, the [`Checkpoint`] it stores, and the
//! built-in stores.
//!
//! When the engine suspends a session (the article's "graceful suspension": save the full state,
//! notify, resume when capacity returns) it saves a [`Checkpoint`] with a [`Suspended`] record
//! and hands out its [`ResumeToken`]. Every write is a compare-and-swap on the checkpoint's
//! version, so two replicas resuming the same session cannot both win: one gets
//! [`CheckpointError::Conflict`].
//!
//! Built in:
//! - [`MemoryCheckpointStore`]: a map behind a lock, for tests and single-process use.
//! - [`FileCheckpointStore`]: the embedded durable default. One checksummed file per session,
//!   written to a temporary file, fsynced and renamed over the old one; a torn or corrupt file is
//!   reported as [`CheckpointError::Corrupt`], never half-read. Safe across tasks and processes
//!   sharing the directory. See `docs/checkpoints.md`.
//!
//! Any other store (a database, an object store) implements the trait and proves itself with the
//! public [`conformance`] suite.
//!
//! ```
//! use downshift::checkpoint::{Checkpoint, CheckpointStore, MemoryCheckpointStore, TierAt};
//! use downshift::{ContentDigest, SessionId, TenantId, Timestamp};
//!
//! # futures::executor::block_on(async {
//! let store = MemoryCheckpointStore::new();
//! let cp = Checkpoint::new(
//!     TenantId::new("acme"),
//!     SessionId::new("s-1"),
//!     Timestamp::from_millis(0),
//!     TierAt::new(0, "primary"),
//!     ContentDigest::of_bytes(b"policy"),
//!     serde_json::json!({"goal": "summarize"}),
//! );
//! let v1 = store.save(cp.clone(), None).await?; // create: expect no checkpoint
//! assert_eq!(v1, 1);
//! let v2 = store.save(cp.clone(), Some(v1)).await?; // update: expect version 1
//! assert!(store.save(cp, Some(v1)).await.is_err()); // stale version: conflict
//! assert_eq!(store.load(&SessionId::new("s-1")).await?.unwrap().version, v2);
//! # Ok::<(), downshift::CheckpointError>(())
//! # }).unwrap();
//! ```

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::clock::Timestamp;
use crate::digest::ContentDigest;
use crate::error::CheckpointError;
use crate::id::{EndpointId, SessionId, TaskKind, TenantId, WorkflowId};
use crate::trigger::TriggerRecord;

pub mod conformance;
mod file;
mod fit;
mod memory;
mod state;
mod tokens;

pub use file::{FileCheckpointStore, FileStoreOptions};
pub use fit::{Dropped, FitPolicy, FitReport, Fitted, fit};
pub use memory::MemoryCheckpointStore;
pub use state::{
    AGENT_STATE_SCHEMA_VERSION, AgentState, CompletedStep, Message, NonPortable, OutputRef,
    Provenance, Role, Step, Summary, ToolCall, ToolSpec, agent_state_schema,
};
pub use tokens::{HeuristicCounter, TokenCounter, estimate};

/// A position on a tenant's tier ladder: the tier's index (0 = primary), its name, and the
/// endpoint in use there, if one was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TierAt {
    /// Index in the ladder (0 = primary).
    pub index: u32,
    /// The tier's name.
    pub name: String,
    /// The endpoint serving (or about to serve) there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointId>,
}

impl TierAt {
    /// Tier `index` named `name`, no endpoint.
    #[must_use]
    pub fn new(index: u32, name: impl Into<String>) -> Self {
        TierAt {
            index,
            name: name.into(),
            endpoint: None,
        }
    }

    /// The same tier, on `endpoint`.
    #[must_use]
    pub fn on(mut self, endpoint: EndpointId) -> Self {
        self.endpoint = Some(endpoint);
        self
    }
}

impl fmt::Display for TierAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tier {} `{}`", self.index, self.name)?;
        if let Some(e) = &self.endpoint {
            write!(f, " ({e})")?;
        }
        Ok(())
    }
}

/// An opaque handle the engine gives out when it suspends a session, quoted to resume it.
///
/// A token is a *reference*, not a secret: it is unguessable enough that a caller cannot stumble
/// onto another session's token, but whoever resumes must still be authorised for the tenant by
/// the caller's own access control. Tokens are derived with SHA-256 from the session, the
/// checkpoint version it will be saved at and entropy ([`ResumeToken::generate`] uses a
/// per-process random seed from the operating system plus a counter;
/// [`ResumeToken::derive`] takes caller-supplied entropy, for reproducible simulations). The
/// engine draws its tokens from its [`IdSource`](crate::engine::IdSource).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct ResumeToken(String);

impl ResumeToken {
    /// The token for `session` at checkpoint `version`, derived from caller-supplied `entropy`.
    /// Same inputs, same token.
    #[must_use]
    pub fn derive(session: &SessionId, version: u64, entropy: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"downshift-resume-token\0");
        h.update((session.as_str().len() as u64).to_le_bytes());
        h.update(session.as_str().as_bytes());
        h.update(version.to_le_bytes());
        h.update(entropy);
        let out = h.finalize();
        let mut s = String::with_capacity(3 + 32);
        s.push_str("rt_");
        for b in out.iter().take(16) {
            s.push(hex_digit(b >> 4));
            s.push(hex_digit(b & 0x0f));
        }
        ResumeToken(s)
    }

    /// A fresh token for `session` at checkpoint `version`, from a per-process seed drawn from
    /// the operating system's randomness (through `std`'s hasher keys) and a counter, so two
    /// calls never return the same token.
    #[must_use]
    pub fn generate(session: &SessionId, version: u64) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut entropy = Vec::with_capacity(48);
        entropy.extend_from_slice(process_seed());
        entropy.extend_from_slice(&n.to_le_bytes());
        entropy.extend_from_slice(
            &Timestamp::from_system_time(std::time::SystemTime::now())
                .as_millis()
                .to_le_bytes(),
        );
        Self::derive(session, version, &entropy)
    }

    /// Wraps a token received from a caller (no validation: an unknown token simply matches no
    /// checkpoint).
    #[must_use]
    pub fn from_string(s: impl Into<String>) -> Self {
        ResumeToken(s.into())
    }

    /// The token as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResumeToken({})", self.0)
    }
}

fn hex_digit(n: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(n & 0x0f)])
}

/// 32 bytes drawn once per process: `std`'s `RandomState` keys come from the OS random source.
fn process_seed() -> &'static [u8] {
    static SEED: OnceLock<[u8; 32]> = OnceLock::new();
    SEED.get_or_init(|| {
        let mut seed = [0u8; 32];
        for (i, chunk) in seed.chunks_mut(8).enumerate() {
            let mut h = std::hash::RandomState::new().build_hasher();
            h.write_usize(i);
            h.write_u32(std::process::id());
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
        seed
    })
}

/// Why and until when a session is suspended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Suspended {
    /// The reason, as the operator reads it.
    pub reason: String,
    /// The trigger that caused the suspension, with its measured value and threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<TriggerRecord>,
    /// The earliest time a resume should be tried, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Timestamp>,
    /// The token quoted to resume the session.
    pub resume_token: ResumeToken,
}

/// A session's saved state: where it was on the ladder, under which policy, whether it is
/// suspended, and the agent's own state.
///
/// The store owns [`Checkpoint::version`]: whatever the caller sets is replaced by the version
/// the store assigns on [`CheckpointStore::save`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The tenant the session belongs to (never changes for a session).
    pub tenant: TenantId,
    /// The session.
    pub session: SessionId,
    /// The workflow the session belongs to, if any (sub-agents are suspended and resumed with
    /// their workflow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<WorkflowId>,
    /// The task kind the session runs, when known (its policy view decides where it may resume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskKind>,
    /// The version assigned by the store: 1 on creation, +1 on every save.
    pub version: u64,
    /// When this checkpoint was taken.
    pub created_at: Timestamp,
    /// The tier (and endpoint) the session was on.
    pub tier: TierAt,
    /// The digest of the resolved policy in force.
    pub policy_digest: ContentDigest,
    /// Set while the session is suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<Suspended>,
    /// The agent's own state (goal, completed steps, findings, messages...), model-agnostic.
    pub state: serde_json::Value,
}

impl Checkpoint {
    /// A checkpoint that is not suspended, version 0 (the store assigns the real version).
    #[must_use]
    pub fn new(
        tenant: TenantId,
        session: SessionId,
        created_at: Timestamp,
        tier: TierAt,
        policy_digest: ContentDigest,
        state: serde_json::Value,
    ) -> Self {
        Checkpoint {
            tenant,
            session,
            workflow: None,
            task: None,
            version: 0,
            created_at,
            tier,
            policy_digest,
            suspended: None,
            state,
        }
    }

    /// The same checkpoint in `workflow`.
    #[must_use]
    pub fn in_workflow(mut self, workflow: WorkflowId) -> Self {
        self.workflow = Some(workflow);
        self
    }

    /// The same checkpoint, suspended.
    #[must_use]
    pub fn suspend(mut self, suspended: Suspended) -> Self {
        self.suspended = Some(suspended);
        self
    }

    /// Checks the checkpoint can be stored and read back exactly: JSON has no NaN or infinity, so
    /// a suspension trigger's measured value and threshold must be finite. Both built-in stores
    /// call this on every save.
    ///
    /// # Errors
    /// [`CheckpointError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), CheckpointError> {
        if let Some(t) = self.suspended.as_ref().and_then(|s| s.trigger.as_ref()) {
            for (name, v) in [("measured", t.measured), ("threshold", t.threshold)] {
                if !v.is_finite() {
                    return Err(CheckpointError::Invalid {
                        session: self.session.clone(),
                        reason: format!(
                            "suspended.trigger.{name} is {v}: only finite numbers can be stored"
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// The agent state held, read as an [`AgentState`] (`None` when the state is JSON `null`,
    /// i.e. the caller gave none).
    ///
    /// # Errors
    /// [`CheckpointError::UnsupportedStateVersion`] for a state written by a newer release,
    /// [`CheckpointError::InvalidState`] for one that is not an agent state.
    pub fn agent_state(&self) -> Result<Option<AgentState>, CheckpointError> {
        if self.state.is_null() {
            return Ok(None);
        }
        AgentState::from_json(self.state.clone(), Some(&self.session)).map(Some)
    }

    /// Whether the session is suspended.
    #[must_use]
    pub fn is_suspended(&self) -> bool {
        self.suspended.is_some()
    }

    /// The reference an audit record cites: session, version and the digest of this
    /// checkpoint's canonical JSON (the same on every machine and in every store).
    ///
    /// # Errors
    /// [`CheckpointError::Invalid`] when the checkpoint cannot be encoded as JSON.
    pub fn reference(&self) -> Result<CheckpointRef, CheckpointError> {
        let digest = ContentDigest::of_json(self).map_err(|e| CheckpointError::Invalid {
            session: self.session.clone(),
            reason: format!("cannot encode the checkpoint as JSON: {e}"),
        })?;
        Ok(CheckpointRef {
            session: self.session.clone(),
            version: self.version,
            digest,
        })
    }

    /// The summary of this checkpoint (everything but the agent state).
    #[must_use]
    pub fn summary(&self) -> CheckpointSummary {
        CheckpointSummary {
            tenant: self.tenant.clone(),
            session: self.session.clone(),
            workflow: self.workflow.clone(),
            task: self.task.clone(),
            version: self.version,
            created_at: self.created_at,
            tier: self.tier.clone(),
            suspended: self.suspended.clone(),
        }
    }
}

/// What an audit record cites for a checkpoint: never the state itself, only where it is and a
/// digest that proves which content it was.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRef {
    /// The session.
    pub session: SessionId,
    /// The checkpoint version.
    pub version: u64,
    /// SHA-256 of the checkpoint's canonical JSON.
    pub digest: ContentDigest,
}

/// A checkpoint without its agent state, as [`CheckpointStore::list`] returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointSummary {
    /// The tenant.
    pub tenant: TenantId,
    /// The session.
    pub session: SessionId,
    /// The workflow, if any.
    pub workflow: Option<WorkflowId>,
    /// The task kind, when known.
    pub task: Option<TaskKind>,
    /// The stored version.
    pub version: u64,
    /// When it was taken.
    pub created_at: Timestamp,
    /// The tier (and endpoint) the session was on.
    pub tier: TierAt,
    /// The suspension, if suspended.
    pub suspended: Option<Suspended>,
}

/// Which of a tenant's sessions [`CheckpointStore::list`] returns.
///
/// ```
/// use downshift::checkpoint::ListFilter;
/// use downshift::WorkflowId;
///
/// let all = ListFilter::all();
/// let waiting = ListFilter::all().suspended_only().workflow(WorkflowId::new("wf-7"));
/// assert!(all.matches_parts(false, None));
/// assert!(!waiting.matches_parts(false, Some(&WorkflowId::new("wf-7"))));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only sessions that are suspended.
    pub suspended_only: bool,
    /// Only sessions of this workflow.
    pub workflow: Option<WorkflowId>,
}

impl ListFilter {
    /// Every session of the tenant.
    #[must_use]
    pub fn all() -> Self {
        ListFilter::default()
    }

    /// Only suspended sessions.
    #[must_use]
    pub fn suspended_only(mut self) -> Self {
        self.suspended_only = true;
        self
    }

    /// Only sessions of `workflow`.
    #[must_use]
    pub fn workflow(mut self, workflow: WorkflowId) -> Self {
        self.workflow = Some(workflow);
        self
    }

    /// Whether a session that is (or is not) `suspended`, in `workflow`, passes the filter.
    #[must_use]
    pub fn matches_parts(&self, suspended: bool, workflow: Option<&WorkflowId>) -> bool {
        (!self.suspended_only || suspended)
            && self.workflow.as_ref().is_none_or(|w| workflow == Some(w))
    }

    /// Whether `checkpoint` passes the filter.
    #[must_use]
    pub fn matches(&self, checkpoint: &Checkpoint) -> bool {
        self.matches_parts(checkpoint.is_suspended(), checkpoint.workflow.as_ref())
    }
}

/// The result of [`CheckpointStore::list`]: the matching sessions, and any stored entries of the
/// tenant that could not be read.
///
/// One corrupt checkpoint neither hides itself (it is listed in `unreadable`, naming the file)
/// nor stops the tenant's other sessions from being listed and resumed.
#[derive(Debug, Default)]
pub struct CheckpointList {
    /// The matching sessions, ordered by session id.
    pub sessions: Vec<CheckpointSummary>,
    /// Entries that could not be read (each a [`CheckpointError::Corrupt`] or `Io` naming the
    /// file).
    pub unreadable: Vec<CheckpointError>,
}

/// Durable storage for session checkpoints, with compare-and-swap on a version.
///
/// Session ids are unique across tenants; a session never changes tenant. Implementations must
/// be safe to call from many tasks at once, and every method must keep blocking work off the
/// caller's executor (see [`crate::blocking`]). [`conformance::run`] checks an implementation
/// against this contract.
#[async_trait]
pub trait CheckpointStore: Send + Sync + fmt::Debug {
    /// The session's checkpoint, or `None` if there is none.
    ///
    /// # Errors
    /// [`CheckpointError::Corrupt`] for a torn or corrupt stored checkpoint (it is never
    /// half-read), [`CheckpointError::Io`] and [`CheckpointError::Unavailable`].
    async fn load(&self, session: &SessionId) -> Result<Option<Checkpoint>, CheckpointError>;

    /// Stores `checkpoint` if the stored version is `expected_version` (`None`: no checkpoint
    /// may exist yet) and returns the new version (1 on creation, then +1).
    ///
    /// # Errors
    /// [`CheckpointError::Conflict`] when the stored version is not the expected one (nothing is
    /// written); [`CheckpointError::TenantMismatch`] when the stored checkpoint belongs to
    /// another tenant; `Corrupt`, `Io`, `Invalid`, `Unavailable`.
    async fn save(
        &self,
        checkpoint: Checkpoint,
        expected_version: Option<u64>,
    ) -> Result<u64, CheckpointError>;

    /// The tenant's sessions that pass `filter`, ordered by session id.
    ///
    /// # Errors
    /// `Io` or `Unavailable` when the listing itself fails; individual unreadable entries are
    /// reported in [`CheckpointList::unreadable`].
    async fn list(
        &self,
        tenant: &TenantId,
        filter: &ListFilter,
    ) -> Result<CheckpointList, CheckpointError>;

    /// Deletes the session's checkpoint if its stored version is `expected_version`.
    ///
    /// # Errors
    /// [`CheckpointError::Conflict`] when the stored version differs or there is no checkpoint
    /// (`actual: None`); `Corrupt`, `Io`, `Unavailable`.
    async fn delete(
        &self,
        session: &SessionId,
        expected_version: u64,
    ) -> Result<(), CheckpointError>;
}

#[async_trait]
impl<T: CheckpointStore + ?Sized> CheckpointStore for Arc<T> {
    async fn load(&self, session: &SessionId) -> Result<Option<Checkpoint>, CheckpointError> {
        (**self).load(session).await
    }
    async fn save(
        &self,
        checkpoint: Checkpoint,
        expected_version: Option<u64>,
    ) -> Result<u64, CheckpointError> {
        (**self).save(checkpoint, expected_version).await
    }
    async fn list(
        &self,
        tenant: &TenantId,
        filter: &ListFilter,
    ) -> Result<CheckpointList, CheckpointError> {
        (**self).list(tenant, filter).await
    }
    async fn delete(
        &self,
        session: &SessionId,
        expected_version: u64,
    ) -> Result<(), CheckpointError> {
        (**self).delete(session, expected_version).await
    }
}

/// The compare-and-swap rule shared by the built-in stores: `Ok(new version)` when `stored`
/// matches `expected`, else the conflict.
pub(crate) fn next_version(
    session: &SessionId,
    stored: Option<u64>,
    expected: Option<u64>,
) -> Result<u64, CheckpointError> {
    if stored != expected {
        return Err(CheckpointError::Conflict {
            session: session.clone(),
            expected,
            actual: stored,
        });
    }
    match stored {
        None => Ok(1),
        Some(v) => v.checked_add(1).ok_or_else(|| CheckpointError::Invalid {
            session: session.clone(),
            reason: "the version counter is exhausted".to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_deterministic_when_derived_and_unique_when_generated() {
        let s = SessionId::new("s");
        assert_eq!(
            ResumeToken::derive(&s, 3, b"e"),
            ResumeToken::derive(&s, 3, b"e")
        );
        assert_ne!(
            ResumeToken::derive(&s, 3, b"e"),
            ResumeToken::derive(&s, 4, b"e")
        );
        assert_ne!(ResumeToken::generate(&s, 1), ResumeToken::generate(&s, 1));
        let t = ResumeToken::generate(&s, 1);
        assert_eq!(t.as_str().len(), 35);
        assert!(t.as_str().starts_with("rt_"));
    }

    #[test]
    fn cas_rule() {
        let s = SessionId::new("s");
        assert_eq!(next_version(&s, None, None).unwrap(), 1);
        assert_eq!(next_version(&s, Some(4), Some(4)).unwrap(), 5);
        assert!(matches!(
            next_version(&s, Some(4), Some(3)),
            Err(CheckpointError::Conflict {
                expected: Some(3),
                actual: Some(4),
                ..
            })
        ));
        assert!(matches!(
            next_version(&s, Some(1), None),
            Err(CheckpointError::Conflict { .. })
        ));
        assert!(matches!(
            next_version(&s, Some(u64::MAX), Some(u64::MAX)),
            Err(CheckpointError::Invalid { .. })
        ));
    }
}
