//! JSON Schemas of the file formats, generated from the types.
//!
//! The committed copies live in `docs/policy.schema.json` and `docs/catalog.schema.json`; a test
//! fails when they differ from what the code generates.

use crate::catalog::CatalogFile;

use super::model::PolicyLayer;

/// The JSON Schema of a policy layer file, pretty-printed.
#[must_use]
pub fn policy_schema() -> String {
    pretty(&schemars::schema_for!(PolicyLayer))
}

/// The JSON Schema of a catalog file, pretty-printed.
#[must_use]
pub fn catalog_schema() -> String {
    pretty(&schemars::schema_for!(CatalogFile))
}

fn pretty(schema: &schemars::Schema) -> String {
    let mut s = serde_json::to_string_pretty(schema).unwrap_or_default();
    s.push('\n');
    s
}
