//! The error type family. Every fallible public function in the crate returns one of these.
//!
//! [`Error`] is the umbrella; each area has its own enum ([`PolicyError`], [`CheckpointError`],
//! [`AuditError`]) so callers can match on what they handle and `?` the rest into [`Error`].
//! Every error names the place it went wrong: the file, the JSON path, the tenant, the endpoint,
//! the session or the audit record.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::catalog::EndpointIdx;
use crate::id::{EndpointId, SessionId, TaskKind, TenantId};

/// Any error this crate returns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A policy or catalog could not be loaded, validated or resolved.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A checkpoint could not be loaded or saved.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The audit log could not be written or does not verify.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// An engine operation (approval, resume) was refused.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The trigger evaluator was given something it cannot use.
    #[error(transparent)]
    Trigger(#[from] TriggerError),
    /// A simulation scenario or recording could not be read or run.
    #[error(transparent)]
    Sim(#[from] SimError),
}

/// Errors from the [`TriggerEvaluator`](crate::trigger::TriggerEvaluator).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TriggerError {
    /// An endpoint index outside the catalog the evaluator was built for (an index from another
    /// catalog, or a catalog that grew without a new evaluator).
    #[error("unknown endpoint index {}: the trigger evaluator tracks {len} endpoints", endpoint.0)]
    UnknownEndpoint {
        /// The index given.
        endpoint: EndpointIdx,
        /// How many endpoints the evaluator tracks.
        len: usize,
    },
    /// An observation whose cost is negative or not a finite number; nothing of it was recorded.
    #[error(
        "invalid observation for endpoint index {} (tenant `{tenant}`): cost_usd {cost_usd} is not a finite, non-negative amount",
        endpoint.0
    )]
    InvalidCost {
        /// The endpoint observed.
        endpoint: EndpointIdx,
        /// The tenant.
        tenant: TenantId,
        /// The cost given.
        cost_usd: f64,
    },
    /// More endpoints than one evaluator tracks.
    #[error("a trigger evaluator tracks at most {max} endpoints, {requested} were asked for")]
    TooManyEndpoints {
        /// The catalog size given.
        requested: usize,
        /// The limit.
        max: usize,
    },
}

/// Errors loading, validating and resolving policies and catalogs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The policy set has one or more errors; every problem found is listed, each naming its file
    /// and JSON path (or line and column for syntax errors).
    #[error("{0}")]
    Invalid(ValidationReport),
    /// A policy or catalog file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// No tenant layer with this id exists in the active policy set.
    #[error("unknown tenant `{tenant}`")]
    UnknownTenant {
        /// The tenant asked for.
        tenant: TenantId,
    },
    /// The tenant has no view for this task kind (its policy leaves it nothing usable).
    #[error("tenant `{tenant}` has no usable ladder for task `{task}`")]
    NoView {
        /// The tenant.
        tenant: TenantId,
        /// The task kind.
        task: TaskKind,
    },
}

/// Errors from [`Engine`](crate::engine::Engine) operations on approvals and sessions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// No approval request has this ticket.
    #[error("unknown approval ticket {ticket}")]
    UnknownTicket {
        /// The ticket.
        ticket: String,
    },
    /// The approval request was already answered or has expired.
    #[error("approval ticket {ticket} is no longer pending (it is {state})")]
    TicketNotPending {
        /// The ticket.
        ticket: String,
        /// Its state.
        state: String,
    },
    /// No checkpoint exists for this session.
    #[error("no checkpoint for session `{session}`")]
    UnknownSession {
        /// The session.
        session: SessionId,
    },
    /// The session is not suspended (never was, or another caller or replica resumed it).
    #[error("session `{session}` is not suspended (already resumed?)")]
    NotSuspended {
        /// The session.
        session: SessionId,
    },
    /// A shared store (approvals, health exchange) failed.
    #[error("shared store error: {message}")]
    Store {
        /// What failed.
        message: String,
    },
    /// An endpoint id not in the catalog.
    #[error("unknown endpoint `{endpoint}`")]
    UnknownEndpoint {
        /// The id given.
        endpoint: EndpointId,
    },
    /// The resume token does not match the session's suspension.
    #[error("the resume token does not match session `{session}`'s suspension")]
    TokenMismatch {
        /// The session.
        session: SessionId,
    },
    /// A checkpoint save kept meeting compare-and-swap conflicts: other replicas are writing the
    /// session's checkpoint at the same time. Nothing was written.
    #[error(
        "session `{session}`'s checkpoint changed under each of {attempts} compare-and-swap \
         attempts (other replicas are writing it): the transition was not made"
    )]
    CheckpointContention {
        /// The session.
        session: SessionId,
        /// The save attempts made (each reloaded and reconciled the stored checkpoint first).
        attempts: u32,
    },
    /// The session stayed suspended longer than its policy's `suspension.max_duration`: it was
    /// given up (audited, its checkpoint removed) and cannot be resumed.
    #[error(
        "session `{session}` was suspended at {suspended_at} and stayed suspended longer than \
         its policy's suspension.max_duration ({max_duration_ms} ms): it was given up"
    )]
    SuspensionExpired {
        /// The session.
        session: SessionId,
        /// When it was suspended.
        suspended_at: crate::clock::Timestamp,
        /// The policy's limit, in milliseconds.
        max_duration_ms: u64,
    },
    /// A policy reload changes what the engine's endpoint health is built from (the catalog's
    /// endpoint list, or the platform's breaker, latency, half-open or open-wait settings).
    /// Nothing was changed: build a new engine to apply it.
    #[error(
        "the reload changes `{field}` ({detail}): the engine's endpoint health is built from it, \
         so build a new engine to apply it; the active policy set is unchanged"
    )]
    ReloadNeedsNewEngine {
        /// The field, e.g. `catalog.endpoints` or `platform policy: triggers.breaker`.
        field: String,
        /// What changed.
        detail: String,
    },
}

/// Errors from a [`CheckpointStore`](crate::checkpoint::CheckpointStore).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Compare-and-swap failed: the stored version is not the one the caller expected.
    #[error(
        "checkpoint conflict for session `{session}`: expected version {expected:?}, found {actual:?}"
    )]
    Conflict {
        /// The session.
        session: SessionId,
        /// The version the caller expected (`None`: expected no checkpoint).
        expected: Option<u64>,
        /// The version actually stored (`None`: there is none).
        actual: Option<u64>,
    },
    /// A stored checkpoint is corrupt or torn; it was not read.
    #[error("corrupt checkpoint {path}: {reason}")]
    Corrupt {
        /// The file (or key) holding it.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An I/O error in a durable store.
    #[error("checkpoint I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The session's stored checkpoint belongs to another tenant; a session never changes tenant.
    #[error(
        "session `{session}` belongs to tenant `{stored}`, not `{given}`: a session never changes tenant"
    )]
    TenantMismatch {
        /// The session.
        session: SessionId,
        /// The tenant of the stored checkpoint.
        stored: TenantId,
        /// The tenant the caller gave.
        given: TenantId,
    },
    /// The checkpoint cannot be stored as given (it cannot be encoded, or its version would
    /// overflow).
    #[error("checkpoint for session `{session}` cannot be stored: {reason}")]
    Invalid {
        /// The session.
        session: SessionId,
        /// What is wrong.
        reason: String,
    },
    /// The store cannot run the operation (its worker threads are gone or the store is closed).
    #[error("checkpoint store unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// An agent state was written in a schema version this release does not read (a newer
    /// release wrote it): upgrade before loading it.
    #[error(
        "{place}: the agent state has schema version {found}; this release reads versions 1 to {supported}: upgrade downshift to load it"
    )]
    UnsupportedStateVersion {
        /// Where the state came from (`session `s-1``, or `agent state`).
        place: String,
        /// The version found.
        found: u64,
        /// The newest version this release reads.
        supported: u32,
    },
    /// An agent state does not match its schema.
    #[error("{place}: invalid agent state at {path}: {reason}")]
    InvalidState {
        /// Where the state came from.
        place: String,
        /// The JSON path of the offending value.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Errors from the audit log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The chain does not verify at this record: a record was edited, deleted, inserted,
    /// reordered, or the log was cut back or rewritten relative to a kept head.
    #[error("{}audit log does not verify at record {seq}: {reason}", tamper_place(.path.as_deref(), *.line))]
    Tampered {
        /// The sequence number expected at the first position that does not verify (for a kept
        /// head that the log no longer reaches: the head's sequence number).
        seq: u64,
        /// The file, when verifying a file.
        path: Option<PathBuf>,
        /// The 1-based line number in the file, when verifying a file.
        line: Option<u64>,
        /// What is wrong.
        reason: String,
    },
    /// An I/O error in a durable sink.
    #[error("audit I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The log's last line is incomplete (a write was interrupted). It is reported, never
    /// silently dropped; `JsonlAuditSink::repair_torn_tail` moves it aside explicitly.
    #[error("{path}:{line}: the last line ({bytes} bytes) is incomplete: a write was interrupted")]
    TornTail {
        /// The log file.
        path: PathBuf,
        /// The 1-based line number of the incomplete line.
        line: u64,
        /// How many bytes the incomplete line has.
        bytes: u64,
    },
    /// The event cannot be recorded as given (e.g. a trigger's measured value is not finite).
    #[error("audit event cannot be recorded: {reason}")]
    InvalidEvent {
        /// What is wrong.
        reason: String,
    },
    /// A kept head could not be read or parsed.
    #[error("invalid audit head {path}: {reason}")]
    InvalidHead {
        /// The head file (or `-` when given inline).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The sink stopped accepting records after an earlier write failed; reopen the log (which
    /// verifies it) to continue.
    #[error("audit sink {path} stopped after a failed write: {reason}")]
    Failed {
        /// The log file.
        path: PathBuf,
        /// The earlier failure.
        reason: String,
    },
}

fn tamper_place(path: Option<&std::path::Path>, line: Option<u64>) -> String {
    match (path, line) {
        (Some(p), Some(l)) => format!("{}:{l}: ", p.display()),
        (Some(p), None) => format!("{}: ", p.display()),
        (None, Some(l)) => format!("line {l}: "),
        (None, None) => String::new(),
    }
}

/// How serious a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Legal but suspicious; the policy set still loads.
    Warning,
    /// The policy set is rejected.
    Error,
}

/// What kind of mistake a [`Problem`] reports. Stable names, for tests and tooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProblemCode {
    /// The file is not valid JSON.
    Syntax,
    /// A value has the wrong type or shape.
    Schema,
    /// A field the format does not define (it would otherwise be silently ignored).
    UnknownField,
    /// The file's `kind` is missing or not `policy` / `catalog`.
    UnknownKind,
    /// Two files define the same endpoint or layer id.
    DuplicateId,
    /// A reference to an endpoint the catalog does not have.
    UnknownEndpoint,
    /// A reference to a tier the ladder does not have (by name or index).
    UnknownTier,
    /// A task kind the platform does not declare.
    UnknownTaskKind,
    /// `extends` names a layer that does not exist, or a layer of the wrong level.
    UnknownParent,
    /// `extends` loops back on itself.
    ExtendsCycle,
    /// No tier ladder is defined for a tenant.
    NoTiers,
    /// A tier with no endpoints.
    EmptyTier,
    /// The same endpoint appears twice in the ladder: the fallback order loops back on itself.
    FallbackLoop,
    /// A floor (tenant or task) that is outside the ladder.
    FloorOutOfRange,
    /// A lower layer tries to permit what a layer above forbids.
    Widening,
    /// Residency, allowlists or task restrictions leave a tenant view with nothing usable.
    NoUsableEndpoint,
    /// A number, duration or budget that is zero, negative, out of range or not finite.
    InvalidValue,
    /// A minimum number of calls larger than its count window: the rate could never be computed.
    MinCallsExceedsWindow,
    /// A non-capacity error class (context length, content filter, auth, bad request) listed as a
    /// fallback trigger.
    NonCapacityTrigger,
    /// A platform-wide setting set in a template or tenant layer.
    PlatformOnly,
    /// The policy permits a degradation the tenant's consent record does not cover.
    ConsentViolation,
    /// The policy suspends, but the ladder has no suspension step.
    MissingSuspension,
    /// More than one platform layer, or none.
    PlatformLayer,
    /// Warning: a fallback tier has a smaller context window than the tier above and the policy
    /// has no context-fitting rule for it.
    SmallerContextWindow,
    /// Warning: a tier shares a failure domain (account, key, host) with the tier above it, so
    /// one quota or outage takes both.
    SharedFailureDomain,
    /// Warning: residency or allowlists remove every endpoint of a tier the tenant may use.
    TierEmptiedForTenant,
    /// Warning: retry settings that multiply load on a failing provider.
    RetryStorm,
}

/// One thing wrong (or suspicious) in a policy set, with where it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// What kind of problem.
    pub code: ProblemCode,
    /// The file (as given to the loader) or source name.
    pub file: String,
    /// JSON path inside the file, e.g. `$.constraints.floor` (`$` for the whole file).
    pub path: String,
    /// Line and column (1-based) for syntax errors and where known.
    pub line_col: Option<(usize, usize)>,
    /// What is wrong, in a sentence.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.line_col) {
            (ProblemCode::Syntax, Some((l, c))) => write!(f, "{}:{l}:{c}: ", self.file)?,
            _ => write!(f, "{}:{}: ", self.file, self.path)?,
        }
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        f.write_str(&self.message)
    }
}

/// All problems found while validating a policy set, errors and warnings.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ValidationReport {
    /// Every problem, in file order.
    pub problems: Vec<Problem>,
}

impl ValidationReport {
    /// Whether any problem is an error.
    #[must_use]
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(|p| p.severity == Severity::Error)
    }

    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
    }

    /// The warnings only.
    pub fn warnings(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Warning)
    }
}

impl fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors().count();
        write!(f, "policy set is invalid ({n} error(s))")?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// Errors from the [`sim`](crate::sim) module: a scenario file or a recording that cannot be
/// read, parsed or run. Each names the file and, where it applies, the JSON path or line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The scenario is not valid JSON or does not match the scenario format.
    #[error("{}: at `{at}` (line {line}, column {column}): {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON path of the offending value.
        at: String,
        /// Line (1-based).
        line: usize,
        /// Column (1-based).
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The scenario parses but cannot be run (an unknown endpoint, tenant or task, a bad time
    /// or duration, an empty window...).
    #[error("{}: at `{at}`: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The JSON path of the offending value.
        at: String,
        /// What is wrong.
        message: String,
    },
    /// A line of a recording cannot be used.
    #[error("{}: line {line}: {message}", path.display())]
    Recording {
        /// The recording.
        path: PathBuf,
        /// Line (1-based).
        line: usize,
        /// What is wrong.
        message: String,
    },
}
