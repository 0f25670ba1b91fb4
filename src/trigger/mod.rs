//! Layer 1: what counts as a degradation event.
//!
//! [`OutcomeClass`] names what happened to a call in provider-neutral terms; `classify_http`
//! turns a provider's real HTTP response into one.

mod outcome;

pub use outcome::OutcomeClass;

mod classify;

pub use classify::{Classification, RateLimitState};
