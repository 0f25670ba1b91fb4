//! One test per validation rule: each names the file, the JSON path and what is wrong.

mod common;

use common::*;
use downshift::policy::{PolicySet, Source};
use downshift::{PolicyError, ProblemCode, Severity};
use serde_json::json;

#[test]
fn the_base_fixture_is_valid() {
    let report = check(&base());
    assert!(!report.has_errors(), "{report}");
}

#[test]
fn syntax_errors_name_line_and_column() {
    let mut srcs = sources(&base());
    srcs.push(Source::new(
        "broken.json",
        "{\n  \"kind\": \"policy\",\n  \"id\": \"x\" \"version\": \"1\"\n}",
    ));
    let report = PolicySet::check_sources(srcs).1;
    let p = only_error(&report, ProblemCode::Syntax);
    assert_eq!(p.file, "broken.json");
    assert_eq!(p.line_col, Some((3, 13)));
    assert_eq!(p.to_string(), "broken.json:3:13: expected `,` or `}`");
}

#[test]
fn unknown_fields_are_errors_not_silently_ignored() {
    let mut files = base();
    set(
        &mut files,
        "acme.json",
        "/constraints/allowed_region",
        json!(["eu-*"]),
    );
    let p = only_error(&check(&files), ProblemCode::UnknownField);
    assert_problem(
        &p,
        "acme.json",
        "$.constraints.allowed_region",
        "unknown field `allowed_region`",
    );
    assert!(
        p.message.contains("allowed_regions"),
        "lists the expected fields: {p}"
    );
}

#[test]
fn a_file_without_kind_is_rejected() {
    let mut files = base();
    files[3].1.as_object_mut().unwrap().remove("kind");
    let p = only_error(&check(&files), ProblemCode::UnknownKind);
    assert_problem(&p, "acme.json", "$", "missing `kind`");
}

#[test]
fn unknown_endpoint_references_suggest_the_closest_id() {
    let mut files = base();
    set(
        &mut files,
        "agents.json",
        "/tiers/1/endpoints/0",
        json!("frontier-b-ue"),
    );
    let p = only_error(&check(&files), ProblemCode::UnknownEndpoint);
    assert_problem(
        &p,
        "agents.json",
        "$.tiers[1].endpoints[0]",
        "unknown endpoint `frontier-b-ue` (did you mean `frontier-b-eu`?)",
    );
}

#[test]
fn an_endpoint_in_two_tiers_is_a_fallback_loop() {
    let mut files = base();
    set(
        &mut files,
        "agents.json",
        "/tiers/2/endpoints",
        json!(["mid-eu", "frontier-a-eu"]),
    );
    let p = only_error(&check(&files), ProblemCode::FallbackLoop);
    assert_problem(
        &p,
        "agents.json",
        "$.tiers[2].endpoints[1]",
        "endpoint `frontier-a-eu` is already in tier `primary` ($.tiers[0].endpoints[0]): the fallback order loops back to it",
    );
}

#[test]
fn an_endpoint_listed_twice_in_one_tier_is_reported() {
    let mut files = base();
    set(
        &mut files,
        "agents.json",
        "/tiers/2/endpoints",
        json!(["mid-eu", "mid-eu"]),
    );
    let p = only_error(&check(&files), ProblemCode::FallbackLoop);
    assert_problem(
        &p,
        "agents.json",
        "$.tiers[2].endpoints[1]",
        "listed twice in tier `mid`",
    );
}

#[test]
fn empty_tiers_are_rejected() {
    let mut files = base();
    set(&mut files, "agents.json", "/tiers/1/endpoints", json!([]));
    let p = only_error(&check(&files), ProblemCode::EmptyTier);
    assert_problem(
        &p,
        "agents.json",
        "$.tiers[1].endpoints",
        "tier `standby` has no endpoints",
    );
}

#[test]
fn an_empty_ladder_is_rejected() {
    let mut files = base();
    set(&mut files, "agents.json", "/tiers", json!([]));
    let report = check(&files);
    let p = report
        .errors()
        .find(|p| p.code == ProblemCode::NoTiers && p.file == "agents.json")
        .cloned()
        .expect("NoTiers");
    assert_problem(&p, "agents.json", "$.tiers", "the ladder is empty");
}

#[test]
fn a_tenant_without_any_ladder_is_rejected() {
    let mut files = base();
    set(&mut files, "acme.json", "/extends", json!("platform"));
    set(&mut files, "acme.json", "/constraints", json!({}));
    let p = only_error(&check(&files), ProblemCode::NoTiers);
    assert_problem(&p, "acme.json", "$", "no tier ladder");
}

#[test]
fn a_floor_outside_the_ladder_is_rejected() {
    let mut files = base();
    set(&mut files, "acme.json", "/constraints/floor", json!(7));
    let p = only_error(&check(&files), ProblemCode::FloorOutOfRange);
    assert_problem(
        &p,
        "acme.json",
        "$.constraints.floor",
        "tier 7 is outside the ladder, which has 4 tier(s) (0 to 3)",
    );
}

#[test]
fn a_floor_naming_an_unknown_tier_is_rejected() {
    let mut files = base();
    set(
        &mut files,
        "acme.json",
        "/constraints/floor",
        json!("standy"),
    );
    let p = only_error(&check(&files), ProblemCode::UnknownTier);
    assert_problem(
        &p,
        "acme.json",
        "$.constraints.floor",
        "unknown tier `standy` (did you mean `standby`?)",
    );
}

#[test]
fn a_task_floor_outside_the_ladder_is_rejected() {
    let mut files = base();
    set(
        &mut files,
        "acme.json",
        "/constraints/tasks",
        json!({"code_generation": {"floor": 9}}),
    );
    let p = only_error(&check(&files), ProblemCode::FloorOutOfRange);
    assert_problem(
        &p,
        "acme.json",
        "$.constraints.tasks.code_generation.floor",
        "tier 9 is outside the ladder",
    );
}

#[test]
fn an_extends_cycle_is_rejected() {
    let mut files = base();
    set(&mut files, "agents.json", "/extends", json!("agents2"));
    let mut t2 = template();
    t2["id"] = json!("agents2");
    t2["extends"] = json!("agents");
    files.push(("agents2.json".into(), t2));
    let report = check(&files);
    let cycles: Vec<_> = report
        .errors()
        .filter(|p| p.code == ProblemCode::ExtendsCycle)
        .collect();
    assert_eq!(cycles.len(), 2, "{report}");
    assert_problem(
        cycles[0],
        "agents.json",
        "$.extends",
        "`extends` loops: agents -> agents2 -> agents",
    );
}

#[test]
fn a_missing_parent_is_rejected() {
    let mut files = base();
    set(&mut files, "acme.json", "/extends", json!("agent"));
    let p = only_error(&check(&files), ProblemCode::UnknownParent);
    assert_problem(
        &p,
        "acme.json",
        "$.extends",
        "`agent` is not a layer in this policy set (did you mean `agents`?)",
    );
}

#[test]
fn a_tenant_cannot_extend_a_tenant() {
    let mut files = base();
    let mut t2 = tenant();
    t2["id"] = json!("acme-sub");
    t2["extends"] = json!("acme");
    files.push(("acme-sub.json".into(), t2));
    let p = only_error(&check(&files), ProblemCode::UnknownParent);
    assert_problem(
        &p,
        "acme-sub.json",
        "$.extends",
        "a tenant layer cannot extend tenant layer `acme`",
    );
}

#[test]
fn a_tenant_lowering_the_template_floor_is_widening() {
    let mut files = base();
    set(
        &mut files,
        "agents.json",
        "/constraints/floor",
        json!("standby"),
    );
    set(&mut files, "acme.json", "/constraints/floor", json!("mid"));
    let report = check(&files);
    let p = report
        .errors()
        .find(|p| p.code == ProblemCode::Widening)
        .cloned()
        .expect("widening");
    assert_eq!(p.file, "acme.json");
    assert_eq!(p.path, "$.constraints.floor");
    assert!(
        p.message
            .contains("permits endpoint `mid-eu` at tier `mid`"),
        "{p}"
    );
    assert!(
        p.message.contains(
            "parent layer `agents` (agents.json) excludes that tier: below the floor (tier 1)"
        ),
        "{p}"
    );
}

#[test]
fn a_tenant_adding_a_region_is_widening() {
    let mut files = base();
    set(
        &mut files,
        "agents.json",
        "/constraints/allowed_regions",
        json!(["eu-*"]),
    );
    set(
        &mut files,
        "acme.json",
        "/constraints/allowed_regions",
        json!(["eu-*", "us-east-1"]),
    );
    let report = check(&files);
    let p = report
        .errors()
        .find(|p| {
            p.code == ProblemCode::Widening && p.path.starts_with("$.constraints.allowed_regions[")
        })
        .cloned()
        .unwrap_or_else(|| panic!("{report}"));
    assert_problem(
        &p,
        "acme.json",
        "$.constraints.allowed_regions[1]",
        "region `us-east-1` is not allowed by parent layer `agents`",
    );
}

#[test]
fn a_tenant_relaxing_approval_is_widening() {
    let mut files = base();
    set(
        &mut files,
        "agents.json",
        "/constraints/approval",
        json!("always"),
    );
    set(
        &mut files,
        "acme.json",
        "/constraints/approval",
        json!("never"),
    );
    let report = check(&files);
    let p = report
        .errors()
        .find(|p| p.code == ProblemCode::Widening)
        .cloned()
        .unwrap_or_else(|| panic!("{report}"));
    assert_problem(
        &p,
        "acme.json",
        "$.constraints.approval",
        "needs no approval here, but parent layer `agents`",
    );
}

#[test]
fn a_tenant_quieting_notification_is_widening() {
    let mut files = base();
    set(
        &mut files,
        "agents.json",
        "/constraints/notification",
        json!("realtime"),
    );
    set(
        &mut files,
        "acme.json",
        "/constraints/notification",
        json!("silent"),
    );
    let p = only_error(&check(&files), ProblemCode::Widening);
    assert_problem(
        &p,
        "acme.json",
        "$.constraints.notification",
        "quieter than parent layer `agents`",
    );
}

#[test]
fn a_tenant_redefining_the_ladder_with_new_endpoints_is_widening() {
    let mut files = base();
    set(
        &mut files,
        "acme.json",
        "/tiers",
        json!([
            {"name": "primary", "endpoints": ["frontier-a-eu"]},
            {"name": "standby", "endpoints": ["frontier-b-eu", "frontier-a-us"]}
        ]),
    );
    set(
        &mut files,
        "acme.json",
        "/constraints/allowed_regions",
        json!(null),
    );
    set(
        &mut files,
        "acme.json",
        "/constraints/floor",
        json!("standby"),
    );
    let report = check(&files);
    assert!(
        !report
            .errors()
            .any(|p| p.code == ProblemCode::Widening && p.message.contains("frontier-b-eu")),
        "{report}"
    );
    let p = report
        .errors()
        .find(|p| p.code == ProblemCode::Widening)
        .cloned()
        .unwrap_or_else(|| panic!("{report}"));
    assert_problem(
        &p,
        "acme.json",
        "$.tiers",
        "permits endpoint `frontier-a-us` at tier `standby`",
    );
}

#[test]
fn a_task_override_looser_than_its_tenant_is_widening() {
    let mut files = base();
    set(
        &mut files,
        "acme.json",
        "/constraints/floor",
        json!("standby"),
    );
    set(
        &mut files,
        "acme.json",
        "/constraints/tasks",
        json!({"summarization": {"floor": "mid"}}),
    );
    let p = only_error(&check(&files), ProblemCode::Widening);
    assert_problem(
        &p,
        "acme.json",
        "$.constraints.tasks.summarization.floor",
        "below the tenant floor tier 1",
    );
}

#[test]
fn residency_that_leaves_nothing_usable_is_rejected() {
    let mut files = base();
    set(
        &mut files,
        "acme.json",
        "/constraints/allowed_regions",
        json!(["ap-*"]),
    );
    let report = check(&files);
    let p = report
        .errors()
        .find(|p| p.code == ProblemCode::NoUsableEndpoint)
        .cloned()
        .unwrap_or_else(|| panic!("{report}"));
    assert_problem(
        &p,
        "acme.json",
        "$.constraints",
        "tenant `acme` has no usable endpoint for its default view",
    );
    assert!(
        p.message
            .contains("frontier-a-eu (region `eu-west-1` not in allowed regions)"),
        "{p}"
    );
}

#[test]
fn task_restrictions_that_leave_nothing_usable_are_rejected() {
    let mut files = base();
    set(&mut files, "acme.json", "/constraints/floor", json!(3));
    set(
        &mut files,
        "acme.json",
        "/constraints/tasks",
        json!({"code_generation": {"allowed_tiers": ["minimal"]}}),
    );
    let report = check(&files);
    let p = report
        .errors()
        .find(|p| p.code == ProblemCode::NoUsableEndpoint)
        .cloned()
        .unwrap_or_else(|| panic!("{report}"));
    assert_problem(
        &p,
        "acme.json",
        "$.constraints",
        "no usable endpoint for task `code_generation`",
    );
    assert!(
        p.message
            .contains("`minimal`: serves only other task kinds"),
        "{p}"
    );
}

#[test]
fn residency_emptying_one_permitted_tier_is_a_warning() {
    let mut files = base();
    set(
        &mut files,
        "acme.json",
        "/constraints/allowed_regions",
        json!(["eu-west-1"]),
    );
    let report = check(&files);
    assert!(!report.has_errors(), "{report}");
    let w = warnings(&report, ProblemCode::TierEmptiedForTenant);
    assert!(!w.is_empty());
    assert!(
        w[0].message.contains("tier `standby` is permitted"),
        "{}",
        w[0]
    );
}

#[test]
fn zero_and_negative_thresholds_windows_and_budgets_are_rejected() {
    let cases = [
        (
            "platform.json",
            "/triggers/breaker/failure_rate",
            json!(0.0),
            "$.triggers.breaker.failure_rate",
            "fraction",
        ),
        (
            "platform.json",
            "/triggers/breaker/failure_rate",
            json!(1.5),
            "$.triggers.breaker.failure_rate",
            "fraction",
        ),
        (
            "platform.json",
            "/triggers/breaker/window",
            json!("0s"),
            "$.triggers.breaker.window",
            "positive duration",
        ),
        (
            "platform.json",
            "/triggers/breaker/window",
            json!(0),
            "$.triggers.breaker.window",
            "at least 1 call",
        ),
        (
            "platform.json",
            "/triggers/latency/window",
            json!("0ms"),
            "$.triggers.latency.window",
            "positive duration",
        ),
        (
            "platform.json",
            "/recovery/half_open/probes",
            json!(0),
            "$.recovery.half_open.probes",
            "at least 1",
        ),
        (
            "platform.json",
            "/recovery/open_wait/multiplier",
            json!(0.5),
            "$.recovery.open_wait.multiplier",
            "at least 1",
        ),
        (
            "platform.json",
            "/retry/budget/ratio",
            json!(-0.1),
            "$.retry.budget.ratio",
            "fraction",
        ),
        (
            "acme.json",
            "/constraints/budget",
            json!({"tenant": {"limit_usd": -5, "window": "1h"}}),
            "$.constraints.budget.tenant.limit_usd",
            "positive",
        ),
        (
            "acme.json",
            "/constraints/budget",
            json!({"session_usd": 0}),
            "$.constraints.budget.session_usd",
            "positive",
        ),
        (
            "acme.json",
            "/constraints/sla/p95_ceiling",
            json!("0s"),
            "$.constraints.sla.p95_ceiling",
            "positive duration",
        ),
        (
            "acme.json",
            "/recovery/promotion/min_dwell",
            json!("0s"),
            "$.recovery.promotion.min_dwell",
            "positive duration",
        ),
    ];
    for (file, pointer, value, path, msg) in cases {
        let mut files = base();
        set(&mut files, file, pointer, value.clone());
        let report = check(&files);
        let p = report
            .errors()
            .find(|p| p.code == ProblemCode::InvalidValue)
            .cloned()
            .unwrap_or_else(|| panic!("{pointer} = {value}: no InvalidValue in\n{report}"));
        assert_problem(&p, file, path, msg);
    }
}

#[test]
fn min_calls_larger_than_the_count_window_is_rejected() {
    let mut files = base();
    set(
        &mut files,
        "platform.json",
        "/triggers/breaker",
        json!({"window": 10, "min_calls": 20}),
    );
    let p = only_error(&check(&files), ProblemCode::MinCallsExceedsWindow);
    assert_problem(
        &p,
        "platform.json",
        "$.triggers.breaker.min_calls",
        "min_calls 20 is larger than the 10-call window",
    );
}

#[test]
fn non_capacity_errors_can_never_be_triggers() {
    let mut files = base();
    set(
        &mut files,
        "platform.json",
        "/triggers/breaker/capacity_errors",
        json!(["rate_limited", "auth", "context_length_exceeded"]),
    );
    let report = check(&files);
    let errs: Vec<_> = report
        .errors()
        .filter(|p| p.code == ProblemCode::NonCapacityTrigger)
        .collect();
    assert_eq!(errs.len(), 2, "{report}");
    assert_problem(
        errs[0],
        "platform.json",
        "$.triggers.breaker.capacity_errors[1]",
        "`auth` is not a capacity failure",
    );
    assert_problem(
        errs[1],
        "platform.json",
        "$.triggers.breaker.capacity_errors[2]",
        "`context_length_exceeded`",
    );
}

#[test]
fn platform_only_settings_in_a_tenant_are_rejected() {
    let mut files = base();
    set(
        &mut files,
        "acme.json",
        "/triggers/breaker/failure_rate",
        json!(0.2),
    );
    let p = only_error(&check(&files), ProblemCode::PlatformOnly);
    assert_problem(
        &p,
        "acme.json",
        "$.triggers.breaker",
        "may only be set in the platform layer",
    );
}

#[test]
fn a_floor_below_the_consent_record_is_rejected() {
    let mut files = base();
    set(
        &mut files,
        "acme.json",
        "/constraints/consent",
        json!({
            "agreement_id": "MSA-2291", "version": "3", "accepted_at": "2026-01-15T09:30:00Z",
            "accepted_by": "cmio@acme.example",
            "document_digest": "sha256:9f2c4a1b8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928170f6e5d4c",
            "lowest_tier": "standby"
        }),
    );
    let report = check(&files);
    let p = report
        .errors()
        .find(|p| p.code == ProblemCode::ConsentViolation)
        .cloned()
        .unwrap_or_else(|| panic!("{report}"));
    assert_problem(
        &p,
        "acme.json",
        "$.constraints.floor",
        "floor tier 2 permits degradation below tier 1, the lowest tier consented to in agreement `MSA-2291` version 3",
    );
}

#[test]
fn a_malformed_consent_digest_is_rejected() {
    let mut files = base();
    set(&mut files, "acme.json", "/constraints/floor", json!(1));
    set(
        &mut files,
        "acme.json",
        "/constraints/consent",
        json!({
            "agreement_id": "MSA-1", "version": "1", "accepted_at": "2026-01-15T09:30:00Z",
            "accepted_by": "x", "document_digest": "md5:abc", "lowest_tier": 1
        }),
    );
    let p = only_error(&check(&files), ProblemCode::InvalidValue);
    assert_problem(
        &p,
        "acme.json",
        "$.constraints.consent.document_digest",
        "not a digest",
    );
}

#[test]
fn suspending_without_a_suspension_step_is_rejected() {
    let mut files = base();
    files[2].1.as_object_mut().unwrap().remove("suspension");
    set(
        &mut files,
        "acme.json",
        "/constraints/when_exhausted",
        json!("suspend"),
    );
    let p = only_error(&check(&files), ProblemCode::MissingSuspension);
    assert_problem(
        &p,
        "acme.json",
        "$.constraints.when_exhausted",
        "the ladder has no `suspension` step",
    );
}

#[test]
fn unknown_task_kinds_are_rejected_when_the_platform_declares_them() {
    let mut files = base();
    set(
        &mut files,
        "acme.json",
        "/constraints/tasks",
        json!({"code_genration": {"floor": 0}}),
    );
    let p = only_error(&check(&files), ProblemCode::UnknownTaskKind);
    assert_problem(
        &p,
        "acme.json",
        "$.constraints.tasks.code_genration",
        "(did you mean `code_generation`?)",
    );
}

#[test]
fn duplicate_layer_and_endpoint_ids_are_rejected() {
    let mut files = base();
    let mut dup = tenant();
    dup["version"] = json!("8");
    files.push(("acme-copy.json".into(), dup));
    let p = only_error(&check(&files), ProblemCode::DuplicateId);
    assert_problem(
        &p,
        "acme-copy.json",
        "$.id",
        "layer id `acme` is already used by acme.json",
    );

    let mut files = base();
    files.push(("more.json".into(), json!({"kind": "catalog", "endpoints": [ep("mid-eu", "x", "y", "eu-west-1", 8000, 1.0, 1.0)]})));
    let p = only_error(&check(&files), ProblemCode::DuplicateId);
    assert_problem(
        &p,
        "more.json",
        "$.endpoints[0].id",
        "endpoint id `mid-eu` is already defined in catalog.json",
    );
}

#[test]
fn exactly_one_platform_layer() {
    let mut files = base();
    let mut p2 = platform();
    p2["id"] = json!("platform2");
    files.push(("platform2.json".into(), p2));
    let p = only_error(&check(&files), ProblemCode::PlatformLayer);
    assert_problem(
        &p,
        "platform2.json",
        "$.level",
        "exactly one platform layer",
    );
}

#[test]
fn catalog_mistakes_are_located() {
    let mut files = base();
    set(
        &mut files,
        "catalog.json",
        "/endpoints/3/capabilities/max_output_tokens",
        json!(64000),
    );
    set(
        &mut files,
        "catalog.json",
        "/endpoints/4/pricing/input_per_mtok",
        json!(-1.0),
    );
    let report = check(&files);
    let errs: Vec<_> = report
        .errors()
        .filter(|p| p.code == ProblemCode::InvalidValue)
        .collect();
    assert_eq!(errs.len(), 2, "{report}");
    assert_problem(
        errs[0],
        "catalog.json",
        "$.endpoints[3].capabilities.max_output_tokens",
        "between 1 and the context window (32000)",
    );
    assert_problem(
        errs[1],
        "catalog.json",
        "$.endpoints[4].pricing.input_per_mtok",
        "zero or positive",
    );
}

#[test]
fn a_smaller_context_window_without_fitting_is_a_warning() {
    let mut files = base();
    set(
        &mut files,
        "platform.json",
        "/continuity/fit_to_smaller_window",
        json!(false),
    );
    let report = check(&files);
    assert!(!report.has_errors(), "{report}");
    let w = warnings(&report, ProblemCode::SmallerContextWindow);
    assert!(!w.is_empty(), "{report}");
    assert_eq!(w[0].file, "acme.json");
    assert!(
        w[0].message.contains(
            "tier `mid` has a 32000-token window, smaller than tier `standby` above it (200000)"
        ),
        "{}",
        w[0]
    );
}

#[test]
fn adjacent_tiers_in_one_failure_domain_are_a_warning() {
    let mut files = base();
    set(
        &mut files,
        "agents.json",
        "/tiers/1/endpoints",
        json!(["frontier-a-us"]),
    );
    set(
        &mut files,
        "agents.json",
        "/tiers/0/endpoints",
        json!(["frontier-a-eu"]),
    );
    let report = check(&files);
    let w = warnings(&report, ProblemCode::SharedFailureDomain);
    assert_eq!(w.len(), 1, "{report}");
    assert_problem(
        &w[0],
        "agents.json",
        "$.tiers[1]",
        "shares failure domain(s) `vendor-a` with tier `primary`",
    );
}

#[test]
fn retry_storm_settings_are_a_warning() {
    let mut files = base();
    set(
        &mut files,
        "acme.json",
        "/retry/attempts_per_endpoint",
        json!(5),
    );
    let report = check(&files);
    assert!(!report.has_errors(), "{report}");
    let w = warnings(&report, ProblemCode::RetryStorm);
    assert_eq!(w.len(), 1);
    assert_problem(
        &w[0],
        "acme.json",
        "$.retry.attempts_per_endpoint",
        "5 attempts at each failing endpoint",
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut files = base();
    set(
        &mut files,
        "agents.json",
        "/tiers/1/endpoints/0",
        json!("nope"),
    );
    set(
        &mut files,
        "platform.json",
        "/triggers/breaker/failure_rate",
        json!(2),
    );
    files.push(("broken.json".into(), json!({"kind": "policy"})));
    let report = check(&files);
    let codes: Vec<ProblemCode> = report.errors().map(|p| p.code).collect();
    assert!(codes.contains(&ProblemCode::UnknownEndpoint), "{report}");
    assert!(codes.contains(&ProblemCode::InvalidValue), "{report}");
    assert!(codes.contains(&ProblemCode::Schema), "{report}");
    match PolicySet::from_sources(sources(&files)) {
        Err(PolicyError::Invalid(r)) => assert_eq!(r, report),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn warnings_alone_do_not_fail_loading() {
    let mut files = base();
    set(
        &mut files,
        "acme.json",
        "/retry/attempts_per_endpoint",
        json!(4),
    );
    let set = load(&files);
    assert!(
        set.warnings()
            .iter()
            .all(|p| p.severity == Severity::Warning)
    );
    assert!(!set.warnings().is_empty());
}

#[test]
fn a_tenant_turning_off_suspension_notices_is_widening() {
    let mut files = base();
    set(
        &mut files,
        "acme.json",
        "/suspension",
        json!({"max_duration": "1h", "notify": false}),
    );
    let p = only_error(&check(&files), ProblemCode::Widening);
    assert_problem(
        &p,
        "acme.json",
        "$.suspension.notify",
        "cannot turn that off",
    );
}

#[test]
fn summarize_at_must_be_a_fraction() {
    let mut files = base();
    set(
        &mut files,
        "acme.json",
        "/continuity/summarize_at",
        json!(1.5),
    );
    let p = only_error(&check(&files), ProblemCode::InvalidValue);
    assert_problem(
        &p,
        "acme.json",
        "$.continuity.summarize_at",
        "must be a fraction greater than 0 and at most 1, got 1.5",
    );
}

#[test]
fn max_summary_calls_must_be_at_least_one() {
    let mut files = base();
    set(
        &mut files,
        "acme.json",
        "/continuity/max_summary_calls",
        json!(0),
    );
    let p = only_error(&check(&files), ProblemCode::InvalidValue);
    assert_problem(
        &p,
        "acme.json",
        "$.continuity.max_summary_calls",
        "must be at least 1",
    );
}

#[test]
fn the_summarizer_must_be_a_tier_of_the_ladder() {
    let mut files = base();
    set(
        &mut files,
        "acme.json",
        "/continuity/summarizer",
        json!("summariser"),
    );
    let p = only_error(&check(&files), ProblemCode::UnknownTier);
    assert_problem(
        &p,
        "acme.json",
        "$.continuity.summarizer",
        "the summarizer tier `summariser` is not in the ladder",
    );
    set(
        &mut files,
        "acme.json",
        "/continuity/summarizer",
        json!(" "),
    );
    let report = check(&files);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.path == "$.continuity.summarizer" && p.message.contains("must name a tier")),
        "{report}"
    );
}

#[test]
fn a_required_summary_needs_a_summarizer() {
    let mut files = base();
    set(
        &mut files,
        "acme.json",
        "/continuity/require_summary",
        json!(true),
    );
    let p = only_error(&check(&files), ProblemCode::InvalidValue);
    assert_problem(
        &p,
        "acme.json",
        "$.continuity.require_summary",
        "no `continuity.summarizer` tier is named",
    );
}

#[test]
fn unknown_continuity_settings_are_errors() {
    let mut files = base();
    set(
        &mut files,
        "acme.json",
        "/continuity/non_portable",
        json!("keep"),
    );
    let report = check(&files);
    assert!(report.has_errors(), "{report}");
    set(
        &mut files,
        "acme.json",
        "/continuity/non_portable",
        json!("pin"),
    );
    set(
        &mut files,
        "acme.json",
        "/continuity/checkpoint/every_step",
        json!(3),
    );
    let p = only_error(&check(&files), ProblemCode::UnknownField);
    assert_problem(
        &p,
        "acme.json",
        "$.continuity.checkpoint.every_step",
        "unknown field",
    );
}
