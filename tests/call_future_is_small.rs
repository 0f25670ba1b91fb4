//! The future `Engine::call` returns stays small: a caller's executor moves it (into a task, a
//! `select!`, a `block_on`), and every move copies it. The per-mode call loop lives on the heap.

use std::sync::Arc;

use async_trait::async_trait;
use downshift::engine::{
    Call, Engine, ModelClient, ModelError, ModelRequest, ModelResponse, TokenUsage,
};
use downshift::policy::PolicySet;

struct Noop;

#[async_trait]
impl ModelClient<(), ()> for Noop {
    async fn call(&self, _req: ModelRequest<()>) -> Result<ModelResponse<()>, ModelError> {
        Ok(ModelResponse::new((), TokenUsage::default()))
    }
}

#[test]
fn the_call_future_is_small() {
    let set = PolicySet::load(&["examples/policies"]).unwrap();
    let engine: Engine<(), ()> = Engine::builder(set, Arc::new(Noop)).build().unwrap();
    let fut = engine.call(Call::new("hospital-network", "summarization", ()));
    let size = std::mem::size_of_val(&fut);
    eprintln!("Engine::call future: {size} bytes");
    // 6.5 KB when the call loop was inline; about 1 KB with it boxed.
    assert!(size <= 1536, "the call future is {size} bytes");
}
