//! Per-tenant graceful degradation for AI agents.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod audit;
pub mod blocking;
pub mod catalog;
pub mod checkpoint;
pub mod clock;
pub mod digest;
pub mod error;
pub mod id;
pub mod policy;
pub mod trigger;

pub use audit::{
    AuditEvent, AuditEventKind, AuditHead, AuditRecord, AuditSink, JsonlAuditSink, MemoryAuditSink,
};
pub use catalog::{Capabilities, Catalog, Endpoint, EndpointIdx, Pricing};
pub use checkpoint::{
    Checkpoint, CheckpointStore, FileCheckpointStore, MemoryCheckpointStore, ResumeToken,
};
pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use digest::ContentDigest;
pub use error::{
    AuditError, CheckpointError, Error, PolicyError, Problem, ProblemCode, Severity,
    ValidationReport,
};
pub use id::{EndpointId, LayerId, SessionId, TaskKind, TenantId, WorkflowId};
pub use trigger::{
    Classification, OutcomeClass, RateLimitState, Trigger, TriggerKind, TriggerRecord,
};
