//! The deterministic simulator: unit-test degradation policies in CI.
//!
//! A [`Scenario`] file names the policy files, scripts the providers' faults over virtual
//! time (error responses in real provider shapes, classified by
//! [`classify_http`](crate::trigger::classify_http); added latency; retry-after; queue-depth and
//! status-page signals; falling rate-limit headroom; streams cut mid-answer), a workload
//! (tenants × task kinds × sessions or arrival rates, request sizes, deadlines, multi-step
//! sessions), approvers, and expectations. [`run_file`] drives the *real*
//! [`Engine`](crate::engine::Engine) — the same router, evaluator, audit log and checkpoint
//! store as in production — with every wait in virtual time, and returns a [`Report`]: per
//! tenant figures, a tier timeline, who was suspended or asked for approval and why, the audit
//! verification and each expectation's verdict.
//!
//! A run is a pure function of the scenario file and the policy files: the same inputs give a
//! byte-identical JSON report and audit log on every machine (one thread, tasks polled in a fixed
//! order, all randomness — latency draws, resume tokens through
//! [`SeededIds`](crate::engine::SeededIds) — drawn from the scenario's `seed`).
//!
//! ```
//! let report = downshift::sim::run_file(
//!     concat!(env!("CARGO_MANIFEST_DIR"), "/examples/scenarios/outage_drill.json"),
//!     downshift::sim::RunOptions::default(),
//! )?;
//! assert!(report.passed, "{}", report.render());
//! # Ok::<(), downshift::Error>(())
//! ```
//!
//! [`replay_file`] re-runs a recorded capacity event under a candidate policy;
//! `docs/simulation.md` is the guide to scenario files, expectations and the CLI.

mod client;
mod exec;
mod expect;
mod replay;
mod report;
mod run;
mod scenario;

pub use exec::{Sleep, VirtualSleeper, VirtualTime};
pub use replay::{ReplayDiff, Side, SideBySide, WhatIfReport, replay, replay_file};
pub use report::{
    AuditSummary, BreakerChange, Event, MAX_EVENTS, Report, TenantSummary, Timeline, TimelineRow,
    Transition, Verdict,
};
pub use run::{RunOptions, run, run_file};
pub use scenario::{
    Approver, ApproverAnswer, Arrival, EndpointBehaviour, ErrorResponse, Expectation, Fault,
    HttpResponse, MetricName, Preset, RateLimitFault, RequestShape, Scenario, ScenarioKind,
    Workload, parse_time, scenario_schema,
};
