//! Context continuity through the engine: a 150K-token session moved to a 32K window is fitted
//! and summarized on the policy's summarizer tier (audited), non-portable items pin or are
//! stripped, nothing that cannot fit is ever sent, tool use makes tool-less endpoints
//! incapable, the checkpoint cadence, and the replay of degraded steps with diffs.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use downshift::audit::{AuditEventKind, ContextStrategy, MemoryAuditSink, ReplayOutcome};
use downshift::catalog::Requirements;
use downshift::checkpoint::{
    AgentState, HeuristicCounter, MemoryCheckpointStore, Message, Step, ToolCall, ToolSpec,
    estimate,
};
use downshift::engine::{
    Call, CallResult, Engine, ModelClient, ModelError, ModelRequest, ModelResponse, Purpose,
    RejectKind, ReplayOutcomeKind, TokenUsage,
};
use downshift::{CheckpointStore, ContentDigest, ManualClock, OutcomeClass, SessionId, Timestamp};
use futures::executor::block_on;
use parking_lot::Mutex;
use serde_json::{Value, json};

/// What the client saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    endpoint: String,
    purpose: Purpose,
    window: u32,
    context_tokens: Option<u64>,
    context: Option<Arc<AgentState>>,
}

/// Fails the listed endpoints; answers the rest with a text naming the endpoint and the step.
#[derive(Default)]
struct Script {
    failing: Mutex<HashSet<String>>,
    seen: Mutex<Vec<Seen>>,
}

struct Client(Arc<Script>);

#[async_trait]
impl ModelClient for Client {
    async fn call(&self, req: ModelRequest<Value>) -> Result<ModelResponse<Value>, ModelError> {
        self.0.seen.lock().push(Seen {
            endpoint: req.endpoint.to_string(),
            purpose: req.purpose,
            window: req.context_window,
            context_tokens: req.context.as_ref().map(|c| estimate(c, &HeuristicCounter)),
            context: req.context.clone(),
        });
        if self.0.failing.lock().contains(req.endpoint.as_str()) {
            return Err(ModelError::of(OutcomeClass::ServerError, "scripted 503"));
        }
        let step = req
            .context
            .as_ref()
            .and_then(|c| c.current_step.as_ref().map(|s| s.id.clone()))
            .unwrap_or_default();
        let text = match req.purpose {
            Purpose::Summary => {
                "Summary: invoices 1-300 reconciled except supplier 14.".to_string()
            }
            _ => format!("answer for {step}\nwritten by {}\nend", req.endpoint),
        };
        Ok(ModelResponse::new(
            json!({ "text": text }),
            TokenUsage {
                input_tokens: 100,
                output_tokens: 20,
            },
        ))
    }

    fn output_text(&self, output: &Value) -> Option<String> {
        output["text"].as_str().map(str::to_string)
    }
}

struct World {
    engine: Engine,
    script: Arc<Script>,
    clock: ManualClock,
    audit: Arc<MemoryAuditSink>,
    store: Arc<MemoryCheckpointStore>,
}

fn world_with(edit: impl FnOnce(&mut Vec<(String, Value)>)) -> World {
    world_limited(edit, downshift::engine::DEFAULT_DEGRADED_STEP_LIMIT)
}

fn world_limited(edit: impl FnOnce(&mut Vec<(String, Value)>), limit: usize) -> World {
    let mut files = base();
    set(
        &mut files,
        "acme.json",
        "/continuity/summarizer",
        json!("mid"),
    );
    edit(&mut files);
    let set = load(&files);
    let script = Arc::new(Script::default());
    let clock = ManualClock::new(Timestamp::from_millis(1_795_000_000_000));
    let audit = Arc::new(MemoryAuditSink::new());
    let store = Arc::new(MemoryCheckpointStore::new());
    let engine = Engine::builder(set, Arc::new(Client(Arc::clone(&script))))
        .clock(Arc::new(clock.clone()))
        .audit(audit.clone())
        .checkpoints(store.clone())
        .degraded_step_limit(limit)
        .build()
        .unwrap();
    World {
        engine,
        script,
        clock,
        audit,
        store,
    }
}

impl World {
    fn fail(&self, ids: &[&str]) {
        self.script
            .failing
            .lock()
            .extend(ids.iter().map(|s| s.to_string()));
    }
    fn heal_all(&self) {
        self.script.failing.lock().clear();
    }
    fn seen_at(&self, endpoint: &str) -> Vec<Seen> {
        self.script
            .seen
            .lock()
            .iter()
            .filter(|s| s.endpoint == endpoint)
            .cloned()
            .collect()
    }
    fn events(&self) -> Vec<AuditEventKind> {
        self.audit
            .records()
            .into_iter()
            .map(|r| r.event.kind)
            .collect()
    }
}

const PRIMARY_AND_STANDBY: [&str; 3] = ["frontier-a-eu", "frontier-a-us", "frontier-b-eu"];

/// A long session: a system prompt, then `turns` exchanges of about 500 tokens each, every
/// fifth one a tool call with its result.
fn long_session(turns: usize) -> AgentState {
    let mut s = AgentState::new("Reconcile the March invoices of every supplier");
    s.plan = vec![
        "fetch invoices".into(),
        "match payments".into(),
        "report gaps".into(),
    ];
    s.current_step = Some(Step {
        id: "step-report".into(),
        description: "write the gap report".into(),
    });
    s.findings.push("supplier 14 was paid twice".into());
    s.messages
        .push(Message::system("You are a careful accounts-payable agent.").with_id("sys"));
    for i in 0..turns {
        if i % 5 == 4 {
            let id = format!("call-{i}");
            s.messages.push(
                Message::tool_calls(vec![ToolCall {
                    id: id.clone(),
                    name: "fetch_invoice".into(),
                    arguments: json!({"n": i}),
                }])
                .with_id(format!("m{i}")),
            );
            s.messages.push(
                Message::tool_result(id, format!("invoice {i}: {}", "line item ".repeat(195)))
                    .with_id(format!("m{i}-result")),
            );
        } else {
            let text = format!("turn {i}: {}", "reconcile this ".repeat(132));
            let m = if i % 2 == 0 {
                Message::user(text)
            } else {
                Message::assistant(text)
            };
            s.messages.push(m.with_id(format!("m{i}")));
        }
    }
    s.messages
        .push(Message::user("Now write the gap report.").with_id("last"));
    s
}

#[test]
fn a_150k_session_moved_to_a_32k_tier_is_fitted_summarized_on_the_summarizer_tier_and_audited() {
    let w = world_with(|_| {});
    let state = long_session(300);
    let before = estimate(&state, &HeuristicCounter);
    assert!((140_000..170_000).contains(&before), "{before}");
    w.fail(&PRIMARY_AND_STANDBY);

    let r = block_on(
        w.engine.call(
            Call::new("acme", "summarization", json!({"temperature": 0}))
                .session("s-150k")
                .agent_state(state.clone()),
        ),
    );
    let done = r.completed().unwrap_or_else(|| panic!("{r:?}"));
    assert_eq!(done.served_by.endpoint.as_str(), "mid-eu");
    assert_eq!(done.served_by.tier, 2);
    assert!(done.flags.fitted_context && done.degraded);

    // The request sent fits the 32K window with the reserved output.
    let at_mid = w.seen_at("mid-eu");
    let steps: Vec<&Seen> = at_mid
        .iter()
        .filter(|s| s.purpose == Purpose::Step)
        .collect();
    assert_eq!(steps.len(), 1);
    let sent = steps[0].context.as_ref().unwrap();
    assert!(steps[0].context_tokens.unwrap() <= 32_000 - 4096);
    assert_eq!(steps[0].window, 32_000);
    assert_eq!(sent.goal, state.goal);
    assert_eq!(sent.current_step, state.current_step);
    assert_eq!(
        sent.messages.first(),
        state.messages.first(),
        "system prompt kept"
    );
    assert_eq!(
        sent.messages.last(),
        state.messages.last(),
        "newest message kept"
    );
    let summary = sent
        .summary
        .as_ref()
        .expect("a summary replaced the dropped messages");
    assert!(summary.text.starts_with("Summary:"));
    assert_eq!(summary.produced_by.as_ref().unwrap().as_str(), "mid-eu");
    let dropped = state.messages.len() - sent.messages.len();
    assert_eq!(summary.covers_messages, dropped as u64);

    // The summary calls went to the policy's summarizer tier, each fitting its window.
    let summaries: Vec<&Seen> = at_mid
        .iter()
        .filter(|s| s.purpose == Purpose::Summary)
        .collect();
    assert!(summaries.len() >= 2, "chunked: {}", summaries.len());
    assert!(summaries.len() <= 8);
    for s in &summaries {
        assert!(s.context_tokens.unwrap() + 4096 <= 32_000, "{s:?}");
    }
    assert!(
        w.script
            .seen
            .lock()
            .iter()
            .filter(|s| s.purpose == Purpose::Summary)
            .all(|s| s.endpoint == "mid-eu")
    );

    // The audit log records the transform: strategy, tokens, summarizer, dropped digest.
    let events = w.events();
    let t = events
        .iter()
        .find_map(|e| match e {
            AuditEventKind::ContextTransform {
                from_tokens,
                to_tokens,
                target_window,
                messages_dropped,
                summarized,
                strategy,
                summarizer,
                dropped_digest,
            } => Some((
                *from_tokens,
                *to_tokens,
                *target_window,
                *messages_dropped,
                *summarized,
                *strategy,
                summarizer.clone(),
                dropped_digest.clone(),
            )),
            _ => None,
        })
        .expect("a context_transform record");
    assert_eq!(t.0, before);
    assert_eq!(t.1, steps[0].context_tokens.unwrap());
    assert_eq!(t.2, 32_000);
    assert_eq!(t.3 as usize, dropped);
    assert!(t.4);
    assert_eq!(t.5, Some(ContextStrategy::Summarize));
    assert_eq!(t.6.unwrap().as_str(), "mid-eu");
    let kept: HashSet<_> = sent.messages.iter().map(|m| m.id.clone()).collect();
    let dropped_msgs: Vec<Message> = state
        .messages
        .iter()
        .filter(|m| !kept.contains(&m.id))
        .cloned()
        .collect();
    assert_eq!(t.7, Some(ContentDigest::of_json(&dropped_msgs).unwrap()));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, AuditEventKind::TierChange { .. }))
    );

    // The checkpoint taken before the tier change holds the whole state, not the fitted one.
    let cp = block_on(w.store.load(&SessionId::new("s-150k")))
        .unwrap()
        .unwrap();
    assert_eq!(cp.agent_state().unwrap(), Some(state));
}

#[test]
fn a_non_portable_item_with_policy_pin_suspends_instead_of_switching() {
    let w = world_with(|f| set(f, "acme.json", "/continuity/non_portable", json!("pin")));
    let mut state = long_session(3);
    state.messages.insert(
        2,
        Message::assistant("gAAAAB...").non_portable("vendor-a", "encrypted_reasoning"),
    );
    w.fail(&["frontier-a-eu", "frontier-a-us"]);
    let r = block_on(
        w.engine.call(
            Call::new("acme", "summarization", json!({}))
                .session("s-pin")
                .agent_state(state.clone()),
        ),
    );
    let CallResult::Suspended { reason, .. } = &r else {
        panic!("expected a suspension, got {r:?}")
    };
    assert!(
        reason.contains("non-portable `encrypted_reasoning` item of provider `vendor-a`"),
        "{reason}"
    );
    assert!(w.seen_at("frontier-b-eu").is_empty() && w.seen_at("mid-eu").is_empty());
    let cp = block_on(w.store.load(&SessionId::new("s-pin")))
        .unwrap()
        .unwrap();
    assert!(cp.is_suspended());
    assert_eq!(cp.agent_state().unwrap(), Some(state));
    assert!(
        w.events()
            .iter()
            .any(|e| matches!(e, AuditEventKind::Suspension { .. }))
    );
}

#[test]
fn a_non_portable_item_with_policy_strip_is_removed_from_what_the_other_provider_gets() {
    let w = world_with(|_| {});
    let mut state = long_session(3);
    state.messages.insert(
        2,
        Message::assistant("gAAAAB...").non_portable("vendor-a", "encrypted_reasoning"),
    );
    w.fail(&["frontier-a-eu", "frontier-a-us"]);
    let r = block_on(
        w.engine.call(
            Call::new("acme", "summarization", json!({}))
                .session("s-strip")
                .agent_state(state.clone()),
        ),
    );
    assert_eq!(
        r.completed().unwrap().served_by.endpoint.as_str(),
        "frontier-b-eu"
    );
    let sent = w.seen_at("frontier-b-eu")[0].context.clone().unwrap();
    assert_eq!(sent.messages.len(), state.messages.len() - 1);
    assert!(sent.non_portable_providers().is_empty());
    assert!(w.events().iter().any(|e| matches!(
        e,
        AuditEventKind::ContextTransform {
            strategy: Some(ContextStrategy::Strip),
            messages_dropped: 1,
            ..
        }
    )));
    // The provider that understands it still gets it.
    let at_a = w.seen_at("frontier-a-eu");
    assert_eq!(
        at_a[0].context.as_ref().unwrap().messages.len(),
        state.messages.len()
    );
}

#[test]
fn a_context_that_cannot_fit_is_never_sent_and_the_call_ends_as_the_policy_says() {
    // The goal alone is larger than the 32K tier's budget.
    let mut state = long_session(2);
    state.goal = "g".repeat(4 * 30_000);
    let w = world_with(|_| {});
    w.fail(&PRIMARY_AND_STANDBY);
    let r = block_on(
        w.engine.call(
            Call::new("acme", "summarization", json!({}))
                .session("s-big")
                .agent_state(state.clone()),
        ),
    );
    let CallResult::Rejected(rej) = &r else {
        panic!("{r:?}")
    };
    assert_eq!(rej.kind, RejectKind::Context);
    assert!(
        rej.message.contains("cannot be fitted to mid-eu"),
        "{}",
        rej.message
    );
    assert!(
        w.seen_at("mid-eu").is_empty(),
        "nothing was sent to the small endpoint"
    );

    // With `on_unfittable: suspend`, the session is suspended instead.
    let w = world_with(|f| {
        set(
            f,
            "acme.json",
            "/continuity/on_unfittable",
            json!("suspend"),
        )
    });
    w.fail(&PRIMARY_AND_STANDBY);
    let r = block_on(
        w.engine.call(
            Call::new("acme", "summarization", json!({}))
                .session("s-big")
                .agent_state(state),
        ),
    );
    assert!(matches!(r, CallResult::Suspended { .. }), "{r:?}");
    assert!(w.seen_at("mid-eu").is_empty());

    // A call without an agent state that does not fit is not sent either.
    let w = world_with(|_| {});
    w.fail(&PRIMARY_AND_STANDBY);
    let r = block_on(
        w.engine.call(
            Call::new("acme", "summarization", json!({})).requirements(Requirements {
                input_tokens: 150_000,
                ..Requirements::default()
            }),
        ),
    );
    let CallResult::Rejected(rej) = &r else {
        panic!("{r:?}")
    };
    assert_eq!(rej.kind, RejectKind::Context);
    assert!(w.seen_at("mid-eu").is_empty());

    // Without `fit_to_smaller_window`, a state that does not fit is not fitted, nor sent.
    let w = world_with(|f| {
        set(
            f,
            "platform.json",
            "/continuity/fit_to_smaller_window",
            json!(false),
        )
    });
    w.fail(&PRIMARY_AND_STANDBY);
    let r = block_on(
        w.engine.call(
            Call::new("acme", "summarization", json!({}))
                .session("s-nofit")
                .agent_state(long_session(300))
                .requirements(Requirements {
                    output_tokens: 0,
                    ..Requirements::default()
                }),
        ),
    );
    assert!(!matches!(r, CallResult::Completed(_)), "{r:?}");
    assert!(w.seen_at("mid-eu").is_empty());
}

#[test]
fn a_session_using_tools_never_moves_to_an_endpoint_without_tool_calling() {
    let edit = |f: &mut Vec<(String, Value)>| {
        set(
            f,
            "catalog.json",
            "/endpoints/3/capabilities/tools",
            json!(false),
        );
    };
    let mut state = long_session(2);
    state.tools.push(ToolSpec {
        name: "fetch_invoice".into(),
        description: "fetch one invoice".into(),
        parameters: json!({"type": "object"}),
    });
    let w = world_with(edit);
    w.fail(&PRIMARY_AND_STANDBY);
    let r = block_on(
        w.engine.call(
            Call::new("acme", "summarization", json!({}))
                .session("s-tools")
                .agent_state(state),
        ),
    );
    assert!(!matches!(r, CallResult::Completed(_)), "{r:?}");
    assert!(
        w.seen_at("mid-eu").is_empty(),
        "the tool-less endpoint was treated as incapable"
    );

    // The same session without tools moves there.
    let mut plain = AgentState::new("g");
    plain.messages.push(Message::user("hi"));
    let w = world_with(edit);
    w.fail(&PRIMARY_AND_STANDBY);
    let r = block_on(
        w.engine.call(
            Call::new("acme", "summarization", json!({}))
                .session("s-plain")
                .agent_state(plain),
        ),
    );
    assert_eq!(r.completed().unwrap().served_by.endpoint.as_str(), "mid-eu");
}

#[test]
fn the_policy_cadence_checkpoints_every_n_steps() {
    let w = world_with(|f| {
        set(
            f,
            "acme.json",
            "/continuity/checkpoint/every_steps",
            json!(2),
        )
    });
    let sid = SessionId::new("s-cadence");
    let mut state = AgentState::new("g");
    state.messages.push(Message::user("step one"));
    let call = |s: &AgentState| {
        block_on(
            w.engine.call(
                Call::new("acme", "summarization", json!({}))
                    .session("s-cadence")
                    .agent_state(s.clone()),
            ),
        )
    };
    assert!(call(&state).completed().is_some());
    assert!(
        block_on(w.store.load(&sid)).unwrap().is_none(),
        "no tier change, step 1: none yet"
    );
    state.messages.push(Message::user("step two"));
    assert!(call(&state).completed().is_some());
    let cp = block_on(w.store.load(&sid))
        .unwrap()
        .expect("checkpointed at step 2");
    assert_eq!(cp.agent_state().unwrap(), Some(state.clone()));
    assert_eq!(cp.tier.index, 0);
    state.messages.push(Message::user("step three"));
    call(&state);
    assert_eq!(
        block_on(w.store.load(&sid)).unwrap().unwrap().version,
        cp.version
    );
    state.messages.push(Message::user("step four"));
    call(&state);
    assert_eq!(
        block_on(w.store.load(&sid)).unwrap().unwrap().version,
        cp.version + 1
    );
}

fn step_state(i: usize) -> AgentState {
    let mut s = AgentState::new("Reconcile the March invoices");
    s.current_step = Some(Step {
        id: format!("step-{i}"),
        description: format!("reconcile supplier {i}"),
    });
    s.messages
        .push(Message::user(format!("Reconcile supplier {i}.")));
    s
}

#[test]
fn three_steps_served_on_tier_2_during_an_outage_are_rerun_on_tier_0_after_recovery_with_diffs() {
    let w = world_with(|f| set(f, "acme.json", "/recovery/replay", json!("rerun")));
    let sid = SessionId::new("s-replay");
    w.fail(&PRIMARY_AND_STANDBY);
    for i in 1..=3 {
        let r = block_on(
            w.engine.call(
                Call::new("acme", "summarization", json!({"step": i}))
                    .session("s-replay")
                    .agent_state(step_state(i)),
            ),
        );
        let c = r.completed().unwrap_or_else(|| panic!("{r:?}"));
        assert_eq!((c.served_by.tier, c.degraded), (2, true));
        assert!(c.flags.needs_review);
        w.clock.advance(Duration::from_secs(10));
    }
    let recorded = w.engine.degraded_steps(&sid);
    assert_eq!(
        recorded.iter().map(|s| s.step.as_str()).collect::<Vec<_>>(),
        ["step-1", "step-2", "step-3"]
    );
    assert!(recorded.iter().all(|s| s.provenance.degraded
        && s.provenance.tier.index == 2
        && s.provenance.model == "llama-70b"
        && s.original_tier == 0));

    // While the primary is still down, no step is replaced: each stays recorded (pending when
    // the router already avoids the primary, failed when it still tried it).
    let early = block_on(w.engine.replay_degraded(&sid)).unwrap();
    assert!(
        early.steps.iter().all(|s| matches!(
            s.outcome,
            ReplayOutcomeKind::Pending { .. } | ReplayOutcomeKind::Failed { .. }
        ) && s.diff.is_none()),
        "{early:?}"
    );
    assert_eq!(w.engine.degraded_steps(&sid).len(), 3);

    // Recovery: the providers answer again, probes close the breakers.
    w.clock.advance(Duration::from_secs(600));
    w.heal_all();
    for endpoint in w.engine.probes_due() {
        while let Ok(Some(OutcomeClass::Ok)) =
            block_on(w.engine.probe(&endpoint, json!({"ping": 1})))
        {}
    }
    w.clock.advance(Duration::from_secs(240));

    let before = w.audit.len();
    let seen_before = w.script.seen.lock().len();
    let report = block_on(w.engine.replay_degraded(&sid)).unwrap();
    assert_eq!(report.steps.len(), 3);
    for (i, s) in report.steps.iter().enumerate() {
        assert_eq!(s.outcome, ReplayOutcomeKind::Differs, "{s:?}");
        assert_eq!(s.rerun_on.as_ref().unwrap().index, 0);
        let step = format!("step-{}", i + 1);
        assert_eq!(
            s.degraded_output.as_deref(),
            Some(format!("answer for {step}\nwritten by mid-eu\nend").as_str())
        );
        assert!(
            s.original_output
                .as_deref()
                .unwrap()
                .contains("written by frontier-a-")
        );
        assert!(s.original.is_some());
        let diff = s.diff.as_deref().unwrap();
        assert!(
            diff.contains("-written by mid-eu") && diff.contains("+written by frontier-a-"),
            "{diff}"
        );
        assert!(
            diff.contains(" answer for step"),
            "unchanged lines are context: {diff}"
        );
    }
    // Each result and its diff's digest are audited.
    let records = w.audit.records();
    let replays: Vec<_> = records[before..]
        .iter()
        .filter_map(|r| match &r.event.kind {
            AuditEventKind::ReplayResult {
                step,
                original,
                outcome,
                diff,
            } => Some((
                step.clone(),
                original.index,
                *outcome,
                diff.clone(),
                r.event.session.clone(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(replays.len(), 3);
    for (i, (step, tier, outcome, diff, session)) in replays.iter().enumerate() {
        assert_eq!(step, &format!("step-{}", i + 1));
        assert_eq!((*tier, *outcome), (0, ReplayOutcome::Differs));
        let text = report.steps[i].diff.as_deref().unwrap();
        assert_eq!(
            diff.as_ref(),
            Some(&ContentDigest::of_bytes(text.as_bytes()))
        );
        assert_eq!(session.as_ref(), Some(&sid));
    }
    assert_eq!(
        report
            .steps
            .iter()
            .map(|s| s.audit)
            .collect::<Vec<_>>()
            .len(),
        3
    );
    assert!(
        w.engine.degraded_steps(&sid).is_empty(),
        "re-run steps leave the record"
    );
    let replayed: Vec<Seen> = w
        .script
        .seen
        .lock()
        .iter()
        .skip(seen_before)
        .filter(|s| s.purpose == Purpose::Replay)
        .cloned()
        .collect();
    assert_eq!(replayed.len(), 3);
    assert!(
        replayed
            .iter()
            .all(|s| s.endpoint.starts_with("frontier-a-"))
    );
}

#[test]
fn with_the_flag_rule_degraded_steps_stay_flagged_until_reviewed() {
    let w = world_with(|f| set(f, "acme.json", "/recovery/replay", json!("flag")));
    let sid = SessionId::new("s-flag");
    w.fail(&PRIMARY_AND_STANDBY);
    block_on(
        w.engine.call(
            Call::new("acme", "summarization", json!({}))
                .session("s-flag")
                .agent_state(step_state(1)),
        ),
    );
    w.heal_all();
    let report = block_on(w.engine.replay_degraded(&sid)).unwrap();
    assert_eq!(report.steps.len(), 1);
    assert_eq!(report.steps[0].outcome, ReplayOutcomeKind::Flagged);
    assert!(
        report.steps[0]
            .degraded_output
            .as_deref()
            .unwrap()
            .contains("mid-eu")
    );
    assert!(
        w.script
            .seen
            .lock()
            .iter()
            .all(|s| s.purpose != Purpose::Replay)
    );
    assert_eq!(w.engine.degraded_steps(&sid).len(), 1, "still flagged");
    let before = w.audit.records().len();
    assert!(
        block_on(
            w.engine
                .review_step(&sid, "step-1", "role:clinical-reviewer")
        )
        .unwrap()
    );
    assert!(w.engine.degraded_steps(&sid).is_empty());
    // The review is audited: who cleared which step, served where.
    let records = w.audit.records();
    assert_eq!(records.len(), before + 1);
    match &records[before].event.kind {
        AuditEventKind::StepReviewed {
            step,
            served_by,
            reviewer,
        } => {
            assert_eq!(step, "step-1");
            assert_eq!(reviewer, "role:clinical-reviewer");
            assert!(served_by.index > 0, "{served_by:?}");
        }
        other => panic!("expected step_reviewed, got {other:?}"),
    }
    assert_eq!(records[before].event.session.as_ref(), Some(&sid));
    // A second review finds nothing and writes nothing.
    assert!(
        !block_on(
            w.engine
                .review_step(&sid, "step-1", "role:clinical-reviewer")
        )
        .unwrap()
    );
    assert_eq!(w.audit.records().len(), before + 1);
    assert!(block_on(w.engine.replay_degraded(&SessionId::new("unknown"))).is_err());
}

#[test]
fn the_degraded_step_record_is_bounded_and_counts_what_it_did_not_keep() {
    let w = world_limited(
        |f| set(f, "acme.json", "/recovery/replay", json!("flag")),
        2,
    );
    w.fail(&PRIMARY_AND_STANDBY);
    for s in ["b-1", "b-2", "b-3"] {
        let r = block_on(
            w.engine.call(
                Call::new("acme", "summarization", json!({}))
                    .session(s)
                    .agent_state(step_state(1)),
            ),
        );
        // Every degraded call is still flagged to the caller, kept or not.
        assert!(matches!(r, CallResult::Completed(ref c) if c.degraded));
    }
    let kept = |s: &str| w.engine.degraded_steps(&SessionId::new(s)).len();
    assert_eq!((kept("b-1"), kept("b-2"), kept("b-3")), (1, 1, 0));
    assert_eq!(w.engine.degraded_steps_not_kept(), 1);
    // A review frees a place: the next degraded step is kept again.
    assert!(
        block_on(
            w.engine
                .review_step(&SessionId::new("b-1"), "step-1", "role:reviewer")
        )
        .unwrap()
    );
    block_on(
        w.engine.call(
            Call::new("acme", "summarization", json!({}))
                .session("b-4")
                .agent_state(step_state(1)),
        ),
    );
    assert_eq!(kept("b-4"), 1);
    assert_eq!(w.engine.degraded_steps_not_kept(), 1);
}
