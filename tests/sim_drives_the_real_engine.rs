//! The simulator runs the real engine: changing a policy field changes what tenants
//! experience, shadow policies report exactly the calls they would decide differently, a
//! recorded run replays to the same decisions, and runs are deterministic.

use std::path::Path;
use std::sync::Arc;

use downshift::engine::{MemoryRecorder, Recorder};
use downshift::policy::{PolicySet, Source};
use downshift::sim::{Report, RunOptions, Scenario, replay, run, run_file};
use proptest::prelude::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn drill() -> std::path::PathBuf {
    root().join("examples/scenarios/outage_drill.json")
}

/// The example policy set, with `edit` applied to one file's text.
fn policies(file: &str, edit: impl Fn(String) -> String) -> PolicySet {
    let mut sources = Vec::new();
    for f in std::fs::read_dir(root().join("examples/policies")).unwrap() {
        let p = f.unwrap().path();
        let mut t = std::fs::read_to_string(&p).unwrap();
        if p.ends_with(file) {
            let before = t.clone();
            t = edit(t);
            assert_ne!(t, before, "the edit changed nothing");
        }
        sources.push(Source::new(p.display().to_string(), t));
    }
    PolicySet::from_sources(sources).unwrap()
}

fn tier_share(r: &Report, tenant: &str, tier: u32) -> u64 {
    r.tenants
        .iter()
        .find(|t| t.tenant.as_str() == tenant)
        .map_or(0, |t| t.served_per_tier.get(&tier).copied().unwrap_or(0))
}

#[test]
fn allowing_a_tier_in_the_policy_moves_the_tenant_onto_it() {
    let before = run_file(drill(), RunOptions::default()).unwrap();
    assert_eq!(tier_share(&before, "marketing-agency", 1), 0);
    let opened = policies("marketing-agency.json", |t| {
        t.replace(r#""forbid_tiers": ["hot-standby"],"#, "")
    });
    let after = run_file(
        drill(),
        RunOptions {
            policies: Some(opened),
            ..RunOptions::default()
        },
    )
    .unwrap();
    // 02:00-02:07 the hot standby is healthy: the agency now uses it instead of the 70B tier.
    assert!(tier_share(&after, "marketing-agency", 1) > 10);
    assert!(tier_share(&after, "marketing-agency", 2) < tier_share(&before, "marketing-agency", 2));
    // The drill's expectation for the agency now fails, naming what changed; the others hold.
    let failed: Vec<&str> = after
        .expectations
        .iter()
        .filter(|v| !v.passed)
        .map(|v| v.message.as_str())
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0]
            .starts_with("tenant `marketing-agency` in 02:01:00-02:20:00: served by tier 2 in")
    );
}

#[test]
fn an_approval_rule_removed_from_the_policy_removes_the_approvals() {
    let before = run_file(drill(), RunOptions::default()).unwrap();
    let fintech = |r: &Report| {
        r.tenants
            .iter()
            .find(|t| t.tenant.as_str() == "fintech")
            .unwrap()
            .approvals
    };
    assert!(fintech(&before) >= 1);
    let no_approval = policies("fintech.json", |t| {
        t.replace(r#""approval": { "at_or_below": 1 },"#, "")
    });
    let after = run_file(
        drill(),
        RunOptions {
            policies: Some(no_approval),
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert_eq!(fintech(&after), 0);
}

#[test]
fn the_same_scenario_gives_a_byte_identical_json_report() {
    let a = serde_json::to_string(&run_file(drill(), RunOptions::default()).unwrap()).unwrap();
    let b = serde_json::to_string(&run_file(drill(), RunOptions::default()).unwrap()).unwrap();
    assert_eq!(a, b);
}

#[test]
fn the_same_scenario_gives_a_byte_identical_audit_log_and_report_with_suspensions_and_approvals() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["outage_drill", "all_tiers_down", "context_window_downgrade"] {
        let path = root().join(format!("examples/scenarios/{name}.json"));
        let mut runs = Vec::new();
        for i in 0..2 {
            let r = run_file(&path, RunOptions::default()).unwrap();
            let file = dir.path().join(format!("{name}.{i}.jsonl"));
            r.write_audit(&file).unwrap();
            runs.push((r, std::fs::read(&file).unwrap()));
        }
        let (a, b) = (&runs[0], &runs[1]);
        // The scenarios exercise what used to carry per-run ids: suspensions (resume tokens in
        // checkpoints) and, in the drill, approvals.
        let log = String::from_utf8(a.1.clone()).unwrap();
        assert!(log.contains(r#""type":"suspension""#), "{name}");
        if name == "outage_drill" {
            assert!(log.contains("approval_requested"), "{name}");
        }
        assert_eq!(a.0.audit_records, b.0.audit_records, "{name}");
        assert_eq!(a.1, b.1, "{name}: the audit files differ");
        assert_eq!(
            serde_json::to_string(&a.0).unwrap(),
            serde_json::to_string(&b.0).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn another_seed_draws_other_latencies() {
    let path = drill();
    let mut s = Scenario::load(&path).unwrap();
    let a = run(&s, &path, RunOptions::default()).unwrap();
    s.seed += 1;
    let b = run(&s, &path, RunOptions::default()).unwrap();
    assert_ne!(
        serde_json::to_string(&a.tenants).unwrap(),
        serde_json::to_string(&b.tenants).unwrap()
    );
}

#[test]
fn a_recorded_run_replays_to_exactly_the_recorded_decisions() {
    let rec = Arc::new(MemoryRecorder::new());
    let recorded = run_file(
        drill(),
        RunOptions {
            recorder: Some(rec.clone() as Arc<dyn Recorder>),
            ..RunOptions::default()
        },
    )
    .unwrap();
    let text = rec.to_jsonl();
    let same = policies("platform.json", |t| {
        t.replace("Platform defaults", "Platform defaults.")
    });
    let r = replay(Path::new("memory"), &text, same).unwrap();
    assert!(r.calls > 200);
    assert_eq!(r.differing, 0, "{}", r.render());
    assert_eq!(r.same, r.calls);
    for t in &r.tenants {
        assert_eq!(t.recorded, t.candidate, "{}", t.tenant);
    }
    // The replayed run experienced what the recorded one did.
    for (a, b) in r.candidate.tenants.iter().zip(&recorded.tenants) {
        assert_eq!(
            serde_json::to_string(a).unwrap(),
            serde_json::to_string(b).unwrap()
        );
    }
}

#[test]
fn a_replay_under_a_candidate_policy_shows_the_affected_tenant_side_by_side() {
    let rec = Arc::new(MemoryRecorder::new());
    run_file(
        drill(),
        RunOptions {
            recorder: Some(rec.clone() as Arc<dyn Recorder>),
            ..RunOptions::default()
        },
    )
    .unwrap();
    let opened = policies("marketing-agency.json", |t| {
        t.replace(r#""forbid_tiers": ["hot-standby"],"#, "")
    });
    let r = replay(Path::new("memory"), &rec.to_jsonl(), opened).unwrap();
    assert!(r.differing > 0);
    let m = r
        .tenants
        .iter()
        .find(|t| t.tenant.as_str() == "marketing-agency")
        .unwrap();
    assert_eq!(m.recorded.served_per_tier.get(&1), None);
    assert!(m.candidate.served_per_tier.get(&1).copied().unwrap_or(0) > 0);
    assert!(
        r.examples
            .iter()
            .any(|d| d.tenant.as_str() == "marketing-agency")
    );
}

#[test]
fn a_shadow_policy_reports_the_calls_it_would_decide_differently_without_acting() {
    let plain = run_file(drill(), RunOptions::default()).unwrap();
    let opened = policies("marketing-agency.json", |t| {
        t.replace(r#""forbid_tiers": ["hot-standby"],"#, "")
    });
    let shadowed = run_file(
        drill(),
        RunOptions {
            shadow: Some(opened),
            ..RunOptions::default()
        },
    )
    .unwrap();
    // Nothing acted on: every tenant experienced the same.
    assert_eq!(
        serde_json::to_string(&plain.tenants).unwrap(),
        serde_json::to_string(&shadowed.tenants).unwrap()
    );
    let s = shadowed.shadow.unwrap();
    assert!(s.differing > 0);
    assert_eq!(
        s.tenants.keys().map(|t| t.as_str()).collect::<Vec<_>>(),
        ["marketing-agency"]
    );
    assert!(
        s.examples
            .iter()
            .all(|d| d.active.contains("tier 2") && d.candidate.contains("tier 1"))
    );
}

#[test]
fn a_shadow_of_the_same_policy_differs_nowhere() {
    let same = policies("platform.json", |t| {
        t.replace("Platform defaults", "Platform defaults.")
    });
    let r = run_file(
        drill(),
        RunOptions {
            shadow: Some(same),
            ..RunOptions::default()
        },
    )
    .unwrap();
    let s = r.shadow.unwrap();
    assert!(s.compared > 200);
    assert_eq!(s.differing, 0, "{:?}", s.examples.first());
}

fn scenario_with_fault(
    seed: u64,
    from: u32,
    len: u32,
    error: &str,
    endpoints: &[&str],
) -> Scenario {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let text = format!(
        r#"{{"kind":"scenario","name":"prop","policies":["../policies"],"start":"2026-11-28T01:55:00Z",
          "duration":"30m","seed":{seed},
          "faults":[{{"endpoints":[{}],"from":"+{from}m","until":"+{}m","error":"{error}"}}],
          "workload":[
            {{"tenant":"hospital-network","task":"clinical_summarization","sessions":2,"every":"1m"}},
            {{"tenant":"marketing-agency","task":"copywriting","per_minute":6}},
            {{"tenant":"fintech","task":"risk_assessment","sessions":1,"every":"1m"}}],
          "approvers":[{{"tenant":"fintech","name":"officer","answer":"approve","after":"1m"}}],
          "expectations":[{{"expect":"no_policy_violations"}},{{"expect":"audit_verifies"}},
            {{"expect":"never_below_tier","tenant":"hospital-network","tier":1}}]}}"#,
        eps.join(","),
        from + len
    );
    Scenario::parse(Path::new("prop.json"), &text).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    /// Whatever fails when: no served call breaks its tenant's policy, the audit chain
    /// verifies, the hospital never goes below its floor, and every call ends in exactly one
    /// outcome.
    #[test]
    fn no_fault_pattern_makes_the_engine_break_a_policy(
        seed in 0u64..1000,
        from in 0u32..15,
        len in 1u32..15,
        error in prop::sample::select(vec!["openai_rate_limited", "anthropic_overloaded", "server_error", "gateway_timeout", "openai_quota_exhausted"]),
        which in prop::sample::subsequence(vec!["frontier-vendor-eu", "frontier-vendor-us", "frontier-cloud-eu", "frontier-cloud-us", "mid70b-selfhosted-eu", "mid70b-selfhosted-us"], 1..6),
    ) {
        let s = scenario_with_fault(seed, from, len, error, &which);
        let path = root().join("examples/scenarios/prop.json");
        let r = run(&s, &path, RunOptions::default()).unwrap();
        for v in &r.expectations {
            prop_assert!(v.passed, "{}: {}", v.expectation, v.message);
        }
        for t in &r.tenants {
            let served: u64 = t.served_per_tier.values().sum();
            prop_assert_eq!(served, t.served);
            prop_assert!(t.served + t.rejections <= t.calls);
        }
    }
}
