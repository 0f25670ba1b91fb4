//! What the body says. One extraction step turns every provider's error shape into the same
//! [`ErrorFacts`]; the rules in `rules.rs` then read only those facts. Success bodies and stream
//! chunks are checked for content-filter signals, and are parsed only when they contain a
//! marker. Facts borrow from the parsed JSON; beyond `serde_json`'s own allocations only small
//! vectors of detail codes (and a buffer for multi-line SSE data) are allocated.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use memchr::memmem::Finder;
use serde_json::{Map, Value};

use super::headers::{contains_ci, normalize_aws_code};
use super::parse::{parse_regain_date, parse_reset_duration};
use super::rules::{Verdict, decide};
use super::{OutcomeClass, Provider};

/// Error fields read out of one error body, whatever its provider shape. Borrowed from the
/// parsed JSON (or from the raw text when the body is not JSON).
#[derive(Default)]
pub(super) struct ErrorFacts<'v> {
    /// The provider the body shape identifies.
    pub(super) provider: Provider,
    /// `error.type` (OpenAI, Anthropic), `type` (Mistral), `__type` / `x-amzn-errortype`
    /// (Bedrock), the stream event `code` (OpenAI Responses).
    pub(super) kind: Option<&'v str>,
    /// `error.code` when it is a string (OpenAI, Azure, Mistral, Groq).
    pub(super) code: Option<&'v str>,
    /// Google's canonical `error.status` (`RESOURCE_EXHAUSTED`).
    pub(super) gstatus: Option<&'v str>,
    /// Azure's `error.innererror.code`.
    pub(super) inner: Option<&'v str>,
    /// Machine-readable detail codes: Anthropic `error.details.error_code`, Google
    /// `ErrorInfo.reason`.
    pub(super) details: Vec<&'v str>,
    /// Google `QuotaFailure.violations[].quotaId` and `.quotaMetric`.
    pub(super) quota: Vec<&'v str>,
    /// The human-readable message.
    pub(super) message: Option<&'v str>,
    /// Google `RetryInfo.retryDelay`.
    pub(super) retry_delay: Option<Duration>,
    /// An HTTP status carried inside the body (Google `error.code`, Azure `error.status`,
    /// Mistral `raw_status_code`).
    pub(super) embedded_status: Option<u16>,
    /// The body was not JSON: `message` holds the raw text and structured fields are matched
    /// as quoted tokens inside it.
    pub(super) raw: bool,
}

impl<'v> ErrorFacts<'v> {
    /// Facts for a body that is not (valid, complete) JSON: truncated, HTML, plain text.
    pub(super) fn raw(text: &'v str) -> Self {
        ErrorFacts {
            message: Some(text),
            raw: true,
            ..ErrorFacts::default()
        }
    }

    /// A relative delay found in the body: Google `RetryInfo`, else the message's own
    /// "try again in 6ms" / "retry in 35.6s" / "retry after 6 seconds". `lower` is the
    /// ASCII-lowercased message.
    pub(super) fn retry_hint(&self, lower: Option<&str>) -> Option<Duration> {
        self.retry_delay
            .or_else(|| lower.and_then(retry_hint_from_message))
    }

    /// An absolute time found in the (lowercased) message: "You will regain access on
    /// 2026-08-01 at 00:00 UTC".
    pub(super) fn reset_hint(lower: Option<&str>) -> Option<SystemTime> {
        const NEEDLE: &str = "regain access on ";
        let msg = lower?;
        let at = msg.find(NEEDLE)?;
        parse_regain_date(&msg[at + NEEDLE.len()..])
    }
}

/// Reads the error object out of a parsed body, if there is one. A bare `{"message": ".."}` counts
/// only when `bare_message` is set (error statuses), never in a successful body or stream.
pub(super) fn error_facts(v: &Value, bare_message: bool) -> Option<ErrorFacts<'_>> {
    // Vertex AI sometimes wraps the Google error in a one-element array.
    let root = match v {
        Value::Array(items) => items.first()?,
        other => other,
    };
    let obj = root.as_object()?;
    let mut f = ErrorFacts::default();

    if let Some(err) = obj.get("error") {
        match err {
            Value::Object(e) => read_error_object(obj, e, &mut f),
            Value::String(s) => f.message = Some(s),
            _ => return None,
        }
    } else if let Some(t) = str_of(obj, "__type") {
        // AWS JSON protocols: {"__type": "...#ValidationException", "message": "..."}.
        f.provider = Provider::Bedrock;
        f.kind = Some(normalize_aws_code(t));
        f.message = str_of(obj, "message").or_else(|| str_of(obj, "Message"));
    } else if str_of(obj, "object") == Some("error") {
        // Mistral (and other OpenAI-compatible servers): {"object":"error","message",...}.
        f.provider = Provider::Mistral;
        f.kind = str_of(obj, "type");
        f.code = str_of(obj, "code");
        f.message = str_of(obj, "message");
        f.embedded_status =
            status_of(obj.get("raw_status_code")).or_else(|| status_of(obj.get("code")));
    } else if str_of(obj, "type") == Some("error") {
        // OpenAI Responses stream: {"type":"error","code":"...","message":"..."}.
        f.code = str_of(obj, "code");
        f.message = str_of(obj, "message");
        f.provider = Provider::OpenAi;
    } else if str_of(obj, "type") == Some("response.failed") {
        // OpenAI Responses stream: {"type":"response.failed","response":{"error":{...}}}.
        let e = obj.get("response")?.get("error")?.as_object()?;
        f.provider = Provider::OpenAi;
        f.code = str_of(e, "code");
        f.message = str_of(e, "message");
        if f.code.is_none() && f.message.is_none() {
            return None;
        }
    } else if let Some(m) = str_of(obj, "message").or_else(|| str_of(obj, "Message")) {
        // Bare {"message": "..."}: Bedrock (type in x-amzn-errortype), Cohere, gateways.
        if !bare_message {
            return None;
        }
        f.message = Some(m);
        f.kind = str_of(obj, "code");
        if contains_ci(m.as_bytes(), b"trial key") || contains_ci(m.as_bytes(), b"cohere") {
            f.provider = Provider::Cohere;
        }
    } else {
        return None;
    }
    Some(f)
}

fn read_error_object<'v>(
    root: &'v Map<String, Value>,
    e: &'v Map<String, Value>,
    f: &mut ErrorFacts<'v>,
) {
    f.kind = str_of(e, "type");
    f.code = str_of(e, "code");
    f.message = str_of(e, "message");

    if str_of(root, "type") == Some("error") {
        // Anthropic: {"type":"error","error":{"type","message","details":{"error_code"}}}.
        f.provider = Provider::Anthropic;
        if let Some(code) = e
            .get("details")
            .and_then(|d| d.get("error_code"))
            .and_then(Value::as_str)
        {
            f.details.push(code);
        }
        return;
    }

    if let Some(status) = str_of(e, "status").filter(|s| is_canonical_code(s)) {
        // Google: {"error":{"code":429,"message","status":"RESOURCE_EXHAUSTED","details":[..]}}.
        f.provider = Provider::Gemini;
        f.gstatus = Some(status);
        f.embedded_status = status_of(e.get("code"));
        for d in e
            .get("details")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(d) = d.as_object() else { continue };
            let kind = str_of(d, "@type").unwrap_or("");
            if kind.ends_with("google.rpc.RetryInfo") {
                f.retry_delay = str_of(d, "retryDelay").and_then(parse_reset_duration);
            } else if kind.ends_with("google.rpc.QuotaFailure") {
                for v in d
                    .get("violations")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    for key in ["quotaId", "quotaMetric"] {
                        if let Some(s) = v.get(key).and_then(Value::as_str) {
                            f.quota.push(s);
                        }
                    }
                }
            } else if let Some(reason) = str_of(d, "reason") {
                f.details.push(reason);
            }
        }
        return;
    }

    f.embedded_status = status_of(e.get("status")).or_else(|| status_of(e.get("code")));
    if let Some(inner) = e
        .get("innererror")
        .and_then(|i| i.get("code"))
        .and_then(Value::as_str)
    {
        f.provider = Provider::AzureOpenAi;
        f.inner = Some(inner);
    } else {
        f.provider = Provider::OpenAi;
    }
}

/// Google canonical codes are `UPPER_SNAKE_CASE` (`RESOURCE_EXHAUSTED`).
fn is_canonical_code(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
}

fn str_of<'v>(obj: &'v Map<String, Value>, key: &str) -> Option<&'v str> {
    obj.get(key).and_then(Value::as_str)
}

/// An HTTP status written as a number (or a numeric string such as Azure's `"code": "429"`).
fn status_of(v: Option<&Value>) -> Option<u16> {
    let n = match v? {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => s.parse::<u64>().ok()?,
        _ => return None,
    };
    u16::try_from(n).ok().filter(|s| (100..=599).contains(s))
}

/// Whether a successful body (or one stream chunk) says the provider's safety system blocked
/// the prompt or the output.
pub(super) fn content_filtered(v: &Value) -> bool {
    match v {
        Value::Array(items) => items.iter().any(content_filtered),
        Value::Object(obj) => object_filtered(obj),
        _ => false,
    }
}

/// The provider a successful body's shape belongs to.
pub(super) fn success_provider(v: &Value) -> Provider {
    let v = match v {
        Value::Array(items) => items.first().unwrap_or(v),
        other => other,
    };
    let has = |k: &str| v.get(k).is_some();
    if has("candidates") || has("promptFeedback") {
        Provider::Gemini
    } else if has("choices") {
        Provider::OpenAi
    } else if has("stop_reason")
        || v.get("type").and_then(Value::as_str).is_some_and(|t| {
            t == "message" || t.starts_with("message_") || t.starts_with("content_block")
        })
    {
        Provider::Anthropic
    } else if has("stopReason") || has("output") && has("usage") && has("metrics") {
        Provider::Bedrock
    } else {
        Provider::Unknown
    }
}

/// Gemini finish reasons that mean the output was withheld by a filter.
const GEMINI_FILTER_FINISH: &[&str] = &[
    "SAFETY",
    "RECITATION",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
];

fn object_filtered(obj: &Map<String, Value>) -> bool {
    // Gemini: the prompt was blocked.
    if let Some(reason) = obj
        .get("promptFeedback")
        .and_then(|p| p.get("blockReason"))
        .and_then(Value::as_str)
    {
        if !reason.is_empty() && reason != "BLOCKED_REASON_UNSPECIFIED" {
            return true;
        }
    }
    // Gemini: a candidate was stopped by a filter.
    let finish_in = |list: &str, key: &str, hit: &dyn Fn(&str) -> bool| {
        obj.get(list)
            .and_then(Value::as_array)
            .is_some_and(|items| items.iter().filter_map(|c| c.get(key)?.as_str()).any(hit))
    };
    if finish_in("candidates", "finishReason", &|r| {
        GEMINI_FILTER_FINISH.contains(&r)
    }) {
        return true;
    }
    // OpenAI / Azure OpenAI chat completions (and their stream chunks).
    if finish_in("choices", "finish_reason", &|r| r == "content_filter") {
        return true;
    }
    // Anthropic: a message (or a message_delta's delta) stopped with a refusal.
    let refusal = |o: &Map<String, Value>| str_of(o, "stop_reason") == Some("refusal");
    if refusal(obj)
        || obj
            .get("delta")
            .and_then(Value::as_object)
            .is_some_and(refusal)
    {
        return true;
    }
    // Bedrock Converse (and the ConverseStream `messageStop` event).
    let bedrock_stop = |o: &Map<String, Value>| {
        matches!(
            str_of(o, "stopReason"),
            Some("guardrail_intervened" | "content_filtered")
        )
    };
    if bedrock_stop(obj)
        || obj
            .get("messageStop")
            .and_then(Value::as_object)
            .is_some_and(bedrock_stop)
    {
        return true;
    }
    // OpenAI Responses: an incomplete response cut by the content filter.
    let incomplete = |o: &Map<String, Value>| {
        o.get("incomplete_details")
            .and_then(|d| d.get("reason"))
            .and_then(Value::as_str)
            == Some("content_filter")
    };
    incomplete(obj)
        || obj
            .get("response")
            .and_then(Value::as_object)
            .is_some_and(incomplete)
}

/// Byte markers without which a successful body or stream chunk cannot hold an error or a
/// filter signal. Bodies without any of them are never parsed.
const MARKERS: [&[u8]; 12] = [
    b"error",
    b"content_filter",
    b"blockReason",
    b"\"SAFETY\"",
    b"RECITATION",
    b"BLOCKLIST",
    b"PROHIBITED_CONTENT",
    b"\"SPII\"",
    b"IMAGE_SAFETY",
    b"refusal",
    b"guardrail_intervened",
    b"response.failed",
];

/// Whether `data` contains any [`MARKERS`]: one byte-dispatch pass for short chunks, SIMD
/// substring searches (built once) for long bodies.
pub(super) fn might_signal(data: &[u8]) -> bool {
    if data.len() >= 128 {
        return finders().iter().any(|f| f.find(data).is_some());
    }
    (0..data.len()).any(|i| {
        let rest = &data[i..];
        let starts = |m: &[u8]| rest.starts_with(m);
        match data[i] {
            b'e' => starts(MARKERS[0]),
            b'c' => starts(MARKERS[1]),
            b'b' => starts(MARKERS[2]),
            b'"' => starts(MARKERS[3]) || starts(MARKERS[7]),
            b'R' => starts(MARKERS[4]),
            b'B' => starts(MARKERS[5]),
            b'P' => starts(MARKERS[6]),
            b'I' => starts(MARKERS[8]),
            b'r' => starts(MARKERS[9]) || starts(MARKERS[11]),
            b'g' => starts(MARKERS[10]),
            _ => false,
        }
    })
}

fn finders() -> &'static [Finder<'static>] {
    static FINDERS: LazyLock<Vec<Finder<'static>>> =
        LazyLock::new(|| MARKERS.iter().map(Finder::new).collect());
    &FINDERS
}

/// Classifies one stream event's data payload. `event` is the SSE `event:` name, if any.
/// Returns `None` for ordinary chunks.
pub(super) fn stream_event_verdict(
    event: Option<&str>,
    data: &[u8],
    provider: Provider,
    status: Option<u16>,
) -> Option<Verdict> {
    let trimmed = data.trim_ascii();
    let is_error_event = matches!(event, Some("error" | "response.failed"));
    if trimmed.is_empty() && !is_error_event {
        return None;
    }
    if trimmed.starts_with(b"[DONE]") {
        return None;
    }
    if !is_error_event && !might_signal(trimmed) {
        return None;
    }
    let parsed = serde_json::from_slice::<Value>(trimmed).ok();
    if let Some(v) = &parsed {
        if let Some(facts) = error_facts(v, false) {
            return Some(decide(status, provider, &facts, OutcomeClass::ServerError));
        }
        if content_filtered(v) {
            let provider = if provider == Provider::Unknown {
                success_provider(v)
            } else {
                provider
            };
            return Some(Verdict::plain(
                OutcomeClass::ContentFiltered,
                "stream.content_filtered",
                provider,
            ));
        }
    }
    if is_error_event {
        // An `event: error` we cannot read is still a failure of the stream.
        let text = std::str::from_utf8(trimmed).unwrap_or("");
        let facts = ErrorFacts::raw(text);
        return Some(decide(status, provider, &facts, OutcomeClass::ServerError));
    }
    None
}

/// Scans a `text/event-stream` body for the first error event or content-filter signal.
///
/// The body is searched once for the markers; only `event: error` / `response.failed` events
/// and events whose bytes reach the next marker are parsed, so an ordinary stream costs a few
/// SIMD passes and one line split.
pub(super) fn scan_sse(body: &[u8], provider: Provider, status: Option<u16>) -> Option<Verdict> {
    let mut next_marker = next_marker_at(body, 0);
    let mut event: Option<&str> = None;
    // Most events carry one `data:` line; multi-line data is joined only when needed.
    let mut single: Option<&[u8]> = None;
    let mut joined: Vec<u8> = Vec::new();
    let mut pos = 0;
    loop {
        let at_end = pos > body.len();
        let (line, line_end) = if at_end {
            (&b""[..], body.len())
        } else {
            let end = memchr::memchr(b'\n', &body[pos..]).map_or(body.len(), |i| pos + i);
            let line = &body[pos..end];
            pos = end + 1;
            (line.strip_suffix(b"\r").unwrap_or(line), end)
        };
        if line.is_empty() {
            // End of an event: dispatch it.
            let data: &[u8] = if joined.is_empty() {
                single.unwrap_or(b"")
            } else {
                &joined
            };
            let error_event = matches!(event, Some("error" | "response.failed"));
            if error_event || (!data.is_empty() && next_marker < line_end) {
                if let Some(v) = stream_event_verdict(event, data, provider, status) {
                    return Some(v);
                }
                if next_marker < line_end {
                    next_marker = next_marker_at(body, line_end);
                }
            }
            if at_end {
                return None;
            }
            event = None;
            single = None;
            joined.clear();
            continue;
        }
        if line.first() == Some(&b':') {
            continue; // comment / keep-alive
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &b""[..]),
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match field {
            b"event" => event = std::str::from_utf8(value).ok().map(str::trim),
            b"data" => match single.take() {
                None if joined.is_empty() => single = Some(value),
                prev => {
                    if let Some(p) = prev {
                        joined.extend_from_slice(p);
                    }
                    joined.push(b'\n');
                    joined.extend_from_slice(value);
                }
            },
            _ => {}
        }
    }
}

/// Offset of the first marker at or after `from`, or `body.len()` when there is none.
fn next_marker_at(body: &[u8], from: usize) -> usize {
    let rest = body.get(from..).unwrap_or(&[]);
    finders()
        .iter()
        .filter_map(|f| f.find(rest))
        .min()
        .map_or(body.len(), |i| from + i)
}

/// Whether a body without an event-stream content type still looks like SSE.
pub(super) fn looks_like_sse(body: &[u8]) -> bool {
    let b = body.trim_ascii_start();
    b.starts_with(b"event:") || b.starts_with(b"data:") || b.starts_with(b": ")
}

/// Scans an AWS binary event stream (`application/vnd.amazon.eventstream`, Bedrock
/// `InvokeModelWithResponseStream` / `ConverseStream`) for an exception or error message.
pub(super) fn scan_aws_event_stream(body: &[u8], provider: Provider) -> Option<Verdict> {
    let mut rest = body;
    while rest.len() >= 16 {
        let total = u32::from_be_bytes(rest[0..4].try_into().ok()?) as usize;
        let headers_len = u32::from_be_bytes(rest[4..8].try_into().ok()?) as usize;
        if total < 16 || total > rest.len() || headers_len > total - 16 {
            return None;
        }
        let headers = &rest[12..12 + headers_len];
        let payload = &rest[12 + headers_len..total - 4];
        let mut message_type = None;
        let mut code = None;
        let mut message = None;
        for_each_aws_header(headers, |name, value| match name {
            b":message-type" => message_type = Some(value),
            b":exception-type" | b":error-code" => code = std::str::from_utf8(value).ok(),
            b":error-message" => message = std::str::from_utf8(value).ok(),
            _ => {}
        });
        if matches!(message_type, Some(b"exception" | b"error")) {
            let parsed = serde_json::from_slice::<Value>(payload).ok();
            let mut facts = ErrorFacts {
                provider: Provider::Bedrock,
                ..ErrorFacts::default()
            };
            facts.kind = code.map(normalize_aws_code);
            facts.message = message.or_else(|| {
                parsed
                    .as_ref()
                    .and_then(|v| v.get("message"))
                    .and_then(Value::as_str)
            });
            let provider = if provider == Provider::Unknown {
                Provider::Bedrock
            } else {
                provider
            };
            return Some(decide(None, provider, &facts, OutcomeClass::ServerError));
        }
        if let Ok(v) = serde_json::from_slice::<Value>(payload) {
            if might_signal(payload) && content_filtered(&v) {
                return Some(Verdict::plain(
                    OutcomeClass::ContentFiltered,
                    "stream.content_filtered",
                    provider,
                ));
            }
        }
        rest = &rest[total..];
    }
    None
}

/// Walks AWS event-stream headers: `name_len:u8 name type:u8 value`.
fn for_each_aws_header<'a>(mut h: &'a [u8], mut f: impl FnMut(&'a [u8], &'a [u8])) {
    while let Some((&name_len, tail)) = h.split_first() {
        let Some(name) = tail.get(..usize::from(name_len)) else {
            return;
        };
        let tail = &tail[usize::from(name_len)..];
        let Some((&kind, tail)) = tail.split_first() else {
            return;
        };
        let fixed = match kind {
            0 | 1 => Some(0),
            2 => Some(1),
            3 => Some(2),
            4 => Some(4),
            5 | 8 => Some(8),
            9 => Some(16),
            6 | 7 => None,
            _ => return,
        };
        let (value, tail) = match fixed {
            Some(n) => match (tail.get(..n), tail.get(n..)) {
                (Some(v), Some(t)) => (v, t),
                _ => return,
            },
            None => {
                let Some(len) = tail.get(..2) else { return };
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                match (tail.get(2..2 + len), tail.get(2 + len..)) {
                    (Some(v), Some(t)) => (v, t),
                    _ => return,
                }
            }
        };
        f(name, value);
        h = tail;
    }
}

/// "Please try again in 6ms." (OpenAI, Groq), "Please retry in 35.6s." (Gemini),
/// "Please retry after 6 seconds." (Azure OpenAI). `msg` is ASCII-lowercased.
pub(super) fn retry_hint_from_message(msg: &str) -> Option<Duration> {
    for needle in ["try again in ", "retry in "] {
        if let Some(at) = msg.find(needle) {
            let tail = &msg[at + needle.len()..];
            let token = tail.split(|c: char| c.is_whitespace() || c == ',').next()?;
            let token = token.trim_end_matches(['.', ')', ';']);
            if let Some(d) = parse_reset_duration(token) {
                return Some(d);
            }
        }
    }
    const AFTER: &str = "retry after ";
    let at = msg.find(AFTER)?;
    let mut words = msg[at + AFTER.len()..].split_whitespace();
    let n = words.next()?;
    if words.next().unwrap_or("").starts_with("second") {
        return parse_reset_duration(n);
    }
    None
}
