//! Every JSON snippet in `docs/policy.md` is a valid (partial) policy layer, catalog or endpoint
//! that refers only to real catalog endpoints, tiers and task kinds, and every snippet marked as an
//! excerpt of an example file says exactly what that file says. Deliberately wrong snippets are
//! fenced as `jsonc` and not checked.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use downshift::catalog::{CatalogFile, Endpoint};
use downshift::policy::PolicyLayer;
use serde_json::{Map, Value};

/// A fenced ```json block of the guide.
struct Snippet {
    /// 1-based line of the opening fence.
    line: usize,
    /// The example file it claims to quote (`<!-- excerpt: path -->` on the line before).
    excerpt_of: Option<String>,
    text: String,
}

fn guide() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/policy.md")).unwrap()
}

fn json_snippets(md: &str) -> Vec<Snippet> {
    let mut out = Vec::new();
    let mut lines = md.lines().enumerate().peekable();
    let mut previous = "";
    while let Some((i, line)) = lines.next() {
        if line.trim() == "```json" {
            let excerpt_of = previous
                .trim()
                .strip_prefix("<!-- excerpt:")
                .and_then(|r| r.strip_suffix("-->"))
                .map(|p| p.trim().to_string());
            let mut text = String::new();
            for (_, l) in lines.by_ref() {
                if l.trim() == "```" {
                    break;
                }
                text.push_str(l);
                text.push('\n');
            }
            out.push(Snippet {
                line: i + 1,
                excerpt_of,
                text,
            });
            previous = "";
        } else {
            previous = line;
        }
    }
    out
}

/// What a snippet parsed into.
enum Typed {
    Layer(Box<PolicyLayer>),
    Catalog(CatalogFile),
    Endpoint,
}

/// Parses a snippet: a whole catalog, a single endpoint, or a layer (fragments get the layer's
/// required identity fields filled in, so unknown or misspelled keys still fail).
fn parse(line: usize, value: &Value) -> Typed {
    let obj = value
        .as_object()
        .unwrap_or_else(|| panic!("docs/policy.md:{line}: a snippet must be a JSON object"));
    match obj.get("kind").and_then(Value::as_str) {
        Some("catalog") => Typed::Catalog(
            serde_json::from_value(value.clone())
                .unwrap_or_else(|e| panic!("docs/policy.md:{line}: not a catalog: {e}")),
        ),
        _ if obj.contains_key("provider") => {
            let _: Endpoint = serde_json::from_value(value.clone())
                .unwrap_or_else(|e| panic!("docs/policy.md:{line}: not an endpoint: {e}"));
            Typed::Endpoint
        }
        _ => {
            let mut layer: Map<String, Value> = obj.clone();
            for (k, v) in [
                ("kind", "policy"),
                ("id", "snippet"),
                ("version", "0"),
                ("level", "tenant"),
            ] {
                layer.entry(k).or_insert_with(|| Value::String(v.into()));
            }
            Typed::Layer(Box::new(
                serde_json::from_value(Value::Object(layer)).unwrap_or_else(|e| {
                    panic!("docs/policy.md:{line}: not a policy layer fragment: {e}")
                }),
            ))
        }
    }
}

/// Whether `part` says nothing `whole` does not: objects by subset of keys, arrays of objects as
/// an in-order subsequence of matching elements, everything else by equality.
fn is_excerpt(part: &Value, whole: &Value) -> bool {
    match (part, whole) {
        (Value::Object(p), Value::Object(w)) => p
            .iter()
            .all(|(k, v)| w.get(k).is_some_and(|wv| is_excerpt(v, wv))),
        (Value::Array(p), Value::Array(w)) if p.iter().any(Value::is_object) => {
            let mut rest = w.iter();
            p.iter().all(|pv| rest.any(|wv| is_excerpt(pv, wv)))
        }
        (Value::Number(p), Value::Number(w)) => p.as_f64() == w.as_f64(),
        _ => part == whole,
    }
}

#[test]
fn the_guide_has_json_snippets_and_excerpts() {
    let snippets = json_snippets(&guide());
    assert!(snippets.len() >= 12, "found {}", snippets.len());
    let excerpted: BTreeSet<String> = snippets
        .iter()
        .filter_map(|s| s.excerpt_of.clone())
        .collect();
    for file in [
        "examples/policies/catalog.json",
        "examples/policies/platform.json",
        "examples/policies/template-agents.json",
        "examples/policies/hospital-network.json",
        "examples/policies/marketing-agency.json",
        "examples/policies/fintech.json",
    ] {
        assert!(excerpted.contains(file), "the guide quotes {file}");
    }
}

#[test]
fn every_json_snippet_in_the_guide_parses_and_refers_to_real_things() {
    let catalog = support::endpoint_ids(&support::example_catalog());
    let layers = support::example_layers();
    let ladder = support::tier_names(&layers["agents"]);
    let task_kinds: BTreeSet<String> = layers["platform"]
        .task_kinds
        .iter()
        .flatten()
        .map(|k| k.as_str().to_string())
        .collect();

    for s in json_snippets(&guide()) {
        let at = format!("docs/policy.md:{}", s.line);
        let value: Value = serde_json::from_str(&s.text)
            .unwrap_or_else(|e| panic!("{at}: not JSON: {e}\n{}", s.text));
        match parse(s.line, &value) {
            Typed::Catalog(c) => {
                for e in &c.endpoints {
                    assert!(catalog.contains(e.id.as_str()), "{at}: endpoint `{}`", e.id);
                }
            }
            Typed::Endpoint => {}
            Typed::Layer(layer) => {
                for (path, e) in support::referenced_endpoints(&layer) {
                    assert!(
                        catalog.contains(&e),
                        "{at}: {path} names unknown endpoint `{e}`"
                    );
                }
                // A fragment with its own ladder is read against it; otherwise against the
                // example template's.
                let names = if layer.tiers.is_empty() {
                    ladder.clone()
                } else {
                    support::tier_names(&layer)
                };
                for (path, r) in support::tier_refs(&layer) {
                    assert!(
                        support::tier_ref_resolves(&r, &names),
                        "{at}: {path} names {r}, not in {names:?}"
                    );
                }
                for k in support::task_kinds_named(&layer) {
                    assert!(task_kinds.contains(&k), "{at}: undeclared task kind `{k}`");
                }
            }
        }
    }
}

#[test]
fn every_excerpt_in_the_guide_matches_its_example_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for s in json_snippets(&guide()) {
        let Some(file) = &s.excerpt_of else { continue };
        let whole: Value =
            serde_json::from_str(&std::fs::read_to_string(root.join(file)).unwrap()).unwrap();
        let part: Value = serde_json::from_str(&s.text).unwrap();
        assert!(
            is_excerpt(&part, &whole),
            "docs/policy.md:{}: the excerpt does not match {file}",
            s.line
        );
    }
}

#[test]
fn excerpt_matching_notices_a_changed_value() {
    let whole: Value = serde_json::json!({ "a": { "b": 1, "c": [1, 2] }, "t": [{ "n": "x", "d": 1 }, { "n": "y" }] });
    assert!(is_excerpt(&serde_json::json!({ "a": { "b": 1 } }), &whole));
    assert!(is_excerpt(
        &serde_json::json!({ "t": [{ "n": "y" }] }),
        &whole
    ));
    assert!(!is_excerpt(&serde_json::json!({ "a": { "b": 2 } }), &whole));
    assert!(!is_excerpt(
        &serde_json::json!({ "a": { "c": [1] } }),
        &whole
    ));
    assert!(!is_excerpt(
        &serde_json::json!({ "t": [{ "n": "y" }, { "n": "x" }] }),
        &whole
    ));
    assert!(!is_excerpt(&serde_json::json!({ "z": 1 }), &whole));
}
