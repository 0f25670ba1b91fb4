//! The example policy set in `examples/policies` parses, round-trips, and refers only to things
//! that exist: catalog endpoints, tiers of the inherited ladder, task kinds the platform declares,
//! parent layers. (Full validation of the set is the policy validator's own test suite.)

mod support;

use std::collections::{BTreeMap, BTreeSet};

use downshift::catalog::{CatalogFile, Deployment};
use downshift::digest::ContentDigest;
use downshift::policy::{Exhausted, Level, PolicyLayer};
use support::{Parsed, load_examples};

/// The chain of layers from `id` up to the root, `id` first. Panics on a missing parent or cycle.
fn chain<'a>(layers: &'a BTreeMap<String, PolicyLayer>, id: &str) -> Vec<&'a PolicyLayer> {
    let mut out: Vec<&PolicyLayer> = Vec::new();
    let mut next = Some(id.to_string());
    while let Some(cur) = next {
        assert!(
            !out.iter().any(|l| l.id.as_str() == cur),
            "extends cycle through `{cur}`"
        );
        let layer = layers.get(&cur).unwrap_or_else(|| {
            panic!("layer `{cur}` (extended by a layer of `{id}`'s chain) does not exist")
        });
        next = layer.extends.as_ref().map(|p| p.as_str().to_string());
        out.push(layer);
    }
    out
}

/// The ladder a layer sees: the tiers of the nearest layer in its chain that defines any.
fn inherited_ladder(layers: &BTreeMap<String, PolicyLayer>, id: &str) -> Vec<String> {
    chain(layers, id)
        .into_iter()
        .find(|l| !l.tiers.is_empty())
        .map(support::tier_names)
        .unwrap_or_default()
}

#[test]
fn every_example_file_parses_as_its_kind_and_names_its_schema() {
    let files = load_examples();
    assert!(
        files.len() >= 6,
        "expected catalog, platform, template and tenants"
    );
    for f in &files {
        let schema = f.raw.get("$schema").and_then(|s| s.as_str());
        let expected = match &f.parsed {
            Parsed::Catalog(c) => {
                assert_eq!(c.schema.as_deref(), schema);
                "../../docs/catalog.schema.json"
            }
            Parsed::Layer(l) => {
                assert_eq!(l.schema.as_deref(), schema);
                "../../docs/policy.schema.json"
            }
        };
        assert_eq!(schema, Some(expected), "{}: `$schema`", f.name);
    }
    let catalogs = files
        .iter()
        .filter(|f| matches!(f.parsed, Parsed::Catalog(_)))
        .count();
    assert_eq!(catalogs, 1, "exactly one catalog file");
}

#[test]
fn every_example_file_survives_a_serialize_parse_round_trip() {
    for f in load_examples() {
        match f.parsed {
            Parsed::Catalog(c) => {
                let text = serde_json::to_string_pretty(&c).unwrap();
                let again: CatalogFile = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: re-parse failed: {e}\n{text}", f.name));
                assert_eq!(c, again, "{}", f.name);
            }
            Parsed::Layer(l) => {
                let text = serde_json::to_string_pretty(&l).unwrap();
                let again: PolicyLayer = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: re-parse failed: {e}\n{text}", f.name));
                assert_eq!(*l, again, "{}", f.name);
                // Serializing the re-parsed value gives the same text: nothing drifts.
                assert_eq!(
                    text,
                    serde_json::to_string_pretty(&again).unwrap(),
                    "{}",
                    f.name
                );
            }
        }
    }
}

#[test]
fn the_catalog_has_the_breadth_the_examples_rely_on() {
    let cat = support::example_catalog();
    let ids = support::endpoint_ids(&cat);
    assert_eq!(ids.len(), cat.endpoints.len(), "endpoint ids are unique");
    assert!(cat.endpoints.len() >= 8, "at least 8 endpoints");

    let providers: BTreeSet<&str> = cat.endpoints.iter().map(|e| e.provider.as_str()).collect();
    assert!(providers.len() >= 3, "at least 3 providers: {providers:?}");

    let concrete_regions: BTreeSet<&str> = cat
        .endpoints
        .iter()
        .map(|e| e.region.as_str())
        .filter(|r| *r != "global")
        .collect();
    assert!(
        concrete_regions.len() >= 2,
        "at least 2 regions: {concrete_regions:?}"
    );
    assert!(
        cat.endpoints.iter().any(|e| e.region == "global"),
        "a global endpoint shows residency handling"
    );
    assert!(
        cat.endpoints
            .iter()
            .any(|e| e.data.deployment == Deployment::SelfHosted),
        "a self-hosted endpoint"
    );
    assert!(
        cat.endpoints.iter().any(|e| e.data.retains_prompts),
        "an endpoint that retains prompts, for the tenants that forbid it"
    );

    // The frontier model (quality 1.0 relative to the primary) at two or more providers.
    let frontier_providers: BTreeSet<&str> = cat
        .endpoints
        .iter()
        .filter(|e| e.quality_for("*") == Some(1.0))
        .map(|e| e.provider.as_str())
        .collect();
    assert!(
        frontier_providers.len() >= 2,
        "the primary model at two providers: {frontier_providers:?}"
    );

    for e in &cat.endpoints {
        assert!(
            e.quality.contains_key("*"),
            "{}: quality needs a `*` default",
            e.id
        );
        for (task, q) in &e.quality {
            assert!(*q > 0.0 && *q <= 1.0, "{}: quality[{task}] = {q}", e.id);
        }
        assert!(e.pricing.input_per_mtok > 0.0 && e.pricing.output_per_mtok > 0.0);
        assert!(e.capabilities.max_output_tokens < e.capabilities.context_window);
    }
}

#[test]
fn every_endpoint_referenced_by_a_layer_exists_in_the_catalog() {
    let ids = support::endpoint_ids(&support::example_catalog());
    let mut checked = 0;
    for (id, layer) in support::example_layers() {
        for (path, endpoint) in support::referenced_endpoints(&layer) {
            assert!(
                ids.contains(&endpoint),
                "{id}: {path} names `{endpoint}`, which is not in the catalog"
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "the ladder names the catalog's endpoints");
}

#[test]
fn every_catalog_endpoint_serves_in_some_ladder() {
    let layers = support::example_layers();
    let used: BTreeSet<String> = layers
        .values()
        .flat_map(|l| l.tiers.iter().flat_map(|t| t.endpoints.iter()))
        .map(|e| e.as_str().to_string())
        .collect();
    for id in support::endpoint_ids(&support::example_catalog()) {
        assert!(
            used.contains(&id),
            "catalog endpoint `{id}` is in no ladder"
        );
    }
}

#[test]
fn layers_form_one_hierarchy_rooted_at_the_platform() {
    let layers = support::example_layers();
    let platforms: Vec<&PolicyLayer> = layers
        .values()
        .filter(|l| l.level == Level::Platform)
        .collect();
    assert_eq!(platforms.len(), 1, "exactly one platform layer");
    assert!(
        platforms[0].extends.is_none(),
        "the platform extends nothing"
    );

    for (id, layer) in &layers {
        let c = chain(&layers, id);
        assert_eq!(
            c.last().unwrap().level,
            Level::Platform,
            "{id}: chain ends at the platform"
        );
        for pair in c.windows(2) {
            let (child, parent) = (pair[0], pair[1]);
            assert!(
                parent.level <= child.level && parent.level != Level::Tenant,
                "{}: a {} layer cannot extend the {} layer `{}`",
                child.id,
                child.level,
                parent.level,
                parent.id
            );
        }
        assert!(
            layer.description.as_deref().is_some_and(|d| d.len() > 40),
            "{id}: every layer explains its intent in `description`"
        );
    }
    for tenant in ["hospital-network", "marketing-agency", "fintech"] {
        assert_eq!(
            layers.get(tenant).map(|l| l.level),
            Some(Level::Tenant),
            "tenant `{tenant}`"
        );
    }
}

#[test]
fn the_agents_template_is_the_articles_five_step_ladder() {
    let layers = support::example_layers();
    let t = &layers["agents"];
    assert_eq!(t.level, Level::Template);
    assert_eq!(
        support::tier_names(t),
        ["primary", "hot-standby", "mid", "minimal"]
    );
    for tier in &t.tiers {
        assert!(!tier.endpoints.is_empty(), "tier `{}` is empty", tier.name);
        assert!(
            tier.description.is_some(),
            "tier `{}` explains itself",
            tier.name
        );
    }
    let minimal = t.tiers.last().unwrap();
    let tasks: Vec<&str> = minimal.tasks.iter().flatten().map(|k| k.as_str()).collect();
    assert_eq!(tasks, ["triage", "user_message"]);
    assert!(t.suspension.is_some(), "the fifth step is suspension");

    // No endpoint appears in two tiers (that would loop the fallback order).
    let mut seen = BTreeSet::new();
    for e in t.tiers.iter().flat_map(|t| t.endpoints.iter()) {
        assert!(seen.insert(e.as_str()), "`{e}` is in two tiers");
    }
}

#[test]
fn tier_references_resolve_against_the_inherited_ladder() {
    let layers = support::example_layers();
    let mut checked = 0;
    for id in layers.keys() {
        let names = inherited_ladder(&layers, id);
        for (path, r) in support::tier_refs(&layers[id]) {
            assert!(
                support::tier_ref_resolves(&r, &names),
                "{id}: {path} names {r}, not in the ladder {names:?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 8);
}

#[test]
fn task_kinds_named_anywhere_are_declared_by_the_platform() {
    let layers = support::example_layers();
    let declared: BTreeSet<String> = layers["platform"]
        .task_kinds
        .iter()
        .flatten()
        .map(|k| k.as_str().to_string())
        .collect();
    assert_eq!(declared.len(), 8);
    for (id, layer) in &layers {
        for k in support::task_kinds_named(layer) {
            assert!(
                declared.contains(&k),
                "{id}: task kind `{k}` is not declared"
            );
        }
    }
}

#[test]
fn platform_only_settings_appear_only_in_the_platform_file() {
    for f in load_examples() {
        let Parsed::Layer(l) = &f.parsed else {
            continue;
        };
        if l.level == Level::Platform {
            continue;
        }
        for pointer in [
            "/task_kinds",
            "/triggers/breaker",
            "/recovery/half_open",
            "/recovery/open_wait",
            "/retry/budget",
        ] {
            assert!(
                f.raw.pointer(pointer).is_none(),
                "{}: `{pointer}` is platform-only",
                f.name
            );
        }
    }
}

#[test]
fn consent_records_are_well_formed_and_cover_the_floor() {
    let layers = support::example_layers();
    let mut seen = 0;
    for (id, layer) in &layers {
        let Some(consent) = &layer.constraints.consent else {
            continue;
        };
        seen += 1;
        ContentDigest::parse(&consent.document_digest)
            .unwrap_or_else(|e| panic!("{id}: consent.document_digest: {e}"));
        assert!(!consent.agreement_id.is_empty() && !consent.accepted_by.is_empty());
        // The floor is written the same way as the consent's lowest tier, so it is no lower.
        assert_eq!(
            layer.constraints.floor.as_ref(),
            Some(&consent.lowest_tier),
            "{id}: the floor comes from the consent record"
        );
    }
    assert!(seen >= 1, "the hospital network signs a consent record");
}

#[test]
fn tenants_that_suspend_inherit_a_suspension_step() {
    let layers = support::example_layers();
    for (id, layer) in layers.iter().filter(|(_, l)| l.level == Level::Tenant) {
        let c = chain(&layers, id);
        let has_suspension = c.iter().any(|l| l.suspension.is_some());
        let suspends = layer.constraints.when_exhausted == Exhausted::Suspend
            || layer
                .constraints
                .tasks
                .values()
                .any(|o| o.when_exhausted == Some(Exhausted::Suspend));
        if suspends {
            assert!(
                has_suspension,
                "{id} suspends but its ladder has no suspension step"
            );
        }
    }
}

#[test]
fn the_example_set_passes_the_real_validator_without_warnings() {
    let set = downshift::policy::PolicySet::load(&["examples/policies"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(set.warnings().is_empty(), "{:?}", set.warnings());
    let tenants: Vec<&str> = set.tenants().iter().map(|t| t.as_str()).collect();
    assert_eq!(tenants, ["fintech", "hospital-network", "marketing-agency"]);
}
