//! Property tests: the classifier is total (no input panics) and never marks a request-caused
//! error (context length, content filter, auth, bad request) as retryable or as capacity.

use downshift::{
    OutcomeClass, classify_http, classify_sse_event, classify_stream_event, parse_reset_duration,
    parse_retry_after, parse_rfc3339,
};
use proptest::prelude::*;

/// Header names the classifier reads, so random values hit the parsers.
const NAMES: &[&str] = &[
    "retry-after",
    "Retry-After-Ms",
    "x-should-retry",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-tokens",
    "X-RateLimit-Reset-Requests",
    "x-ratelimit-reset-tokens",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-input-tokens-reset",
    "x-amzn-errortype",
    "content-type",
    "x-groq-region",
    "apim-request-id",
];

/// Realistic bodies; the strategy truncates and corrupts them.
const SEEDS: &[&str] = &[
    r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
    r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"26s"}]}}"#,
    r#"{"error":{"message":"filtered","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation"}}}"#,
    r#"{"__type":"com.amazon.coral.validate#ValidationException","message":"Input is too long for requested model."}"#,
    r#"{"object":"error","message":"Rate limit exceeded","type":"rate_limited","param":null,"code":"1300"}"#,
    "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n",
    "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"content_filter\"}]}\n\ndata: [DONE]\n\n",
    r#"{"candidates":[{"finishReason":"SAFETY"}],"promptFeedback":{"blockReason":"SAFETY"}}"#,
    r#"[{"error":{"code":503,"status":"UNAVAILABLE","message":"overloaded"}}]"#,
    "You are using a Trial key, which is limited to 1000 API calls / month. Please try again in 1m2.5s. You will regain access on 2026-08-01 at 00:00 UTC.",
];

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9]{0,25}(\\.[0-9]{0,12})?(h|m|s|ms|us|µs|ns)?",
        "(true|false|TRUE)",
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?(Z|[+-][0-9]{2}:[0-9]{2})?",
        "(Mon, )?[0-9]{1,2} (Jan|Feb|Oct) [0-9]{1,5} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT",
        "(ThrottlingException|ValidationException)(:http://internal.amazon.com/coral/)?",
        "(text/event-stream|application/vnd.amazon.eventstream|application/json)",
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        proptest::sample::select(NAMES).prop_map(str::to_owned),
        any::<String>(),
    ];
    proptest::collection::vec((name, header_value()), 0..8)
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        (
            proptest::sample::select(SEEDS),
            any::<prop::sample::Index>(),
            any::<u8>(),
            any::<bool>()
        )
            .prop_map(|(seed, cut, byte, corrupt)| {
                let mut b = seed.as_bytes().to_vec();
                let i = cut.index(b.len() + 1);
                if corrupt && i < b.len() {
                    b[i] = byte;
                } else {
                    b.truncate(i);
                }
                b
            }),
    ]
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        any::<u16>(),
        proptest::sample::select(
            &[
                200u16, 400, 401, 402, 403, 408, 413, 424, 429, 498, 499, 500, 503, 504, 529
            ][..]
        ),
    ]
}

fn assert_invariants(c: &downshift::Classification) {
    if !c.class.is_capacity() {
        assert!(!c.retryable, "{} must not be retryable: {c:?}", c.class);
    }
    if c.class == OutcomeClass::Ok {
        assert!(!c.retryable);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn classify_http_is_total(status in status(), headers in headers(), body in body()) {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let c = classify_http(status, &h, &body);
        assert_invariants(&c);
    }

    #[test]
    fn stream_payloads_are_total(data in body(), event in proptest::option::of("(error|response.failed|ping|[a-z]{0,8})")) {
        if let Some(c) = classify_stream_event(&data) {
            assert_invariants(&c);
        }
        if let Some(c) = classify_sse_event(event.as_deref(), &data) {
            assert_invariants(&c);
        }
    }

    #[test]
    fn time_parsers_are_total(s in any::<String>(), v in header_value()) {
        let _ = parse_reset_duration(&s);
        let _ = parse_retry_after(&s);
        let _ = parse_rfc3339(&s);
        let _ = parse_reset_duration(&v);
        let _ = parse_retry_after(&v);
        let _ = parse_rfc3339(&v);
    }

    #[test]
    fn aws_event_stream_bytes_are_total(
        body in proptest::collection::vec(any::<u8>(), 0..256),
        inner in proptest::collection::vec(any::<u8>(), 0..128),
        headers_len in any::<u32>(),
    ) {
        let ct = [("content-type", "application/vnd.amazon.eventstream")];
        assert_invariants(&classify_http(200, &ct, &body));
        // A well-formed prelude around random headers and payload, so the header walker runs.
        let total = u32::try_from(inner.len() + 16).unwrap();
        let mut framed = total.to_be_bytes().to_vec();
        framed.extend_from_slice(&(headers_len % (total - 15)).to_be_bytes());
        framed.extend_from_slice(&[0; 4]);
        framed.extend_from_slice(&inner);
        framed.extend_from_slice(&[0; 4]);
        assert_invariants(&classify_http(200, &ct, &framed));
    }
}
