//! Properties of policy resolution: digests are stable under re-serialization, lower layers only
//! narrow, and malformed input never panics.

mod common;

use common::*;
use downshift::Severity;
use downshift::policy::{PolicySet, ResolvedPolicy, Source};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Writes `v` as JSON text with object keys in an order and whitespace chosen by `seed`.
fn write_shuffled(v: &Value, seed: &mut u64, out: &mut String) {
    fn next(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }
    let ws = |n: u64| match n % 3 {
        0 => "",
        1 => " ",
        _ => "\n  ",
    };
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            for i in (1..keys.len()).rev() {
                let j = (next(seed) as usize) % (i + 1);
                keys.swap(i, j);
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(ws(next(seed)));
                out.push_str(&serde_json::to_string(k).unwrap());
                out.push(':');
                out.push_str(ws(next(seed)));
                write_shuffled(&m[*k], seed, out);
            }
            out.push_str(ws(next(seed)));
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    out.push_str(ws(next(seed)));
                }
                write_shuffled(x, seed, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn rich_base() -> Vec<(String, Value)> {
    let mut files = base();
    set(
        &mut files,
        "acme.json",
        "/constraints/tasks",
        json!({
            "code_generation": {"floor": "standby", "min_quality": 0.65},
            "summarization": {"approval": {"at_or_below": 2}, "notification": "realtime"}
        }),
    );
    set(
        &mut files,
        "acme.json",
        "/constraints/budget",
        json!({"tenant": {"limit_usd": 50, "window": "1h"}, "on_exceeded": {"downshift_to": "mid"}}),
    );
    files
}

fn digests(set: &PolicySet) -> Vec<String> {
    let mut out = Vec::new();
    for t in set.tenants() {
        let tp = set.tenant(t.as_str()).unwrap();
        out.push(tp.default_view().digest.to_string());
        for k in tp.task_kinds() {
            out.push(format!("{k}={}", tp.view(k.as_str()).digest));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn digests_do_not_change_with_key_order_or_whitespace(seed in any::<u64>()) {
        let files = rich_base();
        let baseline = digests(&load(&files));
        let mut s = seed;
        let srcs: Vec<Source> = files.iter().map(|(n, v)| {
            let mut text = String::new();
            write_shuffled(v, &mut s, &mut text);
            Source::new(n.clone(), text)
        }).collect();
        let set = PolicySet::from_sources(srcs).unwrap();
        prop_assert_eq!(digests(&set), baseline);
    }

    #[test]
    fn malformed_files_never_panic_and_are_named(which in 0usize..4, cut in any::<prop::sample::Index>(), byte in any::<u8>(), mutate in any::<bool>()) {
        let files = rich_base();
        let mut srcs = sources(&files);
        let text = srcs[which].text.clone().into_bytes();
        let at = cut.index(text.len().max(1));
        let broken = if mutate {
            let mut t = text.clone();
            if !t.is_empty() { let i = at.min(t.len() - 1); t[i] = byte; }
            t
        } else {
            text[..at].to_vec()
        };
        srcs[which].text = String::from_utf8_lossy(&broken).into_owned();
        let (set, report) = PolicySet::check_sources(srcs.clone());
        // Either it still loads (the change was harmless) or every error names a known file.
        if report.has_errors() {
            prop_assert!(set.is_none());
            for p in report.errors() {
                prop_assert!(srcs.iter().any(|s| s.name == p.file), "unknown file in {}", p);
                prop_assert!(p.path.starts_with('$'));
            }
        }
    }
}

#[test]
fn a_semantic_change_changes_the_digest() {
    let files = rich_base();
    let before = load(&files);
    let mut changed = files.clone();
    set(
        &mut changed,
        "acme.json",
        "/constraints/floor",
        json!("standby"),
    );
    let after = load(&changed);
    let (b, a) = (
        before.view("acme", "copywriting").unwrap(),
        after.view("acme", "copywriting").unwrap(),
    );
    assert_ne!(b.digest, a.digest);
    assert_ne!(before.digest(), after.digest());
    // Comments are not content.
    let mut relabel = files.clone();
    set(
        &mut relabel,
        "acme.json",
        "/description",
        json!("only a comment changed"),
    );
    let same = load(&relabel);
    assert_eq!(
        before.view("acme", "copywriting").unwrap().digest,
        same.view("acme", "copywriting").unwrap().digest
    );
}

#[test]
fn the_fixture_round_trips_through_the_typed_form() {
    for (name, v) in rich_base() {
        let text = serde_json::to_string(&v).unwrap();
        if v["kind"] == "catalog" {
            let c: downshift::catalog::CatalogFile = serde_json::from_str(&text).unwrap();
            let again: downshift::catalog::CatalogFile =
                serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
            assert_eq!(c, again, "{name}");
        } else {
            let l: downshift::policy::PolicyLayer = serde_json::from_str(&text).unwrap();
            let again: downshift::policy::PolicyLayer =
                serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
            assert_eq!(l, again, "{name}");
        }
    }
}

// ---- narrowing only -------------------------------------------------------------------------

const TIERS: [&str; 4] = ["primary", "standby", "mid", "minimal"];
const REGIONS: [&str; 5] = ["eu-*", "eu-west-1", "eu-central-1", "us-east-1", "global"];

fn constraints_strategy() -> impl Strategy<Value = Value> {
    (
        prop::option::of(0u32..4),
        prop::collection::vec(0usize..4, 0..3),
        prop::option::of(prop::collection::vec(0usize..5, 1..4)),
        0u8..3,
        0u32..4,
        0u8..3,
        any::<bool>(),
        prop::option::of((0u32..4, prop::option::of(0u8..3))),
    )
        .prop_map(
            |(floor, forbid, regions, approval, at, notif, probe, task)| {
                let mut c = serde_json::Map::new();
                if let Some(f) = floor {
                    c.insert("floor".into(), json!(f));
                }
                if !forbid.is_empty() {
                    c.insert(
                        "forbid_tiers".into(),
                        json!(forbid.iter().map(|&i| TIERS[i]).collect::<Vec<_>>()),
                    );
                }
                if let Some(r) = regions {
                    c.insert(
                        "allowed_regions".into(),
                        json!(r.iter().map(|&i| REGIONS[i]).collect::<Vec<_>>()),
                    );
                }
                c.insert(
                    "approval".into(),
                    match approval {
                        0 => json!("never"),
                        1 => json!({"at_or_below": at}),
                        _ => json!("always"),
                    },
                );
                c.insert("on_approval_timeout".into(), json!("reject"));
                c.insert(
                    "notification".into(),
                    json!(["silent", "digest", "realtime"][notif as usize]),
                );
                c.insert("probe_eligible".into(), json!(probe));
                if let Some((tf, tn)) = task {
                    let mut o = serde_json::Map::new();
                    o.insert("floor".into(), json!(tf));
                    if let Some(n) = tn {
                        o.insert(
                            "notification".into(),
                            json!(["silent", "digest", "realtime"][n as usize]),
                        );
                    }
                    c.insert("tasks".into(), json!({"code_generation": Value::Object(o)}));
                }
                Value::Object(c)
            },
        )
}

fn usable_pairs(v: &ResolvedPolicy) -> Vec<(String, String)> {
    v.usable_tiers()
        .flat_map(|t| {
            t.endpoints
                .iter()
                .map(move |e| (t.name.to_string(), e.to_string()))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// For arbitrary parent (template) and child (tenant) constraints, whenever the set loads, the
    /// tenant's resolved views never permit a tier, endpoint (region) or approval-free switch that
    /// the parent forbids, and never notify less.
    #[test]
    fn a_tenant_never_permits_what_its_parent_forbids(parent in constraints_strategy(), child in constraints_strategy()) {
        let mut files = base();
        set(&mut files, "agents.json", "/constraints", parent);
        set(&mut files, "acme.json", "/constraints", child);
        // The parent resolved on its own, as a tenant that changes nothing.
        files.push(("parent-view.json".into(), json!({
            "kind": "policy", "id": "parent-view", "version": "1", "level": "tenant", "extends": "agents"
        })));
        let (set, report) = PolicySet::check_sources(sources(&files));
        let Some(set) = set else {
            prop_assert!(report.errors().all(|p| p.severity == Severity::Error));
            return Ok(());
        };
        let tenant = set.tenant("acme").unwrap();
        let parent = set.tenant("parent-view").unwrap();
        for task in ["copywriting", "code_generation", "summarization", "triage"] {
            let c = tenant.view(task);
            let p = parent.view(task);
            let pp = usable_pairs(p);
            for pair in usable_pairs(c) {
                prop_assert!(pp.contains(&pair), "task {}: child permits {:?}, parent permits {:?}", task, pair, pp);
            }
            for t in c.usable_tiers() {
                prop_assert!(
                    !p.approval.requires(0, t.index) || c.approval.requires(0, t.index),
                    "task {}: tier {} approval-free in child only", task, t.name
                );
            }
            prop_assert!(c.notification >= p.notification);
            prop_assert!(!c.probe_eligible || p.probe_eligible);
            prop_assert!(c.floor <= p.floor || c.tiers.iter().skip(p.floor as usize + 1).all(|t| !t.usable()));
        }
    }

    /// A child that only repeats its parent always loads: narrowing checks do not reject the
    /// trivially narrow case (guards against a checker that rejects everything).
    #[test]
    fn a_tenant_equal_to_its_parent_is_accepted(parent in constraints_strategy()) {
        let mut files = base();
        set(&mut files, "agents.json", "/constraints", parent.clone());
        set(&mut files, "acme.json", "/constraints", parent);
        let (parent_set, _) = PolicySet::check_sources(sources(&{
            let mut f = files.clone();
            f.retain(|(n, _)| n != "acme.json");
            f
        }));
        let (set, report) = PolicySet::check_sources(sources(&files));
        // If the template is valid on its own, a tenant restating it must be too — unless the
        // restated constraints leave the tenant nothing usable (a tenant-only check).
        if parent_set.is_some() {
            let tenant_only = report.errors().all(|p| p.file == "acme.json" && p.code == downshift::ProblemCode::NoUsableEndpoint);
            prop_assert!(set.is_some() || tenant_only, "{}", report);
        }
    }
}
