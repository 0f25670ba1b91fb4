//! Where the engine's ids come from: by default resume tokens are unguessable and differ from
//! engine to engine; with `SeededIds` two identical runs give the same tokens and byte-identical
//! audit logs, and the tokens still resume their sessions.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use downshift::audit::MemoryAuditSink;
use downshift::checkpoint::ResumeToken;
use downshift::engine::{
    Call, CallResult, Engine, IdSource, ModelClient, ModelError, ModelRequest, ModelResponse,
    SeededIds, TokenUsage,
};
use downshift::policy::PolicySet;
use downshift::{ManualClock, OutcomeClass, SessionId, Timestamp};
use futures::executor::block_on;
use parking_lot::Mutex;
use serde_json::{Value, json};

#[derive(Default)]
struct Script {
    failing: Mutex<HashSet<String>>,
}

struct Scripted(Arc<Script>);

#[async_trait]
impl ModelClient for Scripted {
    async fn call(&self, req: ModelRequest<Value>) -> Result<ModelResponse<Value>, ModelError> {
        if self.0.failing.lock().contains(req.endpoint.as_str()) {
            return Err(ModelError::of(OutcomeClass::Overloaded, "scripted 529"));
        }
        Ok(ModelResponse::new(json!({}), TokenUsage::default()))
    }
}

struct Run {
    tokens: Vec<ResumeToken>,
    audit: Vec<String>,
    engine: Engine,
    script: Arc<Script>,
}

/// Suspends three hospital sessions (every permitted EU endpoint fails) on a fresh engine.
fn suspend_three(ids: Option<Arc<dyn IdSource>>) -> Run {
    let script = Arc::new(Script::default());
    let audit = Arc::new(MemoryAuditSink::new());
    let mut b = Engine::builder(
        PolicySet::load(&["examples/policies"]).unwrap(),
        Arc::new(Scripted(Arc::clone(&script))),
    )
    .clock(Arc::new(ManualClock::new(Timestamp::from_millis(
        1_795_000_000_000,
    ))))
    .audit(audit.clone());
    if let Some(ids) = ids {
        b = b.ids(ids);
    }
    let engine: Engine = b.build().unwrap();
    for id in ["frontier-vendor-eu", "frontier-cloud-eu"] {
        script.failing.lock().insert(id.into());
    }
    let mut tokens = Vec::new();
    for s in ["s1", "s2", "s3"] {
        let call = Call::new("hospital-network", "clinical_summarization", json!({}))
            .session(s)
            .state(json!({"note": s}));
        match block_on(engine.call(call)) {
            CallResult::Suspended { resume_token, .. } => tokens.push(resume_token),
            other => panic!("{other:?}"),
        }
    }
    let audit = audit
        .records()
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    Run {
        tokens,
        audit,
        engine,
        script,
    }
}

#[test]
fn seeded_ids_give_the_same_tokens_and_a_byte_identical_audit_log_on_every_run() {
    let a = suspend_three(Some(Arc::new(SeededIds::new(11))));
    let b = suspend_three(Some(Arc::new(SeededIds::new(11))));
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.audit, b.audit);
    assert!(!a.audit.is_empty());
    // Unique per session.
    let distinct: HashSet<_> = a.tokens.iter().collect();
    assert_eq!(distinct.len(), 3);
    // Same format as the default tokens.
    assert!(a.tokens.iter().all(|t| t.as_str().starts_with("rt_")));
    // Another seed, other tokens.
    let c = suspend_three(Some(Arc::new(SeededIds::new(12))));
    assert_ne!(a.tokens, c.tokens);
}

#[test]
fn default_ids_are_unguessable_and_differ_from_engine_to_engine() {
    let a = suspend_three(None);
    let b = suspend_three(None);
    for (x, y) in a.tokens.iter().zip(&b.tokens) {
        assert_ne!(x, y);
        assert_eq!(x.as_str().len(), y.as_str().len());
    }
    assert_ne!(a.audit, b.audit, "checkpoint digests cover the tokens");
}

#[test]
fn a_seeded_token_resumes_its_session_and_no_other() {
    let r = suspend_three(Some(Arc::new(SeededIds::new(3))));
    r.script.failing.lock().clear();
    let s1 = SessionId::new("s1");
    let s2 = SessionId::new("s2");
    assert!(block_on(r.engine.resume(&s2, &r.tokens[0])).is_err());
    block_on(r.engine.resume(&s1, &r.tokens[0])).unwrap();
}
