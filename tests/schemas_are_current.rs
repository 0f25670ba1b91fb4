//! The committed JSON Schemas match what the code generates.

use downshift::checkpoint::agent_state_schema;
use downshift::policy::schema::{catalog_schema, policy_schema};

fn check(path: &str, generated: String) {
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    if std::env::var_os("DOWNSHIFT_BLESS").is_some() {
        std::fs::write(path, &generated).unwrap();
        return;
    }
    assert!(
        committed == generated,
        "{path} is stale: regenerate it with `cargo run --features cli --bin downshift -- schema {}` > {path}` \
         (or run the tests with DOWNSHIFT_BLESS=1)",
        if path.contains("catalog") {
            "catalog"
        } else if path.contains("agent_state") {
            "agent-state"
        } else {
            "policy"
        }
    );
}

#[test]
fn the_committed_policy_schema_is_current() {
    check("docs/policy.schema.json", policy_schema());
}

#[test]
fn the_committed_catalog_schema_is_current() {
    check("docs/catalog.schema.json", catalog_schema());
}

#[test]
fn the_schema_rejects_unknown_fields() {
    let s: serde_json::Value = serde_json::from_str(&policy_schema()).unwrap();
    assert_eq!(s["additionalProperties"], serde_json::json!(false));
    assert!(s["properties"]["constraints"].is_object());
}

#[test]
fn the_committed_agent_state_schema_is_current() {
    check("docs/agent_state.schema.json", agent_state_schema());
}

#[test]
fn the_committed_scenario_schema_is_current() {
    let generated = downshift::sim::scenario_schema();
    let path = "docs/scenario.schema.json";
    if std::env::var_os("DOWNSHIFT_BLESS").is_some() {
        std::fs::write(path, &generated).unwrap();
        return;
    }
    assert!(
        std::fs::read_to_string(path).unwrap_or_default() == generated,
        "{path} is stale: regenerate it with `cargo run --features cli --bin downshift -- schema scenario > {path}` (or run the tests with DOWNSHIFT_BLESS=1)"
    );
}
