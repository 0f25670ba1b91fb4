//! `downshift simulate` and `downshift replay`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use downshift::policy::PolicySet;
use downshift::sim::{Report, RunOptions, replay_file, run_file};

/// Runs scenario files: exit 0 when every expectation holds, 1 when any fails, 2 for bad
/// input.
pub(crate) fn simulate(
    scenarios: &[PathBuf],
    json: bool,
    audit: Option<&Path>,
    record: Option<&Path>,
    shadow: &[PathBuf],
) -> ExitCode {
    if scenarios.len() > 1 && (audit.is_some() || record.is_some()) {
        eprintln!("downshift: --audit and --record take one scenario at a time");
        return ExitCode::from(2);
    }
    let shadow = if shadow.is_empty() {
        None
    } else {
        match PolicySet::load(shadow) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("downshift: shadow policy: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let mut bad_input = false;
    let mut failed = false;
    let mut reports: Vec<Report> = Vec::new();
    for path in scenarios {
        let recorder = match record
            .map(downshift::engine::JsonlRecorder::create)
            .transpose()
        {
            Ok(r) => r.map(std::sync::Arc::new),
            Err(e) => {
                eprintln!("downshift: {e}");
                return ExitCode::from(2);
            }
        };
        let options = RunOptions {
            recorder: recorder
                .clone()
                .map(|r| r as std::sync::Arc<dyn downshift::engine::Recorder>),
            shadow: shadow.clone(),
            ..RunOptions::default()
        };
        let report = match run_file(path, options) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("downshift: {e}");
                bad_input = true;
                continue;
            }
        };
        if let Some(r) = &recorder {
            if let Err(e) = r.flush() {
                eprintln!("downshift: {e}");
                return ExitCode::from(2);
            }
        }
        if let Some(file) = audit {
            if let Err(e) = report.write_audit(file) {
                eprintln!("downshift: {e}");
                return ExitCode::from(2);
            }
        }
        if !report.passed {
            failed = true;
        }
        if !json {
            if scenarios.len() > 1 {
                println!("== {}", path.display());
            }
            print!("{}", report.render());
            if scenarios.len() > 1 {
                println!();
            }
        }
        if !report.passed {
            for v in report.expectations.iter().filter(|v| !v.passed) {
                eprintln!(
                    "{}: expectation failed: {}: {}",
                    path.display(),
                    v.expectation,
                    v.message
                );
            }
        }
        reports.push(report);
    }
    if json {
        let out = if scenarios.len() == 1 {
            reports
                .first()
                .map(|r| serde_json::to_string_pretty(r).unwrap_or_default())
                .unwrap_or_default()
        } else {
            serde_json::to_string_pretty(&reports).unwrap_or_default()
        };
        if !out.is_empty() {
            println!("{out}");
        }
    }
    if bad_input {
        ExitCode::from(2)
    } else if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Replays a recording under a candidate policy and prints the what-if report
/// ([`downshift::sim::WhatIfReport`]): exit 0 when every call is decided the same, 1 when some
/// differ, 2 for bad input.
pub(crate) fn replay(recording: &Path, policy: &[PathBuf], json: bool) -> ExitCode {
    let set = match PolicySet::load(policy) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("downshift: {e}");
            return ExitCode::from(2);
        }
    };
    match replay_file(recording, set) {
        Ok(r) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                print!("{}", r.render());
            }
            if r.differing == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("downshift: {e}");
            ExitCode::from(2)
        }
    }
}
