//! Replay of degraded steps (Layer 4's rollback capability).
//!
//! Every step a session is served below its top tier is recorded with its provenance (when the
//! policy's `recovery.replay` is `flag` or `rerun`). With `rerun`, once the original tier is
//! healthy again, [`Engine::replay_degraded`] re-runs each recorded step there — same payload,
//! same context — and returns per step both outputs and a unified line diff of their texts
//! (from [`ModelClient::output_text`](super::ModelClient::output_text)) for human review; each
//! result and the digest of its diff go to the audit log. With `flag`, nothing is re-run: the
//! steps stay flagged until [`Engine::review_step`] clears them.
//!
//! The record is kept in this engine's memory (the payloads are the caller's own type): steps
//! served on another replica, or before a restart, are not in it. The caller's
//! [`AgentState`] keeps each step's [`Provenance`] durably.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

use super::{Call, Engine, ModelResponse, Purpose, Routed};
use crate::audit::{AuditEvent, AuditEventKind, ReplayOutcome};
use crate::checkpoint::{AgentState, Provenance, TierAt};
use crate::digest::ContentDigest;
use crate::error::{EngineError, Error};
use crate::id::{SessionId, TaskKind, TenantId};
use crate::policy::Replay;
use crate::router::{CallContext, Decision};

/// A step served on a degraded tier, waiting for review or a re-run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DegradedStep {
    /// The step: the agent state's current step id, or `<session>#<n>`.
    pub step: String,
    /// The tenant.
    pub tenant: TenantId,
    /// The session.
    pub session: SessionId,
    /// The task kind.
    pub task: TaskKind,
    /// Who served it (the degraded tier and endpoint).
    pub provenance: Provenance,
    /// The tier it would have been served on with every provider healthy.
    pub original_tier: u32,
}

#[derive(Clone)]
struct Entry<P> {
    step: DegradedStep,
    /// What a re-run sends: kept only under the `rerun` rule.
    payload: Option<P>,
    context: Option<Arc<AgentState>>,
    output: Option<String>,
}

/// How many degraded steps an engine keeps by default (see
/// [`EngineBuilder::degraded_step_limit`](super::EngineBuilder::degraded_step_limit)).
pub const DEFAULT_DEGRADED_STEP_LIMIT: usize = 100_000;

/// The sessions' records and how many steps they hold in all.
#[derive(Default)]
struct Book<P> {
    sessions: HashMap<SessionId, Vec<Entry<P>>>,
    kept: usize,
}

impl<P> Book<P> {
    /// Drops the session's entries matching `gone`, keeping the count.
    fn remove_where(&mut self, session: &SessionId, gone: impl Fn(&Entry<P>) -> bool) {
        if let Some(list) = self.sessions.get_mut(session) {
            let before = list.len();
            list.retain(|e| !gone(e));
            self.kept -= before - list.len();
            if list.is_empty() {
                self.sessions.remove(session);
            }
        }
    }
}

/// The engine's record of degraded steps, per session, bounded: a platform that never reviews
/// does not grow it without end.
pub(super) struct ReplayLog<P> {
    book: Mutex<Book<P>>,
    limit: usize,
    not_kept: std::sync::atomic::AtomicU64,
}

impl<P> ReplayLog<P> {
    pub(super) fn new(limit: usize) -> Self {
        ReplayLog {
            book: Mutex::new(Book {
                sessions: HashMap::new(),
                kept: 0,
            }),
            limit,
            not_kept: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl<P: Clone> ReplayLog<P> {
    /// Records a degraded step (`rerun`: with what a re-run needs). At the limit the step is not
    /// kept and counted instead; its provenance still reaches the caller.
    pub(super) fn record(
        &self,
        call: &Call<P>,
        rule: Replay,
        provenance: Provenance,
        original_tier: u32,
        context: Option<Arc<AgentState>>,
        output: Option<String>,
    ) {
        let Some(sid) = &call.session else { return };
        let mut book = self.book.lock();
        if book.kept >= self.limit {
            self.not_kept
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            #[cfg(feature = "tracing")]
            tracing::warn!(
                target: "downshift",
                session = %sid,
                limit = self.limit,
                "degraded-step record full: a degraded step is flagged but not kept for replay or review"
            );
            return;
        }
        book.kept += 1;
        let rerun = rule == Replay::Rerun;
        let list = book.sessions.entry(sid.clone()).or_default();
        let step = call
            .agent_state
            .as_ref()
            .and_then(|s| s.current_step.as_ref().map(|c| c.id.clone()))
            .unwrap_or_else(|| format!("{sid}#{}", list.len() + 1));
        list.push(Entry {
            step: DegradedStep {
                step,
                tenant: call.tenant.clone(),
                session: sid.clone(),
                task: call.task.clone(),
                provenance,
                original_tier,
            },
            payload: rerun.then(|| call.payload.clone()),
            context: if rerun { context } else { None },
            output,
        });
    }
}

/// How a degraded step's replay went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum ReplayOutcomeKind {
    /// Re-run on the original tier; the texts match.
    Identical,
    /// Re-run on the original tier; the texts differ (see the diff).
    Differs,
    /// The re-run failed (the step stays recorded for a later replay).
    Failed {
        /// Why.
        reason: String,
    },
    /// The original tier is not healthy yet (the step stays recorded).
    Pending {
        /// Why.
        reason: String,
    },
    /// The policy's rule is `flag`: not re-run, flagged until reviewed.
    Flagged,
}

/// One step of a [`ReplayReport`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayedStep<O> {
    /// The step and its degraded provenance.
    pub step: DegradedStep,
    /// The degraded output's text, when the client gives texts.
    pub degraded_output: Option<String>,
    /// The re-run's response on the original tier.
    pub original: Option<ModelResponse<O>>,
    /// The re-run's text.
    pub original_output: Option<String>,
    /// A unified line diff from the degraded text to the original one (empty when identical).
    pub diff: Option<String>,
    /// Where the re-run was served.
    pub rerun_on: Option<TierAt>,
    /// How it went.
    pub outcome: ReplayOutcomeKind,
    /// The audit record of the result, when one was written.
    pub audit: Option<u64>,
}

/// What [`Engine::replay_degraded`] did for a session.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayReport<O> {
    /// The session.
    pub session: SessionId,
    /// The policy's rule when the replay ran.
    pub rule: Replay,
    /// Every recorded step, oldest first.
    pub steps: Vec<ReplayedStep<O>>,
}

impl<P, O> Engine<P, O>
where
    P: Clone + Send + Sync + 'static,
    O: Send + Sync + 'static,
{
    /// The steps of a session served degraded and not yet replayed or reviewed.
    #[must_use]
    pub fn degraded_steps(&self, session: &SessionId) -> Vec<DegradedStep> {
        self.inner
            .replay
            .book
            .lock()
            .sessions
            .get(session)
            .map(|l| l.iter().map(|e| e.step.clone()).collect())
            .unwrap_or_default()
    }

    /// Degraded steps not kept for replay or review because the record was full (see
    /// [`EngineBuilder::degraded_step_limit`](super::EngineBuilder::degraded_step_limit)).
    #[must_use]
    pub fn degraded_steps_not_kept(&self) -> u64 {
        self.inner
            .replay
            .not_kept
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Marks a flagged step reviewed by `reviewer` (a reference to an account or role, not a
    /// name typed in a prompt): it leaves the record, and an audit record
    /// ([`AuditEventKind::StepReviewed`]) says who cleared which step served where. Returns
    /// `false`, writing nothing, when the step is not recorded for the session.
    ///
    /// # Errors
    /// The audit sink's error; the step then stays flagged.
    pub async fn review_step(
        &self,
        session: &SessionId,
        step: &str,
        reviewer: &str,
    ) -> Result<bool, Error> {
        let inner = &*self.inner;
        // Take the entry out while its record is written, so two reviews of one step write one
        // record; it goes back in its place when the write fails.
        let taken = {
            let mut book = inner.replay.book.lock();
            let taken = book.sessions.get_mut(session).and_then(|list| {
                let at = list.iter().position(|e| e.step.step == step)?;
                Some((at, list.remove(at)))
            });
            if taken.is_some() {
                book.kept -= 1;
                if book.sessions.get(session).is_some_and(Vec::is_empty) {
                    book.sessions.remove(session);
                }
            }
            taken
        };
        let Some((at, entry)) = taken else {
            return Ok(false);
        };
        let d = &entry.step;
        let mut ev = AuditEvent::new(
            inner.clock.now(),
            AuditEventKind::StepReviewed {
                step: d.step.clone(),
                served_by: d.provenance.tier.clone(),
                reviewer: reviewer.to_string(),
            },
        )
        .tenant(d.tenant.clone())
        .session(d.session.clone())
        .task(d.task.clone());
        let set = inner.policies.current();
        if let Ok(tp) = set.tenant(d.tenant.as_str()) {
            if let Some(p) = super::policy_ref(tp.view(d.task.as_str())) {
                ev = ev.policy(p);
            }
        }
        match inner.audit.append(ev).await {
            Ok(_) => Ok(true),
            Err(e) => {
                let mut book = inner.replay.book.lock();
                book.kept += 1;
                let list = book.sessions.entry(session.clone()).or_default();
                list.insert(at.min(list.len()), entry);
                Err(e.into())
            }
        }
    }

    /// Replays a session's degraded steps as the policy's `recovery.replay` rule says: `rerun`
    /// re-runs each on the original tier when the router sends the step's task there again
    /// (healthy), and returns both outputs and their diff, each result audited; `flag` (or
    /// `none`) returns them flagged, untouched. Re-run steps leave the record; failed and
    /// pending ones stay for a later call.
    ///
    /// # Errors
    /// [`EngineError::UnknownSession`] when nothing was recorded for the session; an audit
    /// error (the steps re-run before it are returned in no report, but their audit records
    /// were written).
    pub async fn replay_degraded(&self, session: &SessionId) -> Result<ReplayReport<O>, Error> {
        let inner = &*self.inner;
        let entries: Vec<Entry<P>> = inner
            .replay
            .book
            .lock()
            .sessions
            .get(session)
            .map(|l| l.to_vec())
            .ok_or_else(|| EngineError::UnknownSession {
                session: session.clone(),
            })?;
        let set = inner.policies.current();
        let mut rule = Replay::Flag;
        let mut steps = Vec::with_capacity(entries.len());
        let mut done = Vec::new();
        for Entry {
            step,
            payload,
            context,
            output: degraded,
        } in entries
        {
            let Ok(tp) = set.tenant(step.tenant.as_str()) else {
                steps.push(flagged(step, degraded));
                continue;
            };
            let view = Arc::clone(tp.view(step.task.as_str()));
            rule = view.recovery.replay;
            // A step recorded under `flag` kept no payload: it cannot be re-run.
            let Some(payload) = payload.filter(|_| rule == Replay::Rerun) else {
                steps.push(flagged(step, degraded));
                continue;
            };
            let now = inner.clock.now();
            let mut call = Call::new(step.tenant.clone(), step.task.clone(), payload);
            call.session = Some(step.session.clone());
            call.agent_state = context.clone();
            self.prepare_call(&mut call);
            let ctx = CallContext::new(&call.tenant, &call.task).requirements(call.requirements);
            let deadline = view.sla.default_deadline.map(|d| now.saturating_add(d));
            let route = match inner.router.route(&ctx, now) {
                Decision::Route(route) if route.tier <= step.original_tier => route,
                Decision::Route(route) => {
                    if let Some(p) = route.probe {
                        let _ = inner.evaluator.release_probe(p, now);
                    }
                    steps.push(pending(
                        step,
                        degraded,
                        format!("the router still sends this task to tier {}", route.tier),
                    ));
                    continue;
                }
                other => {
                    steps.push(pending(
                        step,
                        degraded,
                        format!(
                            "the router does not route this task now ({})",
                            other_name(&other)
                        ),
                    ));
                    continue;
                }
            };
            if let Some(p) = route.probe {
                // A replay never spends a recovering endpoint's probe permit: the original tier
                // is not healthy until its probes say so.
                let _ = inner.evaluator.release_probe(p, now);
                steps.push(pending(
                    step,
                    degraded,
                    format!("tier {} is still recovering (half-open)", route.tier),
                ));
                continue;
            }
            let catalog = set.catalog();
            let Some(ep) = catalog.try_endpoint(route.endpoint) else {
                steps.push(pending(
                    step,
                    degraded,
                    "endpoint missing from the catalog".into(),
                ));
                continue;
            };
            let on = super::tier_at(&view, catalog, route.tier, Some(route.endpoint));
            let routed = Routed {
                route,
                view: Arc::clone(&view),
                set: Arc::clone(&set),
                deadline,
                now,
            };
            let state = context.unwrap_or_else(|| Arc::new(AgentState::new("")));
            let result = self
                .engine_call(
                    &call,
                    &routed,
                    routed.route.endpoint,
                    ep,
                    state,
                    Purpose::Replay,
                    deadline,
                )
                .await;
            let (outcome, original, text, diff, audit_outcome) = match result {
                Err(e) => (
                    ReplayOutcomeKind::Failed {
                        reason: e.to_string(),
                    },
                    None,
                    None,
                    None,
                    ReplayOutcome::Failed,
                ),
                Ok(resp) => {
                    let text = inner.client.output_text(&resp.output);
                    match (&degraded, &text) {
                        (Some(a), Some(b)) => {
                            let diff = similar::TextDiff::from_lines(a.as_str(), b.as_str())
                                .unified_diff()
                                .context_radius(3)
                                .header("degraded", "original")
                                .to_string();
                            let (o, ao) = if a == b {
                                (ReplayOutcomeKind::Identical, ReplayOutcome::Identical)
                            } else {
                                (ReplayOutcomeKind::Differs, ReplayOutcome::Differs)
                            };
                            (o, Some(resp), text, Some(diff), ao)
                        }
                        _ => (
                            ReplayOutcomeKind::Failed {
                                reason: "no text to compare: implement ModelClient::output_text"
                                    .into(),
                            },
                            Some(resp),
                            text,
                            None,
                            ReplayOutcome::Failed,
                        ),
                    }
                }
            };
            let mut ev = AuditEvent::new(
                inner.clock.now(),
                AuditEventKind::ReplayResult {
                    step: step.step.clone(),
                    original: on.clone(),
                    outcome: audit_outcome,
                    diff: diff
                        .as_ref()
                        .filter(|d| !d.is_empty())
                        .map(|d| ContentDigest::of_bytes(d.as_bytes())),
                },
            )
            .tenant(step.tenant.clone())
            .session(step.session.clone())
            .task(step.task.clone());
            if let Some(p) = super::policy_ref(&view) {
                ev = ev.policy(p);
            }
            let seq = inner.audit.append(ev).await?.seq;
            if audit_outcome != ReplayOutcome::Failed {
                done.push(step.step.clone());
            }
            steps.push(ReplayedStep {
                step,
                degraded_output: degraded,
                original,
                original_output: text,
                diff,
                rerun_on: Some(on),
                outcome,
                audit: Some(seq),
            });
        }
        if !done.is_empty() {
            inner
                .replay
                .book
                .lock()
                .remove_where(session, |e| done.contains(&e.step.step));
        }
        Ok(ReplayReport {
            session: session.clone(),
            rule,
            steps,
        })
    }
}

fn flagged<O>(step: DegradedStep, degraded: Option<String>) -> ReplayedStep<O> {
    ReplayedStep {
        step,
        degraded_output: degraded,
        original: None,
        original_output: None,
        diff: None,
        rerun_on: None,
        outcome: ReplayOutcomeKind::Flagged,
        audit: None,
    }
}

fn pending<O>(step: DegradedStep, degraded: Option<String>, reason: String) -> ReplayedStep<O> {
    ReplayedStep {
        outcome: ReplayOutcomeKind::Pending { reason },
        ..flagged(step, degraded)
    }
}

fn other_name(d: &Decision) -> &'static str {
    match d {
        Decision::Route(_) => "route",
        Decision::AwaitApproval { .. } => "it awaits approval",
        Decision::Suspend { .. } => "it would suspend",
        Decision::Reject { .. } => "it would reject",
    }
}
