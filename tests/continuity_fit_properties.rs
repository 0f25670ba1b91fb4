//! Fitting an agent state to a smaller window (proptest over arbitrary conversations and
//! windows), and the agent state's round trip through both checkpoint stores.

use std::collections::HashSet;

use downshift::catalog::Capabilities;
use downshift::checkpoint::{
    AgentState, Checkpoint, CheckpointStore, FileCheckpointStore, FitPolicy, Fitted,
    HeuristicCounter, MemoryCheckpointStore, Message, Role, Step, TierAt, TokenCounter, ToolCall,
    estimate, fit,
};
use downshift::{CheckpointError, ContentDigest, SessionId, TenantId, Timestamp};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Item {
    User(usize),
    Assistant(usize),
    System(usize),
    /// An assistant turn making `n` tool calls, each answered by a result of the given size.
    Tools(Vec<usize>),
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        4 => (0usize..3000).prop_map(Item::User),
        4 => (0usize..3000).prop_map(Item::Assistant),
        1 => (0usize..500).prop_map(Item::System),
        3 => prop::collection::vec(0usize..6000, 1..4).prop_map(Item::Tools),
    ]
}

fn build(goal: usize, items: &[Item]) -> AgentState {
    let mut s = AgentState::new(format!("goal {}", "g".repeat(goal)));
    s.current_step = Some(Step {
        id: "step-now".into(),
        description: "the current step".into(),
    });
    let mut call = 0;
    for (i, it) in items.iter().enumerate() {
        match it {
            Item::User(n) => s
                .messages
                .push(Message::user("u".repeat(*n)).with_id(format!("m{i}"))),
            Item::Assistant(n) => s
                .messages
                .push(Message::assistant("a".repeat(*n)).with_id(format!("m{i}"))),
            Item::System(n) => s
                .messages
                .push(Message::system("s".repeat(*n)).with_id(format!("m{i}"))),
            Item::Tools(sizes) => {
                let ids: Vec<String> = sizes
                    .iter()
                    .map(|_| {
                        call += 1;
                        format!("call-{call}")
                    })
                    .collect();
                s.messages.push(
                    Message::tool_calls(
                        ids.iter()
                            .map(|id| ToolCall {
                                id: id.clone(),
                                name: "lookup".into(),
                                arguments: serde_json::json!({"k": id}),
                            })
                            .collect(),
                    )
                    .with_id(format!("m{i}")),
                );
                for (id, n) in ids.iter().zip(sizes) {
                    s.messages.push(
                        Message::tool_result(id.clone(), "r".repeat(*n))
                            .with_id(format!("m{i}-{id}")),
                    );
                }
            }
        }
    }
    s
}

fn caps(window: u32, max_out: u32) -> Capabilities {
    Capabilities {
        context_window: window,
        max_output_tokens: max_out,
        tools: true,
        parallel_tool_calls: true,
        vision: false,
        json_mode: false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn fitting_always_fits_keeps_what_it_must_and_reports_exactly_what_it_dropped(
        goal in 0usize..2000,
        items in prop::collection::vec(item(), 0..40),
        window in 0u32..40_000,
        max_out in 0u32..8000,
        reserve in 0u32..8000,
        summarize_at in 0.05f64..=1.0,
        annotate in any::<bool>(),
    ) {
        let mut s = build(goal, &items);
        if annotate { s.annotate_tokens(&HeuristicCounter); }
        let c = caps(window, max_out);
        let policy = FitPolicy { reserve_output_tokens: reserve, summarize_at };
        let budget = u64::from(window.saturating_sub(reserve.min(max_out)));
        match fit(&s, &c, &HeuristicCounter, &policy) {
            Fitted::Fits(r) => {
                // It fits, and the figures are the estimate of what is returned.
                prop_assert_eq!(r.budget, budget);
                prop_assert!(r.tokens_after <= r.budget);
                prop_assert_eq!(r.tokens_after, estimate(&r.state, &HeuristicCounter));
                prop_assert_eq!(r.tokens_before, estimate(&s, &HeuristicCounter));
                // Goal, current step and every system message are kept, as is the newest message.
                prop_assert_eq!(&r.state.goal, &s.goal);
                prop_assert_eq!(&r.state.current_step, &s.current_step);
                let systems = |st: &AgentState| st.messages.iter().filter(|m| m.role == Role::System).cloned().collect::<Vec<_>>();
                prop_assert_eq!(systems(&r.state), systems(&s));
                prop_assert_eq!(r.state.messages.last(), s.messages.last());
                // Kept and dropped partition the original, each in order.
                let mut k = r.state.messages.iter().peekable();
                let mut d = r.dropped.messages.iter().peekable();
                for m in &s.messages {
                    if k.peek() == Some(&m) { k.next(); } else {
                        prop_assert_eq!(d.next(), Some(m));
                    }
                }
                prop_assert!(k.next().is_none() && d.next().is_none());
                prop_assert_eq!(r.dropped.count as usize, r.dropped.messages.len());
                let dropped_tokens: u64 = r.dropped.messages.iter().map(|m| u64::from(HeuristicCounter.count_message(m))).sum();
                prop_assert_eq!(r.dropped.tokens, dropped_tokens);
                prop_assert_eq!(r.tokens_before - r.tokens_after, r.dropped.tokens);
                let digest = if r.dropped.messages.is_empty() { None } else { Some(ContentDigest::of_json(&r.dropped.messages).unwrap()) };
                prop_assert_eq!(&r.dropped.digest, &digest);
                prop_assert_eq!(r.summary_needed, r.dropped.count > 0);
                // A tool call is never separated from its results.
                let calls: HashSet<&str> = r.state.messages.iter().flat_map(|m| m.tool_calls.iter().map(|c| c.id.as_str())).collect();
                let results: HashSet<&str> = r.state.messages.iter().filter_map(|m| m.tool_call_id.as_deref()).collect();
                prop_assert_eq!(calls, results);
            }
            Fitted::DoesNotFit { needed, budget: b, .. } => {
                prop_assert_eq!(b, budget);
                prop_assert!(needed > b);
                // It was right: goal, steps, system messages and the newest unit alone exceed it.
                prop_assert!(estimate(&s, &HeuristicCounter) > b);
            }
        }
    }
}

#[test]
fn a_state_within_the_window_is_returned_unchanged() {
    let s = build(10, &[Item::User(100), Item::Tools(vec![50, 60])]);
    let Fitted::Fits(r) = fit(
        &s,
        &caps(200_000, 8000),
        &HeuristicCounter,
        &FitPolicy::default(),
    ) else {
        panic!()
    };
    assert_eq!(r.state, s);
    assert!(!r.summary_needed);
}

async fn round_trip(store: &dyn CheckpointStore) {
    let mut state = build(
        20,
        &[
            Item::System(50),
            Item::User(100),
            Item::Tools(vec![30]),
            Item::Assistant(40),
        ],
    );
    state
        .messages
        .push(Message::assistant("opaque").non_portable("anthropic", "encrypted_reasoning"));
    state
        .extensions
        .insert("crm".into(), serde_json::json!({"ticket": 42}));
    state.annotate_tokens(&HeuristicCounter);
    let sid = SessionId::new("s-state");
    let cp = Checkpoint::new(
        TenantId::new("acme"),
        sid.clone(),
        Timestamp::from_millis(5),
        TierAt::new(0, "primary"),
        ContentDigest::of_bytes(b"p"),
        state.to_json().unwrap(),
    );
    store.save(cp, None).await.unwrap();
    let back = store.load(&sid).await.unwrap().unwrap();
    assert_eq!(back.agent_state().unwrap(), Some(state.clone()));

    // A state from a newer release is refused with a clear error, not misread.
    let mut future = state.to_json().unwrap();
    future["schema_version"] = serde_json::json!(99);
    let cp = Checkpoint::new(
        TenantId::new("acme"),
        sid.clone(),
        Timestamp::from_millis(6),
        TierAt::new(0, "primary"),
        ContentDigest::of_bytes(b"p"),
        future,
    );
    store.save(cp, Some(back.version)).await.unwrap();
    let err = store
        .load(&sid)
        .await
        .unwrap()
        .unwrap()
        .agent_state()
        .unwrap_err();
    assert!(
        matches!(
            err,
            CheckpointError::UnsupportedStateVersion { found: 99, .. }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade downshift"));
}

#[tokio::test]
async fn agent_state_round_trips_through_the_memory_store() {
    round_trip(&MemoryCheckpointStore::new()).await;
}

#[tokio::test]
async fn agent_state_round_trips_through_the_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileCheckpointStore::open(dir.path()).unwrap();
    round_trip(&store).await;
}
