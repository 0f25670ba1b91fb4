//! `downshift simulate` and `downshift replay`: every scenario of the library passes, the
//! deliberately failing one fails naming what it measured, bad input exits 2, and the JSON
//! report is byte-identical from run to run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn downshift(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_downshift"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run downshift")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn library() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/scenarios");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    out.sort();
    out
}

#[test]
fn every_scenario_of_the_library_passes_through_the_cli() {
    let scenarios = library();
    assert!(
        scenarios.len() >= 9,
        "the library holds {} scenarios",
        scenarios.len()
    );
    for s in &scenarios {
        let out = downshift(&["simulate", s.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}:\n{}\n{}",
            s.display(),
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(text(&out.stdout).contains("PASSED"), "{}", s.display());
    }
}

#[test]
fn several_scenarios_run_in_one_invocation() {
    let a = "examples/scenarios/outage_drill.json";
    let b = "examples/scenarios/rate_limit_storm.json";
    let out = downshift(&["simulate", "--json", a, b]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
}

#[test]
fn the_failing_scenario_exits_1_naming_tenant_window_measured_value_and_bound() {
    let out = downshift(&[
        "simulate",
        "examples/scenarios/failing/promise_too_much.json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("expectation failed"), "{err}");
    assert!(err.contains("tenant `marketing-agency`"), "{err}");
    assert!(err.contains("02:00:00-02:15:00"), "{err}");
    assert!(
        err.contains("45 calls served below tier 0, the lowest at tier 2"),
        "{err}"
    );
    assert!(err.contains("bound: tier 0 or above"), "{err}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains("FAILED (1 of 2 expectations)"), "{stdout}");
}

#[test]
fn a_failing_scenario_among_passing_ones_fails_the_run() {
    let out = downshift(&[
        "simulate",
        "examples/scenarios/outage_drill.json",
        "examples/scenarios/failing/promise_too_much.json",
    ]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn bad_input_exits_2_naming_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"kind":"scenario","name":"x","policies":["/nonexistent"],"start":"2026-11-28T01:55:00Z","duration":"1m","faults":[{"endpoints":["a"],"from":"02:00","until":"02:01","eror":"server_error"}]}"#,
    )
    .unwrap();
    let out = downshift(&["simulate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("faults[0]"), "{err}");
    assert!(err.contains("eror"), "{err}");
    let out = downshift(&["simulate", "examples/scenarios/missing.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("missing.json"));
}

#[test]
fn the_json_report_is_byte_identical_from_run_to_run() {
    let a = downshift(&["simulate", "--json", "examples/scenarios/outage_drill.json"]);
    let b = downshift(&["simulate", "--json", "examples/scenarios/outage_drill.json"]);
    assert_eq!(a.status.code(), Some(0));
    assert!(!a.stdout.is_empty());
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn the_audit_file_and_json_report_are_byte_identical_from_run_to_run() {
    let dir = tempfile::tempdir().unwrap();
    // Suspensions and resumes (resume tokens in checkpoints), and approvals in the drill.
    for name in ["all_tiers_down", "outage_drill", "residency_standby"] {
        let scenario = format!("examples/scenarios/{name}.json");
        let mut runs = Vec::new();
        for i in 0..2 {
            let file = dir.path().join(format!("{name}.{i}.jsonl"));
            let out = downshift(&[
                "simulate",
                "--json",
                "--audit",
                file.to_str().unwrap(),
                &scenario,
            ]);
            assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
            runs.push((out.stdout, std::fs::read(&file).unwrap()));
        }
        let log = text(&runs[0].1);
        assert!(log.contains(r#""type":"suspension""#), "{name}");
        // A suspension's checkpoint digest covers its resume token.
        assert!(log.contains(r#""checkpoint":{"digest":"#), "{name}");
        assert_eq!(runs[0].0, runs[1].0, "{name}: the JSON reports differ");
        assert_eq!(runs[0].1, runs[1].1, "{name}: the audit files differ");
    }
}

#[test]
fn the_audit_file_verifies_with_audit_verify() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let out = downshift(&[
        "simulate",
        "--audit",
        file.to_str().unwrap(),
        "examples/scenarios/outage_drill.json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v = downshift(&["audit", "verify", file.to_str().unwrap()]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v.stderr));
    assert!(
        text(&v.stdout).contains("25 record(s) verified"),
        "{}",
        text(&v.stdout)
    );
}

#[test]
fn a_recording_replays_to_the_same_decisions_and_a_candidate_shows_who_changes() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec.jsonl");
    let out = downshift(&[
        "simulate",
        "--record",
        rec.to_str().unwrap(),
        "examples/scenarios/outage_drill.json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let same = downshift(&[
        "replay",
        rec.to_str().unwrap(),
        "--policy",
        "examples/policies",
    ]);
    assert_eq!(same.status.code(), Some(0), "{}", text(&same.stdout));
    assert!(
        text(&same.stdout).contains("0 differently"),
        "{}",
        text(&same.stdout)
    );

    // A candidate where the agency may use the hot standby.
    let cand = dir.path().join("policies");
    std::fs::create_dir(&cand).unwrap();
    for f in std::fs::read_dir("examples/policies").unwrap() {
        let f = f.unwrap().path();
        let mut t = std::fs::read_to_string(&f).unwrap();
        if f.ends_with("marketing-agency.json") {
            t = t.replace(r#""forbid_tiers": ["hot-standby"],"#, "");
        }
        std::fs::write(cand.join(f.file_name().unwrap()), t).unwrap();
    }
    let diff = downshift(&[
        "replay",
        rec.to_str().unwrap(),
        "--policy",
        cand.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(diff.status.code(), Some(1), "{}", text(&diff.stderr));
    let v: serde_json::Value = serde_json::from_slice(&diff.stdout).unwrap();
    assert!(v["differing"].as_u64().unwrap() > 0);
    let affected: Vec<&str> = v["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["tenant"].as_str().unwrap())
        .collect();
    assert!(affected.contains(&"marketing-agency"), "{affected:?}");
}

#[test]
fn replay_of_a_bad_recording_exits_2_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec.jsonl");
    std::fs::write(&rec, "{\"type\":\"call\"}\n").unwrap();
    let out = downshift(&[
        "replay",
        rec.to_str().unwrap(),
        "--policy",
        "examples/policies",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("line 1"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_scenario_schema_is_printed_by_the_cli() {
    let out = downshift(&["schema", "scenario"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        std::fs::read_to_string("docs/scenario.schema.json").unwrap()
    );
}
