//! Hot reload: a new policy set is validated whole and swapped atomically; a rejected one leaves
//! the old one active.

mod common;

use std::sync::Arc;

use common::*;
use downshift::PolicyError;
use downshift::policy::PolicyStore;
use serde_json::json;

#[test]
fn a_valid_reload_swaps_the_active_set_and_old_snapshots_stay_intact() {
    let store = PolicyStore::new(load(&base()));
    let before = store.current();
    assert_eq!(before.view("acme", "copywriting").unwrap().floor, 2);

    let mut files = base();
    set(
        &mut files,
        "acme.json",
        "/constraints/floor",
        json!("standby"),
    );
    let new = store.reload(sources(&files)).unwrap();
    assert!(Arc::ptr_eq(&new, &store.current()));
    assert_eq!(
        store.current().view("acme", "copywriting").unwrap().floor,
        1
    );
    // A reader holding the old snapshot still sees the old policy, with its own digest.
    assert_eq!(before.view("acme", "copywriting").unwrap().floor, 2);
    assert_ne!(before.digest(), store.current().digest());
}

#[test]
fn a_rejected_reload_leaves_the_old_set_active() {
    let store = PolicyStore::new(load(&base()));
    let digest = store.current().digest().clone();
    let mut files = base();
    set(&mut files, "acme.json", "/constraints/floor", json!(42));
    match store.reload(sources(&files)) {
        Err(PolicyError::Invalid(report)) => {
            assert!(
                report.to_string().contains("acme.json:$.constraints.floor"),
                "{report}"
            );
        }
        other => panic!("expected a rejected reload, got {other:?}"),
    }
    assert_eq!(store.current().digest(), &digest);
}

#[test]
fn concurrent_readers_always_see_a_whole_set() {
    let store = Arc::new(PolicyStore::new(load(&base())));
    let mut alt = base();
    set(
        &mut alt,
        "acme.json",
        "/constraints/floor",
        json!("standby"),
    );
    let sets = [load(&base()), load(&alt)];
    let valid: Vec<_> = sets.iter().map(|s| s.digest().clone()).collect();
    std::thread::scope(|s| {
        for _ in 0..2 {
            let store = Arc::clone(&store);
            let valid = valid.clone();
            s.spawn(move || {
                for _ in 0..2_000 {
                    let cur = store.current();
                    assert!(valid.contains(cur.digest()));
                    let v = cur.view("acme", "copywriting").unwrap();
                    // floor and digest always belong to the same set
                    let expect = if cur.digest() == &valid[0] { 2 } else { 1 };
                    assert_eq!(v.floor, expect);
                }
            });
        }
        for i in 0..200 {
            store.replace(sets[i % 2].clone());
        }
    });
}
