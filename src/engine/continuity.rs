//! Context continuity in the engine: the requirements a call's [`AgentState`] implies, the
//! context each attempt sends (non-portable items stripped or the session pinned, the state
//! fitted to the routed endpoint's window, dropped messages summarized through the caller's
//! [`ModelClient`](super::ModelClient) on the policy's summarizer tier), the audit of every
//! transform, and the checkpoint cadence. See `docs/continuity.md`.
//!
//! The rule this module keeps: the engine never sends a request that cannot fit. A context it
//! cannot fit (or may not fit) ends the call as the policy's `continuity.on_unfittable` says.

use std::fmt::Write as _;
use std::sync::Arc;

use futures::future::{Either, select};

use super::{
    Call, CallResult, Engine, ModelError, ModelRequest, ModelResponse, Preflight, Purpose,
    RejectKind, Rejection, Routed,
};
use crate::audit::{AuditEventKind, ContextStrategy};
use crate::catalog::{Endpoint, EndpointIdx};
use crate::checkpoint::{
    AgentState, FitPolicy, FitReport, Fitted, Message, Provenance, Role, Summary, estimate, fit,
};
use crate::clock::Timestamp;
use crate::digest::ContentDigest;
use crate::id::EndpointId;
use crate::policy::{Exhausted, NonPortablePolicy};
use crate::router::{Reason, ReasonKind};
use crate::trigger::{Observation, OutcomeClass};

/// The context an attempt sends.
pub(super) struct Context {
    /// The state to render.
    pub(super) state: Arc<AgentState>,
    /// It was changed to fit (items dropped, summarized or stripped).
    pub(super) fitted: bool,
}

/// The instruction a summary call carries (the client renders it as the system message).
const SUMMARY_INSTRUCTION: &str = "You write the running summary of an AI agent's session. \
The agent continues on a model with a smaller context window and will not see the messages below \
again. Fold the previous summary in, and keep every fact, decision, open question, tool result \
and identifier the agent needs to reach its goal. Reply with the summary only.";

impl<P, O> Engine<P, O>
where
    P: Clone + Send + Sync + 'static,
    O: Send + Sync + 'static,
{
    /// Derives the call's requirements from its agent state: input tokens (the estimate, when
    /// larger than what the caller said), tool calling, parallel tool calls and JSON mode, so
    /// the router treats an endpoint lacking what the session uses as incapable.
    pub(super) fn prepare_call(&self, call: &mut Call<P>) {
        let Some(s) = &call.agent_state else { return };
        let est = estimate(s, &*self.inner.counter);
        let r = &mut call.requirements;
        r.input_tokens = r.input_tokens.max(u32::try_from(est).unwrap_or(u32::MAX));
        r.tools |= s.uses_tools();
        r.parallel_tool_calls |= s.uses_parallel_tool_calls();
        r.json_mode |= s.json_mode;
    }

    /// The provenance of a served call, for the caller's [`CompletedStep`](crate::checkpoint::CompletedStep):
    /// tier and endpoint, the endpoint's model, the policy digest, now, and the degraded flag.
    #[must_use]
    pub fn provenance<R>(&self, done: &super::Completed<R>) -> Provenance {
        let set = self.inner.policies.current();
        let model = set
            .catalog()
            .get(done.served_by.endpoint.as_str())
            .map_or_else(String::new, |e| e.model.to_string());
        Provenance {
            tier: crate::checkpoint::TierAt::new(done.served_by.tier, &*done.served_by.tier_name)
                .on(done.served_by.endpoint.clone()),
            model,
            policy_digest: done.policy_digest.clone(),
            at: self.inner.clock.now(),
            degraded: done.degraded,
        }
    }

    /// The context one attempt sends to the routed endpoint, or the end of the call when it
    /// cannot be sent (pinned to another provider, or unfittable).
    pub(super) async fn context_for(
        &self,
        call: &Call<P>,
        r: &Routed,
        pre: &Preflight,
        audit_seqs: &mut Vec<u64>,
    ) -> Result<Option<Context>, CallResult<O>> {
        let catalog = r.set.catalog();
        let Some(ep) = catalog.try_endpoint(r.route.endpoint) else {
            // The attempt reports the missing endpoint.
            return Ok(None);
        };
        let cont = &r.view.continuity;
        let Some(state) = &call.agent_state else {
            if r.route.fit_context {
                let why = format!(
                    "the request needs {} input tokens, more than {}'s {}-token window, and the call carries no agent state the engine could fit",
                    call.requirements.input_tokens, ep.id, ep.capabilities.context_window
                );
                return Err(Box::pin(self.end_unsent(call, r, pre, why, cont.on_unfittable)).await);
            }
            return Ok(None);
        };

        // Items only another provider understands: pin (suspend) or strip.
        let mut state = Arc::clone(state);
        let mut stripped = 0usize;
        if let Some(np) = state
            .messages
            .iter()
            .filter_map(|m| m.non_portable.as_ref())
            .find(|n| n.provider != ep.provider)
        {
            match cont.non_portable {
                NonPortablePolicy::Pin => {
                    let why = format!(
                        "the session holds a non-portable `{}` item of provider `{}` and the policy pins it there (continuity.non_portable: pin): not switched to {} at `{}`",
                        np.kind, np.provider, ep.id, ep.provider
                    );
                    return Err(
                        Box::pin(self.end_unsent(call, r, pre, why, Exhausted::Suspend)).await,
                    );
                }
                NonPortablePolicy::Strip => {
                    let mut s = (*state).clone();
                    stripped = s.strip_non_portable(&ep.provider);
                    state = Arc::new(s);
                }
            }
        }

        let counter = &*self.inner.counter;
        let reserve = cont
            .reserve_output_tokens
            .max(call.requirements.output_tokens);
        let caps = &ep.capabilities;
        let budget = u64::from(
            caps.context_window
                .saturating_sub(reserve.min(caps.max_output_tokens)),
        );
        let before = estimate(&state, counter);
        if before <= budget {
            if stripped > 0 {
                let kind = AuditEventKind::ContextTransform {
                    from_tokens: estimate(call.agent_state.as_deref().unwrap_or(&state), counter),
                    to_tokens: before,
                    target_window: u64::from(caps.context_window),
                    messages_dropped: u32::try_from(stripped).unwrap_or(u32::MAX),
                    summarized: false,
                    strategy: Some(ContextStrategy::Strip),
                    summarizer: None,
                    dropped_digest: None,
                };
                Box::pin(self.audit_transform(call, r, kind, audit_seqs)).await?;
            }
            return Ok(Some(Context {
                state,
                fitted: stripped > 0,
            }));
        }
        if !cont.fit_to_smaller_window {
            let why = format!(
                "the context needs {before} tokens; {} leaves {budget} after reserving output, and the policy does not allow fitting (continuity.fit_to_smaller_window)",
                ep.id
            );
            return Err(Box::pin(self.end_unsent(call, r, pre, why, cont.on_unfittable)).await);
        }
        let policy = FitPolicy {
            reserve_output_tokens: reserve,
            summarize_at: cont.summarize_at,
        };
        let mut report = match fit(&state, caps, counter, &policy) {
            Fitted::Fits(rep) => *rep,
            Fitted::DoesNotFit { reason, .. } => {
                let why = format!("the context cannot be fitted to {}: {reason}", ep.id);
                return Err(Box::pin(self.end_unsent(call, r, pre, why, cont.on_unfittable)).await);
            }
        };
        let mut strategy = ContextStrategy::Drop;
        let mut summarizer = None;
        if report.summary_needed {
            match Box::pin(self.summarize(call, r, &report)).await {
                Ok((summary, by)) => {
                    let mut s = report.state.clone();
                    s.summary = Some(summary);
                    let whole = FitPolicy {
                        summarize_at: 1.0,
                        ..policy
                    };
                    match fit(&s, caps, counter, &whole) {
                        Fitted::Fits(again) => {
                            report = merge(report, *again);
                            strategy = ContextStrategy::Summarize;
                            summarizer = Some(by);
                        }
                        Fitted::DoesNotFit { reason, .. } => {
                            let why = format!(
                                "the context with its new summary cannot be fitted to {}: {reason}",
                                ep.id
                            );
                            return Err(Box::pin(self.end_unsent(
                                call,
                                r,
                                pre,
                                why,
                                cont.on_unfittable,
                            ))
                            .await);
                        }
                    }
                }
                Err(e) if cont.require_summary => {
                    let why = format!(
                        "a summary is required to fit the context to {} but: {e}",
                        ep.id
                    );
                    return Err(
                        Box::pin(self.end_unsent(call, r, pre, why, cont.on_unfittable)).await,
                    );
                }
                // Without a summary the dropped messages are gone from what is sent (the
                // checkpoint keeps them); the audit record says no summary was written.
                Err(_) => {}
            }
        }
        let kind = AuditEventKind::ContextTransform {
            from_tokens: report.tokens_before,
            to_tokens: report.tokens_after,
            target_window: u64::from(caps.context_window),
            messages_dropped: report
                .dropped
                .count
                .saturating_add(u32::try_from(stripped).unwrap_or(u32::MAX)),
            summarized: strategy == ContextStrategy::Summarize,
            strategy: Some(strategy),
            summarizer,
            dropped_digest: report.dropped.digest.clone(),
        };
        Box::pin(self.audit_transform(call, r, kind, audit_seqs)).await?;
        Ok(Some(Context {
            state: Arc::new(report.state),
            fitted: true,
        }))
    }

    async fn audit_transform(
        &self,
        call: &Call<P>,
        r: &Routed,
        kind: AuditEventKind,
        audit_seqs: &mut Vec<u64>,
    ) -> Result<(), CallResult<O>> {
        let ev = Self::event(call, &r.view, self.inner.clock.now(), kind);
        match self.record(ev).await {
            Ok(seq) => {
                audit_seqs.push(seq);
                Ok(())
            }
            Err(rej) => Err(CallResult::Rejected(rej)),
        }
    }

    /// Ends a call whose context is not sent: suspended (when `how` says so and the call has a
    /// session and the policy a suspension step) or rejected, audited either way.
    async fn end_unsent(
        &self,
        call: &Call<P>,
        r: &Routed,
        pre: &Preflight,
        why: String,
        how: Exhausted,
    ) -> CallResult<O> {
        let catalog = r.set.catalog();
        let view = &r.view;
        let now = self.inner.clock.now();
        let reason = Reason {
            kind: ReasonKind::Incapable,
            triggers: Default::default(),
        };
        if how == Exhausted::Suspend && view.suspension.is_some() && call.session.is_some() {
            return self
                .suspend_with(
                    call,
                    view,
                    catalog,
                    pre.session.as_ref(),
                    reason,
                    why,
                    None,
                    now,
                )
                .await;
        }
        let ev = Self::event(
            call,
            view,
            now,
            AuditEventKind::Rejection {
                reason: why.clone(),
            },
        );
        if let Err(rej) = self.record(ev).await {
            return CallResult::Rejected(rej);
        }
        CallResult::Rejected(Rejection {
            kind: RejectKind::Context,
            reason: Some(reason),
            message: why,
        })
    }

    /// Writes the summary of what `report` dropped, through the caller's client, on the first
    /// usable endpoint of the policy's summarizer tier, in as many calls as the summarizer's
    /// window needs (each folding the previous summary in), within the call's deadline.
    async fn summarize(
        &self,
        call: &Call<P>,
        r: &Routed,
        report: &FitReport,
    ) -> Result<(Summary, EndpointId), String> {
        let inner = &*self.inner;
        let view = &r.view;
        let cont = &view.continuity;
        let catalog = r.set.catalog();
        let counter = &*inner.counter;
        let name = cont
            .summarizer
            .as_deref()
            .ok_or("no summarizer tier is named (continuity.summarizer)")?;
        let tier = view
            .usable_tiers()
            .find(|t| *t.name == *name)
            .ok_or_else(|| {
                format!("the summarizer tier `{name}` is not usable for this tenant and task")
            })?;
        let now = inner.clock.now();
        let left = r.deadline.map(|d| d.duration_since(now));
        let (idx, ep) = tier
            .endpoint_idx
            .iter()
            .filter_map(|&e| catalog.try_endpoint(e).map(|ep| (e, ep)))
            .find(|(e, _)| {
                inner
                    .evaluator
                    .check(*e, &view.tenant_triggers, now)
                    .is_ok_and(|v| v.is_usable())
                    && left.is_none_or(|l| {
                        inner
                            .evaluator
                            .recent_p95(*e, now)
                            .ok()
                            .flatten()
                            .is_none_or(|p95| p95 < l)
                    })
            })
            .ok_or_else(|| format!("no endpoint of the summarizer tier `{name}` is usable now"))?;
        // The room the summary may take in the fitted context.
        let room = report
            .budget
            .saturating_sub(report.tokens_after)
            .saturating_sub(u64::from(counter.message_overhead()));
        let out = u32::try_from(room)
            .unwrap_or(u32::MAX)
            .min(ep.capabilities.max_output_tokens);
        if out < 32 {
            return Err(format!(
                "only {room} tokens are left for a summary (continuity.summarize_at leaves too little room)"
            ));
        }
        let instruction = format!("{SUMMARY_INSTRUCTION} At most {out} tokens.");
        let prev = report.state.summary.as_ref();
        let fixed = u64::from(counter.count_text(&instruction))
            + u64::from(counter.count_text(&report.state.goal))
            + u64::from(out).max(prev.map_or(0, |s| u64::from(counter.count_text(&s.text))))
            + 3 * u64::from(counter.message_overhead());
        let chunk_budget = u64::from(ep.capabilities.context_window)
            .saturating_sub(u64::from(out))
            .saturating_sub(fixed);
        if chunk_budget < 64 {
            return Err(format!(
                "the summarizer {} has no room for messages in its {}-token window",
                ep.id, ep.capabilities.context_window
            ));
        }
        let chunks = transcript_chunks(&report.dropped.messages, counter, chunk_budget);
        let max = cont.max_summary_calls.max(1) as usize;
        if chunks.len() > max {
            return Err(format!(
                "the dropped messages need {} summary calls on {}; the policy allows {max} (continuity.max_summary_calls)",
                chunks.len(),
                ep.id
            ));
        }
        let mut rolling = prev.cloned();
        for chunk in chunks {
            let mut ctx = AgentState::new(report.state.goal.clone());
            ctx.summary = rolling.clone();
            ctx.messages.push(Message::system(instruction.clone()));
            ctx.messages.push(Message::user(chunk));
            let text = self
                .engine_call(call, r, idx, ep, Arc::new(ctx), Purpose::Summary, r.deadline)
                .await
                .map_err(|e| format!("the summary call to {} failed: {e}", ep.id))
                .and_then(|resp| {
                    inner.client.output_text(&resp.output).ok_or_else(|| {
                        "the client gave no text for the summary (implement ModelClient::output_text)"
                            .to_string()
                    })
                })?;
            rolling = Some(Summary {
                text,
                covers_messages: 0,
                covers_through: None,
                dropped_digest: None,
                produced_by: Some(ep.id.clone()),
                at: Some(inner.clock.now()),
                tokens: None,
            });
        }
        let mut summary = rolling.ok_or("there was nothing to summarize")?;
        summary.covers_messages =
            prev.map_or(0, |p| p.covers_messages) + u64::from(report.dropped.count);
        summary.covers_through = report
            .dropped
            .messages
            .iter()
            .rev()
            .find_map(|m| m.id.clone())
            .or_else(|| prev.and_then(|p| p.covers_through.clone()));
        summary.dropped_digest = report.dropped.digest.clone();
        Ok((summary, ep.id.clone()))
    }

    /// One call the engine makes itself (a summary, a replay) on a chosen endpoint: raced
    /// against the deadline like a caller's attempt, and observed like one.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn engine_call(
        &self,
        call: &Call<P>,
        r: &Routed,
        idx: EndpointIdx,
        ep: &Endpoint,
        context: Arc<AgentState>,
        purpose: Purpose,
        deadline: Option<Timestamp>,
    ) -> Result<ModelResponse<O>, ModelError> {
        let inner = &*self.inner;
        let started = inner.clock.now();
        if deadline.is_some_and(|d| d <= started) {
            return Err(super::deadline_error());
        }
        let request = ModelRequest {
            endpoint: ep.id.clone(),
            endpoint_idx: idx,
            model: ep.model.clone(),
            deadline,
            payload: call.payload.clone(),
            attempt: 0,
            probe: false,
            fit_context: false,
            context_window: ep.capabilities.context_window,
            continue_from: None,
            context: Some(context),
            purpose,
        };
        let fut = inner.client.call(request);
        let result = match deadline {
            Some(d) if inner.sleeper.keeps_time() => {
                let timer = inner.sleeper.sleep(d.duration_since(started));
                match select(fut, timer).await {
                    Either::Left((res, _)) => res,
                    Either::Right(((), _)) => Err(super::deadline_error()),
                }
            }
            _ => fut.await,
        };
        let finished = inner.clock.now();
        let (class, usage) = match &result {
            Ok(resp) => (OutcomeClass::Ok, resp.usage),
            Err(e) => (e.class(), e.usage),
        };
        let mut obs = Observation::new(
            idx,
            &call.tenant,
            class,
            started,
            finished.duration_since(started),
        )
        .task(&call.task)
        .usage(usage.input_tokens, usage.output_tokens)
        .cost(ep.pricing.cost(usage.input_tokens, usage.output_tokens));
        if let Err(e) = &result {
            obs = obs.classified(&e.classification);
        }
        if let Some(s) = &call.session {
            obs = obs.session(s);
        }
        if let Some(b) = &r.view.tenant_triggers.budget {
            obs = obs.budget(b);
        }
        // Refused only for an index outside the catalog or a bad cost, never built here.
        let _ = inner.evaluator.observe(&obs, finished);
        result
    }

    /// After a served call: the fitted flag, the checkpoint cadence, and the replay log.
    /// `steps`: the session's step count after this call (counted by `complete`), 0 when this
    /// call began no new step.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn after_step(
        &self,
        call: &Call<P>,
        r: &Routed,
        result: &mut CallResult<O>,
        context: Option<Arc<AgentState>>,
        text: Option<String>,
        fitted: bool,
        steps: u64,
    ) {
        let CallResult::Completed(done) = result else {
            return;
        };
        done.flags.fitted_context |= fitted;
        let Some(sid) = &call.session else { return };
        let every = u64::from(r.view.continuity.checkpoint.every_steps);
        if every > 0 && steps > 0 && steps % every == 0 {
            if let Some(state) = call.checkpoint_state() {
                let now = self.inner.clock.now();
                let cp = self.checkpoint(
                    call,
                    &r.view,
                    r.set.catalog(),
                    r.route.tier,
                    Some(r.route.endpoint),
                    state,
                    now,
                );
                let version = self.inner.sessions.get(sid).and_then(|s| s.version);
                // A failed cadence save does not undo a served step; the checkpoint before the
                // next tier change or suspension is still required and still made.
                let _ = self.save(sid, cp, version).await;
            }
        }
        if done.degraded && r.view.recovery.replay != crate::policy::Replay::None {
            let provenance = self.provenance(done);
            self.inner.replay.record(
                call,
                r.view.recovery.replay,
                provenance,
                r.view.top_tier().unwrap_or(0),
                context,
                text,
            );
        }
    }
}

/// Merges a second fit (after the summary was added) into the first one's report.
fn merge(first: FitReport, second: FitReport) -> FitReport {
    let mut dropped = first.dropped;
    if second.dropped.count > 0 {
        dropped.count += second.dropped.count;
        dropped.tokens += second.dropped.tokens;
        dropped.messages.extend(second.dropped.messages);
        dropped.digest = ContentDigest::of_json(&dropped.messages).ok();
    }
    FitReport {
        state: second.state,
        tokens_before: first.tokens_before,
        tokens_after: second.tokens_after,
        budget: second.budget,
        dropped,
        summary_needed: false,
    }
}

/// The dropped messages as a plain transcript (tool calls and results written out, so no
/// provider sees a tool result without its call), cut into chunks of at most `budget` tokens.
/// A single message larger than a chunk is truncated to fit, with a marker.
fn transcript_chunks(
    messages: &[Message],
    counter: &dyn crate::checkpoint::TokenCounter,
    budget: u64,
) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut cur = String::new();
    let mut cur_tokens = 0u64;
    for m in messages {
        let mut line = String::new();
        let role = match m.role {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        };
        let _ = write!(line, "[{role}");
        if let Some(id) = &m.tool_call_id {
            let _ = write!(line, " result of {id}");
        }
        let _ = write!(line, "] {}", m.content);
        for c in &m.tool_calls {
            let _ = write!(line, "\n[call {} {}({})]", c.id, c.name, c.arguments);
        }
        line.push('\n');
        let mut t = u64::from(counter.count_text(&line));
        if t > budget {
            line = truncate_to(&line, counter, budget.saturating_sub(8));
            line.push_str(" [...]\n");
            t = u64::from(counter.count_text(&line));
        }
        if cur_tokens + t > budget && !cur.is_empty() {
            chunks.push(std::mem::take(&mut cur));
            cur_tokens = 0;
        }
        cur.push_str(&line);
        cur_tokens += t;
    }
    if !cur.is_empty() {
        chunks.push(cur);
    }
    chunks
}

/// The longest prefix of `text` (on a character boundary) within `budget` tokens.
fn truncate_to(text: &str, counter: &dyn crate::checkpoint::TokenCounter, budget: u64) -> String {
    let mut end = text.len();
    while end > 0 && u64::from(counter.count_text(text.get(..end).unwrap_or(""))) > budget {
        end = end * 9 / 10;
        while end > 0 && !text.is_char_boundary(end) {
            end -= 1;
        }
    }
    text.get(..end).unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{HeuristicCounter, TokenCounter, ToolCall};

    #[test]
    fn transcripts_write_tool_calls_out_and_respect_the_chunk_budget() {
        let mut msgs = vec![Message::tool_calls(vec![ToolCall {
            id: "c1".into(),
            name: "search".into(),
            arguments: serde_json::json!({"q": "x"}),
        }])];
        msgs.push(Message::tool_result("c1", "r".repeat(4000)));
        msgs.push(Message::user("é".repeat(900)));
        let chunks = transcript_chunks(&msgs, &HeuristicCounter, 500);
        assert!(chunks.len() >= 2);
        assert!(chunks[0].contains("[call c1 search({\"q\":\"x\"})]"));
        for c in &chunks {
            assert!(
                u64::from(HeuristicCounter.count_text(c)) <= 500,
                "{}",
                c.len()
            );
        }
    }
}
