//! A session's cost guardrail through the engine: the budget is checked and charged through
//! the handle the engine keeps per session, per session — one session over its budget moves
//! down, another of the same tenant does not.

use std::sync::Arc;

use async_trait::async_trait;
use downshift::engine::{
    Call, CallResult, Engine, ModelClient, ModelError, ModelRequest, ModelResponse, TokenUsage,
};
use downshift::policy::PolicySet;
use downshift::{ManualClock, Timestamp};
use futures::executor::block_on;

/// Every answer reports 100,000 input and 20,000 output tokens: $0.60 on the primary
/// ($3 and $15 per million).
struct Priced;

#[async_trait]
impl ModelClient<(), ()> for Priced {
    async fn call(&self, _req: ModelRequest<()>) -> Result<ModelResponse<()>, ModelError> {
        Ok(ModelResponse::new(
            (),
            TokenUsage {
                input_tokens: 100_000,
                output_tokens: 20_000,
            },
        ))
    }
}

fn tier(r: &CallResult<()>) -> String {
    match r {
        CallResult::Completed(c) => c.served_by.tier_name.to_string(),
        other => panic!("expected a served call, got {}", other.outcome()),
    }
}

#[test]
fn a_session_over_its_budget_moves_down_and_another_session_does_not() {
    let set = PolicySet::load(&["examples/policies"]).unwrap();
    let clock = ManualClock::new(Timestamp::from_millis(1_795_000_000_000));
    let engine: Engine<(), ()> = Engine::builder(set, Arc::new(Priced))
        .clock(Arc::new(clock))
        .build()
        .unwrap();
    let call = |s: &str| {
        block_on(engine.call(Call::new("marketing-agency", "copywriting", ()).session(s)))
    };
    // The marketing agency's session budget is $3: five primary calls spend it.
    for i in 0..5 {
        assert_eq!(tier(&call("spender")), "primary", "call {i}");
    }
    // Over budget: the policy moves the session to `mid` (or lower), flagged degraded.
    let r = call("spender");
    assert_ne!(tier(&r), "primary");
    assert!(matches!(r, CallResult::Completed(ref c) if c.degraded));
    // Another session of the same tenant has its own budget.
    assert_eq!(tier(&call("fresh")), "primary");
}
