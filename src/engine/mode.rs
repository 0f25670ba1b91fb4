//! The adoption path as engine modes, switchable at run time: `observe_only` (crawl),
//! `platform_breaker` (walk) and `per_tenant` (run). See `docs/observability.md`.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Call, CallResult, Engine, RejectKind, Rejection};
use crate::audit::{AuditEvent, AuditEventKind};
use crate::catalog::CapabilityGap;
use crate::error::{EngineError, Error};
use crate::id::EndpointId;
use crate::policy::ResolvedPolicy;
use crate::router::{CallContext, Decision, Reason, ReasonKind, Route, TriggerList};

/// How the engine routes calls.
///
/// Serialized as `{"mode":"observe_only"}`, `{"mode":"platform_breaker","fallback":"small"}`
/// or `{"mode":"per_tenant"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum EngineMode {
    /// Crawl: every call goes to the tenant's primary endpoint exactly as without downshift —
    /// no fallback, no suspension, no approval — while the engine records everything (stats,
    /// endpoint health, tracing) and reports what the policy *would* have done
    /// ([`WouldBe`](crate::stats::WouldBe) in the stats, `downshift.would_be` on the span).
    ObserveOnly,
    /// Walk: one platform-wide fallback endpoint for every tenant. A call goes to the tenant's
    /// primary; when the primary's breaker is open or the attempt fails with a capacity error,
    /// it goes once to `fallback` — only if the tenant's policy permits that endpoint on some
    /// tier (residency, allowlists and floors are never bypassed); otherwise the call is
    /// rejected.
    PlatformBreaker {
        /// The platform's fallback endpoint.
        fallback: EndpointId,
    },
    /// Run: every tenant's full policy (the default).
    #[default]
    PerTenant,
}

impl EngineMode {
    /// `observe_only`, `platform_breaker` or `per_tenant`.
    #[must_use]
    pub const fn name(&self) -> &'static str {
        match self {
            EngineMode::ObserveOnly => "observe_only",
            EngineMode::PlatformBreaker { .. } => "platform_breaker",
            EngineMode::PerTenant => "per_tenant",
        }
    }
}

impl std::fmt::Display for EngineMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineMode::PlatformBreaker { fallback } => {
                write!(f, "platform_breaker (fallback `{fallback}`)")
            }
            m => f.write_str(m.name()),
        }
    }
}

/// The active set, the tenant's view and its primary route.
type Primary = (Arc<crate::policy::PolicySet>, Arc<ResolvedPolicy>, Route);

impl<P, O> Engine<P, O>
where
    P: Clone + Send + Sync + 'static,
    O: Send + Sync + 'static,
{
    /// The current mode.
    #[must_use]
    pub fn mode(&self) -> EngineMode {
        EngineMode::clone(&self.inner.visibility.mode.load())
    }

    /// Switches the mode at run time. The switch is recorded in the audit log as a policy
    /// activation (the active policy set's digest, with `mode`) before it takes effect; calls
    /// already routing finish under the mode they started with.
    ///
    /// # Errors
    /// [`EngineError::UnknownEndpoint`] for a platform fallback not in the catalog; an audit
    /// error (the mode is then unchanged).
    pub async fn set_mode(&self, mode: EngineMode) -> Result<(), Error> {
        let set = self.inner.policies.current();
        if let EngineMode::PlatformBreaker { fallback } = &mode {
            if set.catalog().index_of(fallback.as_str()).is_none() {
                return Err(EngineError::UnknownEndpoint {
                    endpoint: fallback.clone(),
                }
                .into());
            }
        }
        let ev = AuditEvent::new(
            self.inner.clock.now(),
            AuditEventKind::PolicyActivation {
                digest: set.digest().clone(),
                previous: Some(set.digest().clone()),
                mode: Some(mode.clone()),
            },
        );
        self.inner.audit.append(ev).await?;
        self.inner.visibility.mode.store(Arc::new(mode));
        Ok(())
    }

    /// The tenant's view and its primary route, or the rejection that ends the call.
    fn primary(&self, call: &Call<P>) -> Result<Primary, Box<CallResult<O>>> {
        let set = self.inner.policies.current();
        let Ok(tp) = set.tenant(call.tenant.as_str()) else {
            return Err(Box::new(CallResult::Rejected(Rejection {
                kind: RejectKind::Policy,
                reason: Some(Reason::new(ReasonKind::UnknownTenant, TriggerList::EMPTY)),
                message: format!("unknown tenant `{}`", call.tenant),
            })));
        };
        let view = Arc::clone(tp.view(call.task.as_str()));
        let top = view.top_tier();
        let Some((tier, &endpoint)) = top.and_then(|t| {
            view.tier(t)
                .and_then(|x| x.endpoint_idx.first())
                .map(|e| (t, e))
        }) else {
            return Err(Box::new(CallResult::Rejected(Rejection {
                kind: RejectKind::Policy,
                reason: Some(Reason::new(ReasonKind::NothingUsable, TriggerList::EMPTY)),
                message: format!(
                    "tenant `{}` has no usable primary tier for task `{}`",
                    call.tenant, call.task
                ),
            })));
        };
        let route = Route {
            endpoint,
            tier,
            degraded: false,
            probe: None,
            notice: false,
            switched: false,
            fit_context: false,
            reason: Reason::new(ReasonKind::Healthy, TriggerList::EMPTY),
        };
        Ok((set, view, route))
    }

    fn deadline_of(
        call: &Call<P>,
        view: &ResolvedPolicy,
        start: crate::clock::Timestamp,
    ) -> Option<crate::clock::Timestamp> {
        call.deadline
            .or_else(|| view.sla.default_deadline.map(|d| start.saturating_add(d)))
    }

    /// The gates a mode's call passes before sending: the session's state (so a served tier is
    /// compared with the one the session is on, and only a change is audited).
    async fn mode_preflight(
        &self,
        call: &Call<P>,
        start: crate::clock::Timestamp,
    ) -> Result<super::Preflight, Box<CallResult<O>>> {
        let session = match &call.session {
            Some(s) => match self.session_state(s).await {
                Ok(st) => Some(st),
                Err(e) => return Err(Box::new(CallResult::Rejected(super::durability(e)))),
            },
            None => None,
        };
        Ok(super::Preflight {
            start,
            session,
            workflow_deadline: None,
            approved_to: None,
            approved_ticket: None,
            budget: None,
        })
    }

    /// The context one attempt of a mode's call sends, fitted to the endpoint's window exactly
    /// as under the tenant's policy; the call ends unsent when it cannot fit.
    #[allow(clippy::too_many_arguments)]
    async fn mode_context(
        &self,
        call: &Call<P>,
        set: &Arc<crate::policy::PolicySet>,
        view: &Arc<ResolvedPolicy>,
        route: &Route,
        deadline: Option<crate::clock::Timestamp>,
        now: crate::clock::Timestamp,
        pre: &super::Preflight,
        audit_seqs: &mut Vec<u64>,
    ) -> Result<Option<Arc<crate::checkpoint::AgentState>>, CallResult<O>> {
        let routed = super::Routed {
            route: *route,
            view: Arc::clone(view),
            set: Arc::clone(set),
            deadline,
            now,
        };
        self.context_for(call, &routed, pre, audit_seqs)
            .await
            .map(|c| c.map(|c| c.state))
    }

    /// `observe_only`: the primary serves; the policy's decision is only reported.
    pub(crate) async fn call_observe_only(&self, call: &Call<P>) -> CallResult<O> {
        let inner = &*self.inner;
        let now = inner.clock.now();
        let (set, view, route) = match self.primary(call) {
            Ok(x) => x,
            Err(end) => return *end,
        };
        let catalog = set.catalog();
        let deadline = Self::deadline_of(call, &view, now);
        let mut ctx = CallContext::new(&call.tenant, &call.task)
            .requirements(call.requirements)
            .step_boundary(call.new_step);
        if let Some(d) = deadline {
            ctx = ctx.deadline(d);
        }
        if let Some(s) = &call.session {
            ctx = ctx.session(s);
        }
        if let Some(w) = &call.workflow {
            ctx = ctx.workflow(w);
        }
        let would = inner.router.route(&ctx, now);
        if let Decision::Route(Route { probe: Some(p), .. }) = &would {
            // The would-be probe is not sent: give its permit back.
            let _ = inner.evaluator.release_probe(*p, now);
        }
        inner
            .visibility
            .stats
            .would_be(&call.tenant, &would, catalog, now);
        super::visibility::record_would_be(&would, catalog);
        // Never a request the primary cannot take: fitted to its window when the policy
        // allows it, otherwise not sent.
        let mut route = route;
        match fits(&view, catalog, &route, call) {
            Ok(fit) => route.fit_context = fit,
            Err(end) => return *end,
        }
        let pre = match self.mode_preflight(call, now).await {
            Ok(p) => p,
            Err(end) => return *end,
        };
        let mut audit_seqs = Vec::new();
        let context = match self
            .mode_context(
                call,
                &set,
                &view,
                &route,
                deadline,
                now,
                &pre,
                &mut audit_seqs,
            )
            .await
        {
            Ok(c) => c,
            Err(end) => return end,
        };
        match self
            .attempt(
                call,
                &view,
                catalog,
                &route,
                deadline,
                &[],
                now,
                context,
                None,
            )
            .await
        {
            Ok(response) => {
                self.complete(
                    call,
                    &view,
                    catalog,
                    &route,
                    response,
                    Some(&pre),
                    &[],
                    &mut audit_seqs,
                    None,
                )
                .await
            }
            Err(e) => CallResult::Rejected(Rejection {
                kind: RejectKind::Provider { class: e.class() },
                reason: None,
                message: format!(
                    "the primary `{}` failed ({e}); observe_only mode never reroutes (the policy would have: {})",
                    catalog
                        .try_endpoint(route.endpoint)
                        .map_or("?", |x| x.id.as_str()),
                    would.reason()
                ),
            }),
        }
    }

    /// `platform_breaker`: the primary, or the platform's one fallback. A fallback served is
    /// settled like a per-tenant tier change: audited once per transition (a session's tier,
    /// or the tenant's session-less traffic), not once per call; every request is fitted to the
    /// endpoint's window as the policy allows, or not sent.
    pub(crate) async fn call_platform_breaker(
        &self,
        call: &Call<P>,
        fallback: &EndpointId,
    ) -> CallResult<O> {
        let inner = &*self.inner;
        let now = inner.clock.now();
        let (set, view, mut primary) = match self.primary(call) {
            Ok(x) => x,
            Err(end) => return *end,
        };
        let catalog = set.catalog();
        let deadline = Self::deadline_of(call, &view, now);
        let pre = match self.mode_preflight(call, now).await {
            Ok(p) => p,
            Err(end) => return *end,
        };
        let mut audit_seqs = Vec::new();
        let mut attempts = Vec::new();
        let check = inner
            .evaluator
            .check(primary.endpoint, &view.tenant_triggers, now);
        // A primary that cannot take the request (and may not fit it) is skipped like an
        // unusable one.
        let capable = match fits::<P, O>(&view, catalog, &primary, call) {
            Ok(fit) => {
                primary.fit_context = fit;
                true
            }
            Err(_) => false,
        };
        let usable = capable && check.as_ref().is_ok_and(|v| v.is_usable());
        let mut trigger = None;
        if usable {
            let context = match self
                .mode_context(
                    call,
                    &set,
                    &view,
                    &primary,
                    deadline,
                    now,
                    &pre,
                    &mut audit_seqs,
                )
                .await
            {
                Ok(c) => c,
                Err(end) => return end,
            };
            match self
                .attempt(
                    call,
                    &view,
                    catalog,
                    &primary,
                    deadline,
                    &[],
                    now,
                    context,
                    None,
                )
                .await
            {
                Ok(response) => {
                    return self
                        .complete(
                            call,
                            &view,
                            catalog,
                            &primary,
                            response,
                            Some(&pre),
                            &[],
                            &mut audit_seqs,
                            None,
                        )
                        .await;
                }
                Err(e) if !e.class().is_capacity() => {
                    return CallResult::Rejected(super::refused(catalog, primary.endpoint, &e));
                }
                Err(e) => attempts.push(crate::router::Attempt {
                    endpoint: primary.endpoint,
                    outcome: e.class(),
                }),
            }
        } else if let Ok(v) = &check {
            trigger = v.trigger().copied();
        }
        let permitted = catalog.index_of(fallback.as_str()).and_then(|idx| {
            view.usable_tiers()
                .find(|t| t.endpoint_idx.contains(&idx))
                .map(|t| (t.index, idx))
        });
        let Some((tier, idx)) = permitted else {
            return CallResult::Rejected(Rejection {
                kind: RejectKind::Policy,
                reason: Some(Reason::new(ReasonKind::NothingUsable, TriggerList::EMPTY)),
                message: format!(
                    "the primary is unavailable and tenant `{}`'s policy does not permit the platform fallback `{fallback}`",
                    call.tenant
                ),
            });
        };
        let mut triggers = TriggerList::EMPTY;
        if let Some(t) = trigger {
            triggers.push(t);
        }
        let mut route = Route {
            endpoint: idx,
            tier,
            degraded: tier != primary.tier,
            probe: None,
            notice: false,
            switched: tier != primary.tier,
            fit_context: false,
            reason: Reason::new(ReasonKind::Fallback, triggers),
        };
        match fits(&view, catalog, &route, call) {
            Ok(fit) => route.fit_context = fit,
            Err(end) => return *end,
        }
        let now = inner.clock.now();
        let context = match self
            .mode_context(
                call,
                &set,
                &view,
                &route,
                deadline,
                now,
                &pre,
                &mut audit_seqs,
            )
            .await
        {
            Ok(c) => c,
            Err(end) => return end,
        };
        match self
            .attempt(
                call, &view, catalog, &route, deadline, &attempts, now, context, None,
            )
            .await
        {
            Ok(response) => {
                self.complete(
                    call,
                    &view,
                    catalog,
                    &route,
                    response,
                    Some(&pre),
                    &attempts,
                    &mut audit_seqs,
                    None,
                )
                .await
            }
            Err(e) => CallResult::Rejected(Rejection {
                kind: RejectKind::Provider { class: e.class() },
                reason: Some(route.reason),
                message: format!("the platform fallback `{fallback}` failed too ({e})"),
            }),
        }
    }
}

/// Whether the routed endpoint can take the call's request: `Ok(true)` when only by fitting
/// the context to its smaller window (which the policy allows), `Ok(false)` when as is; the
/// rejection that ends the call unsent otherwise.
fn fits<P, O>(
    view: &ResolvedPolicy,
    catalog: &crate::catalog::Catalog,
    route: &Route,
    call: &Call<P>,
) -> Result<bool, Box<CallResult<O>>> {
    let Some(ep) = catalog.try_endpoint(route.endpoint) else {
        return Ok(false);
    };
    match ep.capabilities.gap(&call.requirements) {
        None => Ok(false),
        Some(CapabilityGap::ContextWindow { .. }) if view.continuity.fit_to_smaller_window => {
            Ok(true)
        }
        Some(gap) => Err(Box::new(CallResult::Rejected(Rejection {
            kind: if matches!(gap, CapabilityGap::ContextWindow { .. }) {
                RejectKind::Context
            } else {
                RejectKind::Policy
            },
            reason: Some(Reason::new(ReasonKind::Incapable, TriggerList::EMPTY)),
            message: format!(
                "not sent: `{}` cannot take this request ({gap}) and the policy does not allow fitting it",
                ep.id
            ),
        }))),
    }
}
