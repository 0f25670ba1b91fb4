//! Layers 2–4 at call time: the [`TierRouter`] decides where each call goes.
//!
//! `route(ctx, now)` is a function of the active policy set, the evaluator's shared endpoint
//! health, the call context and `now`: the same inputs give the same decision. (The one effect it
//! has is taking a half-open probe permit when it sends a call as a probe; permits are shared
//! platform-wide, which is the point.)
//!
//! # The filters, in order
//!
//! 1. *Static, resolved with the policy*: the tenant's floor and the task override's floor,
//!    forbidden tiers and the task's allowed tiers, a tier's task restriction (a minimal tier for
//!    triage only), residency (allowed regions), endpoint allowlists, data handling and minimum
//!    quality. See [`ResolvedPolicy`](crate::policy::ResolvedPolicy).
//! 2. *Budget*: over a guardrail, tiers above the policy's `downshift_to` tier are skipped (or the
//!    call is suspended or rejected, as the policy says).
//! 3. *Attempts*: an endpoint already tried `attempts_per_endpoint` times in this call is skipped,
//!    and a call that made `max_attempts` attempts is not routed again — no loops by construction.
//! 4. *Capabilities*: tools, parallel tool calls, vision, JSON mode, maximum output, and the
//!    context window (input + expected output), unless the policy allows fitting the context to a
//!    smaller window, in which case the route says `fit_context`.
//! 5. *Deadline*: an endpoint whose recent P95 is at least the time left is skipped. Nothing ever
//!    waits out a retry-after: a blocked endpoint is simply skipped.
//! 6. *Health*: the evaluator's verdict for this endpoint and this tenant's thresholds (breaker,
//!    retry-after, status page, rate-limit headroom, queue depth, P95 ceiling). A recovering
//!    endpoint is used only as a half-open probe, only for probe-eligible tenants, and only with
//!    one of the platform-wide permits.
//!
//! # Tiers, stickiness and promotion
//!
//! A session stays on its tier while that tier is usable. At a step boundary, once the session
//! has dwelt `min_dwell` on its tier and a higher tier has been healthy for `healthy_for`, it
//! moves up — one tier, or straight to the highest such tier, as the policy says. When its own
//! tier fails it moves to the best usable tier, searching from the top. A probe-eligible session
//! that has dwelt `min_dwell` may also, at a step boundary, be sent as the half-open probe of a
//! recovering endpoint of the nearest tier above it (taking one of the platform-wide permits;
//! reason `probe`). Within a tier, `in_order` takes the first usable endpoint; `least_latency`
//! draws two usable endpoints deterministically from the session and attempt and takes the one
//! with the lower recent P95.
//!
//! # Herd control
//!
//! With the platform's `herd.max_fallback_share`, a fallback endpoint that already took that
//! share of this second's moved calls is passed over for the next endpoint or tier the tenant may
//! use; the cap spreads load and never by itself suspends or rejects a call (if capped endpoints
//! are all that is left, they are used).
//!
//! A switch the policy says needs approval is never routed: it is
//! [`Decision::AwaitApproval`] until the caller passes the approval back in
//! [`CallContext::approved_to`].

mod context;
mod decision;
mod herd;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use context::{Attempt, CallContext, SessionTier};
pub use decision::{
    ApprovalTicket, Decision, MAX_REASON_TRIGGERS, Reason, ReasonKind, Route, TriggerList,
};

use crate::catalog::{CapabilityGap, Catalog, EndpointIdx};
use crate::clock::Timestamp;
use crate::id::{EndpointId, SessionId, fnv};
use crate::policy::{
    BudgetRule, Exhausted, Herd, Notification, PolicyStore, PromotionMode, RoutingView, Selection,
    TenantPolicy,
};
use crate::trigger::{
    BudgetScope, Probe, ProbePermit, Trigger, TriggerEvaluator, TriggerKind, Verdict,
};

/// Decides where each call goes: one per process, shared by every task (`Send + Sync`).
#[derive(Debug, Clone)]
pub struct TierRouter {
    policies: Arc<PolicyStore>,
    evaluator: Arc<TriggerEvaluator>,
    herd: Arc<herd::HerdCounters>,
    seed: u64,
}

/// What happened to one candidate endpoint while routing (for [`TierRouter::explain`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum CandidateVerdict {
    /// Chosen.
    Chosen,
    /// Usable, but another endpoint was chosen (or the search stopped before it).
    NotChosen,
    /// Its tier is excluded for this tenant and task by the policy.
    TierExcluded {
        /// Why, in words.
        reason: String,
    },
    /// Removed by the policy (residency, allowlist, data handling, quality).
    Removed {
        /// Why, in words.
        reason: String,
    },
    /// Above the tier a crossed budget guardrail allows.
    OverBudget,
    /// Already tried as often as the policy allows in this call.
    AlreadyTried {
        /// Attempts made at it.
        attempts: u32,
    },
    /// Lacks a capability the request needs.
    Incapable {
        /// What it lacks.
        gap: CapabilityGap,
    },
    /// Herd control: it already took its capped share of the calls moved this second.
    HerdCapped {
        /// The share and the cap.
        trigger: Trigger,
    },
    /// Its recent P95 cannot finish before the deadline.
    TooSlowForDeadline {
        /// The trigger (time left, P95).
        trigger: Trigger,
    },
    /// Unusable now.
    Unusable {
        /// The trigger that fired.
        trigger: Trigger,
    },
    /// Recovering; this tenant is not probe-eligible or no probe permit is free.
    ProbeRefused {
        /// Why.
        trigger: Trigger,
    },
}

/// One candidate in an [`Explanation`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CandidateTrace {
    /// Tier index.
    pub tier: u32,
    /// Tier name.
    pub tier_name: String,
    /// The endpoint.
    pub endpoint: EndpointId,
    /// What happened to it.
    #[serde(flatten)]
    pub verdict: CandidateVerdict,
}

/// A decision with every candidate endpoint and why it was taken or excluded: how an operator
/// answers "why did tenant X get the small model at 02:14?".
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// The decision.
    pub decision: Decision,
    /// The decision's reason in words.
    pub reason: String,
    /// The policy view's digest.
    pub policy_digest: Option<String>,
    /// Every candidate, in ladder order.
    pub candidates: Vec<CandidateTrace>,
}

trait Trace {
    const ENABLED: bool;
    fn candidate(&mut self, tier: u32, endpoint: EndpointIdx, verdict: CandidateVerdict);
}

struct NoTrace;

impl Trace for NoTrace {
    const ENABLED: bool = false;
    #[inline(always)]
    fn candidate(&mut self, _: u32, _: EndpointIdx, _: CandidateVerdict) {}
}

#[derive(Default)]
struct Recorder(Vec<(u32, EndpointIdx, CandidateVerdict)>);

impl Trace for Recorder {
    const ENABLED: bool = true;
    fn candidate(&mut self, tier: u32, endpoint: EndpointIdx, verdict: CandidateVerdict) {
        self.0.push((tier, endpoint, verdict));
    }
}

/// What trying one tier found.
struct Found {
    endpoint: EndpointIdx,
    probe: Option<ProbePermit>,
    /// Sent as a half-open probe (when explaining, no permit is taken but it still is one).
    probing: bool,
    fit: bool,
}

#[derive(Default)]
struct Tally {
    capable: u32,
    too_slow: u32,
    tried_out: u32,
    capped: u32,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The part of an approval ticket's key that names the policy view (its digest).
fn view_digest_key(tp: &TenantPolicy, ctx: &CallContext<'_>) -> u64 {
    fnv(tp.view(ctx.task.as_str()).digest.as_str().as_bytes())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl TierRouter {
    /// A router over the active policies and the shared endpoint health. `seed` makes the
    /// deterministic choices (power of two choices) differ between replicas.
    #[must_use]
    pub fn new(policies: Arc<PolicyStore>, evaluator: Arc<TriggerEvaluator>, seed: u64) -> Self {
        let herd = Arc::new(herd::HerdCounters::new(evaluator.endpoints()));
        TierRouter {
            policies,
            evaluator,
            herd,
            seed,
        }
    }

    /// The policies.
    #[must_use]
    pub fn policies(&self) -> &Arc<PolicyStore> {
        &self.policies
    }

    /// The evaluator.
    #[must_use]
    pub fn evaluator(&self) -> &Arc<TriggerEvaluator> {
        &self.evaluator
    }

    /// Decides where the call goes. Allocation-free.
    ///
    /// With a [`TenantHandle`](crate::policy::TenantHandle) in the context
    /// ([`CallContext::tenant_handle`]) the tenant's routing is reached through it; without one
    /// (or with one from before a reload, or for another tenant), by hashing its id.
    #[must_use]
    pub fn route(&self, ctx: &CallContext<'_>, now: Timestamp) -> Decision {
        // The budget check's entry loads while the tenant's routing is found.
        if let Some(h) = ctx.budget {
            self.evaluator.prefetch_budget_check(h);
        }
        let set = self.policies.load();
        let routing = match ctx
            .handle
            .and_then(|h| set.routing_by_handle(h, ctx.tenant))
        {
            Some(r) => r,
            None => match set.tenant(ctx.tenant.as_str()) {
                Ok(tp) => tp.routing(),
                Err(_) => {
                    return Decision::Reject {
                        reason: Reason::new(ReasonKind::UnknownTenant, TriggerList::EMPTY),
                    };
                }
            },
        };
        // The view's digest keys an approval ticket: looked up only when one is issued.
        let digest_key = || {
            set.tenant(ctx.tenant.as_str())
                .map_or(0, |tp| view_digest_key(tp, ctx))
        };
        self.decide(
            routing.view(ctx.task),
            &digest_key,
            set.catalog(),
            set.herd(),
            ctx,
            now,
            &mut NoTrace,
            true,
        )
    }

    /// The decision `route` would take (without taking a probe permit), with every candidate
    /// endpoint and the reason it was taken or excluded.
    #[must_use]
    pub fn explain(&self, ctx: &CallContext<'_>, now: Timestamp) -> Explanation {
        let set = self.policies.load();
        let Ok(tp) = set.tenant(ctx.tenant.as_str()) else {
            let decision = Decision::Reject {
                reason: Reason::new(ReasonKind::UnknownTenant, TriggerList::EMPTY),
            };
            return Explanation {
                reason: decision.reason().to_string(),
                decision,
                policy_digest: None,
                candidates: Vec::new(),
            };
        };
        let view = tp.view(ctx.task.as_str());
        let catalog = set.catalog();
        let mut rec = Recorder::default();
        let digest_key = || view_digest_key(tp, ctx);
        let decision = self.decide(
            tp.routing().view(ctx.task),
            &digest_key,
            catalog,
            set.herd(),
            ctx,
            now,
            &mut rec,
            false,
        );
        let mut candidates = Vec::new();
        let id = |e: EndpointIdx| {
            catalog
                .try_endpoint(e)
                .map_or_else(|| EndpointId::new("?"), |x| x.id.clone())
        };
        for t in &view.tiers {
            if let Some(ex) = &t.excluded {
                for e in &t.all_endpoints {
                    candidates.push(CandidateTrace {
                        tier: t.index,
                        tier_name: t.name.to_string(),
                        endpoint: e.clone(),
                        verdict: CandidateVerdict::TierExcluded {
                            reason: ex.to_string(),
                        },
                    });
                }
                continue;
            }
            for e in &t.all_endpoints {
                if let Some(r) = t.removed.iter().find(|r| &r.endpoint == e) {
                    candidates.push(CandidateTrace {
                        tier: t.index,
                        tier_name: t.name.to_string(),
                        endpoint: e.clone(),
                        verdict: CandidateVerdict::Removed {
                            reason: r.reason.to_string(),
                        },
                    });
                    continue;
                }
                let Some(ix) = catalog.index_of(e.as_str()) else {
                    continue;
                };
                // The last verdict recorded for it (a tier may be tried twice: sticky, then scan).
                let verdict = rec
                    .0
                    .iter()
                    .rev()
                    .find(|(tier, ep, _)| *tier == t.index && *ep == ix)
                    .map_or(CandidateVerdict::NotChosen, |(_, _, v)| v.clone());
                candidates.push(CandidateTrace {
                    tier: t.index,
                    tier_name: t.name.to_string(),
                    endpoint: id(ix),
                    verdict,
                });
            }
        }
        Explanation {
            reason: decision.reason().to_string(),
            decision,
            policy_digest: Some(view.digest.to_string()),
            candidates,
        }
    }

    /// Whether some endpoint of tier `i` has been healthy for this tenant for at least
    /// `healthy_for` (and, when the policy requires it, recovered through successful probes).
    fn healthy_for(&self, view: &RoutingView, i: u32, now: Timestamp) -> bool {
        let p = &view.promotion;
        view.tier(i).is_some_and(|t| {
            t.endpoint_idx.iter().any(|&e| {
                self.evaluator
                    .healthy_since_for(e, &view.tenant_triggers, now)
                    .ok()
                    .flatten()
                    .is_some_and(|(since, by_probe)| {
                        now.duration_since(since) >= p.healthy_for && (by_probe || !p.require_probe)
                    })
            })
        })
    }

    /// Whether some endpoint of tier `i` wants a half-open probe.
    fn wants_probe(&self, view: &RoutingView, i: u32, now: Timestamp) -> bool {
        view.tier(i).is_some_and(|t| {
            t.endpoint_idx
                .iter()
                .any(|&e| self.evaluator.wants_probe(e, now).unwrap_or(false))
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn try_tier<T: Trace>(
        &self,
        view: &RoutingView,
        catalog: &Catalog,
        ctx: &CallContext<'_>,
        i: u32,
        deadline: Option<Timestamp>,
        now: Timestamp,
        live: bool,
        cap: Option<(f64, u32)>,
        triggers: &mut TriggerList,
        tally: &mut Tally,
        trace: &mut T,
    ) -> Option<Found> {
        let tier = view.tier(i)?;
        if !tier.usable() {
            return None;
        }
        let per_endpoint = view.attempts_per_endpoint.max(1);
        // Candidates that passed every filter, as a bit set over the tier's endpoints (the
        // first 64; a tier that large is routed in order).
        let mut ok: u64 = 0;
        let mut fits: u64 = 0;
        let mut probe_at: Option<(EndpointIdx, bool, Trigger)> = None;
        let least_latency = tier.selection == Selection::LeastLatency;
        for (k, &e) in tier.endpoint_idx.iter().enumerate() {
            let tried = ctx.attempts.iter().filter(|a| a.endpoint == e).count();
            let tried = u32::try_from(tried).unwrap_or(u32::MAX);
            if tried >= per_endpoint {
                tally.tried_out += 1;
                triggers.push(
                    Trigger::new(
                        TriggerKind::CallFailed,
                        f64::from(tried),
                        f64::from(per_endpoint),
                    )
                    .at(e),
                );
                trace.candidate(i, e, CandidateVerdict::AlreadyTried { attempts: tried });
                continue;
            }
            let Some(ep) = catalog.try_endpoint(e) else {
                continue;
            };
            let mut fit = false;
            match ep.capabilities.gap(&ctx.requirements) {
                None => {}
                Some(CapabilityGap::ContextWindow { .. }) if view.fit_to_smaller_window => {
                    fit = true;
                }
                Some(gap) => {
                    trace.candidate(i, e, CandidateVerdict::Incapable { gap });
                    continue;
                }
            }
            tally.capable += 1;
            if let Some(d) = deadline {
                let left = d.duration_since(now);
                if let Ok(Some(p95)) = self.evaluator.recent_p95(e, now) {
                    if p95 >= left {
                        tally.too_slow += 1;
                        let t = Trigger::new(TriggerKind::Deadline, ms(left), ms(p95)).at(e);
                        triggers.push(t);
                        trace.candidate(i, e, CandidateVerdict::TooSlowForDeadline { trigger: t });
                        continue;
                    }
                }
            }
            if let Some((max, min)) = cap {
                if let Some(share) = self.herd.share(e, now, min) {
                    if share >= max {
                        tally.capped += 1;
                        let t = Trigger::new(TriggerKind::FallbackShare, share, max).at(e);
                        triggers.push(t);
                        trace.candidate(i, e, CandidateVerdict::HerdCapped { trigger: t });
                        continue;
                    }
                }
            }
            match self.evaluator.check(e, &view.tenant_triggers, now) {
                Ok(Verdict::Usable) => {
                    if !least_latency || k >= 64 {
                        trace.candidate(i, e, CandidateVerdict::Chosen);
                        return Some(Found {
                            endpoint: e,
                            probe: None,
                            probing: false,
                            fit,
                        });
                    }
                    ok |= 1 << k;
                    if fit {
                        fits |= 1 << k;
                    }
                }
                Ok(Verdict::ProbeOnly(t)) => {
                    if !view.probe_eligible {
                        triggers.push(t);
                        trace.candidate(i, e, CandidateVerdict::ProbeRefused { trigger: t });
                    } else if least_latency && probe_at.is_none() {
                        // Prefer a healthy endpoint of the tier; probe only if none is.
                        probe_at = Some((e, fit, t));
                        triggers.push(t);
                    } else if !least_latency {
                        if let Some(found) = self.probe(e, fit, t, i, now, live, triggers, trace) {
                            return Some(found);
                        }
                    } else {
                        triggers.push(t);
                        trace.candidate(i, e, CandidateVerdict::ProbeRefused { trigger: t });
                    }
                }
                Ok(Verdict::Unusable(t)) => {
                    triggers.push(t);
                    trace.candidate(i, e, CandidateVerdict::Unusable { trigger: t });
                }
                Err(_) => {}
            }
        }
        if ok != 0 {
            let n = ok.count_ones();
            let pick = |r: u64| -> usize {
                let mut nth = (r % u64::from(n)) as u32;
                let mut bits = ok;
                loop {
                    let k = bits.trailing_zeros();
                    if nth == 0 {
                        return k as usize;
                    }
                    nth -= 1;
                    bits &= bits - 1;
                }
            };
            // The session's key is kept with its id: its text is not read.
            let key = ctx
                .session
                .map_or_else(|| fnv(ctx.tenant.as_str().as_bytes()), SessionId::key);
            let r =
                splitmix(self.seed ^ key ^ (ctx.attempts.len() as u64) ^ (now.as_millis() / 1000));
            let (a, b) = (pick(r), pick(splitmix(r)));
            let p95 = |k: usize| {
                self.evaluator
                    .recent_p95(tier.endpoint_idx[k], now)
                    .ok()
                    .flatten()
                    .unwrap_or(Duration::ZERO)
            };
            let k = if p95(b) < p95(a) { b } else { a };
            let e = tier.endpoint_idx[k];
            if T::ENABLED {
                let mut bits = ok;
                while bits != 0 {
                    let j = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let v = if j == k {
                        CandidateVerdict::Chosen
                    } else {
                        CandidateVerdict::NotChosen
                    };
                    trace.candidate(i, tier.endpoint_idx[j], v);
                }
            }
            return Some(Found {
                endpoint: e,
                probe: None,
                probing: false,
                fit: fits & (1 << k) != 0,
            });
        }
        if let Some((e, fit, t)) = probe_at {
            return self.probe(e, fit, t, i, now, live, triggers, trace);
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn probe<T: Trace>(
        &self,
        e: EndpointIdx,
        fit: bool,
        t: Trigger,
        i: u32,
        now: Timestamp,
        live: bool,
        triggers: &mut TriggerList,
        trace: &mut T,
    ) -> Option<Found> {
        if !live {
            // Explaining: say a probe would be attempted, take no permit.
            trace.candidate(i, e, CandidateVerdict::Chosen);
            return Some(Found {
                endpoint: e,
                probe: None,
                probing: true,
                fit,
            });
        }
        match self.evaluator.try_acquire_probe(e, now) {
            Ok(Probe::Granted(p)) => {
                trace.candidate(i, e, CandidateVerdict::Chosen);
                Some(Found {
                    endpoint: e,
                    probe: Some(p),
                    probing: true,
                    fit,
                })
            }
            Ok(Probe::NotNeeded) => {
                trace.candidate(i, e, CandidateVerdict::Chosen);
                Some(Found {
                    endpoint: e,
                    probe: None,
                    probing: false,
                    fit,
                })
            }
            Ok(Probe::Refused(r)) => {
                triggers.push(r);
                trace.candidate(i, e, CandidateVerdict::ProbeRefused { trigger: r });
                None
            }
            Err(_) => {
                triggers.push(t);
                None
            }
        }
    }

    fn exhausted(view: &RoutingView, kind: ReasonKind, triggers: TriggerList) -> Decision {
        let reason = Reason::new(kind, triggers);
        match view.when_exhausted {
            Exhausted::Suspend if view.can_suspend => Decision::Suspend {
                reason,
                retry_at: triggers.earliest_until(),
            },
            _ => Decision::Reject { reason },
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn decide<T: Trace>(
        &self,
        view: &RoutingView,
        digest_key: &dyn Fn() -> u64,
        catalog: &Catalog,
        herd: &Herd,
        ctx: &CallContext<'_>,
        now: Timestamp,
        trace: &mut T,
        live: bool,
    ) -> Decision {
        let mut triggers = TriggerList::EMPTY;
        let Some(top) = view.top else {
            return Decision::Reject {
                reason: Reason::new(ReasonKind::NothingUsable, triggers),
            };
        };
        let n = view.len();
        if u32::try_from(ctx.attempts.len()).unwrap_or(u32::MAX) >= view.max_attempts.max(1) {
            for a in ctx.attempts.iter().rev().take(MAX_REASON_TRIGGERS) {
                triggers.push(Trigger::new(TriggerKind::CallFailed, 1.0, 1.0).at(a.endpoint));
            }
            return Self::exhausted(view, ReasonKind::AttemptsExhausted, triggers);
        }
        let deadline = ctx
            .deadline
            .or_else(|| view.default_deadline.map(|d| now.saturating_add(d)));
        if deadline.is_some_and(|d| d <= now) {
            return Decision::Reject {
                reason: Reason::new(ReasonKind::DeadlineUnreachable, triggers),
            };
        }

        // Budget guardrails.
        let mut min_tier = top;
        let mut over_budget = false;
        if view.budget.is_some() {
            let mut scope = BudgetScope::tenant(ctx.tenant);
            if let Some(s) = ctx.session {
                scope = scope.session(s);
            }
            if let Some(w) = ctx.workflow {
                scope = scope.workflow(w);
            }
            if let Some(h) = ctx.budget {
                scope = scope.with_handle(h);
            }
            if let Some(t) = self
                .evaluator
                .check_budget(&scope, &view.tenant_triggers, now)
            {
                triggers.push(t);
                over_budget = true;
                match view.budget {
                    Some(BudgetRule::DownshiftTo(k)) => min_tier = min_tier.max(k),
                    Some(BudgetRule::Suspend) if view.can_suspend => {
                        return Decision::Suspend {
                            reason: Reason::new(ReasonKind::Budget, triggers),
                            retry_at: None,
                        };
                    }
                    _ => {
                        return Decision::Reject {
                            reason: Reason::new(ReasonKind::Budget, triggers),
                        };
                    }
                }
            }
        }
        if T::ENABLED && min_tier > top {
            for t in view.tiers.iter().take(min_tier as usize) {
                for &e in &t.endpoint_idx {
                    trace.candidate(t.index, e, CandidateVerdict::OverBudget);
                }
            }
        }

        let from = ctx.session_tier.map_or(top, |s| s.tier);
        // Herd control applies to calls moved below the tenant's top tier.
        let cap = |i: u32| {
            herd.max_fallback_share
                .filter(|_| i > top)
                .map(|max| (max, herd.min_moved_calls))
        };
        let mut tally = Tally::default();
        let mut tried_tiers: u64 = 0;
        let mark = |bits: &mut u64, i: u32| {
            if i < 64 {
                *bits |= 1 << i;
            }
        };
        let seen = |bits: u64, i: u32| i < 64 && bits & (1 << i) != 0;

        let finish = |i: u32, f: Found, kind: ReasonKind, triggers: TriggerList| -> Decision {
            let switched = i != from;
            let reason_kind = if f.probing {
                ReasonKind::Probe
            } else if over_budget && i >= min_tier && min_tier > top {
                ReasonKind::Budget
            } else {
                kind
            };
            let needs_approval = switched
                && view.approval.requires(from, i)
                && ctx.approved_to.is_none_or(|a| a < i);
            if needs_approval {
                let key = fnv(ctx.tenant.as_str().as_bytes())
                    ^ ctx.session.map_or(0, |s| s.key().rotate_left(17))
                    ^ digest_key().rotate_left(31)
                    ^ (u64::from(from) << 32 | u64::from(i));
                return Decision::AwaitApproval {
                    ticket: ApprovalTicket(splitmix(key)),
                    current: from,
                    proposed_tier: i,
                    proposed_endpoint: f.endpoint,
                    reason: Reason::new(ReasonKind::ApprovalRequired, triggers),
                };
            }
            if live && i > top {
                self.herd.record(f.endpoint, now);
            }
            Decision::Route(Route {
                endpoint: f.endpoint,
                tier: i,
                degraded: i > top,
                probe: f.probe,
                notice: switched && view.notification == Notification::Realtime,
                switched,
                fit_context: f.fit,
                reason: Reason::new(reason_kind, triggers),
            })
        };

        // 1. Promotion, at a step boundary, after the dwell, to a tier healthy long enough.
        if let Some(st) = ctx.session_tier {
            let p = &view.promotion;
            if ctx.step_boundary
                && st.tier > min_tier
                && st.tier < n
                && now.duration_since(st.since) >= p.min_dwell
            {
                let target = match p.mode {
                    PromotionMode::OneTier => (min_tier..st.tier)
                        .rev()
                        .find(|&i| view.tier(i).is_some_and(|t| t.usable())),
                    PromotionMode::StraightUp => (min_tier..st.tier).find(|&i| {
                        view.tier(i).is_some_and(|t| t.usable()) && self.healthy_for(view, i, now)
                    }),
                };
                if let Some(i) = target {
                    if self.healthy_for(view, i, now) {
                        mark(&mut tried_tiers, i);
                        let mut promo = TriggerList::EMPTY;
                        promo.push(Trigger::new(
                            TriggerKind::Recovered,
                            ms(p.healthy_for),
                            ms(p.healthy_for),
                        ));
                        if let Some(f) = self.try_tier(
                            view,
                            catalog,
                            ctx,
                            i,
                            deadline,
                            now,
                            live,
                            cap(i),
                            &mut promo,
                            &mut tally,
                            trace,
                        ) {
                            return finish(i, f, ReasonKind::Promotion, promo);
                        }
                    }
                }
            }
            // 1b. Probe the tier above. A probe-eligible session that has dwelt `min_dwell` may,
            //     at a step boundary, be the one that tests a recovering endpoint of the nearest
            //     usable tier above it (taking one of the platform-wide permits), so sessions
            //     stuck below a recovering primary are not left waiting for fresh sessions to
            //     probe it. A tier above that is healthy but not yet for `healthy_for` is not
            //     taken here (that is promotion, above), nor is a move that needs approval.
            if ctx.step_boundary
                && view.probe_eligible
                && st.tier > min_tier
                && st.tier < n
                && now.duration_since(st.since) >= view.promotion.min_dwell
            {
                let above = (min_tier..st.tier)
                    .rev()
                    .find(|&i| view.tier(i).is_some_and(|t| t.usable()));
                if let Some(i) = above {
                    if !seen(tried_tiers, i)
                        && !view.approval.requires(st.tier, i)
                        && self.wants_probe(view, i, now)
                    {
                        let mut probing = TriggerList::EMPTY;
                        let found = self.try_tier(
                            view,
                            catalog,
                            ctx,
                            i,
                            deadline,
                            now,
                            live,
                            cap(i),
                            &mut probing,
                            &mut Tally::default(),
                            &mut NoTrace,
                        );
                        if let Some(f) = found.filter(|f| f.probing) {
                            mark(&mut tried_tiers, i);
                            trace.candidate(i, f.endpoint, CandidateVerdict::Chosen);
                            return finish(i, f, ReasonKind::Probe, probing);
                        }
                    }
                }
            }
            // 2. Stay on the session's tier while it is usable.
            if st.tier >= min_tier && st.tier < n && !seen(tried_tiers, st.tier) {
                mark(&mut tried_tiers, st.tier);
                if let Some(f) = self.try_tier(
                    view,
                    catalog,
                    ctx,
                    st.tier,
                    deadline,
                    now,
                    live,
                    cap(st.tier),
                    &mut triggers,
                    &mut tally,
                    trace,
                ) {
                    let kind = if st.tier == top {
                        ReasonKind::Healthy
                    } else {
                        ReasonKind::Sticky
                    };
                    return finish(st.tier, f, kind, triggers);
                }
            }
        }

        // 3. The best usable tier, from the top. Herd control only spreads load: if capped
        //    endpoints were all that was left, a second pass ignores the cap rather than refuse.
        for pass in 0..2 {
            if pass == 1 && tally.capped == 0 {
                break;
            }
            for i in min_tier..n {
                if pass == 0 && seen(tried_tiers, i) {
                    continue;
                }
                mark(&mut tried_tiers, i);
                if let Some(f) = self.try_tier(
                    view,
                    catalog,
                    ctx,
                    i,
                    deadline,
                    now,
                    live,
                    if pass == 0 { cap(i) } else { None },
                    &mut triggers,
                    &mut tally,
                    trace,
                ) {
                    let kind = if i == top && triggers.is_empty() {
                        ReasonKind::Healthy
                    } else {
                        ReasonKind::Fallback
                    };
                    return finish(i, f, kind, triggers);
                }
            }
        }

        // Nothing usable.
        if tally.capable == 0 && tally.tried_out == 0 {
            return Decision::Reject {
                reason: Reason::new(ReasonKind::Incapable, triggers),
            };
        }
        if tally.capable > 0 && tally.too_slow == tally.capable {
            return Decision::Reject {
                reason: Reason::new(ReasonKind::DeadlineUnreachable, triggers),
            };
        }
        if tally.capable == 0 {
            return Self::exhausted(view, ReasonKind::AttemptsExhausted, triggers);
        }
        Self::exhausted(
            view,
            if over_budget {
                ReasonKind::Budget
            } else {
                ReasonKind::NothingUsable
            },
            triggers,
        )
    }
}
