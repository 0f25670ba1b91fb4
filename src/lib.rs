//! Per-tenant graceful degradation for AI agents.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod catalog;
pub mod clock;
pub mod digest;
pub mod error;
pub mod id;
pub mod policy;
pub mod trigger;

pub use catalog::{Capabilities, Catalog, Endpoint, EndpointIdx, Pricing};
pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use digest::ContentDigest;
pub use error::{
    AuditError, CheckpointError, Error, PolicyError, Problem, ProblemCode, Severity,
    ValidationReport,
};
pub use id::{EndpointId, LayerId, SessionId, TaskKind, TenantId, WorkflowId};
pub use trigger::{
    Classification, OutcomeClass, Provider, RateLimitState, RetryAfter, Trigger, TriggerKind,
    TriggerRecord, classify_connection_failure, classify_http, classify_http_from,
    classify_sse_event, classify_stream_event, classify_transport_timeout, parse_reset_duration,
    parse_retry_after, parse_retry_after_ms, parse_rfc3339,
};
