//! Tenants created from one template with the same constraints share one interned routing view
//! (what the router reads), while each keeps its own identity and digest; a `TenantHandle`
//! routes exactly like the lookup by id, and a stale or mismatched handle is never trusted.

mod common;

use std::sync::Arc;

use common::*;
use downshift::policy::{PolicyStore, Source};
use downshift::router::{CallContext, Decision, TierRouter};
use downshift::trigger::TriggerEvaluator;
use downshift::{TaskKind, TenantId, Timestamp};
use serde_json::json;

fn with_tenants(ids: &[&str]) -> Vec<(String, serde_json::Value)> {
    let mut files = base();
    for id in ids {
        let mut t = tenant();
        t["id"] = json!(id);
        files.push((format!("{id}.json"), t));
    }
    files
}

#[test]
fn tenants_with_the_same_content_share_routing_but_keep_their_own_digest() {
    let mut files = with_tenants(&["beta", "gamma"]);
    // Another version of the same content still routes the same; different constraints do not.
    set(&mut files, "gamma.json", "/version", json!("99"));
    let mut other = tenant();
    other["id"] = json!("delta");
    other["constraints"]["floor"] = json!("standby");
    files.push(("delta.json".into(), other));
    let set = load(&files);
    let tp = |id: &str| set.tenant(id).unwrap();
    assert!(tp("acme").shares_routing_with(tp("beta")));
    assert!(tp("acme").shares_routing_with(tp("gamma")));
    assert!(!tp("acme").shares_routing_with(tp("delta")));

    // Identity stays per tenant: the digest binds the tenant, its layers and their versions.
    let task = "summarization";
    let digest = |id: &str| set.view(id, task).unwrap().digest.clone();
    assert_ne!(digest("acme"), digest("beta"));
    assert_ne!(digest("beta"), digest("gamma"));
    assert_eq!(set.view("beta", task).unwrap().tenant.as_str(), "beta");
    let beta = set.view("beta", task).unwrap();
    let gamma = set.view("gamma", task).unwrap();
    assert_eq!(beta.tiers, gamma.tiers);
    assert_ne!(
        beta.layers, gamma.layers,
        "gamma's layer has another version"
    );
}

#[test]
fn a_policy_digest_does_not_depend_on_formatting_or_file_names() {
    let files = with_tenants(&["beta"]);
    let a = load(&files);
    // The same documents, compact instead of pretty, under other file names.
    let b = downshift::policy::PolicySet::from_sources(
        files
            .iter()
            .map(|(n, v)| Source::new(format!("elsewhere/{n}"), v.to_string())),
    )
    .unwrap();
    for id in ["acme", "beta"] {
        assert_eq!(
            a.view(id, "triage").unwrap().digest,
            b.view(id, "triage").unwrap().digest
        );
    }
    assert_eq!(a.digest(), b.digest());
}

#[test]
fn a_handle_routes_like_the_id_and_a_stale_or_foreign_handle_is_not_trusted() {
    let files = with_tenants(&["beta"]);
    let loaded = load(&files);
    let eval = Arc::new(
        TriggerEvaluator::for_catalog(&loaded.evaluator_settings(), loaded.catalog(), 3).unwrap(),
    );
    let store = Arc::new(PolicyStore::new(loaded));
    let router = TierRouter::new(Arc::clone(&store), Arc::clone(&eval), 9);
    let now = Timestamp::from_millis(1_800_000_000_000);
    let (acme, task) = (TenantId::new("acme"), TaskKind::new("summarization"));
    let handle = store.current().tenant_handle(&acme).unwrap();
    assert_eq!(handle.tenant(), &acme);
    let by_id = router.route(&CallContext::new(&acme, &task), now);
    let by_handle = router.route(&CallContext::new(&acme, &task).tenant_handle(&handle), now);
    assert_eq!(by_id, by_handle);
    assert!(matches!(by_id, Decision::Route(ref r) if r.tier == 0));
    // Named by the handle's own id (the pointer-compared fast path): the same decision.
    assert_eq!(
        router.route(&CallContext::for_handle(&handle, &task), now),
        by_id
    );

    // A handle for another tenant is ignored: the call's own tenant decides.
    let beta = TenantId::new("beta");
    let beta_handle = store.current().tenant_handle(&beta).unwrap();
    let stranger = TenantId::new("nobody");
    assert!(matches!(
        router.route(
            &CallContext::new(&stranger, &task).tenant_handle(&beta_handle),
            now
        ),
        Decision::Reject { .. }
    ));

    // After a reload that forbids acme the primary, the old handle is not used: the call goes
    // where the new policy says.
    let mut files = files;
    set(
        &mut files,
        "acme.json",
        "/constraints/forbid_tiers",
        json!(["primary"]),
    );
    store.replace(load(&files));
    let fresh = store.current().tenant_handle(&acme).unwrap();
    let old = router.route(&CallContext::new(&acme, &task).tenant_handle(&handle), now);
    let new = router.route(&CallContext::new(&acme, &task).tenant_handle(&fresh), now);
    assert!(
        matches!(new, Decision::Route(ref r) if r.tier == 1),
        "{new:?}"
    );
    assert_eq!(
        old, new,
        "a handle from before the reload falls back to the id"
    );
    assert_eq!(
        router.route(&CallContext::for_handle(&handle, &task), now),
        new,
        "so does a context named by the stale handle's own id"
    );
    assert!(store.current().tenant_handle(&stranger).is_err());
}
