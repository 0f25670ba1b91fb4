//! [`OutcomeClass`]: what happened to one model call, in provider-neutral terms.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The class of a model call's outcome.
///
/// Only *capacity* classes ([`OutcomeClass::is_capacity`]) may ever count against an endpoint's
/// health or trigger a fallback. Errors caused by the request itself (too long, filtered, bad
/// credentials, malformed) would fail the same way on any endpoint; falling back on them only
/// spreads a bad request across the ladder.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeClass {
    /// The call succeeded.
    Ok,
    /// The provider throttled the caller (HTTP 429 and equivalents); usually with a retry-after.
    RateLimited,
    /// The provider is over capacity for everyone (Anthropic 529, Groq 498, Bedrock
    /// `ServiceUnavailableException`, Gemini 503 `UNAVAILABLE`).
    Overloaded,
    /// The account's quota, credit or spend limit is used up: retrying will not help until the
    /// quota resets or is raised.
    QuotaExhausted,
    /// The provider failed with a 5xx-class error.
    ServerError,
    /// The call did not finish in time (client deadline, gateway timeout, model timeout).
    Timeout,
    /// The request does not fit the model's context window.
    ContextLengthExceeded,
    /// The provider's safety filter blocked the prompt or the output.
    ContentFiltered,
    /// Authentication or authorization failed.
    Auth,
    /// The request was malformed or invalid for this model.
    BadRequest,
}

impl OutcomeClass {
    /// Every class, in declaration order.
    pub const ALL: [OutcomeClass; 10] = [
        OutcomeClass::Ok,
        OutcomeClass::RateLimited,
        OutcomeClass::Overloaded,
        OutcomeClass::QuotaExhausted,
        OutcomeClass::ServerError,
        OutcomeClass::Timeout,
        OutcomeClass::ContextLengthExceeded,
        OutcomeClass::ContentFiltered,
        OutcomeClass::Auth,
        OutcomeClass::BadRequest,
    ];

    /// Whether this class may ever count as a capacity failure. Policies may only list these
    /// classes as triggers; validation rejects the others.
    #[must_use]
    pub const fn is_capacity(self) -> bool {
        matches!(
            self,
            OutcomeClass::RateLimited
                | OutcomeClass::Overloaded
                | OutcomeClass::QuotaExhausted
                | OutcomeClass::ServerError
                | OutcomeClass::Timeout
        )
    }

    /// The snake_case name used in policies, logs and metrics.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            OutcomeClass::Ok => "ok",
            OutcomeClass::RateLimited => "rate_limited",
            OutcomeClass::Overloaded => "overloaded",
            OutcomeClass::QuotaExhausted => "quota_exhausted",
            OutcomeClass::ServerError => "server_error",
            OutcomeClass::Timeout => "timeout",
            OutcomeClass::ContextLengthExceeded => "context_length_exceeded",
            OutcomeClass::ContentFiltered => "content_filtered",
            OutcomeClass::Auth => "auth",
            OutcomeClass::BadRequest => "bad_request",
        }
    }
}

impl std::fmt::Display for OutcomeClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
