//! The audit trail: an append-only, hash-chained (SHA-256) log of degradation events.
//!
//! Every tier change, suspension, resume, approval step, rejection, promotion, policy activation,
//! context transform and replay result becomes an [`AuditRecord`]: what happened
//! ([`AuditEventKind`]), when, to which tenant, session, workflow and task, why (the
//! [`TriggerRecord`] with its measured value and threshold), under which policy (id, version,
//! digest) and consent record, and which checkpoint and approval it refers to. Prompts and
//! outputs are never written into it, only references.
//!
//! Each record carries `prev`, the digest of the record before it (the first record's `prev` is
//! [`genesis`]), and its own `digest`: SHA-256 over the canonical JSON
//! ([`canonical_json`](crate::digest::canonical_json)) of the record without its `digest` field.
//! The digest is therefore the same on every machine, and [`verify`] / [`verify_file`] find any
//! edit, deletion, insertion, reordering or truncation, naming the first record that does not
//! verify. An auditor who keeps a signed-off [`AuditHead`] later detects a log cut back before it
//! or rewritten ([`verify_against_head`]). See `docs/audit.md` for what this proves and what it
//! does not.
//!
//! Sinks implement [`AuditSink`]: [`MemoryAuditSink`] and the append-only JSON-lines
//! [`JsonlAuditSink`] are built in. A sink assigns sequence numbers and digests atomically, so
//! appends from many tasks are never lost and `seq` stays contiguous.
//!
//! ```
//! use downshift::audit::{AuditEvent, AuditEventKind, AuditSink, MemoryAuditSink, verify};
//! use downshift::checkpoint::TierAt;
//! use downshift::{TenantId, Timestamp};
//!
//! # futures::executor::block_on(async {
//! let sink = MemoryAuditSink::new();
//! let event = AuditEvent::new(
//!     Timestamp::from_millis(1_800_000_000_000),
//!     AuditEventKind::TierChange { from: TierAt::new(0, "primary"), to: TierAt::new(1, "mid") },
//! )
//! .tenant(TenantId::new("acme"));
//! let record = sink.append(event).await?;
//! assert_eq!(record.seq, 0);
//! let report = verify(&sink.records())?;
//! assert_eq!(report.records, 1);
//! # Ok::<(), downshift::AuditError>(())
//! # }).unwrap();
//! ```

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{CheckpointRef, TierAt};
use crate::clock::Timestamp;
use crate::digest::ContentDigest;
use crate::error::AuditError;
use crate::id::{EndpointId, LayerId, SessionId, TaskKind, TenantId, WorkflowId};
use crate::trigger::TriggerRecord;

mod canonical;
mod chain;
mod jsonl;
mod memory;
mod record_writer;

pub use chain::{
    VerifyReport, genesis, verify, verify_against_head, verify_file, verify_record_digest,
};
pub use jsonl::{FsyncPolicy, JsonlAuditSink, JsonlOptions, OpenVerify};
pub use memory::MemoryAuditSink;

/// The policy a record was decided under: the layer id, its version label and the digest of the
/// resolved policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRef {
    /// The (tenant) policy layer's id.
    pub id: LayerId,
    /// The layer's version label.
    pub version: String,
    /// The resolved policy's content digest.
    pub digest: ContentDigest,
}

/// The tenant's machine-readable consent record a decision relied on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentRef {
    /// The agreement's id (service agreement, DPA number).
    pub agreement_id: String,
    /// The agreement's version.
    pub version: String,
    /// `sha256:<hex>` of the signed document.
    pub document_digest: String,
}

/// How a re-run of a degraded step on the original tier compared with the degraded output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplayOutcome {
    /// The outputs match.
    Identical,
    /// The outputs differ; a reviewer should look at the diff.
    Differs,
    /// The re-run could not be completed.
    Failed,
}

/// How a context was made to fit its target (see `docs/continuity.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContextStrategy {
    /// Only non-portable items of another provider were removed.
    Strip,
    /// Old messages were dropped (no summary was written: none configured, or it failed and
    /// the policy does not require one).
    Drop,
    /// Old messages were dropped and a summary of them written in their place.
    Summarize,
}

/// What happened. Serialized under the record's `event` key with a `type` tag, e.g.
/// `{"type":"tier_change","from":{...},"to":{...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum AuditEventKind {
    /// The session moved down (or across) the ladder.
    TierChange {
        /// Where it was.
        from: TierAt,
        /// Where it went.
        to: TierAt,
    },
    /// The session moved back up the ladder after recovery.
    Promotion {
        /// Where it was.
        from: TierAt,
        /// Where it went.
        to: TierAt,
    },
    /// The session was suspended (state checkpointed; see the record's `checkpoint`).
    Suspension {
        /// Where it was when suspended.
        from: TierAt,
        /// The reason, as the operator reads it.
        reason: String,
        /// When a resume will be tried, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_at: Option<Timestamp>,
    },
    /// A suspended session resumed.
    Resume {
        /// Where it resumed.
        to: TierAt,
    },
    /// A switch needs approval before it happens (see the record's `approval` ticket).
    ApprovalRequested {
        /// Where the session is.
        from: TierAt,
        /// Where it would go.
        proposed: TierAt,
        /// When the request expires, if it does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<Timestamp>,
    },
    /// The switch was approved.
    ApprovalGranted {
        /// A reference to who approved it (account or role id, not a name typed in a prompt).
        approver: String,
    },
    /// The switch was refused.
    ApprovalDenied {
        /// A reference to who refused it.
        approver: String,
        /// Why, if given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Nobody answered the approval request in time.
    ApprovalExpired {},
    /// The call was rejected: nothing permissible was left.
    Rejection {
        /// Why.
        reason: String,
    },
    /// A policy set was activated.
    PolicyActivation {
        /// The new resolved policy's digest.
        digest: ContentDigest,
        /// The digest it replaced, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<ContentDigest>,
        /// The engine mode switched to, when this activation is a mode switch
        /// ([`Engine::set_mode`](crate::engine::Engine::set_mode)).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<crate::engine::EngineMode>,
    },
    /// The session's context was fitted to a smaller window (counts only, never content).
    ContextTransform {
        /// Tokens before.
        from_tokens: u64,
        /// Tokens after.
        to_tokens: u64,
        /// The target's context window.
        target_window: u64,
        /// Messages dropped.
        messages_dropped: u32,
        /// Whether a summary replaced older messages.
        summarized: bool,
        /// How the context was made to fit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        strategy: Option<ContextStrategy>,
        /// The endpoint that wrote the summary, when one was written.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        summarizer: Option<EndpointId>,
        /// SHA-256 of the dropped messages' canonical JSON (a reference, never the content).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dropped_digest: Option<ContentDigest>,
    },
    /// A step served degraded was re-run on the original tier and compared.
    ReplayResult {
        /// A reference to the step (its id in the caller's system).
        step: String,
        /// The tier the re-run used.
        original: TierAt,
        /// How the outputs compared.
        outcome: ReplayOutcome,
        /// Digest of the stored diff, when the outputs differ.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        diff: Option<ContentDigest>,
    },
    /// A person reviewed a step served degraded (the policy's `recovery.replay` rule `flag`,
    /// or a re-run whose outputs differed) and cleared its flag.
    StepReviewed {
        /// A reference to the step (its id in the caller's system).
        step: String,
        /// Who served it: the degraded tier and endpoint.
        served_by: TierAt,
        /// A reference to who reviewed it (account or role id).
        reviewer: String,
    },
}

impl AuditEventKind {
    /// The `type` tag, e.g. `tier_change`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            AuditEventKind::TierChange { .. } => "tier_change",
            AuditEventKind::Promotion { .. } => "promotion",
            AuditEventKind::Suspension { .. } => "suspension",
            AuditEventKind::Resume { .. } => "resume",
            AuditEventKind::ApprovalRequested { .. } => "approval_requested",
            AuditEventKind::ApprovalGranted { .. } => "approval_granted",
            AuditEventKind::ApprovalDenied { .. } => "approval_denied",
            AuditEventKind::ApprovalExpired {} => "approval_expired",
            AuditEventKind::Rejection { .. } => "rejection",
            AuditEventKind::PolicyActivation { .. } => "policy_activation",
            AuditEventKind::ContextTransform { .. } => "context_transform",
            AuditEventKind::ReplayResult { .. } => "replay_result",
            AuditEventKind::StepReviewed { .. } => "step_reviewed",
        }
    }
}

/// An event to append: everything a record holds except its sequence number and digests, which
/// the sink assigns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuditEvent {
    /// When it happened.
    pub time: Timestamp,
    /// The tenant (`None` only for platform-wide events such as a platform policy activation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    /// The session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionId>,
    /// The workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<WorkflowId>,
    /// The task kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskKind>,
    /// What happened.
    #[serde(rename = "event")]
    pub kind: AuditEventKind,
    /// The trigger that caused it, with the measured value and threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<TriggerRecord>,
    /// The policy in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyRef>,
    /// The consent record relied on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<ConsentRef>,
    /// The checkpoint saved or resumed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointRef>,
    /// The approval ticket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
}

impl AuditEvent {
    /// An event of `kind` at `time`, with no references yet.
    #[must_use]
    pub fn new(time: Timestamp, kind: AuditEventKind) -> Self {
        AuditEvent {
            time,
            tenant: None,
            session: None,
            workflow: None,
            task: None,
            kind,
            trigger: None,
            policy: None,
            consent: None,
            checkpoint: None,
            approval: None,
        }
    }

    /// The same event for `tenant`.
    #[must_use]
    pub fn tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// The same event for `session`.
    #[must_use]
    pub fn session(mut self, session: SessionId) -> Self {
        self.session = Some(session);
        self
    }

    /// The same event in `workflow`.
    #[must_use]
    pub fn workflow(mut self, workflow: WorkflowId) -> Self {
        self.workflow = Some(workflow);
        self
    }

    /// The same event for a task of kind `task`.
    #[must_use]
    pub fn task(mut self, task: TaskKind) -> Self {
        self.task = Some(task);
        self
    }

    /// The same event caused by `trigger`.
    #[must_use]
    pub fn trigger(mut self, trigger: TriggerRecord) -> Self {
        self.trigger = Some(trigger);
        self
    }

    /// The same event under `policy`.
    #[must_use]
    pub fn policy(mut self, policy: PolicyRef) -> Self {
        self.policy = Some(policy);
        self
    }

    /// The same event relying on `consent`.
    #[must_use]
    pub fn consent(mut self, consent: ConsentRef) -> Self {
        self.consent = Some(consent);
        self
    }

    /// The same event referring to `checkpoint`.
    #[must_use]
    pub fn checkpoint(mut self, checkpoint: CheckpointRef) -> Self {
        self.checkpoint = Some(checkpoint);
        self
    }

    /// The same event referring to approval ticket `ticket`.
    #[must_use]
    pub fn approval(mut self, ticket: impl Into<String>) -> Self {
        self.approval = Some(ticket.into());
        self
    }

    /// Checks the event can be recorded and read back exactly: JSON has no NaN or infinity, so
    /// a trigger's measured value and threshold must be finite.
    ///
    /// # Errors
    /// [`AuditError::InvalidEvent`] naming the field.
    pub fn validate(&self) -> Result<(), AuditError> {
        if let Some(t) = &self.trigger {
            for (name, v) in [("measured", t.measured), ("threshold", t.threshold)] {
                if !v.is_finite() {
                    return Err(AuditError::InvalidEvent {
                        reason: format!(
                            "trigger.{name} is {v}: only finite numbers can be recorded ({} event)",
                            self.kind.name()
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

/// One record of the log: the event, its sequence number (contiguous from 0), the digest of the
/// record before it, and its own digest.
///
/// On disk (JSON lines) a record is one line of canonical JSON with the event's fields at the
/// top level: `{"digest":"sha256:…","event":{"type":"tier_change",…},"prev":"sha256:…",
/// "seq":0,"tenant":"acme","time":"2027-01-15T08:00:00.000Z",…}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuditRecord {
    /// Position in the log, contiguous from 0.
    pub seq: u64,
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
    /// The previous record's digest ([`genesis`] for record 0).
    pub prev: ContentDigest,
    /// SHA-256 over the canonical JSON of this record without `digest`.
    pub digest: ContentDigest,
}

impl AuditRecord {
    /// The head a log ending at this record has.
    #[must_use]
    pub fn head(&self) -> AuditHead {
        AuditHead {
            seq: self.seq,
            digest: self.digest.clone(),
        }
    }
}

/// The last record's sequence number and digest: what an auditor signs off and keeps (outside
/// the log's storage) to detect later truncation or rewriting.
///
/// Stored as JSON, e.g. `{"seq": 41, "digest": "sha256:…"}`; other fields (a signature, who
/// signed) are allowed and ignored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct AuditHead {
    /// Sequence number of the last record.
    pub seq: u64,
    /// Its digest.
    pub digest: ContentDigest,
}

impl AuditHead {
    /// Reads a head kept as JSON in `path` (blocking).
    ///
    /// # Errors
    /// [`AuditError::InvalidHead`] naming the file.
    pub fn read(path: impl AsRef<std::path::Path>) -> Result<Self, AuditError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| AuditError::InvalidHead {
            path: path.to_path_buf(),
            reason: format!("cannot read it: {e}"),
        })?;
        serde_json::from_str(&text).map_err(|e| AuditError::InvalidHead {
            path: path.to_path_buf(),
            reason: format!("expected {{\"seq\": N, \"digest\": \"sha256:…\"}}: {e}"),
        })
    }
}

impl fmt::Display for AuditHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq {} {}", self.seq, self.digest)
    }
}

/// Where audit records go. Implementations assign `seq`, `prev` and `digest` atomically, so
/// concurrent appends are never lost and the chain stays contiguous, and keep blocking I/O off
/// the caller's executor.
#[async_trait]
pub trait AuditSink: Send + Sync + fmt::Debug {
    /// Appends `event` as the next record and returns it.
    ///
    /// # Errors
    /// [`AuditError::InvalidEvent`] for an event that cannot be recorded exactly; `Io` and
    /// `Failed` from durable sinks.
    async fn append(&self, event: AuditEvent) -> Result<AuditRecord, AuditError>;

    /// The head of the log (the last record written), `None` when it is empty.
    ///
    /// # Errors
    /// Sink-specific.
    async fn head(&self) -> Result<Option<AuditHead>, AuditError>;
}

#[async_trait]
impl<T: AuditSink + ?Sized> AuditSink for Arc<T> {
    async fn append(&self, event: AuditEvent) -> Result<AuditRecord, AuditError> {
        (**self).append(event).await
    }
    async fn head(&self) -> Result<Option<AuditHead>, AuditError> {
        (**self).head().await
    }
}
