//! Shared fixtures: a small valid policy set built in code, mutated by each test.
#![allow(dead_code)]

use downshift::policy::{PolicySet, Source};
use downshift::{Problem, ProblemCode, Severity, ValidationReport};
use serde_json::{Value, json};

pub fn catalog() -> Value {
    json!({
        "kind": "catalog",
        "endpoints": [
            ep("frontier-a-eu", "vendor-a", "frontier-1", "eu-west-1", 200000, 3.0, 15.0),
            ep("frontier-b-eu", "cloud-b", "frontier-1", "eu-central-1", 200000, 3.3, 16.5),
            ep("frontier-a-us", "vendor-a", "frontier-1", "us-east-1", 200000, 3.0, 15.0),
            ep("mid-eu", "selfhost", "llama-70b", "eu-west-1", 32000, 0.6, 0.8),
            ep("small-eu", "selfhost-small", "small-8b", "eu-west-1", 16000, 0.1, 0.2),
            ep("small-global", "cheapco", "small-8b", "global", 16000, 0.05, 0.1)
        ]
    })
}

pub fn ep(
    id: &str,
    provider: &str,
    model: &str,
    region: &str,
    window: u32,
    pin: f64,
    pout: f64,
) -> Value {
    json!({
        "id": id, "provider": provider, "model": model, "region": region,
        "capabilities": {"context_window": window, "max_output_tokens": 4096, "tools": true},
        "pricing": {"input_per_mtok": pin, "output_per_mtok": pout},
        "quality": {"*": 0.9, "code_generation": 0.7}
    })
}

pub fn platform() -> Value {
    json!({
        "kind": "policy", "id": "platform", "version": "1", "level": "platform",
        "task_kinds": ["summarization", "code_generation", "triage", "copywriting"],
        "continuity": {"fit_to_smaller_window": true}
    })
}

pub fn template() -> Value {
    json!({
        "kind": "policy", "id": "agents", "version": "1", "level": "template", "extends": "platform",
        "tiers": [
            {"name": "primary", "endpoints": ["frontier-a-eu", "frontier-a-us"]},
            {"name": "standby", "endpoints": ["frontier-b-eu"]},
            {"name": "mid", "endpoints": ["mid-eu"]},
            {"name": "minimal", "endpoints": ["small-eu", "small-global"], "tasks": ["triage"]}
        ],
        "suspension": {"max_duration": "4h"}
    })
}

pub fn tenant() -> Value {
    json!({
        "kind": "policy", "id": "acme", "version": "7", "level": "tenant", "extends": "agents",
        "constraints": {"floor": "mid", "allowed_regions": ["eu-*"]}
    })
}

/// The base set as (file name, document) pairs.
pub fn base() -> Vec<(String, Value)> {
    vec![
        ("catalog.json".into(), catalog()),
        ("platform.json".into(), platform()),
        ("agents.json".into(), template()),
        ("acme.json".into(), tenant()),
    ]
}

pub fn sources(files: &[(String, Value)]) -> Vec<Source> {
    files
        .iter()
        .map(|(n, v)| Source::new(n.clone(), serde_json::to_string_pretty(v).unwrap()))
        .collect()
}

pub fn check(files: &[(String, Value)]) -> ValidationReport {
    PolicySet::check_sources(sources(files)).1
}

pub fn load(files: &[(String, Value)]) -> PolicySet {
    match PolicySet::from_sources(sources(files)) {
        Ok(s) => s,
        Err(e) => panic!("expected a valid set: {e}"),
    }
}

/// Sets `value` at a `/`-separated pointer in the named file (creating objects on the way).
pub fn set(files: &mut [(String, Value)], file: &str, pointer: &str, value: Value) {
    let doc = &mut files.iter_mut().find(|(n, _)| n == file).expect("file").1;
    let mut cur = doc;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        let last = i == parts.len() - 1;
        if let Ok(idx) = p.parse::<usize>() {
            if cur.is_array() {
                if last {
                    cur[idx] = value;
                    return;
                }
                cur = &mut cur[idx];
                continue;
            }
        }
        if last {
            cur[*p] = value;
            return;
        }
        if cur.get(*p).is_none() {
            cur[*p] = json!({});
        }
        cur = &mut cur[*p];
    }
}

/// The single error with `code`, asserting there is exactly one.
pub fn only_error(report: &ValidationReport, code: ProblemCode) -> Problem {
    let errs: Vec<&Problem> = report.errors().filter(|p| p.code == code).collect();
    assert_eq!(
        errs.len(),
        1,
        "expected exactly one {code:?} error, got report:\n{report}"
    );
    errs[0].clone()
}

pub fn assert_problem(p: &Problem, file: &str, path: &str, message_part: &str) {
    assert_eq!(p.file, file, "file of {p}");
    assert_eq!(p.path, path, "path of {p}");
    assert!(
        p.message.contains(message_part),
        "message of {p} should contain {message_part:?}"
    );
}

pub fn warnings(report: &ValidationReport, code: ProblemCode) -> Vec<Problem> {
    report
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Warning && p.code == code)
        .cloned()
        .collect()
}
