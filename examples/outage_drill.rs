//! The outage drill: the article's 2 a.m. capacity event, run through the real engine by the
//! simulator.
//!
//! A SaaS platform serves a hospital network, a marketing agency and a fintech from one policy
//! set (`examples/policies/`). During a batch agentic pipeline at 02:00 the primary provider
//! throttles every call (429 with retry-after); at 02:07 the second provider of the same model
//! degrades too (529 overloaded); at 02:20 capacity returns. The scenario is a file,
//! `examples/scenarios/outage_drill.json`, which CI also runs with `downshift simulate`. Time is
//! virtual, so the 40 minutes take a moment; the audit log is written to a temporary directory,
//! verified from disk, and removed.
//!
//! Run: `cargo run --example outage_drill`

use std::path::Path;

use downshift::audit::verify_file;
use downshift::sim::{RunOptions, run_file};

fn main() {
    let scenario =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/scenarios/outage_drill.json");
    let report = match run_file(&scenario, RunOptions::default()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("outage_drill: {e}");
            std::process::exit(2);
        }
    };
    println!("downshift outage drill ({})", scenario.display());
    println!("  02:00 primary provider throttles (429, retry-after 30s)");
    println!("  02:07 the second provider of the same model degrades too (529 overloaded)");
    println!("  02:20 capacity returns\n");
    print!("{}", report.render());

    // The audit log as an auditor receives it: a JSON-lines file, verified from disk.
    let dir = std::env::temp_dir().join(format!("downshift-outage-drill-{}", std::process::id()));
    let file = dir.join("audit.jsonl");
    let written = std::fs::create_dir_all(&dir)
        .map_err(|e| e.to_string())
        .and_then(|()| report.write_audit(&file).map_err(|e| e.to_string()));
    match written.and_then(|()| verify_file(&file, None).map_err(|e| e.to_string())) {
        Ok(v) => println!("\nAudit log written to a temporary file and verified from disk: {v}"),
        Err(e) => println!("\nAudit log DOES NOT VERIFY from disk: {e}"),
    }
    let _ = std::fs::remove_dir_all(&dir);

    let hospital_below_floor = report.timeline.rows.iter().any(|r| {
        r.tenant.as_str() == "hospital-network"
            && r.cells
                .chars()
                .any(|c| c.to_digit(10).is_some_and(|t| t > 1))
    });
    println!(
        "The hospital never went below its floor (tier 1): {}",
        if hospital_below_floor {
            "VIOLATED"
        } else {
            "held"
        }
    );
    if !report.passed {
        std::process::exit(1);
    }
}
