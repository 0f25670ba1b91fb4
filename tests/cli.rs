//! The `downshift` command line: each command and exit code.

use std::path::Path;
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

fn write_set(dir: &Path, tenant_constraints: &str) {
    std::fs::write(
        dir.join("catalog.json"),
        r#"{"kind":"catalog","endpoints":[
          {"id":"big-eu","provider":"a","model":"big","region":"eu-west-1",
           "capabilities":{"context_window":200000,"max_output_tokens":8192,"tools":true},
           "pricing":{"input_per_mtok":3,"output_per_mtok":15}},
          {"id":"small-eu","provider":"b","model":"small","region":"eu-west-1",
           "capabilities":{"context_window":32000,"max_output_tokens":4096},
           "pricing":{"input_per_mtok":0.1,"output_per_mtok":0.2}}]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("platform.json"),
        r#"{"kind":"policy","id":"platform","version":"1","level":"platform",
          "tiers":[{"name":"primary","endpoints":["big-eu"]},{"name":"small","endpoints":["small-eu"]}],
          "continuity":{"fit_to_smaller_window":true}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("acme.json"),
        format!(
            r#"{{"kind":"policy","id":"acme","version":"4","level":"tenant","extends":"platform",
              "constraints":{tenant_constraints}}}"#
        ),
    )
    .unwrap();
}

#[test]
fn validate_prints_one_line_per_tenant_of_the_examples() {
    let out = downshift(&["validate", "examples/policies"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    for tenant in ["hospital-network", "marketing-agency", "fintech"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(tenant)),
            "{tenant} missing from:\n{stdout}"
        );
    }
    assert!(stdout.contains("ok: 3 tenant(s)"), "{stdout}");
}

#[test]
fn validate_reports_every_problem_with_file_and_path_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), r#"{"floor": 5, "allowed_regoins": ["eu-*"]}"#);
    std::fs::write(
        dir.path().join("broken.json"),
        "{\"kind\": \"policy\",\n\"id\": }",
    )
    .unwrap();
    let out = downshift(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    let acme = dir.path().join("acme.json");
    let broken = dir.path().join("broken.json");
    assert!(
        stderr.contains(&format!(
            "{}:$.constraints.allowed_regoins: unknown field `allowed_regoins`",
            acme.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{}:2:7: expected value", broken.display())),
        "{stderr}"
    );
    assert!(stderr.contains("2 error(s)"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn validate_with_a_semantic_error_names_the_json_path() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), r#"{"floor": 5}"#);
    let out = downshift(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("acme.json:$.constraints.floor: tier 5 is outside the ladder"),
        "{stderr}"
    );
}

#[test]
fn validate_deny_warnings_exits_1_on_warnings() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), r#"{}"#);
    std::fs::write(
        dir.path().join("acme.json"),
        r#"{"kind":"policy","id":"acme","version":"4","level":"tenant","extends":"platform",
            "retry":{"attempts_per_endpoint":4}}"#,
    )
    .unwrap();
    let path = dir.path().to_str().unwrap();
    let ok = downshift(&["validate", path]);
    assert_eq!(ok.status.code(), Some(0));
    assert!(
        text(&ok.stderr).contains("warning: 4 attempts"),
        "{}",
        text(&ok.stderr)
    );
    let denied = downshift(&["validate", "--deny-warnings", path]);
    assert_eq!(denied.status.code(), Some(1));
}

#[test]
fn validate_a_missing_path_is_bad_input() {
    let out = downshift(&["validate", "no/such/dir"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read no/such/dir"));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(downshift(&[]).status.code(), Some(2));
    assert_eq!(downshift(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        downshift(&["explain", "examples/policies"]).status.code(),
        Some(2)
    );
}

#[test]
fn schema_prints_the_committed_schemas() {
    let p = downshift(&["schema", "policy"]);
    assert_eq!(p.status.code(), Some(0));
    assert_eq!(
        text(&p.stdout),
        std::fs::read_to_string("docs/policy.schema.json").unwrap()
    );
    let c = downshift(&["schema", "catalog"]);
    assert_eq!(
        text(&c.stdout),
        std::fs::read_to_string("docs/catalog.schema.json").unwrap()
    );
}

#[test]
fn explain_shows_the_hospital_ladder_residency_and_consent() {
    let out = downshift(&[
        "explain",
        "examples/policies",
        "--tenant",
        "hospital-network",
        "--task",
        "clinical_summarization",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("floor:         tier 1 `hot-standby`"), "{s}");
    assert!(s.contains("not in allowed regions"), "{s}");
    assert!(s.contains("excluded: tier below the floor (tier 1)"), "{s}");
    assert!(s.contains("consent:       agreement"), "{s}");
    assert!(s.contains("digest:        sha256:"), "{s}");
    assert!(s.contains("then: suspend"), "{s}");
}

#[test]
fn explain_checks_capabilities_of_the_request() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), r#"{}"#);
    let out = downshift(&[
        "explain",
        dir.path().to_str().unwrap(),
        "--tenant",
        "acme",
        "--input-tokens",
        "60000",
        "--tools",
    ]);
    let s = text(&out.stdout);
    assert!(s.contains("small-eu"), "{s}");
    assert!(s.contains("incapable: no tool calling"), "{s}");
    assert!(s.contains("1 usable endpoint(s)"), "{s}");
}

#[test]
fn explain_json_is_machine_readable() {
    let out = downshift(&[
        "explain",
        "examples/policies",
        "--tenant",
        "marketing-agency",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tenant"], "marketing-agency");
    assert!(
        v["policy"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(v["ladder"]["tiers"].as_array().unwrap().len() >= 4);
}

#[test]
fn explain_an_unknown_tenant_lists_the_known_ones() {
    let out = downshift(&["explain", "examples/policies", "--tenant", "hospital"]);
    assert_eq!(out.status.code(), Some(2));
    let e = text(&out.stderr);
    assert!(e.contains("unknown tenant `hospital`"), "{e}");
    assert!(e.contains("hospital-network"), "{e}");
}

#[test]
fn explain_with_endpoints_down_shows_the_route_and_every_candidate() {
    let out = downshift(&[
        "explain",
        "examples/policies",
        "--tenant",
        "marketing-agency",
        "--task",
        "copywriting",
        "--down",
        "frontier-vendor-eu",
        "--down",
        "frontier-vendor-us",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(
        s.contains("-> ROUTE to mid70b-selfhosted-eu (tier 2 `mid`), degraded"),
        "{s}"
    );
    assert!(
        s.contains("frontier-vendor-eu         forced open by an operator"),
        "{s}"
    );
    assert!(
        s.contains("hot-standby  frontier-cloud-eu          tier forbidden by the tenant"),
        "{s}"
    );

    let hospital = downshift(&[
        "explain",
        "examples/policies",
        "--tenant",
        "hospital-network",
        "--task",
        "clinical_summarization",
        "--down",
        "frontier-vendor-eu",
        "--down",
        "frontier-cloud-eu",
    ]);
    assert!(
        text(&hospital.stdout).contains("-> SUSPEND"),
        "{}",
        text(&hospital.stdout)
    );

    let bad = downshift(&[
        "explain",
        "examples/policies",
        "--tenant",
        "fintech",
        "--down",
        "frontier-vendr-eu",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("did you mean `frontier-vendor-eu`?"),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn audit_verify_accepts_an_intact_log_and_names_the_first_bad_record() {
    use downshift::audit::{AuditEvent, AuditEventKind, AuditSink, JsonlAuditSink};
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    {
        let sink = JsonlAuditSink::open(&log).unwrap();
        for i in 0..5u64 {
            let ev = AuditEvent::new(
                downshift::Timestamp::from_millis(1_795_000_000_000 + i),
                AuditEventKind::Rejection {
                    reason: format!("nothing usable #{i}"),
                },
            )
            .tenant(downshift::TenantId::new("acme"));
            futures::executor::block_on(sink.append(ev)).unwrap();
        }
    }
    let path = log.to_str().unwrap();
    let ok = downshift(&["audit", "verify", path, "--print-head"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let out = text(&ok.stdout);
    assert!(out.contains("ok: 5 record(s) verified"), "{out}");
    // Keep the head the way an auditor would, then check the log against it.
    let head_line = out.lines().last().unwrap();
    let head = dir.path().join("head.json");
    std::fs::write(&head, head_line).unwrap();
    let with_head = downshift(&["audit", "verify", path, "--head", head.to_str().unwrap()]);
    assert_eq!(
        with_head.status.code(),
        Some(0),
        "{}",
        text(&with_head.stderr)
    );

    // Edit one record: detected, named, exit 1.
    let original = std::fs::read_to_string(&log).unwrap();
    std::fs::write(
        &log,
        original.replacen("nothing usable #2", "nothing usable #9", 1),
    )
    .unwrap();
    let bad = downshift(&["audit", "verify", path]);
    assert_eq!(bad.status.code(), Some(1));
    let e = text(&bad.stderr);
    assert!(e.contains("record"), "{e}");
    // Cut back before the kept head: detected.
    let kept: Vec<&str> = original.lines().take(3).collect();
    std::fs::write(&log, format!("{}\n", kept.join("\n"))).unwrap();
    let cut = downshift(&["audit", "verify", path, "--head", head.to_str().unwrap()]);
    assert_eq!(cut.status.code(), Some(1), "{}", text(&cut.stdout));
    // A missing file is bad input.
    assert_eq!(
        downshift(&["audit", "verify", "no/such.jsonl"])
            .status
            .code(),
        Some(2)
    );
}
