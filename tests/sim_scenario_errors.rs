//! A scenario that cannot be run is refused with an error naming the file and the JSON path.

use std::path::Path;

use downshift::sim::{RunOptions, Scenario, parse_time, run};
use downshift::{Error, SimError, Timestamp};

fn scenario(body: &str) -> String {
    format!(
        r#"{{"kind":"scenario","name":"t","policies":["../policies"],"start":"2026-11-28T01:55:00Z","duration":"10m",{body}}}"#
    )
}

fn run_text(text: &str) -> Result<downshift::sim::Report, Error> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/scenarios/t.json");
    let s = Scenario::parse(&path, text)?;
    run(&s, &path, RunOptions::default())
}

fn invalid_at(text: &str) -> (String, String) {
    match run_text(text) {
        Err(Error::Sim(SimError::Invalid { at, message, path })) => {
            assert!(path.ends_with("t.json"));
            (at, message)
        }
        other => panic!("{:?}", other.map(|r| r.passed)),
    }
}

#[test]
fn an_unknown_endpoint_in_a_fault_is_named_with_its_path() {
    let (at, msg) = invalid_at(&scenario(
        r#""faults":[{"endpoints":["frontier-vendor-eu","nope"],"from":"02:00","until":"02:01","error":"server_error"}]"#,
    ));
    assert_eq!(at, "faults[0].endpoints[1]");
    assert!(msg.contains("unknown endpoint `nope`"), "{msg}");
}

#[test]
fn a_window_ending_before_it_starts_is_refused() {
    let (at, _) = invalid_at(&scenario(
        r#""faults":[{"endpoints":["frontier-vendor-eu"],"from":"02:01","until":"02:00"}]"#,
    ));
    assert_eq!(at, "faults[0].until");
}

#[test]
fn a_bad_time_is_named() {
    let (at, msg) = invalid_at(&scenario(
        r#""faults":[{"endpoints":["frontier-vendor-eu"],"from":"2am","until":"02:00"}]"#,
    ));
    assert_eq!(at, "faults[0].from");
    assert!(msg.contains("`2am` is not a time"), "{msg}");
}

#[test]
fn an_unknown_tenant_in_the_workload_is_named() {
    let (at, msg) = invalid_at(&scenario(
        r#""workload":[{"tenant":"nobody","task":"summarization","sessions":1}]"#,
    ));
    assert_eq!(at, "workload[0].tenant");
    assert!(msg.contains("nobody"), "{msg}");
}

#[test]
fn a_workload_needs_exactly_one_of_sessions_or_a_rate() {
    let (at, msg) = invalid_at(&scenario(
        r#""workload":[{"tenant":"fintech","task":"summarization","sessions":1,"per_minute":3}]"#,
    ));
    assert_eq!(at, "workload[0]");
    assert!(msg.contains("exactly one"), "{msg}");
}

#[test]
fn an_expectation_about_a_tenant_without_calls_is_refused() {
    let (at, msg) = invalid_at(&scenario(
        r#""workload":[{"tenant":"fintech","task":"summarization","sessions":1}],
           "expectations":[{"expect":"no_rejections","tenant":"hospital-network"}]"#,
    ));
    assert_eq!(at, "expectations[0].tenant");
    assert!(msg.contains("makes no calls"), "{msg}");
}

#[test]
fn a_metric_without_bounds_is_refused() {
    let (at, _) = invalid_at(&scenario(
        r#""workload":[{"tenant":"fintech","task":"summarization","sessions":1}],
           "expectations":[{"expect":"metric","metric":"calls"}]"#,
    ));
    assert_eq!(at, "expectations[0].min");
}

#[test]
fn an_unknown_field_is_a_parse_error_with_line_and_path() {
    let text = scenario(r#""workload":[{"tenant":"fintech","task":"summarization","sesions":1}]"#);
    match run_text(&text) {
        Err(Error::Sim(SimError::Parse {
            at, line, message, ..
        })) => {
            assert_eq!(at, "workload[0].sesions");
            assert_eq!(line, 1);
            assert!(message.contains("sesions"), "{message}");
        }
        other => panic!("{:?}", other.map(|r| r.passed)),
    }
}

#[test]
fn missing_policy_files_are_a_policy_error() {
    let text = scenario(r#""workload":[]"#).replace("../policies", "no-such-dir");
    assert!(matches!(run_text(&text), Err(Error::Policy(_))));
}

#[test]
fn scenario_times_accept_clock_times_offsets_and_rfc3339() {
    let start = Timestamp::parse_rfc3339("2026-11-28T01:55:00Z").unwrap();
    let at = |s: &str| parse_time(s, start).unwrap().to_string();
    assert_eq!(at("02:00"), "2026-11-28T02:00:00.000Z");
    assert_eq!(at("02:00:30"), "2026-11-28T02:00:30.000Z");
    assert_eq!(at("+5m"), "2026-11-28T02:00:00.000Z");
    assert_eq!(at("01:00"), "2026-11-29T01:00:00.000Z");
    assert_eq!(at("2026-11-28T03:00:00Z"), "2026-11-28T03:00:00.000Z");
    assert!(parse_time("25:00", start).is_err());
    assert!(parse_time("2:00", start).is_err());
}
