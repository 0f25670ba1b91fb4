//! Layer 1: what counts as a degradation event.
//!
//! [`OutcomeClass`] names what happened to a call in provider-neutral terms; `classify_http`
//! turns a provider's real HTTP response into one.

mod outcome;

pub use outcome::OutcomeClass;

mod classify;
mod reason;

pub use classify::{Classification, RateLimitState};
pub use reason::{Trigger, TriggerKind, TriggerRecord};
