//! Shadow policies: the engine routes every call under the active policy set *and* under a
//! candidate, acts only on the active decision, and keeps every call where the two differ —
//! which tenants a policy change would affect, before it is rolled out.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

use super::Engine;
use crate::catalog::Catalog;
use crate::clock::Timestamp;
use crate::id::{SessionId, TaskKind, TenantId};
use crate::policy::{PolicySet, PolicyStore};
use crate::router::{CallContext, Decision, TierRouter};

/// How many differing calls a report keeps in full (all are counted).
pub const SHADOW_EXAMPLES: usize = 200;

/// A call whose active and candidate decisions differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShadowDiff {
    /// When.
    pub at: Timestamp,
    /// The tenant.
    pub tenant: TenantId,
    /// The task kind.
    pub task: TaskKind,
    /// The session, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionId>,
    /// What the active policy decided (and the engine did).
    pub active: String,
    /// What the candidate would have decided.
    pub candidate: String,
}

/// What a shadow evaluation found so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct ShadowReport {
    /// The candidate policy set's digest.
    pub candidate: String,
    /// Routing decisions compared (every attempt of every call).
    pub compared: u64,
    /// Decisions that differ.
    pub differing: u64,
    /// Differing decisions per affected tenant.
    pub tenants: BTreeMap<TenantId, u64>,
    /// The first differing decisions, in order (at most [`SHADOW_EXAMPLES`]).
    pub examples: Vec<ShadowDiff>,
}

/// The candidate router and what it found.
pub(super) struct Shadow {
    router: TierRouter,
    report: Mutex<ShadowReport>,
}

impl std::fmt::Debug for Shadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shadow").finish_non_exhaustive()
    }
}

/// A decision in words, with the parts compared.
fn describe(d: &Decision, catalog: &Catalog) -> (String, (u8, u32, u32)) {
    match d {
        Decision::Route(r) => {
            let ep = catalog
                .try_endpoint(r.endpoint)
                .map_or("?", |e| e.id.as_str());
            (format!("tier {} ({ep})", r.tier), (0, r.tier, r.endpoint.0))
        }
        Decision::AwaitApproval { proposed_tier, .. } => (
            format!("ask approval for tier {proposed_tier}"),
            (1, *proposed_tier, 0),
        ),
        Decision::Suspend { reason, .. } => (format!("suspend: {reason}"), (2, 0, 0)),
        Decision::Reject { reason } => (format!("reject: {reason}"), (3, 0, 0)),
    }
}

impl<P, O> Engine<P, O>
where
    P: Clone + Send + Sync + 'static,
    O: Send + Sync + 'static,
{
    /// Evaluates `candidate` in shadow from now on: every routing decision is also made under
    /// it (with the same endpoint health, session tiers and attempts) but never acted on; the
    /// differences are collected for [`Engine::shadow_report`]. Replaces any earlier candidate.
    pub fn set_shadow(&self, candidate: PolicySet) {
        let digest = candidate.digest().short().to_string();
        let store = Arc::new(PolicyStore::new(candidate));
        let router = TierRouter::new(store, Arc::clone(&self.inner.evaluator), self.inner.seed);
        self.inner.shadow.store(Some(Arc::new(Shadow {
            router,
            report: Mutex::new(ShadowReport {
                candidate: digest,
                ..ShadowReport::default()
            }),
        })));
    }

    /// Stops the shadow evaluation, returning what it found.
    pub fn clear_shadow(&self) -> Option<ShadowReport> {
        self.inner
            .shadow
            .swap(None)
            .map(|s| s.report.lock().clone())
    }

    /// What the shadow evaluation has found so far, if one runs.
    #[must_use]
    pub fn shadow_report(&self) -> Option<ShadowReport> {
        self.inner
            .shadow
            .load()
            .as_ref()
            .map(|s| s.report.lock().clone())
    }

    /// Routes `ctx` under the shadow candidate, before the active router does (so both see the
    /// same endpoint state), giving back any half-open probe permit the candidate took: it acts
    /// on nothing. `None` without a candidate.
    pub(super) fn shadow_route(&self, ctx: &CallContext<'_>, now: Timestamp) -> Option<Decision> {
        let guard = self.inner.shadow.load();
        let shadow = guard.as_ref()?;
        let candidate = shadow.router.route(ctx, now);
        if let Decision::Route(r) = &candidate {
            if let Some(permit) = r.probe {
                let _ = self.inner.evaluator.release_probe(permit, now);
            }
        }
        Some(candidate)
    }

    /// Notes a difference between the candidate's decision and the active one.
    pub(super) fn shadow_compare(
        &self,
        ctx: &CallContext<'_>,
        candidate: Option<Decision>,
        active: &Decision,
        now: Timestamp,
    ) {
        let Some(candidate) = candidate else {
            return;
        };
        let guard = self.inner.shadow.load();
        let Some(shadow) = guard.as_ref() else {
            return;
        };
        let set = self.inner.policies.current();
        let (a, ka) = describe(active, set.catalog());
        let (c, kc) = describe(&candidate, set.catalog());
        let mut r = shadow.report.lock();
        r.compared += 1;
        if ka != kc {
            r.differing += 1;
            *r.tenants.entry(ctx.tenant.clone()).or_default() += 1;
            if r.examples.len() < SHADOW_EXAMPLES {
                r.examples.push(ShadowDiff {
                    at: now,
                    tenant: ctx.tenant.clone(),
                    task: ctx.task.clone(),
                    session: ctx.session.cloned(),
                    active: a,
                    candidate: c,
                });
            }
        }
    }
}
