//! What a hot reload through the engine may change. The endpoint health (breakers, latency
//! windows, probe permits) is built once per engine, from the catalog's endpoint list (indexed
//! by position) and the platform's breaker, recovery and latency settings; it may be shared by
//! several engines and its live state would be lost or misattributed by rebuilding it under
//! calls in flight. So a reload that changes those is refused, naming the field — build a new
//! engine for it — and everything else (tenants, ladders, constraints, budgets, SLAs, retry,
//! and the catalog's endpoint details: models, prices, capabilities, regions, quality) applies.

use crate::error::EngineError;
use crate::id::EndpointId;
use crate::policy::PolicySet;

/// Why `next` cannot replace `current` under a running engine, if it cannot.
pub(super) fn incompatible(current: &PolicySet, next: &PolicySet) -> Option<EngineError> {
    let ids = |s: &PolicySet| -> Vec<EndpointId> {
        s.catalog()
            .endpoints()
            .iter()
            .map(|e| e.id.clone())
            .collect()
    };
    let (was, now) = (ids(current), ids(next));
    if was != now {
        let added: Vec<&str> = now
            .iter()
            .filter(|e| !was.contains(e))
            .map(EndpointId::as_str)
            .collect();
        let removed: Vec<&str> = was
            .iter()
            .filter(|e| !now.contains(e))
            .map(EndpointId::as_str)
            .collect();
        let detail = if added.is_empty() && removed.is_empty() {
            "the endpoints are listed in another order".to_string()
        } else {
            format!("added {added:?}, removed {removed:?}")
        };
        return Some(EngineError::ReloadNeedsNewEngine {
            field: "catalog.endpoints".into(),
            detail,
        });
    }
    let (a, b) = (current.evaluator_settings(), next.evaluator_settings());
    let changed = [
        ("triggers.breaker", a.breaker != b.breaker),
        ("triggers.latency", a.latency != b.latency),
        (
            "triggers.honour_retry_after",
            a.honour_retry_after != b.honour_retry_after,
        ),
        ("recovery.half_open", a.half_open != b.half_open),
        ("recovery.open_wait", a.open_wait != b.open_wait),
    ];
    changed
        .iter()
        .find(|(_, c)| *c)
        .map(|(field, _)| EngineError::ReloadNeedsNewEngine {
            field: format!("platform policy: {field}"),
            detail: "the shared endpoint health is built from it".into(),
        })
}
