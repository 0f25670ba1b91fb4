//! Shared loaders for the tests that check the example policy set and the policy guide.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use downshift::catalog::CatalogFile;
use downshift::policy::{Approval, BudgetAction, PolicyLayer, TierRef};

/// The example policy directory.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies")
}

/// One example file, parsed by its `kind`.
#[derive(Debug, Clone)]
pub enum Parsed {
    /// `"kind": "catalog"`.
    Catalog(CatalogFile),
    /// `"kind": "policy"`.
    Layer(Box<PolicyLayer>),
}

/// An example file: its name, its text, its raw JSON and its typed form.
#[derive(Debug, Clone)]
pub struct ExampleFile {
    pub name: String,
    pub text: String,
    pub raw: serde_json::Value,
    pub parsed: Parsed,
}

/// Parses a file's text as a catalog or a policy layer, choosing by its `kind`.
pub fn parse_by_kind(name: &str, text: &str) -> (serde_json::Value, Parsed) {
    let raw: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
    let parsed = match raw.get("kind").and_then(|k| k.as_str()) {
        Some("catalog") => Parsed::Catalog(
            serde_json::from_str::<CatalogFile>(text)
                .unwrap_or_else(|e| panic!("{name}: not a catalog: {e}")),
        ),
        Some("policy") => Parsed::Layer(Box::new(
            serde_json::from_str::<PolicyLayer>(text)
                .unwrap_or_else(|e| panic!("{name}: not a policy layer: {e}")),
        )),
        other => panic!("{name}: unexpected kind {other:?}"),
    };
    (raw, parsed)
}

/// Every `*.json` file under `examples/policies`, sorted by name.
pub fn load_examples() -> Vec<ExampleFile> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("examples/policies exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).unwrap();
            let (raw, parsed) = parse_by_kind(&name, &text);
            ExampleFile {
                name,
                text,
                raw,
                parsed,
            }
        })
        .collect()
}

/// The example catalog.
pub fn example_catalog() -> CatalogFile {
    let text = std::fs::read_to_string(examples_dir().join("catalog.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The example policy layers, by id.
pub fn example_layers() -> BTreeMap<String, PolicyLayer> {
    load_examples()
        .into_iter()
        .filter_map(|f| match f.parsed {
            Parsed::Layer(l) => Some((l.id.as_str().to_string(), *l)),
            Parsed::Catalog(_) => None,
        })
        .collect()
}

/// The catalog's endpoint ids.
pub fn endpoint_ids(catalog: &CatalogFile) -> BTreeSet<String> {
    catalog
        .endpoints
        .iter()
        .map(|e| e.id.as_str().to_string())
        .collect()
}

/// Every endpoint id a layer names: in its tiers and in its allow and forbid lists.
pub fn referenced_endpoints(layer: &PolicyLayer) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, t) in layer.tiers.iter().enumerate() {
        for e in &t.endpoints {
            out.push((format!("$.tiers[{i}].endpoints"), e.as_str().to_string()));
        }
    }
    for e in layer.constraints.allowed_endpoints.iter().flatten() {
        out.push((
            "$.constraints.allowed_endpoints".to_string(),
            e.as_str().to_string(),
        ));
    }
    for e in &layer.constraints.forbid_endpoints {
        out.push((
            "$.constraints.forbid_endpoints".to_string(),
            e.as_str().to_string(),
        ));
    }
    out
}

/// Every tier reference a layer makes, with where it is.
pub fn tier_refs(layer: &PolicyLayer) -> Vec<(String, TierRef)> {
    let c = &layer.constraints;
    let mut out = Vec::new();
    if let Some(f) = &c.floor {
        out.push(("$.constraints.floor".to_string(), f.clone()));
    }
    for t in &c.forbid_tiers {
        out.push(("$.constraints.forbid_tiers".to_string(), t.clone()));
    }
    if let Approval::AtOrBelow(t) = &c.approval {
        out.push(("$.constraints.approval".to_string(), t.clone()));
    }
    if let Some(b) = &c.budget {
        if let BudgetAction::DownshiftTo(t) = &b.on_exceeded {
            out.push(("$.constraints.budget.on_exceeded".to_string(), t.clone()));
        }
    }
    if let Some(consent) = &c.consent {
        out.push((
            "$.constraints.consent.lowest_tier".to_string(),
            consent.lowest_tier.clone(),
        ));
    }
    for (task, o) in &c.tasks {
        let at = format!("$.constraints.tasks.{task}");
        if let Some(f) = &o.floor {
            out.push((format!("{at}.floor"), f.clone()));
        }
        for t in o.allowed_tiers.iter().flatten() {
            out.push((format!("{at}.allowed_tiers"), t.clone()));
        }
        if let Some(Approval::AtOrBelow(t)) = &o.approval {
            out.push((format!("{at}.approval"), t.clone()));
        }
    }
    out
}

/// Every task kind a layer names: in tier restrictions and task overrides.
pub fn task_kinds_named(layer: &PolicyLayer) -> Vec<String> {
    let mut out: Vec<String> = layer
        .tiers
        .iter()
        .flat_map(|t| t.tasks.iter().flatten())
        .map(|k| k.as_str().to_string())
        .collect();
    out.extend(
        layer
            .constraints
            .tasks
            .keys()
            .map(|k| k.as_str().to_string()),
    );
    out
}

/// The tier names of a ladder, in order.
pub fn tier_names(layer: &PolicyLayer) -> Vec<String> {
    layer.tiers.iter().map(|t| t.name.clone()).collect()
}

/// Whether `r` names a tier of a ladder with these names.
pub fn tier_ref_resolves(r: &TierRef, names: &[String]) -> bool {
    match r {
        TierRef::Index(i) => (*i as usize) < names.len(),
        TierRef::Name(n) => names.iter().any(|x| x == n),
    }
}
