//! Per-file checks: values that are out of range, platform-only settings in lower layers,
//! error classes that must never trigger a fallback, and catalog sanity.

use std::time::Duration;

use serde_json::Value;

use super::merge::has_path;
use super::model::{Level, PolicyLayer, Window};
use super::source::problem;
use crate::catalog::CatalogFile;
use crate::digest::ContentDigest;
use crate::error::{Problem, ProblemCode, Severity};

struct Out<'a> {
    file: &'a str,
    problems: &'a mut Vec<Problem>,
}

impl Out<'_> {
    fn err(&mut self, code: ProblemCode, path: impl Into<String>, msg: impl Into<String>) {
        self.problems
            .push(problem(Severity::Error, code, self.file, path, msg));
    }
    fn warn(&mut self, code: ProblemCode, path: impl Into<String>, msg: impl Into<String>) {
        self.problems
            .push(problem(Severity::Warning, code, self.file, path, msg));
    }
    fn positive_dur(&mut self, set: bool, path: &str, d: Duration) {
        if set && d.is_zero() {
            self.err(
                ProblemCode::InvalidValue,
                path,
                "must be a positive duration, not zero",
            );
        }
    }
    fn fraction(&mut self, set: bool, path: &str, x: f64, zero_ok: bool, one_ok: bool) {
        if !set {
            return;
        }
        let lo_ok = if zero_ok { x >= 0.0 } else { x > 0.0 };
        let hi_ok = if one_ok { x <= 1.0 } else { x < 1.0 };
        if !x.is_finite() || !lo_ok || !hi_ok {
            let range = match (zero_ok, one_ok) {
                (false, true) => "greater than 0 and at most 1",
                (true, false) => "at least 0 and below 1",
                (false, false) => "strictly between 0 and 1",
                (true, true) => "between 0 and 1",
            };
            self.err(
                ProblemCode::InvalidValue,
                path,
                format!("must be a fraction {range}, got {x}"),
            );
        }
    }
    fn positive(&mut self, set: bool, path: &str, x: f64, what: &str) {
        if set && !(x.is_finite() && x > 0.0) {
            self.err(
                ProblemCode::InvalidValue,
                path,
                format!("{what} must be a positive number, got {x}"),
            );
        }
    }
}

/// Settings that only the platform layer may set (they are shared by every tenant).
pub(crate) const PLATFORM_ONLY: [&[&str]; 6] = [
    &["herd"],
    &["task_kinds"],
    &["triggers", "breaker"],
    &["recovery", "half_open"],
    &["recovery", "open_wait"],
    &["retry", "budget"],
];

/// Checks one policy file on its own.
pub(crate) fn check_layer(file: &str, layer: &PolicyLayer, raw: &Value) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut o = Out {
        file,
        problems: &mut problems,
    };
    let has = |p: &[&str]| has_path(raw, p);

    // Level and parent.
    match (layer.level, &layer.extends) {
        (Level::Platform, Some(_)) => o.err(
            ProblemCode::PlatformLayer,
            "$.extends",
            "the platform layer extends nothing; remove `extends`",
        ),
        (Level::Template | Level::Tenant, None) => o.err(
            ProblemCode::UnknownParent,
            "$",
            format!("a {} layer must say which layer it `extends`", layer.level),
        ),
        _ => {}
    }
    if layer.version.trim().is_empty() {
        o.err(ProblemCode::InvalidValue, "$.version", "must not be empty");
    }
    if layer.id.as_str().trim().is_empty() {
        o.err(ProblemCode::InvalidValue, "$.id", "must not be empty");
    }
    if layer.level != Level::Platform {
        for p in PLATFORM_ONLY {
            if has(p) {
                o.err(
                    ProblemCode::PlatformOnly,
                    format!("$.{}", p.join(".")),
                    format!(
                        "`{}` is shared by every tenant and may only be set in the platform layer",
                        p.join(".")
                    ),
                );
            }
        }
    }

    // Layer 1.
    let b = &layer.triggers.breaker;
    let bset = |k: &str| has(&["triggers", "breaker", k]);
    for (i, c) in b.capacity_errors.iter().enumerate() {
        if !c.is_capacity() {
            o.err(
                ProblemCode::NonCapacityTrigger,
                format!("$.triggers.breaker.capacity_errors[{i}]"),
                format!(
                    "`{c}` is not a capacity failure: it would fail the same way on any endpoint, so it must never open a breaker or trigger a fallback"
                ),
            );
        }
    }
    if bset("capacity_errors") && b.capacity_errors.is_empty() {
        o.err(
            ProblemCode::InvalidValue,
            "$.triggers.breaker.capacity_errors",
            "must list at least one capacity error class, or the breaker can never open",
        );
    }
    match b.window {
        Window::Calls(0) => o.err(
            ProblemCode::InvalidValue,
            "$.triggers.breaker.window",
            "a count window must hold at least 1 call",
        ),
        Window::Calls(n) if b.min_calls > n && (bset("min_calls") || bset("window")) => o.err(
            ProblemCode::MinCallsExceedsWindow,
            "$.triggers.breaker.min_calls",
            format!(
                "min_calls {} is larger than the {n}-call window: the failure rate could never be computed",
                b.min_calls
            ),
        ),
        Window::Time(d) => o.positive_dur(bset("window"), "$.triggers.breaker.window", d),
        Window::Calls(_) => {}
    }
    if bset("min_calls") && b.min_calls == 0 {
        o.err(
            ProblemCode::InvalidValue,
            "$.triggers.breaker.min_calls",
            "must be at least 1",
        );
    }
    o.fraction(
        bset("failure_rate"),
        "$.triggers.breaker.failure_rate",
        b.failure_rate,
        false,
        true,
    );
    if let Some(s) = &b.slow_calls {
        o.positive_dur(true, "$.triggers.breaker.slow_calls.latency", s.latency);
        o.fraction(
            true,
            "$.triggers.breaker.slow_calls.rate",
            s.rate,
            false,
            true,
        );
    }
    if b.consecutive_failures == Some(0) {
        o.err(
            ProblemCode::InvalidValue,
            "$.triggers.breaker.consecutive_failures",
            "must be at least 1 (omit it to disable the trigger)",
        );
    }
    let lat = &layer.triggers.latency;
    o.positive_dur(
        has(&["triggers", "latency", "window"]),
        "$.triggers.latency.window",
        lat.window,
    );
    if has(&["triggers", "latency", "min_samples"]) && lat.min_samples == 0 {
        o.err(
            ProblemCode::InvalidValue,
            "$.triggers.latency.min_samples",
            "must be at least 1",
        );
    }
    if layer.triggers.queue_depth == Some(0) {
        o.err(
            ProblemCode::InvalidValue,
            "$.triggers.queue_depth",
            "must be at least 1 (omit it to disable the trigger)",
        );
    }
    if let Some(r) = &layer.triggers.rate_limit_remaining {
        if let Some(x) = r.min_requests_fraction {
            o.fraction(
                true,
                "$.triggers.rate_limit_remaining.min_requests_fraction",
                x,
                false,
                false,
            );
        }
        if let Some(x) = r.min_tokens_fraction {
            o.fraction(
                true,
                "$.triggers.rate_limit_remaining.min_tokens_fraction",
                x,
                false,
                false,
            );
        }
        if r.min_requests_fraction.is_none() && r.min_tokens_fraction.is_none() {
            o.err(
                ProblemCode::InvalidValue,
                "$.triggers.rate_limit_remaining",
                "set min_requests_fraction, min_tokens_fraction or both (an empty trigger does nothing)",
            );
        }
    }

    // Layer 2.
    if let Some(s) = &layer.suspension {
        o.positive_dur(true, "$.suspension.max_duration", s.max_duration);
    }

    // Layer 3.
    let c = &layer.constraints;
    o.positive_dur(
        has(&["constraints", "approval_timeout"]),
        "$.constraints.approval_timeout",
        c.approval_timeout,
    );
    if let Some(d) = c.sla.p95_ceiling {
        o.positive_dur(true, "$.constraints.sla.p95_ceiling", d);
    }
    if let Some(d) = c.sla.default_deadline {
        o.positive_dur(true, "$.constraints.sla.default_deadline", d);
    }
    if let Some(regions) = &c.allowed_regions {
        for (i, r) in regions.iter().enumerate() {
            if r.trim().is_empty() || r == "*" {
                o.err(
                    ProblemCode::InvalidValue,
                    format!("$.constraints.allowed_regions[{i}]"),
                    "a region must be a concrete name or a prefix pattern such as `eu-*`; omit `allowed_regions` to allow every region",
                );
            }
        }
    }
    if let Some(bud) = &c.budget {
        if let Some(t) = &bud.tenant {
            o.positive(
                true,
                "$.constraints.budget.tenant.limit_usd",
                t.limit_usd,
                "a budget",
            );
            o.positive_dur(true, "$.constraints.budget.tenant.window", t.window);
        }
        if let Some(x) = bud.session_usd {
            o.positive(true, "$.constraints.budget.session_usd", x, "a budget");
        }
        if let Some(x) = bud.workflow_usd {
            o.positive(true, "$.constraints.budget.workflow_usd", x, "a budget");
        }
        if bud.tenant.is_none() && bud.session_usd.is_none() && bud.workflow_usd.is_none() {
            o.err(
                ProblemCode::InvalidValue,
                "$.constraints.budget",
                "a budget must set `tenant`, `session_usd` or `workflow_usd`",
            );
        }
    }
    for (task, ov) in &c.tasks {
        if let Some(q) = ov.min_quality {
            if !(q.is_finite() && q > 0.0) {
                o.err(
                    ProblemCode::InvalidValue,
                    format!("$.constraints.tasks.{task}.min_quality"),
                    format!("must be a positive number, got {q}"),
                );
            }
        }
        if let Some(d) = ov.deadline {
            o.positive_dur(true, &format!("$.constraints.tasks.{task}.deadline"), d);
        }
        if ov.allowed_tiers.as_ref().is_some_and(Vec::is_empty) {
            o.err(
                ProblemCode::NoUsableEndpoint,
                format!("$.constraints.tasks.{task}.allowed_tiers"),
                "an empty list allows no tier at all",
            );
        }
    }
    if let Some(con) = &c.consent {
        if let Err(e) = ContentDigest::parse(&con.document_digest) {
            o.err(
                ProblemCode::InvalidValue,
                "$.constraints.consent.document_digest",
                e,
            );
        }
        for (k, v) in [
            ("agreement_id", &con.agreement_id),
            ("version", &con.version),
            ("accepted_by", &con.accepted_by),
        ] {
            if v.trim().is_empty() {
                o.err(
                    ProblemCode::InvalidValue,
                    format!("$.constraints.consent.{k}"),
                    "must not be empty",
                );
            }
        }
    }

    // Layer 4.
    let r = &layer.recovery;
    if has(&["recovery", "half_open", "probes"]) && r.half_open.probes == 0 {
        o.err(
            ProblemCode::InvalidValue,
            "$.recovery.half_open.probes",
            "must be at least 1, or a half-open endpoint could never close",
        );
    }
    o.positive_dur(
        has(&["recovery", "half_open", "timeout"]),
        "$.recovery.half_open.timeout",
        r.half_open.timeout,
    );
    let ow = &r.open_wait;
    let owset = has(&["recovery", "open_wait"]);
    o.positive_dur(owset, "$.recovery.open_wait.initial", ow.initial);
    if owset && ow.max < ow.initial {
        o.err(
            ProblemCode::InvalidValue,
            "$.recovery.open_wait.max",
            format!(
                "max {} is shorter than initial {}",
                super::duration::format(ow.max),
                super::duration::format(ow.initial)
            ),
        );
    }
    if owset && !(ow.multiplier.is_finite() && ow.multiplier >= 1.0) {
        o.err(
            ProblemCode::InvalidValue,
            "$.recovery.open_wait.multiplier",
            format!("must be at least 1, got {}", ow.multiplier),
        );
    }
    o.fraction(owset, "$.recovery.open_wait.jitter", ow.jitter, true, false);
    let pr = &r.promotion;
    o.positive_dur(
        has(&["recovery", "promotion", "healthy_for"]),
        "$.recovery.promotion.healthy_for",
        pr.healthy_for,
    );
    o.positive_dur(
        has(&["recovery", "promotion", "min_dwell"]),
        "$.recovery.promotion.min_dwell",
        pr.min_dwell,
    );

    // Context continuity.
    let c = &layer.continuity;
    o.fraction(
        has(&["continuity", "summarize_at"]),
        "$.continuity.summarize_at",
        c.summarize_at,
        false,
        true,
    );
    if has(&["continuity", "max_summary_calls"]) && c.max_summary_calls == 0 {
        o.err(
            ProblemCode::InvalidValue,
            "$.continuity.max_summary_calls",
            "must be at least 1 (omit `summarizer` to write no summaries)",
        );
    }
    if c.summarizer.as_deref().is_some_and(|t| t.trim().is_empty()) {
        o.err(
            ProblemCode::InvalidValue,
            "$.continuity.summarizer",
            "must name a tier, not be empty",
        );
    }

    // Herd control.
    if let Some(x) = layer.herd.max_fallback_share {
        o.fraction(true, "$.herd.max_fallback_share", x, false, true);
    }

    // Retry.
    let rt = &layer.retry;
    if has(&["retry", "attempts_per_endpoint"]) && rt.attempts_per_endpoint == 0 {
        o.err(
            ProblemCode::InvalidValue,
            "$.retry.attempts_per_endpoint",
            "must be at least 1 (1 = no retry: the fallback is the retry)",
        );
    } else if rt.attempts_per_endpoint >= 3 {
        o.warn(
            ProblemCode::RetryStorm,
            "$.retry.attempts_per_endpoint",
            format!(
                "{} attempts at each failing endpoint before any fallback multiply load on a provider that is already struggling; prefer 1 or 2 and let the fallback be the retry",
                rt.attempts_per_endpoint
            ),
        );
    }
    if has(&["retry", "max_attempts"]) && rt.max_attempts == 0 {
        o.err(
            ProblemCode::InvalidValue,
            "$.retry.max_attempts",
            "must be at least 1",
        );
    }
    let bo = &rt.backoff;
    let boset = has(&["retry", "backoff"]);
    o.positive_dur(boset, "$.retry.backoff.initial", bo.initial);
    if boset && bo.max < bo.initial {
        o.err(
            ProblemCode::InvalidValue,
            "$.retry.backoff.max",
            "max is shorter than initial",
        );
    }
    if boset && !(bo.multiplier.is_finite() && bo.multiplier >= 1.0) {
        o.err(
            ProblemCode::InvalidValue,
            "$.retry.backoff.multiplier",
            format!("must be at least 1, got {}", bo.multiplier),
        );
    }
    o.fraction(boset, "$.retry.backoff.jitter", bo.jitter, true, false);
    let bud = &rt.budget;
    let budset = has(&["retry", "budget"]);
    o.fraction(budset, "$.retry.budget.ratio", bud.ratio, false, true);
    if budset && !(bud.min_per_second.is_finite() && bud.min_per_second >= 0.0) {
        o.err(
            ProblemCode::InvalidValue,
            "$.retry.budget.min_per_second",
            format!("must be zero or positive, got {}", bud.min_per_second),
        );
    }
    if budset && bud.ratio > 0.5 && bud.ratio <= 1.0 {
        o.warn(
            ProblemCode::RetryStorm,
            "$.retry.budget.ratio",
            format!(
                "a retry budget of {:.0}% lets an outage add that much load again; 10-20% is usual",
                bud.ratio * 100.0
            ),
        );
    }
    problems
}

/// Checks one catalog file on its own.
pub(crate) fn check_catalog(file: &str, cat: &CatalogFile) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut o = Out {
        file,
        problems: &mut problems,
    };
    if cat.endpoints.is_empty() {
        o.err(
            ProblemCode::InvalidValue,
            "$.endpoints",
            "a catalog must list at least one endpoint",
        );
    }
    let mut seen = std::collections::HashMap::new();
    for (i, e) in cat.endpoints.iter().enumerate() {
        let p = format!("$.endpoints[{i}]");
        if let Some(first) = seen.insert(e.id.clone(), i) {
            o.err(
                ProblemCode::DuplicateId,
                format!("{p}.id"),
                format!(
                    "endpoint id `{}` is already defined at $.endpoints[{first}]",
                    e.id
                ),
            );
        }
        for (k, v) in [
            ("id", e.id.as_str()),
            ("provider", &e.provider),
            ("model", &e.model),
            ("region", &e.region),
        ] {
            if v.trim().is_empty() {
                o.err(
                    ProblemCode::InvalidValue,
                    format!("{p}.{k}"),
                    "must not be empty",
                );
            }
        }
        let c = &e.capabilities;
        if c.context_window == 0 {
            o.err(
                ProblemCode::InvalidValue,
                format!("{p}.capabilities.context_window"),
                "must be at least 1 token",
            );
        }
        if c.max_output_tokens == 0 || c.max_output_tokens > c.context_window {
            o.err(
                ProblemCode::InvalidValue,
                format!("{p}.capabilities.max_output_tokens"),
                format!(
                    "must be between 1 and the context window ({}), got {}",
                    c.context_window, c.max_output_tokens
                ),
            );
        }
        for (k, v) in [
            ("input_per_mtok", e.pricing.input_per_mtok),
            ("output_per_mtok", e.pricing.output_per_mtok),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                o.err(
                    ProblemCode::InvalidValue,
                    format!("{p}.pricing.{k}"),
                    format!("a price must be zero or positive, got {v}"),
                );
            }
        }
        for (task, q) in &e.quality {
            if !(q.is_finite() && *q >= 0.0) {
                o.err(
                    ProblemCode::InvalidValue,
                    format!("{p}.quality.{task}"),
                    format!("quality must be a non-negative number (1.0 = as good as the primary), got {q}"),
                );
            }
        }
    }
    problems
}
