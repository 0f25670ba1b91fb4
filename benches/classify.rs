//! Classifier cost on the hot path: a 429 OpenAI response with its rate-limit headers, an
//! Anthropic 529, and a 200 SSE stream whose error arrives as an event after content.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use downshift::{classify_http, classify_stream_event};

const OPENAI_429_HEADERS: &[(&str, &str)] = &[
    ("date", "Mon, 26 May 2025 05:00:04 GMT"),
    ("content-type", "application/json"),
    ("openai-organization", "org-abc123"),
    ("openai-processing-ms", "12"),
    ("x-ratelimit-limit-requests", "10000"),
    ("x-ratelimit-limit-tokens", "2000000"),
    ("x-ratelimit-remaining-requests", "9999"),
    ("x-ratelimit-remaining-tokens", "0"),
    ("x-ratelimit-reset-requests", "6ms"),
    ("x-ratelimit-reset-tokens", "1.574s"),
    ("retry-after", "2"),
    ("x-should-retry", "true"),
    ("x-request-id", "req_0123456789abcdef"),
];
const OPENAI_429_BODY: &[u8] = br#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-abc123 on tokens per min (TPM): Limit 2000000, Used 1999000, Requested 3000. Please try again in 1.574s. Visit https://platform.openai.com/account/rate-limits to learn more.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;

const ANTHROPIC_529_HEADERS: &[(&str, &str)] = &[
    ("content-type", "application/json"),
    ("request-id", "req_011CSHoEeqs5C35K2UUqR7Fy"),
    (
        "anthropic-organization-id",
        "0d5f0000-0000-4000-8000-000000000000",
    ),
];
const ANTHROPIC_529_BODY: &[u8] = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#;

const SSE_HEADERS: &[(&str, &str)] = &[
    ("content-type", "text/event-stream; charset=utf-8"),
    ("anthropic-ratelimit-requests-remaining", "3999"),
];
const SSE_ERROR_BODY: &[u8] = b"event: message_start
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}

event: content_block_start
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}

event: ping
data: {\"type\": \"ping\"}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello! How can I help you today?\"}}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" Here is more text.\"}}

event: error
data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}

";

fn bench(c: &mut Criterion) {
    c.bench_function("classify_http/openai_429_with_headers", |b| {
        b.iter(|| {
            classify_http(
                black_box(429),
                black_box(OPENAI_429_HEADERS),
                black_box(OPENAI_429_BODY),
            )
        });
    });
    c.bench_function("classify_http/anthropic_529", |b| {
        b.iter(|| {
            classify_http(
                black_box(529),
                black_box(ANTHROPIC_529_HEADERS),
                black_box(ANTHROPIC_529_BODY),
            )
        });
    });
    c.bench_function("classify_http/sse_200_error_event", |b| {
        b.iter(|| {
            classify_http(
                black_box(200),
                black_box(SSE_HEADERS),
                black_box(SSE_ERROR_BODY),
            )
        });
    });
    c.bench_function("classify_stream_event/ordinary_chunk", |b| {
        b.iter(|| {
            classify_stream_event(black_box(
                br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
            ))
        });
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
