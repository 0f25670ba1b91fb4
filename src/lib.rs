//! # downshift
//!
//! Per-tenant graceful degradation for AI agents. For every model call an agent makes, downshift
//! decides which model endpoint serves it — per tenant, per task — when providers are throttled,
//! slow, over budget or down; it records why, keeps the agent's state safe when it must pause,
//! and brings the agent back up when capacity returns. Tiers are gears: degrading is a
//! *downshift*, promotion back is an *upshift*.
//!
//! A hospital's clinical agent must never silently drop to a small model; a marketing agency's
//! copy agent should drop at once. Each tenant's policy says which, and the crate enforces it.
//!
//! ## The shape
//!
//! * [`policy`] — policies as data, in four layers (triggers, tiers, tenant constraints,
//!   recovery), layered platform → application template → tenant, where a lower layer may only
//!   narrow. [`policy::PolicySet`] validates a whole set at once (every problem named by file and
//!   JSON path) and resolves each tenant into immutable [`policy::ResolvedPolicy`] views with a
//!   stable content digest that decisions and audit records cite.
//! * [`catalog`] — the approved endpoints: one model at one provider in one region, with
//!   capabilities, prices and benchmarked quality per task kind.
//! * [`trigger`] — what counts as a degradation event: provider-neutral [`OutcomeClass`]es and
//!   [`Trigger`]s that carry the measured value and the threshold they crossed.
//! * [`clock`] — time as a value. The core is pure and synchronous; tests use [`ManualClock`].
//!
//! The crate performs no network I/O and depends on no async runtime: callers implement the
//! provider clients; downshift decides where each call goes.
//!
//! ## Quick start
//!
//! ```
//! use downshift::policy::{PolicySet, Source};
//!
//! let catalog = r#"{"kind": "catalog", "endpoints": [
//!   {"id": "frontier-eu", "provider": "vendor", "model": "frontier-1", "region": "eu-west-1",
//!    "capabilities": {"context_window": 200000, "max_output_tokens": 8192, "tools": true},
//!    "pricing": {"input_per_mtok": 3.0, "output_per_mtok": 15.0}},
//!   {"id": "frontier-eu-alt", "provider": "cloud", "model": "frontier-1", "region": "eu-central-1",
//!    "capabilities": {"context_window": 200000, "max_output_tokens": 8192, "tools": true},
//!    "pricing": {"input_per_mtok": 3.3, "output_per_mtok": 16.5}},
//!   {"id": "small-eu", "provider": "self-hosted", "model": "small-8b", "region": "eu-west-1",
//!    "capabilities": {"context_window": 32000, "max_output_tokens": 4096},
//!    "pricing": {"input_per_mtok": 0.06, "output_per_mtok": 0.09}}
//! ]}"#;
//! let platform = r#"{"kind": "policy", "id": "platform", "version": "1", "level": "platform",
//!   "tiers": [
//!     {"name": "primary", "endpoints": ["frontier-eu"]},
//!     {"name": "hot-standby", "endpoints": ["frontier-eu-alt"]},
//!     {"name": "minimal", "endpoints": ["small-eu"]}
//!   ],
//!   "suspension": {"max_duration": "6h"},
//!   "continuity": {"fit_to_smaller_window": true}}"#;
//! // The hospital never drops below the same frontier model at a second provider, and
//! // suspends (with a saved checkpoint) rather than use anything smaller.
//! let hospital = r#"{"kind": "policy", "id": "hospital", "version": "3", "level": "tenant",
//!   "extends": "platform",
//!   "constraints": {"floor": "hot-standby", "notification": "realtime",
//!                   "when_exhausted": "suspend", "probe_eligible": false}}"#;
//! let agency = r#"{"kind": "policy", "id": "agency", "version": "1", "level": "tenant",
//!   "extends": "platform"}"#;
//!
//! let set = PolicySet::from_sources(vec![
//!     Source::new("catalog.json", catalog),
//!     Source::new("platform.json", platform),
//!     Source::new("hospital.json", hospital),
//!     Source::new("agency.json", agency),
//! ])?;
//!
//! let hospital = set.view("hospital", "clinical_summarization")?;
//! let permitted: Vec<&str> = hospital.usable_tiers().map(|t| &*t.name).collect();
//! assert_eq!(permitted, ["primary", "hot-standby"]);
//!
//! let agency = set.view("agency", "copywriting")?;
//! assert_eq!(agency.usable_tiers().count(), 3);
//! assert_ne!(hospital.digest, agency.digest);
//!
//! // A tenant layer cannot widen what its parent allows: this one is rejected, and the error
//! // names the file and the JSON path.
//! let sneaky = r#"{"kind": "policy", "id": "sneaky", "version": "1", "level": "tenant",
//!   "extends": "platform", "constraints": {"floor": 7}}"#;
//! let err = downshift::policy::PolicySet::from_sources(vec![
//!     Source::new("catalog.json", catalog),
//!     Source::new("platform.json", platform),
//!     Source::new("sneaky.json", sneaky),
//! ])
//! .unwrap_err();
//! assert!(err.to_string().contains("sneaky.json:$.constraints.floor: tier 7 is outside the ladder"));
//! # Ok::<(), downshift::PolicyError>(())
//! ```
//!
//! ## Guides
//!
//! The repository's `docs/` folder holds the policy reference (`docs/policy.md`), the JSON
//! Schemas, and the performance figures.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod alerts;
pub mod audit;
pub mod blocking;
pub mod catalog;
pub mod checkpoint;
pub mod clock;
pub mod digest;
pub mod engine;
pub mod error;
pub mod id;
pub mod policy;
pub mod router;
pub mod sim;
pub mod stats;
pub mod telemetry;
pub mod trigger;

pub use audit::{
    AuditEvent, AuditEventKind, AuditHead, AuditRecord, AuditSink, JsonlAuditSink, MemoryAuditSink,
};
pub use catalog::{
    Capabilities, CapabilityGap, Catalog, Endpoint, EndpointIdx, Pricing, Requirements,
};
pub use checkpoint::{
    Checkpoint, CheckpointStore, FileCheckpointStore, MemoryCheckpointStore, ResumeToken,
};
pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use digest::ContentDigest;
pub use error::{
    AuditError, CheckpointError, Error, PolicyError, Problem, ProblemCode, Severity, SimError,
    TriggerError, ValidationReport,
};
pub use id::{EndpointId, LayerId, SessionId, TaskKind, TenantId, WorkflowId};
pub use trigger::{
    BreakerEvent, BreakerMode, BreakerState, BudgetScope, EndpointHealth, EvaluatorSettings,
    Observation, Probe, ProbePermit, ProviderSignal, TenantTriggers, TriggerEvaluator, Verdict,
};
pub use trigger::{
    Classification, OutcomeClass, Provider, RateLimitState, RetryAfter, Trigger, TriggerKind,
    TriggerRecord, classify_connection_failure, classify_http, classify_http_from,
    classify_sse_event, classify_stream_event, classify_transport_timeout, parse_reset_duration,
    parse_retry_after, parse_retry_after_ms, parse_rfc3339,
};
