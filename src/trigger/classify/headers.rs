//! What the response headers say: retry hints, `x-should-retry`, rate-limit state, the AWS
//! error type, the content type and which provider sent them.
//!
//! One pass over the headers: each name is lowercased into a stack buffer and matched against
//! the names we read (header names are case-insensitive; the first occurrence of a name wins).

use std::time::{Duration, SystemTime};

use super::parse::{
    RetryAfter, parse_reset_duration, parse_retry_after, parse_retry_after_ms, parse_rfc3339,
};
use super::{Provider, RateLimitState};

/// The raw values of the headers the classifier reads.
#[derive(Default)]
struct Raw<'a> {
    retry_after: Option<&'a str>,
    retry_after_ms: Option<&'a str>,
    should_retry: Option<&'a str>,
    amzn_error_type: Option<&'a str>,
    content_type: Option<&'a str>,
    /// `x-ratelimit-*` (OpenAI, Azure OpenAI, Groq, Together).
    limit_requests: Option<&'a str>,
    limit_tokens: Option<&'a str>,
    remaining_requests: Option<&'a str>,
    remaining_tokens: Option<&'a str>,
    reset_requests: Option<&'a str>,
    reset_tokens: Option<&'a str>,
    /// `anthropic-ratelimit-*`: [limit, remaining, reset] for requests, tokens, input, output.
    anthropic: [[Option<&'a str>; 3]; 4],
    provider: Provider,
}

impl<'a> Raw<'a> {
    fn read(headers: &'a [(&'a str, &'a str)]) -> Self {
        let mut raw = Raw::default();
        let mut buf = [0u8; 64];
        for &(name, value) in headers {
            let name = name.as_bytes().trim_ascii();
            if name.len() > buf.len() {
                continue;
            }
            let lower = &mut buf[..name.len()];
            lower.copy_from_slice(name);
            lower.make_ascii_lowercase();
            raw.take(lower, value.trim_ascii());
        }
        raw
    }

    fn take(&mut self, name: &[u8], value: &'a str) {
        let slot = match name {
            b"retry-after" => &mut self.retry_after,
            b"retry-after-ms" => &mut self.retry_after_ms,
            b"x-should-retry" => &mut self.should_retry,
            b"x-amzn-errortype" => &mut self.amzn_error_type,
            b"content-type" => &mut self.content_type,
            b"x-ratelimit-limit-requests" => &mut self.limit_requests,
            b"x-ratelimit-limit-tokens" => &mut self.limit_tokens,
            b"x-ratelimit-remaining-requests" => &mut self.remaining_requests,
            b"x-ratelimit-remaining-tokens" => &mut self.remaining_tokens,
            b"x-ratelimit-reset-requests" => &mut self.reset_requests,
            b"x-ratelimit-reset-tokens" => &mut self.reset_tokens,
            _ => {
                if let Some(rest) = name.strip_prefix(b"anthropic-ratelimit-") {
                    if let Some(slot) = self.anthropic_slot(rest) {
                        slot.get_or_insert(value);
                    }
                }
                self.note_provider(name);
                return;
            }
        };
        slot.get_or_insert(value);
        if name == b"x-amzn-errortype" {
            self.note_provider(name);
        }
    }

    fn anthropic_slot(&mut self, rest: &[u8]) -> Option<&mut Option<&'a str>> {
        let dash = rest.iter().rposition(|&b| b == b'-')?;
        let w = match &rest[..dash] {
            b"requests" => 0,
            b"tokens" => 1,
            b"input-tokens" => 2,
            b"output-tokens" => 3,
            _ => return None,
        };
        let f = match &rest[dash + 1..] {
            b"limit" => 0,
            b"remaining" => 1,
            b"reset" => 2,
            _ => return None,
        };
        Some(&mut self.anthropic[w][f])
    }

    /// Provider-identifying header names, strongest first.
    fn note_provider(&mut self, name: &[u8]) {
        let p = if name.starts_with(b"anthropic-") {
            Provider::Anthropic
        } else if name == b"x-amzn-errortype" || name.starts_with(b"x-amzn-bedrock-") {
            Provider::Bedrock
        } else if matches!(name, b"apim-request-id" | b"x-ms-region") {
            Provider::AzureOpenAi
        } else if name.starts_with(b"x-groq-") {
            Provider::Groq
        } else if name.starts_with(b"openai-") {
            Provider::OpenAi
        } else {
            return;
        };
        if rank(p) < rank(self.provider) {
            self.provider = p;
        }
    }
}

/// Detection strength: Anthropic and Bedrock headers are unambiguous; Azure fronts OpenAI
/// models and may echo `openai-*` headers, so Azure outranks OpenAI.
fn rank(p: Provider) -> u8 {
    match p {
        Provider::Anthropic => 0,
        Provider::Bedrock => 1,
        Provider::AzureOpenAi => 2,
        Provider::Groq => 3,
        Provider::OpenAi => 4,
        _ => u8::MAX,
    }
}

/// Facts read from headers, before the body is looked at.
#[derive(Default)]
pub(super) struct HeaderFacts<'a> {
    /// `retry-after-ms` (preferred) or delay-seconds `retry-after`.
    pub(super) retry_after: Option<Duration>,
    /// An HTTP-date `retry-after`.
    pub(super) retry_at: Option<SystemTime>,
    /// `x-should-retry: true|false`.
    pub(super) should_retry: Option<bool>,
    /// `x-amzn-errortype`, normalised (`ThrottlingException`).
    pub(super) amzn_error_type: Option<&'a str>,
    /// The parsed rate-limit headers.
    pub(super) rate_limit: Option<RateLimitState>,
    /// Which provider the headers identify, if any.
    pub(super) provider: Provider,
    /// The response is a server-sent-event stream.
    pub(super) event_stream: bool,
    /// The response is an AWS binary event stream.
    pub(super) aws_event_stream: bool,
}

impl<'a> HeaderFacts<'a> {
    pub(super) fn read(headers: &'a [(&'a str, &'a str)]) -> Self {
        let raw = Raw::read(headers);
        // `retry-after-ms` takes precedence over `retry-after` (Azure OpenAI sends both; the
        // OpenAI and Anthropic SDKs check `retry-after-ms` first).
        let retry_after_ms = raw.retry_after_ms.and_then(parse_retry_after_ms);
        let (retry_after, retry_at) = match raw.retry_after.and_then(parse_retry_after) {
            Some(RetryAfter::Delay(d)) => (retry_after_ms.or(Some(d)), None),
            Some(RetryAfter::At(t)) => (retry_after_ms, Some(t)),
            None => (retry_after_ms, None),
        };
        let should_retry = raw.should_retry.and_then(|v| {
            if v.eq_ignore_ascii_case("true") {
                Some(true)
            } else if v.eq_ignore_ascii_case("false") {
                Some(false)
            } else {
                None
            }
        });
        let content_type = raw.content_type.unwrap_or("").as_bytes();
        HeaderFacts {
            retry_after,
            retry_at,
            should_retry,
            amzn_error_type: raw.amzn_error_type.map(normalize_aws_code),
            rate_limit: rate_limit(&raw),
            provider: raw.provider,
            event_stream: contains_ci(content_type, b"text/event-stream"),
            aws_event_stream: contains_ci(content_type, b"application/vnd.amazon.eventstream"),
        }
    }
}

/// Strips the namespace and URI decorations from an AWS error code:
/// `ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/` and
/// `com.amazon.coral.service#ThrottlingException` both become `ThrottlingException`
/// (the normalisation smithy-python's `parse_rest_json_error_info` applies).
pub(super) fn normalize_aws_code(code: &str) -> &str {
    let code = code.trim();
    let code = code.rsplit_once('#').map_or(code, |(_, c)| c);
    code.split_once(':').map_or(code, |(c, _)| c).trim()
}

fn rate_limit(raw: &Raw<'_>) -> Option<RateLimitState> {
    let num = |v: Option<&str>| v.and_then(|v| v.parse::<u64>().ok());
    let rel = |v: Option<&str>| v.and_then(parse_reset_duration);
    let abs = |v: Option<&str>| v.and_then(parse_rfc3339);
    let [req, tok, input, output] = raw.anthropic;

    let s = RateLimitState {
        // OpenAI-style: relative Go-duration resets. Anthropic: absolute RFC 3339 resets.
        requests_limit: num(raw.limit_requests).or_else(|| num(req[0])),
        requests_remaining: num(raw.remaining_requests).or_else(|| num(req[1])),
        requests_reset: rel(raw.reset_requests),
        tokens_limit: num(raw.limit_tokens).or_else(|| num(tok[0])),
        tokens_remaining: num(raw.remaining_tokens).or_else(|| num(tok[1])),
        tokens_reset: rel(raw.reset_tokens),
        requests_reset_at: abs(req[2]),
        tokens_reset_at: abs(tok[2]),
        input_tokens_limit: num(input[0]),
        input_tokens_remaining: num(input[1]),
        input_tokens_reset_at: abs(input[2]),
        output_tokens_limit: num(output[0]),
        output_tokens_remaining: num(output[1]),
        output_tokens_reset_at: abs(output[2]),
    };
    (s != RateLimitState::default()).then_some(s)
}

/// ASCII-case-insensitive substring test on bytes.
pub(super) fn contains_ci(haystack: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    if haystack.len() < needle.len() {
        return false;
    }
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}
