//! Replays the real provider response shapes in `tests/data/providers/*.json` through
//! `classify_http` and checks every expectation, reporting all failures at once.
//!
//! Case format (one JSON array of cases per provider file):
//!
//! ```json
//! {
//!   "name": "anthropic 529 overloaded_error",
//!   "provider": "anthropic",            // who was called; passed to the classifier only if "hint"
//!   "source": "https://docs.claude.com/en/api/errors",
//!   "status": 529,
//!   "headers": [["content-type", "application/json"]],
//!   "body": "..." | "body_json": {..} | "body_lines": ["event: error", "data: {..}", ""],
//!   "hint": false,
//!   "expect": {
//!     "class": "overloaded", "retryable": true,
//!     "retry_after_ms": 1200 | null, "reset_at": "2026-01-15T14:23:15Z" | null,
//!     "provider": "anthropic", "rule": "anthropic.type.overloaded_error",
//!     "rate_limit": { "requests_limit": 4000, "tokens_reset_ms": 1574, "tokens_reset_at": "..." }
//!   }
//! }
//! ```
//!
//! Keys absent from `expect` are not checked; `null` means "must be absent". Set
//! `CLASSIFY_DUMP=1` (with `--nocapture`) to print every case's classification and rule.

use std::path::Path;
use std::time::{Duration, SystemTime};

use downshift::{
    Classification, Provider, RateLimitState, classify_http, classify_http_from, parse_rfc3339,
};
use serde_json::Value;

fn data_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/providers"))
}

fn body_of(case: &Value) -> Vec<u8> {
    if let Some(s) = case.get("body").and_then(Value::as_str) {
        return s.as_bytes().to_vec();
    }
    if let Some(j) = case.get("body_json") {
        return serde_json::to_vec(j).expect("body_json serializes");
    }
    if let Some(lines) = case.get("body_lines").and_then(Value::as_array) {
        let mut out = String::new();
        for l in lines {
            out.push_str(l.as_str().expect("body_lines are strings"));
            out.push('\n');
        }
        return out.into_bytes();
    }
    Vec::new()
}

fn headers_of(case: &Value) -> Vec<(String, String)> {
    case.get("headers")
        .and_then(Value::as_array)
        .map(|hs| {
            hs.iter()
                .map(|pair| {
                    let p = pair.as_array().expect("header is a [name, value] pair");
                    (
                        p[0].as_str().expect("header name").to_owned(),
                        p[1].as_str().expect("header value").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn time(s: &str) -> SystemTime {
    parse_rfc3339(s).unwrap_or_else(|| panic!("bad RFC 3339 in test data: {s}"))
}

fn ms(d: Option<Duration>) -> Option<u128> {
    d.map(|d| d.as_millis())
}

/// Compares one optional expectation; `null` expects `None`.
fn check_opt<T: PartialEq + std::fmt::Debug>(
    errors: &mut Vec<String>,
    what: &str,
    want: Option<&Value>,
    got: Option<T>,
    conv: impl Fn(&Value) -> T,
) {
    let Some(want) = want else { return };
    let want = if want.is_null() {
        None
    } else {
        Some(conv(want))
    };
    if want != got {
        errors.push(format!("{what}: want {want:?}, got {got:?}"));
    }
}

fn check_rate_limit(errors: &mut Vec<String>, want: &Value, got: Option<&RateLimitState>) {
    let Some(got) = got else {
        errors.push(format!("rate_limit: want {want}, got None"));
        return;
    };
    let want = want.as_object().expect("rate_limit is an object");
    for (key, value) in want {
        let num = |v: Option<u64>| (v, value.as_u64());
        let (got_v, want_v): (String, String) = match key.as_str() {
            "requests_limit" => fmt2(num(got.requests_limit)),
            "requests_remaining" => fmt2(num(got.requests_remaining)),
            "tokens_limit" => fmt2(num(got.tokens_limit)),
            "tokens_remaining" => fmt2(num(got.tokens_remaining)),
            "input_tokens_limit" => fmt2(num(got.input_tokens_limit)),
            "input_tokens_remaining" => fmt2(num(got.input_tokens_remaining)),
            "output_tokens_limit" => fmt2(num(got.output_tokens_limit)),
            "output_tokens_remaining" => fmt2(num(got.output_tokens_remaining)),
            "requests_reset_ms" => fmt2((ms(got.requests_reset), value.as_u64().map(u128::from))),
            "tokens_reset_ms" => fmt2((ms(got.tokens_reset), value.as_u64().map(u128::from))),
            "requests_reset_at" => fmt2((got.requests_reset_at, value.as_str().map(time))),
            "tokens_reset_at" => fmt2((got.tokens_reset_at, value.as_str().map(time))),
            "input_tokens_reset_at" => fmt2((got.input_tokens_reset_at, value.as_str().map(time))),
            "output_tokens_reset_at" => {
                fmt2((got.output_tokens_reset_at, value.as_str().map(time)))
            }
            other => panic!("unknown rate_limit key in test data: {other}"),
        };
        if got_v != want_v {
            errors.push(format!("rate_limit.{key}: want {want_v}, got {got_v}"));
        }
    }
}

fn fmt2<T: std::fmt::Debug>((got, want): (Option<T>, Option<T>)) -> (String, String) {
    (format!("{got:?}"), format!("{want:?}"))
}

fn check_case(case: &Value, c: &Classification) -> Vec<String> {
    let expect = case.get("expect").expect("case has expect");
    let mut errors = Vec::new();
    if let Some(class) = expect.get("class").and_then(Value::as_str) {
        if c.class.as_str() != class {
            errors.push(format!(
                "class: want {class}, got {} (rule {})",
                c.class, c.rule
            ));
        }
    }
    if let Some(r) = expect.get("retryable").and_then(Value::as_bool) {
        if c.retryable != r {
            errors.push(format!("retryable: want {r}, got {}", c.retryable));
        }
    }
    check_opt(
        &mut errors,
        "retry_after_ms",
        expect.get("retry_after_ms"),
        ms(c.retry_after),
        |v| u128::from(v.as_u64().expect("retry_after_ms is a number")),
    );
    check_opt(
        &mut errors,
        "reset_at",
        expect.get("reset_at"),
        c.reset_at,
        |v| time(v.as_str().expect("reset_at is a string")),
    );
    if let Some(p) = expect.get("provider").and_then(Value::as_str) {
        if c.provider.as_str() != p {
            errors.push(format!("provider: want {p}, got {}", c.provider));
        }
    }
    if let Some(rule) = expect.get("rule").and_then(Value::as_str) {
        if c.rule != rule {
            errors.push(format!("rule: want {rule}, got {}", c.rule));
        }
    }
    if let Some(rl) = expect.get("rate_limit") {
        check_rate_limit(&mut errors, rl, c.rate_limit.as_ref());
    }
    // The invariant every case must also satisfy.
    if !c.class.is_capacity() && c.retryable {
        errors.push(format!("non-capacity class {} is retryable", c.class));
    }
    errors
}

#[test]
fn every_recorded_provider_response_classifies_as_expected() {
    let mut files: Vec<_> = std::fs::read_dir(data_dir())
        .expect("tests/data/providers exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no provider data files found");

    let mut failures = Vec::new();
    let mut total = 0;
    let mut providers_seen = std::collections::BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable data file");
        let cases: Vec<Value> = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not a JSON array of cases: {e}", file.display()));
        let file_name = file.file_name().unwrap().to_string_lossy().into_owned();
        for case in &cases {
            total += 1;
            let name = case
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("<unnamed>");
            let status =
                u16::try_from(case["status"].as_u64().expect("status")).expect("u16 status");
            let provider: Provider = serde_json::from_value(case["provider"].clone())
                .unwrap_or_else(|e| panic!("{file_name}: {name}: bad provider: {e}"));
            providers_seen.insert(provider.as_str());
            let owned = headers_of(case);
            let headers: Vec<(&str, &str)> = owned
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let body = body_of(case);
            let hint = case.get("hint").and_then(Value::as_bool).unwrap_or(false);
            let c = if hint {
                classify_http_from(provider, status, &headers, &body)
            } else {
                classify_http(status, &headers, &body)
            };
            if std::env::var_os("CLASSIFY_DUMP").is_some() {
                println!(
                    "{file_name}: {name}: {} retryable={} provider={} rule={} retry_after={:?}",
                    c.class, c.retryable, c.provider, c.rule, c.retry_after
                );
            }
            for e in check_case(case, &c) {
                failures.push(format!("{file_name}: {name}: {e}"));
            }
        }
    }
    assert!(
        total >= 50,
        "expected at least 50 recorded cases, found {total}"
    );
    for p in [
        "openai",
        "azure_openai",
        "anthropic",
        "gemini",
        "bedrock",
        "mistral",
        "groq",
        "together",
        "cohere",
    ] {
        assert!(providers_seen.contains(p), "no cases for provider {p}");
    }
    assert!(
        failures.is_empty(),
        "{} of {total} provider cases failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}
