//! Classifying real provider responses: [`classify_http`] turns an HTTP status, headers and body
//! into an [`OutcomeClass`] with the provider's retry-after and rate-limit state.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::OutcomeClass;

/// The provider's reported rate-limit state, where it sends one (`x-ratelimit-*`,
/// `anthropic-ratelimit-*`, ...). Every field is optional: providers send different subsets.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct RateLimitState {
    /// Request limit of the current window.
    pub requests_limit: Option<u64>,
    /// Requests remaining in the current window.
    pub requests_remaining: Option<u64>,
    /// Time until the request window resets (relative).
    pub requests_reset: Option<Duration>,
    /// Token limit of the current window.
    pub tokens_limit: Option<u64>,
    /// Tokens remaining in the current window.
    pub tokens_remaining: Option<u64>,
    /// Time until the token window resets (relative).
    pub tokens_reset: Option<Duration>,
}

/// What one provider response means for routing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    /// The outcome class.
    pub class: OutcomeClass,
    /// Whether repeating the same request (here or elsewhere) can succeed.
    pub retryable: bool,
    /// A relative delay the provider asked for (`retry-after`, `retry-after-ms`, a body's
    /// `retryDelay`).
    pub retry_after: Option<Duration>,
    /// An absolute time the provider said its limit resets (RFC 3339 reset headers).
    pub reset_at: Option<SystemTime>,
    /// The parsed rate-limit headers, when the provider sent any.
    pub rate_limit: Option<RateLimitState>,
}
