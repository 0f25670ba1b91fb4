//! Layer 1: what counts as a degradation event.
//!
//! [`OutcomeClass`] names what happened to a call in provider-neutral terms; `classify_http`
//! turns a provider's real HTTP response into one.

mod outcome;

pub use outcome::OutcomeClass;

mod classify;
mod reason;

pub use classify::{
    Classification, Provider, RateLimitState, RetryAfter, classify_connection_failure,
    classify_http, classify_http_from, classify_sse_event, classify_stream_event,
    classify_transport_timeout, parse_reset_duration, parse_retry_after, parse_retry_after_ms,
    parse_rfc3339,
};
pub use reason::{Trigger, TriggerKind, TriggerRecord};

mod breaker;
mod budget;
mod evaluator;
mod latency;
mod observation;
mod ring;
mod view;

pub use breaker::{
    BreakerEvent, BreakerMode, BreakerState, MAX_PROBES, Probe, ProbePermit, open_wait,
};
pub use budget::{BudgetHandle, Evicted, Spend};
pub use evaluator::{
    BudgetScope, EndpointHealth, EvaluatorSettings, LatencySnapshot, MAX_ENDPOINTS,
    MAX_QUEUED_EVENTS, SharedHealth, Signals, TriggerEvaluator, Verdict,
};
pub use observation::{Observation, ProviderSignal, Usage};
pub use view::{StatusSet, TenantTriggers};
