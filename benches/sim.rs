//! The simulator's speed: a one-hour scenario, 50 tenants, 100,000 calls through the real
//! engine in virtual time (a 429 storm on the primary and an overloaded second provider in
//! the middle of it).
//!
//! Run: `cargo bench --bench sim -- --measurement-time 60`

use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use downshift::policy::{PolicySet, Source};
use downshift::sim::{RunOptions, Scenario, run};

const TENANTS: usize = 50;

fn policies() -> PolicySet {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies");
    let mut sources = Vec::new();
    for f in ["catalog.json", "platform.json", "template-agents.json"] {
        let p = dir.join(f);
        sources.push(Source::new(f, std::fs::read_to_string(p).unwrap()));
    }
    for i in 0..TENANTS {
        // A mix of the article's tenants: a third EU-only with a floor at the hot standby, a
        // third that skips the standby, a third with defaults.
        let constraints = match i % 3 {
            0 => r#"{"floor":1,"allowed_regions":["eu-*"],"when_exhausted":"suspend"}"#,
            1 => r#"{"forbid_tiers":["hot-standby"]}"#,
            _ => "{}",
        };
        sources.push(Source::new(
            format!("tenant-{i:02}.json"),
            format!(
                r#"{{"kind":"policy","id":"tenant-{i:02}","version":"1","level":"tenant","extends":"agents","constraints":{constraints}}}"#
            ),
        ));
    }
    PolicySet::from_sources(sources).unwrap()
}

fn scenario() -> Scenario {
    let workload: Vec<String> = (0..TENANTS)
        .map(|i| {
            format!(
                r#"{{"tenant":"tenant-{i:02}","task":"{}","per_minute":33.34,"poisson":true}}"#,
                if i % 2 == 0 {
                    "summarization"
                } else {
                    "research"
                }
            )
        })
        .collect();
    let text = format!(
        r#"{{"kind":"scenario","name":"bench","policies":[],"start":"2026-11-28T01:30:00Z","duration":"1h","seed":1,
          "faults":[
            {{"endpoints":["frontier-vendor-eu","frontier-vendor-us"],"from":"02:00","until":"02:20","error":"openai_rate_limited"}},
            {{"endpoints":["frontier-cloud-eu","frontier-cloud-us","frontier-alt-us"],"from":"02:07","until":"02:17","error":"anthropic_overloaded"}}],
          "workload":[{}],
          "expectations":[{{"expect":"no_policy_violations"}},{{"expect":"audit_verifies"}}]}}"#,
        workload.join(",")
    );
    Scenario::parse(Path::new("bench.json"), &text).unwrap()
}

fn bench(c: &mut Criterion) {
    let set = policies();
    let s = scenario();
    let path = Path::new("bench.json");
    let once = run(
        &s,
        path,
        RunOptions {
            policies: Some(set.clone()),
            ..RunOptions::default()
        },
    )
    .unwrap();
    let calls: u64 = once.tenants.iter().map(|t| t.calls).sum();
    assert!(once.passed, "{}", once.render());
    eprintln!(
        "sim bench: {} tenants, {calls} calls, {} audit records",
        once.tenants.len(),
        once.audit.records
    );
    let mut g = c.benchmark_group("sim");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(30));
    g.bench_function("one_hour_50_tenants_100k_calls", |b| {
        b.iter(|| {
            run(
                &s,
                path,
                RunOptions {
                    policies: Some(set.clone()),
                    ..RunOptions::default()
                },
            )
            .unwrap()
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
