//! Classifying real provider responses: [`classify_http`] turns an HTTP status, headers and body
//! into an [`OutcomeClass`] with the provider's retry-after and rate-limit state.
//!
//! The work happens in three steps, each in its own module:
//!
//! 1. **Headers** (`headers.rs`): `retry-after-ms` / `retry-after` / `x-should-retry`, the
//!    `x-ratelimit-*` and `anthropic-ratelimit-*` families, `x-amzn-errortype`, the content
//!    type, and which provider sent them.
//! 2. **Body** (`body.rs`): every provider's error shape (OpenAI/Azure/Groq/Together
//!    `{"error":{..}}`, Anthropic `{"type":"error",..}`, Google `{"error":{"status",..}}`,
//!    Bedrock `__type`, Mistral `{"object":"error"}`, bare `{"message"}`) is read into the same
//!    facts. Successful bodies are parsed only when they contain a marker of an error or a
//!    content-filter signal; event streams are scanned event by event, so an error delivered
//!    after a `200` is classified as that error.
//! 3. **Rules** (`rules.rs`): an ordered table from facts to class, then a per-status fallback.
//!
//! Everything is pure: no clock is read. A `retry-after` HTTP-date and RFC 3339 resets are
//! reported as absolute [`Classification::reset_at`]; callers compare them with their own clock.
//! Every entry point is total: arbitrary bytes never panic.
//!
//! `docs/providers.md` lists every shape handled, with its source.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::OutcomeClass;

mod body;
mod headers;
mod parse;
mod rules;

pub use parse::{
    RetryAfter, parse_reset_duration, parse_retry_after, parse_retry_after_ms, parse_rfc3339,
};

use body::{
    ErrorFacts, content_filtered, error_facts, looks_like_sse, might_signal, scan_aws_event_stream,
    scan_sse, stream_event_verdict,
};
use headers::HeaderFacts;
use rules::{Verdict, decide};

/// The provider whose response shapes were recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Provider {
    /// Not identified (generic HTTP rules only).
    #[default]
    #[serde(rename = "unknown")]
    Unknown,
    /// OpenAI (`api.openai.com`), and OpenAI-compatible `{"error":{..}}` bodies.
    #[serde(rename = "openai")]
    OpenAi,
    /// Azure OpenAI / Azure AI Foundry.
    #[serde(rename = "azure_openai")]
    AzureOpenAi,
    /// Anthropic's Claude API.
    #[serde(rename = "anthropic")]
    Anthropic,
    /// Google Gemini API and Vertex AI.
    #[serde(rename = "gemini")]
    Gemini,
    /// AWS Bedrock runtime.
    #[serde(rename = "bedrock")]
    Bedrock,
    /// Mistral AI (`{"object":"error"}` bodies).
    #[serde(rename = "mistral")]
    Mistral,
    /// Groq.
    #[serde(rename = "groq")]
    Groq,
    /// Together AI.
    #[serde(rename = "together")]
    Together,
    /// Cohere.
    #[serde(rename = "cohere")]
    Cohere,
}

impl Provider {
    /// The snake_case name used in logs and test data.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Provider::Unknown => "unknown",
            Provider::OpenAi => "openai",
            Provider::AzureOpenAi => "azure_openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gemini",
            Provider::Bedrock => "bedrock",
            Provider::Mistral => "mistral",
            Provider::Groq => "groq",
            Provider::Together => "together",
            Provider::Cohere => "cohere",
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The provider's reported rate-limit state, where it sends one (`x-ratelimit-*`,
/// `anthropic-ratelimit-*`, ...). Every field is optional: providers send different subsets.
///
/// OpenAI-style providers report resets as relative durations (`requests_reset`,
/// `tokens_reset`); Anthropic reports them as absolute RFC 3339 times (the `*_reset_at`
/// fields) and also splits input and output tokens.
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
    /// When the request window resets (absolute; `anthropic-ratelimit-requests-reset`).
    pub requests_reset_at: Option<SystemTime>,
    /// When the token window resets (absolute; `anthropic-ratelimit-tokens-reset`).
    pub tokens_reset_at: Option<SystemTime>,
    /// Input-token limit (`anthropic-ratelimit-input-tokens-limit`).
    pub input_tokens_limit: Option<u64>,
    /// Input tokens remaining.
    pub input_tokens_remaining: Option<u64>,
    /// When the input-token window resets (absolute).
    pub input_tokens_reset_at: Option<SystemTime>,
    /// Output-token limit (`anthropic-ratelimit-output-tokens-limit`).
    pub output_tokens_limit: Option<u64>,
    /// Output tokens remaining.
    pub output_tokens_remaining: Option<u64>,
    /// When the output-token window resets (absolute).
    pub output_tokens_reset_at: Option<SystemTime>,
}

impl RateLimitState {
    /// The longest relative reset among windows that report `0` remaining: how long until
    /// every exhausted window has reset.
    #[must_use]
    pub fn exhausted_reset(&self) -> Option<Duration> {
        [
            (self.requests_remaining, self.requests_reset),
            (self.tokens_remaining, self.tokens_reset),
        ]
        .into_iter()
        .filter(|(remaining, _)| *remaining == Some(0))
        .filter_map(|(_, reset)| reset)
        .max()
    }

    /// The latest absolute reset among windows that report `0` remaining.
    #[must_use]
    pub fn exhausted_reset_at(&self) -> Option<SystemTime> {
        [
            (self.requests_remaining, self.requests_reset_at),
            (self.tokens_remaining, self.tokens_reset_at),
            (self.input_tokens_remaining, self.input_tokens_reset_at),
            (self.output_tokens_remaining, self.output_tokens_reset_at),
        ]
        .into_iter()
        .filter(|(remaining, _)| *remaining == Some(0))
        .filter_map(|(_, reset)| reset)
        .max()
    }
}

/// What one provider response means for routing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    /// The outcome class.
    pub class: OutcomeClass,
    /// Whether repeating the same request (here or elsewhere) can succeed. Always `false` for
    /// classes that are not capacity classes ([`OutcomeClass::is_capacity`]); `false` for
    /// [`OutcomeClass::QuotaExhausted`] unless the provider says otherwise; an explicit
    /// `x-should-retry` header decides for the other capacity classes.
    pub retryable: bool,
    /// A relative delay the provider asked for (`retry-after-ms`, then `retry-after`, then a
    /// body's `retryDelay` or "try again in 6ms"), or the longest reset of a rate-limit window
    /// that reports 0 remaining.
    pub retry_after: Option<Duration>,
    /// An absolute time the provider said its limit resets: an HTTP-date `retry-after`, a
    /// spend limit's "regain access on" date, or the latest RFC 3339 reset of an Anthropic
    /// window that reports 0 remaining.
    pub reset_at: Option<SystemTime>,
    /// The parsed rate-limit headers, when the provider sent any.
    pub rate_limit: Option<RateLimitState>,
    /// The provider whose shapes were recognised (from headers, then the body).
    pub provider: Provider,
    /// The rule that decided the class (`anthropic.type.overloaded_error`, `http.429`, ...);
    /// `docs/providers.md` lists them.
    pub rule: &'static str,
}

impl Default for Classification {
    /// A plain success with no provider information.
    fn default() -> Self {
        Classification {
            class: OutcomeClass::Ok,
            retryable: false,
            retry_after: None,
            reset_at: None,
            rate_limit: None,
            provider: Provider::Unknown,
            rule: "http.2xx",
        }
    }
}

/// Classifies one provider HTTP response, detecting the provider from its headers and body.
///
/// `headers` are `(name, value)` pairs; names are compared case-insensitively. `body` may be
/// JSON, non-JSON, truncated, or a whole `text/event-stream` (an error event after a `200` is
/// classified as that error, a content-filter stop as [`OutcomeClass::ContentFiltered`]).
///
/// ```
/// use downshift::{classify_http, OutcomeClass};
/// let c = classify_http(
///     529,
///     &[("content-type", "application/json")],
///     br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
/// );
/// assert_eq!(c.class, OutcomeClass::Overloaded);
/// assert!(c.retryable);
/// ```
#[must_use]
pub fn classify_http(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Classification {
    classify_http_from(Provider::Unknown, status, headers, body)
}

/// Like [`classify_http`], for a caller that knows which provider it called: `provider` wins
/// over detection (it matters only where providers disagree, e.g. HTTP 498 is Groq's
/// "capacity exceeded" but Cohere's "invalid token"). [`Provider::Unknown`] detects.
#[must_use]
pub fn classify_http_from(
    provider: Provider,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Classification {
    let facts = HeaderFacts::read(headers);
    let provider = if provider == Provider::Unknown {
        facts.provider
    } else {
        provider
    };
    let verdict = if (200..300).contains(&status) {
        success_verdict(provider, &facts, body)
    } else {
        error_verdict(status, provider, &facts, body)
    };
    finish(verdict, &facts)
}

/// Classifies a single server-sent-event `data:` payload (one JSON chunk) from a stream that
/// started with `200`. Returns `None` for an ordinary chunk, and a classification for an error
/// event (`{"type":"error","error":{..}}`, `{"error":{..}}`, `response.failed`) or a
/// content-filter stop (`finish_reason: "content_filter"`, `finishReason: "SAFETY"`,
/// `stop_reason: "refusal"`, ...).
#[must_use]
pub fn classify_stream_event(data: &[u8]) -> Option<Classification> {
    stream_event_verdict(None, data, Provider::Unknown, None)
        .map(|v| finish(v, &HeaderFacts::default()))
}

/// Like [`classify_stream_event`], with the SSE `event:` name: an `event: error` (or
/// `response.failed`) is always a failure, even when its data cannot be read.
#[must_use]
pub fn classify_sse_event(event: Option<&str>, data: &[u8]) -> Option<Classification> {
    stream_event_verdict(event, data, Provider::Unknown, None)
        .map(|v| finish(v, &HeaderFacts::default()))
}

/// The classification of a call the client gave up on (its own deadline, connect or read
/// timeout): [`OutcomeClass::Timeout`], retryable.
#[must_use]
pub fn classify_transport_timeout() -> Classification {
    Classification {
        class: OutcomeClass::Timeout,
        retryable: true,
        rule: "transport.timeout",
        ..Classification::default()
    }
}

/// The classification of a call that never got a response (connection refused or reset, TLS
/// failure, the stream cut before it ended): [`OutcomeClass::ServerError`], retryable.
#[must_use]
pub fn classify_connection_failure() -> Classification {
    Classification {
        class: OutcomeClass::ServerError,
        retryable: true,
        rule: "transport.connection",
        ..Classification::default()
    }
}

fn success_verdict(provider: Provider, facts: &HeaderFacts<'_>, body: &[u8]) -> Verdict {
    let ok = Verdict::plain(OutcomeClass::Ok, "http.2xx", provider);
    if body.is_empty() {
        return ok;
    }
    if facts.aws_event_stream {
        return scan_aws_event_stream(body, provider).unwrap_or(ok);
    }
    if facts.event_stream || looks_like_sse(body) {
        if let Some(v) = scan_sse(body, provider, None) {
            return v;
        }
        // A JSON error sent with an event-stream content type is still read below.
        if !body.trim_ascii_start().starts_with(b"{") {
            return ok;
        }
    }
    if !might_signal(body) {
        return ok;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return ok;
    };
    if let Some(f) = error_facts(&v, false) {
        return decide(None, provider, &f, OutcomeClass::ServerError);
    }
    if content_filtered(&v) {
        let provider = if provider == Provider::Unknown {
            body::success_provider(&v)
        } else {
            provider
        };
        return Verdict::plain(
            OutcomeClass::ContentFiltered,
            "body.content_filtered",
            provider,
        );
    }
    ok
}

fn error_verdict(status: u16, provider: Provider, h: &HeaderFacts<'_>, body: &[u8]) -> Verdict {
    let trimmed = body.trim_ascii();
    let parsed = match trimmed.first() {
        Some(b'{' | b'[') => serde_json::from_slice::<serde_json::Value>(trimmed).ok(),
        _ => None,
    };
    if parsed.is_none() && looks_like_sse(trimmed) {
        // An error status whose body is an event stream: its error event decides.
        if let Some(v) = scan_sse(trimmed, provider, Some(status)) {
            return v;
        }
    }
    let mut facts = match &parsed {
        Some(v) => error_facts(v, true).unwrap_or_default(),
        None => ErrorFacts::raw(text_prefix(trimmed)),
    };
    if let Some(kind) = h.amzn_error_type {
        facts.kind = Some(kind);
        facts.provider = Provider::Bedrock;
    }
    decide(Some(status), provider, &facts, OutcomeClass::ServerError)
}

/// The leading valid UTF-8 of at most 8 KiB of the body: enough for every message marker,
/// bounded for huge HTML error pages.
fn text_prefix(body: &[u8]) -> &str {
    let head = &body[..body.len().min(8 * 1024)];
    match std::str::from_utf8(head) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or(""),
    }
}

fn finish(v: Verdict, h: &HeaderFacts<'_>) -> Classification {
    let class = v.class;
    let retryable = if !class.is_capacity() {
        false
    } else if let Some(said) = h.should_retry {
        said
    } else {
        class != OutcomeClass::QuotaExhausted
    };
    let exhausted = class.is_capacity() || class == OutcomeClass::Ok;
    let window = |f: fn(&RateLimitState) -> Option<Duration>| h.rate_limit.as_ref().and_then(f);
    let window_at =
        |f: fn(&RateLimitState) -> Option<SystemTime>| h.rate_limit.as_ref().and_then(f);
    let retry_after = h.retry_after.or(v.retry_after).or_else(|| {
        exhausted
            .then(|| window(RateLimitState::exhausted_reset))
            .flatten()
    });
    let reset_at = h.retry_at.or(v.reset_at).or_else(|| {
        exhausted
            .then(|| window_at(RateLimitState::exhausted_reset_at))
            .flatten()
    });
    Classification {
        class,
        retryable,
        retry_after,
        reset_at,
        rate_limit: h.rate_limit,
        provider: v.provider,
        rule: v.rule,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OutcomeClass as C;

    const RATE_BODY: &[u8] =
        br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;

    fn at(s: &str) -> SystemTime {
        parse_rfc3339(s).expect("valid test time")
    }

    #[test]
    fn header_names_are_case_insensitive() {
        let lower = classify_http(
            429,
            &[
                ("retry-after", "7"),
                ("x-ratelimit-remaining-tokens", "0"),
                ("x-ratelimit-reset-tokens", "1s"),
                ("x-should-retry", "false"),
            ],
            RATE_BODY,
        );
        let mixed = classify_http(
            429,
            &[
                ("Retry-After", "7"),
                ("X-RateLimit-Remaining-Tokens", "0"),
                ("X-RATELIMIT-RESET-TOKENS", "1s"),
                ("X-Should-Retry", "FALSE"),
            ],
            RATE_BODY,
        );
        assert_eq!(lower, mixed);
        assert_eq!(mixed.retry_after, Some(Duration::from_secs(7)));
        assert!(!mixed.retryable);
        let rl = mixed.rate_limit.expect("rate limit parsed");
        assert_eq!(rl.tokens_remaining, Some(0));
        assert_eq!(rl.tokens_reset, Some(Duration::from_secs(1)));
    }

    #[test]
    fn retry_after_ms_takes_precedence_whatever_the_order() {
        for headers in [
            [("retry-after", "2"), ("retry-after-ms", "1500")],
            [("retry-after-ms", "1500"), ("retry-after", "2")],
        ] {
            let c = classify_http(429, &headers, b"");
            assert_eq!(c.retry_after, Some(Duration::from_millis(1500)));
        }
        // A malformed retry-after-ms falls back to retry-after.
        let c = classify_http(
            429,
            &[("retry-after-ms", "soon"), ("retry-after", "2")],
            b"",
        );
        assert_eq!(c.retry_after, Some(Duration::from_secs(2)));
        // The header beats the body's own delay.
        let c = classify_http(
            429,
            &[("retry-after", "3")],
            br#"{"error":{"code":"rate_limit_exceeded","message":"Please try again in 20ms."}}"#,
        );
        assert_eq!(c.retry_after, Some(Duration::from_secs(3)));
    }

    #[test]
    fn http_date_retry_after_is_an_absolute_reset() {
        let c = classify_http(
            503,
            &[("retry-after", "Wed, 21 Oct 2026 07:28:00 GMT")],
            b"",
        );
        assert_eq!(c.class, C::Overloaded);
        assert_eq!(c.retry_after, None);
        assert_eq!(c.reset_at, Some(at("2026-10-21T07:28:00Z")));
    }

    #[test]
    fn x_should_retry_never_makes_request_errors_retryable() {
        let c = classify_http(
            400,
            &[("x-should-retry", "true")],
            br#"{"error":{"code":"context_length_exceeded","message":"too long"}}"#,
        );
        assert_eq!(c.class, C::ContextLengthExceeded);
        assert!(!c.retryable);
        // ...but it does make a quota error retryable when the provider says so.
        let c = classify_http(
            429,
            &[("x-should-retry", "true")],
            br#"{"error":{"code":"insufficient_quota","message":"quota"}}"#,
        );
        assert_eq!((c.class, c.retryable), (C::QuotaExhausted, true));
    }

    #[test]
    fn anthropic_reset_at_is_the_latest_exhausted_window() {
        let headers = [
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2026-01-15T14:24:00Z"),
            ("anthropic-ratelimit-tokens-remaining", "0"),
            ("anthropic-ratelimit-tokens-reset", "2026-01-15T14:25:00Z"),
            ("anthropic-ratelimit-output-tokens-remaining", "10"),
            (
                "anthropic-ratelimit-output-tokens-reset",
                "2026-01-15T15:00:00Z",
            ),
        ];
        let c = classify_http(429, &headers, b"");
        assert_eq!(c.provider, Provider::Anthropic);
        assert_eq!(c.reset_at, Some(at("2026-01-15T14:25:00Z")));
        // A success whose windows are not exhausted carries no reset.
        let c = classify_http(200, &headers[4..], b"");
        assert_eq!((c.class, c.reset_at), (C::Ok, None));
        // A success that used the last request says when the next one may go.
        let c = classify_http(200, &headers[..2], b"");
        assert_eq!(c.reset_at, Some(at("2026-01-15T14:24:00Z")));
    }

    #[test]
    fn stream_event_payloads() {
        let c = classify_stream_event(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        )
        .expect("an error event");
        assert_eq!(
            (c.class, c.retryable, c.provider),
            (C::Overloaded, true, Provider::Anthropic)
        );

        let filtered = classify_stream_event(
            br#"{"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"content_filter"}]}"#,
        )
        .expect("a filter stop");
        assert_eq!(filtered.class, C::ContentFiltered);
        assert!(!filtered.retryable);

        assert_eq!(classify_stream_event(b"[DONE]"), None);
        assert_eq!(
            classify_stream_event(
                br#"{"choices":[{"delta":{"content":"error"},"finish_reason":null}]}"#
            ),
            None
        );
        assert_eq!(classify_stream_event(b"{not json error"), None);
        assert_eq!(classify_stream_event(b""), None);

        let unreadable = classify_sse_event(Some("error"), b"upstream went away").expect("failure");
        assert_eq!(
            (unreadable.class, unreadable.retryable),
            (C::ServerError, true)
        );
    }

    #[test]
    fn sse_with_crlf_multiline_data_and_no_trailing_blank_line() {
        let body = b"event: message_start\r\ndata: {\"type\":\"message_start\"}\r\n\r\n\
event: error\r\ndata: {\"type\":\"error\",\r\ndata: \"error\":{\"type\":\"rate_limit_error\",\"message\":\"slow down\"}}";
        let c = classify_http(200, &[("Content-Type", "text/event-stream")], body);
        assert_eq!(c.class, C::RateLimited);
        // Without a content type, a body that starts like SSE is still scanned.
        let c = classify_http(200, &[], body);
        assert_eq!(c.class, C::RateLimited);
    }

    #[test]
    fn event_stream_content_type_with_a_json_error_body() {
        let c = classify_http(
            200,
            &[("content-type", "text/event-stream")],
            br#"{"error":{"message":"The server had an error","type":"server_error","code":null}}"#,
        );
        assert_eq!(c.class, C::ServerError);
        // An error status whose body is a stream: the event decides, the status backs it up.
        let c = classify_http(429, &[], b"event: error\ndata: not json\n\n");
        assert_eq!((c.class, c.retryable), (C::RateLimited, true));
        let c = classify_http(
            500,
            &[],
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n",
        );
        assert_eq!(c.class, C::Overloaded);
    }

    /// Encodes one AWS event-stream message (CRCs are not checked by the scanner).
    fn aws_message(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
        let mut h = Vec::new();
        for (name, value) in headers {
            h.push(u8::try_from(name.len()).unwrap());
            h.extend_from_slice(name.as_bytes());
            h.push(7);
            h.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
            h.extend_from_slice(value.as_bytes());
        }
        let total = 12 + h.len() + payload.len() + 4;
        let mut m = Vec::new();
        m.extend_from_slice(&u32::try_from(total).unwrap().to_be_bytes());
        m.extend_from_slice(&u32::try_from(h.len()).unwrap().to_be_bytes());
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(&h);
        m.extend_from_slice(payload);
        m.extend_from_slice(&[0; 4]);
        m
    }

    #[test]
    fn bedrock_event_stream_exception_after_200() {
        let ct = [("content-type", "application/vnd.amazon.eventstream")];
        let mut body = aws_message(
            &[(":event-type", "chunk"), (":message-type", "event")],
            br#"{"bytes":"eyJ0eXBlIjoiY29udGVudF9ibG9ja19kZWx0YSJ9"}"#,
        );
        assert_eq!(classify_http(200, &ct, &body).class, C::Ok);
        body.extend(aws_message(
            &[
                (":exception-type", "throttlingException"),
                (":message-type", "exception"),
            ],
            br#"{"message":"Too many requests, please wait before trying again."}"#,
        ));
        let c = classify_http(200, &ct, &body);
        assert_eq!((c.class, c.provider), (C::RateLimited, Provider::Bedrock));

        let err = aws_message(
            &[
                (":exception-type", "validationException"),
                (":message-type", "exception"),
            ],
            br#"{"message":"Input is too long for requested model."}"#,
        );
        assert_eq!(
            classify_http(200, &ct, &err).class,
            C::ContextLengthExceeded
        );
        let err = aws_message(
            &[
                (":exception-type", "modelStreamErrorException"),
                (":message-type", "exception"),
            ],
            br#"{"message":"boom"}"#,
        );
        assert_eq!(classify_http(200, &ct, &err).class, C::ServerError);
    }

    #[test]
    fn transport_helpers() {
        let t = classify_transport_timeout();
        assert_eq!((t.class, t.retryable), (C::Timeout, true));
        let c = classify_connection_failure();
        assert_eq!((c.class, c.retryable), (C::ServerError, true));
    }

    #[test]
    fn provider_hint_decides_ambiguous_statuses() {
        let body = br#"{"message":"invalid api token"}"#;
        assert_eq!(
            classify_http_from(Provider::Cohere, 498, &[], body).class,
            C::Auth
        );
        assert_eq!(
            classify_http_from(Provider::Groq, 498, &[], body).class,
            C::Overloaded
        );
        assert_eq!(classify_http(498, &[], body).class, C::Auth);
    }

    #[test]
    fn unusual_statuses_are_classified() {
        assert_eq!(classify_http(0, &[], b"").class, C::ServerError);
        assert_eq!(classify_http(302, &[], b"").class, C::BadRequest);
        assert_eq!(classify_http(999, &[], b"").class, C::ServerError);
        assert_eq!(classify_http(204, &[], b"").class, C::Ok);
    }
}
