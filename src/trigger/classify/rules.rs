//! The rule table. Each rule names the facts it needs (all must hold) and the class they mean;
//! the first matching rule wins, so the table is ordered from the classes that must never be
//! mistaken for capacity (content filter, context length, auth, quota) down to the generic
//! ones. When no rule matches, the HTTP status decides (`fallback`).
//!
//! Every rule's name is reported in [`Classification::rule`](super::Classification::rule), and
//! `docs/providers.md` lists where each shape comes from.

use std::time::{Duration, SystemTime};

use super::body::ErrorFacts;
use super::headers::contains_ci;
use super::{OutcomeClass, Provider};
use OutcomeClass::{
    Auth, BadRequest, ContentFiltered, ContextLengthExceeded, Overloaded, QuotaExhausted,
    RateLimited, ServerError, Timeout,
};

/// What the body (and status) decided, before header facts are merged in.
#[derive(Debug, Clone, Copy)]
pub(super) struct Verdict {
    pub(super) class: OutcomeClass,
    pub(super) rule: &'static str,
    pub(super) provider: Provider,
    /// A relative delay from the body (`RetryInfo`, "try again in 6ms").
    pub(super) retry_after: Option<Duration>,
    /// An absolute reset from the body ("regain access on 2026-08-01 at 00:00 UTC").
    pub(super) reset_at: Option<SystemTime>,
}

impl Verdict {
    pub(super) fn plain(class: OutcomeClass, rule: &'static str, provider: Provider) -> Self {
        Verdict {
            class,
            rule,
            provider,
            retry_after: None,
            reset_at: None,
        }
    }
}

/// Which fact a condition reads.
#[derive(Debug, Clone, Copy)]
enum Field {
    /// `error.type` / `type` / `__type` / `x-amzn-errortype`.
    Type,
    /// `error.code` (string).
    Code,
    /// Google `error.status`.
    GStatus,
    /// Azure `error.innererror.code`.
    Inner,
    /// Anthropic `error.details.error_code`, Google `ErrorInfo.reason`.
    Detail,
    /// Google `QuotaFailure` quota ids and metrics.
    Quota,
    /// The message text.
    Msg,
}

/// How a condition compares (always ASCII-case-insensitively).
#[derive(Debug, Clone, Copy)]
enum Op {
    Is(&'static str),
    Has(&'static str),
}

/// Which HTTP statuses a rule applies to. Errors inside a 2xx stream have no status (`None`)
/// unless the event carries one.
#[derive(Debug, Clone, Copy)]
enum On {
    Any,
    /// 4xx except 408 and 429, or no status: request-caused errors.
    Client,
    /// 429, 5xx, 498, 529 or no status: capacity-shaped errors.
    Capacity,
    Only(u16),
}

impl On {
    fn admits(self, status: Option<u16>) -> bool {
        match (self, status) {
            (On::Any, _) => true,
            (On::Client | On::Capacity, None) => true,
            (On::Client, Some(s)) => (400..500).contains(&s) && s != 408 && s != 429,
            (On::Capacity, Some(s)) => s == 429 || s == 498 || s >= 500,
            (On::Only(want), Some(s)) => want == s,
            (On::Only(_), None) => false,
        }
    }
}

struct Rule {
    name: &'static str,
    on: On,
    when: &'static [(Field, Op)],
    then: OutcomeClass,
}

const fn rule(
    name: &'static str,
    on: On,
    when: &'static [(Field, Op)],
    then: OutcomeClass,
) -> Rule {
    Rule {
        name,
        on,
        when,
        then,
    }
}

use Field::{Code, Detail, GStatus, Inner, Msg, Quota, Type};
use On::{Any, Capacity, Client, Only};
use Op::{Has, Is};

/// The rules, most specific and least capacity-like first.
#[rustfmt::skip]
const RULES: &[Rule] = &[
    // Content filters: the request itself is refused; never capacity.
    rule("openai.code.content_filter",            Any, &[(Code, Is("content_filter"))], ContentFiltered),
    rule("azure.innererror.responsible_ai",       Any, &[(Inner, Is("ResponsibleAIPolicyViolation"))], ContentFiltered),
    rule("openai.code.content_policy_violation",  Any, &[(Code, Is("content_policy_violation"))], ContentFiltered),
    rule("azure.message.content_management_policy", Any, &[(Msg, Has("content management policy"))], ContentFiltered),
    rule("openai.message.safety_system",          Any, &[(Msg, Has("rejected as a result of our safety system"))], ContentFiltered),

    // Context length: the same request fails on any endpoint with this window.
    rule("openai.code.context_length_exceeded",   Client, &[(Code, Is("context_length_exceeded"))], ContextLengthExceeded),
    rule("anthropic.message.prompt_too_long",     Client, &[(Msg, Has("prompt is too long"))], ContextLengthExceeded),
    rule("anthropic.message.exceed_context_limit", Client, &[(Msg, Has("exceed context limit"))], ContextLengthExceeded),
    rule("anthropic.type.request_too_large",      Client, &[(Type, Is("request_too_large"))], ContextLengthExceeded),
    rule("generic.message.maximum_context_length", Client, &[(Msg, Has("maximum context length"))], ContextLengthExceeded),
    rule("generic.message.context_length",        Client, &[(Msg, Has("context length"))], ContextLengthExceeded),
    rule("generic.message.context_window",        Client, &[(Msg, Has("context window"))], ContextLengthExceeded),
    rule("gemini.message.input_token_count",      Client, &[(Msg, Has("exceeds the maximum number of tokens"))], ContextLengthExceeded),
    rule("bedrock.message.input_too_long",        Client, &[(Msg, Has("input is too long"))], ContextLengthExceeded),
    rule("bedrock.message.too_many_input_tokens", Client, &[(Msg, Has("too many input tokens"))], ContextLengthExceeded),
    rule("cohere.message.too_many_tokens",        Client, &[(Msg, Has("too many tokens"))], ContextLengthExceeded),
    rule("groq.message.reduce_length",            Client, &[(Msg, Has("reduce the length of the messages"))], ContextLengthExceeded),
    rule("tgi.message.max_new_tokens",            Client, &[(Msg, Has("`max_new_tokens` must be"))], ContextLengthExceeded),
    rule("generic.message.maximum_prompt_length", Client, &[(Msg, Has("maximum prompt length"))], ContextLengthExceeded),

    // Authentication and authorization.
    rule("openai.code.invalid_api_key",           Any, &[(Code, Is("invalid_api_key"))], Auth),
    rule("anthropic.type.authentication_error",   Any, &[(Type, Is("authentication_error"))], Auth),
    rule("anthropic.type.permission_error",       Any, &[(Type, Is("permission_error"))], Auth),
    rule("gemini.status.unauthenticated",         Any, &[(GStatus, Is("UNAUTHENTICATED"))], Auth),
    rule("gemini.status.permission_denied",       Any, &[(GStatus, Is("PERMISSION_DENIED"))], Auth),
    rule("gemini.reason.api_key_invalid",         Any, &[(Detail, Is("API_KEY_INVALID"))], Auth),
    rule("bedrock.type.access_denied",            Any, &[(Type, Is("AccessDeniedException"))], Auth),
    rule("bedrock.type.unrecognized_client",      Any, &[(Type, Is("UnrecognizedClientException"))], Auth),
    rule("bedrock.type.expired_token",            Any, &[(Type, Is("ExpiredTokenException"))], Auth),

    // Google quota: per-day quotas are exhausted until tomorrow, per-minute ones are throttling.
    rule("gemini.status.resource_exhausted_402",  Only(402), &[(GStatus, Is("RESOURCE_EXHAUSTED"))], QuotaExhausted),
    rule("gemini.quota.per_day",                  Any, &[(GStatus, Is("RESOURCE_EXHAUSTED")), (Quota, Has("PerDay"))], QuotaExhausted),
    rule("gemini.status.resource_exhausted",      Any, &[(GStatus, Is("RESOURCE_EXHAUSTED"))], RateLimited),

    // Quota, credit and spend limits: capacity, but not retryable until reset or raised.
    rule("anthropic.details.enforced_spend_limit", Any, &[(Detail, Is("enforced_spend_limit_reached"))], QuotaExhausted),
    rule("anthropic.type.billing_error",          Any, &[(Type, Is("billing_error"))], QuotaExhausted),
    rule("anthropic.message.credit_balance",      Any, &[(Msg, Has("credit balance is too low"))], QuotaExhausted),
    rule("anthropic.message.api_usage_limits",    Any, &[(Msg, Has("api usage limits"))], QuotaExhausted),
    rule("openai.code.insufficient_quota",        Any, &[(Code, Is("insufficient_quota"))], QuotaExhausted),
    rule("openai.type.insufficient_quota",        Any, &[(Type, Is("insufficient_quota"))], QuotaExhausted),
    rule("openai.message.current_quota",          Any, &[(Msg, Has("exceeded your current quota"))], QuotaExhausted),
    rule("openai.code.billing_not_active",        Any, &[(Code, Is("billing_not_active"))], QuotaExhausted),
    // A single request larger than the whole per-minute allowance: no retry fits until the limit is raised.
    rule("openai.message.request_too_large_for_limit", Any, &[(Msg, Has("request too large for"))], QuotaExhausted),
    rule("bedrock.type.service_quota_exceeded",   Any, &[(Type, Is("ServiceQuotaExceededException"))], QuotaExhausted),
    rule("generic.message.insufficient_balance",  Any, &[(Msg, Has("insufficient balance"))], QuotaExhausted),
    rule("generic.message.insufficient_credits",  Any, &[(Msg, Has("insufficient credits"))], QuotaExhausted),
    rule("generic.message.credit_limit",          Any, &[(Msg, Has("credit limit"))], QuotaExhausted),
    rule("cohere.message.per_month",              Only(429), &[(Msg, Has("/ month"))], QuotaExhausted),
    rule("generic.message.per_day",               Only(429), &[(Msg, Has("per day"))], QuotaExhausted),

    // Provider over capacity for everyone.
    rule("anthropic.type.overloaded_error",       Any, &[(Type, Is("overloaded_error"))], Overloaded),
    rule("groq.code.capacity_exceeded",           Any, &[(Code, Is("capacity_exceeded"))], Overloaded),
    rule("mistral.type.service_tier_capacity",    Any, &[(Type, Is("service_tier_capacity_exceeded"))], Overloaded),
    rule("mistral.message.service_tier_capacity", Any, &[(Msg, Has("service tier capacity exceeded"))], Overloaded),
    rule("bedrock.type.service_unavailable",      Any, &[(Type, Is("ServiceUnavailableException"))], Overloaded),
    rule("bedrock.type.model_not_ready",          Any, &[(Type, Is("ModelNotReadyException"))], Overloaded),
    rule("gemini.status.unavailable",             Any, &[(GStatus, Is("UNAVAILABLE"))], Overloaded),
    rule("groq.status_498.capacity",              Only(498), &[(Msg, Has("capacity"))], Overloaded),
    rule("generic.message.overloaded",            Capacity, &[(Msg, Has("overloaded"))], Overloaded),

    // Throttling of this caller.
    rule("openai.code.rate_limit_exceeded",       Any, &[(Code, Is("rate_limit_exceeded"))], RateLimited),
    rule("anthropic.type.rate_limit_error",       Any, &[(Type, Is("rate_limit_error"))], RateLimited),
    rule("mistral.type.rate_limited",             Any, &[(Type, Is("rate_limited"))], RateLimited),
    rule("bedrock.type.throttling",               Any, &[(Type, Is("ThrottlingException"))], RateLimited),
    rule("bedrock.type.too_many_requests",        Any, &[(Type, Is("TooManyRequestsException"))], RateLimited),

    // Timeouts.
    rule("gemini.status.deadline_exceeded",       Any, &[(GStatus, Is("DEADLINE_EXCEEDED"))], Timeout),
    rule("bedrock.type.model_timeout",            Any, &[(Type, Is("ModelTimeoutException"))], Timeout),
    rule("anthropic.type.timeout_error",          Any, &[(Type, Is("timeout_error"))], Timeout),

    // Provider-side failures.
    rule("anthropic.type.api_error",              Any, &[(Type, Is("api_error"))], ServerError),
    rule("openai.type.server_error",              Any, &[(Type, Is("server_error"))], ServerError),
    rule("gemini.status.internal",                Any, &[(GStatus, Is("INTERNAL"))], ServerError),
    rule("bedrock.type.model_error",              Any, &[(Type, Is("ModelErrorException"))], ServerError),
    rule("bedrock.type.model_stream_error",       Any, &[(Type, Is("ModelStreamErrorException"))], ServerError),
    rule("bedrock.type.internal_server",          Any, &[(Type, Is("InternalServerException"))], ServerError),

    // Malformed or invalid requests (only for request-caused statuses, so that a 429/5xx
    // carrying a generic type still falls through to its status).
    rule("bedrock.type.validation",               Client, &[(Type, Is("ValidationException"))], BadRequest),
    rule("bedrock.type.resource_not_found",       Client, &[(Type, Is("ResourceNotFoundException"))], BadRequest),
    rule("gemini.status.invalid_argument",        Client, &[(GStatus, Is("INVALID_ARGUMENT"))], BadRequest),
    rule("gemini.status.failed_precondition",     Client, &[(GStatus, Is("FAILED_PRECONDITION"))], BadRequest),
    rule("gemini.status.not_found",               Client, &[(GStatus, Is("NOT_FOUND"))], BadRequest),
    rule("generic.type.invalid_request_error",    Client, &[(Type, Is("invalid_request_error"))], BadRequest),
    rule("anthropic.type.not_found_error",        Client, &[(Type, Is("not_found_error"))], BadRequest),
];

/// Decides the class of an error body: the first matching rule, else the status fallback.
/// `no_status` is the class for an error with no HTTP status at all (a stream error event).
pub(super) fn decide(
    http_status: Option<u16>,
    provider: Provider,
    facts: &ErrorFacts<'_>,
    no_status: OutcomeClass,
) -> Verdict {
    let status = http_status.or(facts.embedded_status);
    let provider = if provider == Provider::Unknown {
        facts.provider
    } else {
        provider
    };
    // The message is lowercased once (bounded) so every `Has` test is a plain substring search.
    let lower = facts.message.map(|m| lowercase_prefix(m, MESSAGE_LIMIT));
    let (class, rule) = RULES
        .iter()
        .find(|r| {
            r.on.admits(status)
                && r.when
                    .iter()
                    .all(|&(f, op)| holds(facts, lower.as_deref(), f, op))
        })
        .map(|r| (r.then, r.name))
        .unwrap_or_else(|| fallback(status, provider, no_status));
    Verdict {
        class,
        rule,
        provider,
        retry_after: if class.is_capacity() {
            facts.retry_hint(lower.as_deref())
        } else {
            None
        },
        reset_at: if class == QuotaExhausted {
            ErrorFacts::reset_hint(lower.as_deref())
        } else {
            None
        },
    }
}

/// How much of a message the rules read: every marker sits near the start of a message.
const MESSAGE_LIMIT: usize = 8 * 1024;

/// The ASCII-lowercased first `limit` bytes of `s` (cut on a char boundary).
fn lowercase_prefix(s: &str, limit: usize) -> String {
    let mut end = s.len().min(limit);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_ascii_lowercase()
}

/// Whether one condition holds. `lower` is the lowercased message; rule needles for `Msg` are
/// written in lowercase.
fn holds(f: &ErrorFacts<'_>, lower: Option<&str>, field: Field, op: Op) -> bool {
    if let (Msg, Has(n)) = (field, op) {
        debug_assert!(
            !n.bytes().any(|b| b.is_ascii_uppercase()),
            "lowercase needle {n}"
        );
        return lower.is_some_and(|m| m.contains(n));
    }
    if f.raw {
        // Not JSON: structured fields are matched as quoted JSON tokens in the raw text, the
        // message as plain text.
        let text = f.message.unwrap_or("").as_bytes();
        return match (field, op) {
            (Msg, Is(n) | Has(n)) => contains_ci(text, n.as_bytes()),
            (_, Is(n) | Has(n)) => contains_quoted_ci(text, n.as_bytes()),
        };
    }
    let test = |v: &str| match op {
        Is(n) => v.eq_ignore_ascii_case(n),
        Has(n) => contains_ci(v.as_bytes(), n.as_bytes()),
    };
    match field {
        Type => f.kind.is_some_and(test),
        Code => f.code.is_some_and(test),
        GStatus => f.gstatus.is_some_and(test),
        Inner => f.inner.is_some_and(test),
        Detail => f.details.iter().any(|d| test(d)),
        Quota => f.quota.iter().any(|q| test(q)),
        Msg => f.message.is_some_and(test),
    }
}

/// `"needle"` (with the quotes) occurs in `hay`, ASCII-case-insensitively.
fn contains_quoted_ci(hay: &[u8], needle: &[u8]) -> bool {
    let n = needle.len();
    if hay.len() < n + 2 {
        return false;
    }
    (0..=hay.len() - n - 2).any(|i| {
        hay[i] == b'"'
            && hay[i + n + 1] == b'"'
            && hay[i + 1..i + 1 + n].eq_ignore_ascii_case(needle)
    })
}

/// The class an HTTP status means when the body said nothing more specific.
pub(super) fn fallback(
    status: Option<u16>,
    provider: Provider,
    no_status: OutcomeClass,
) -> (OutcomeClass, &'static str) {
    let Some(s) = status else {
        return (no_status, "stream.error_event");
    };
    match s {
        200..=299 => (OutcomeClass::Ok, "http.2xx"),
        401 | 403 | 407 => (Auth, "http.401_403"),
        402 => (QuotaExhausted, "http.402"),
        408 => (Timeout, "http.408"),
        413 => (ContextLengthExceeded, "http.413"),
        429 => (RateLimited, "http.429"),
        // 498 is Groq's flex-tier "capacity exceeded" but Cohere's "invalid token".
        498 if provider == Provider::Groq => (Overloaded, "groq.http.498"),
        498 => (Auth, "http.498"),
        // 499: the request was cancelled (client closed it, usually its own deadline).
        499 => (Timeout, "http.499"),
        400..=499 => (BadRequest, "http.4xx"),
        503 | 529 => (Overloaded, "http.503_529"),
        504 | 524 => (Timeout, "http.504"),
        500..=599 => (ServerError, "http.5xx"),
        300..=399 => (BadRequest, "http.3xx"),
        _ => (ServerError, "http.unexpected_status"),
    }
}
