//! Sessionless traffic audits transitions only; checkpoint conflicts are reconciled; suspensions
//! end after the policy's `max_duration`; timed-out attempts say what they tried.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use downshift::audit::{AuditEventKind, MemoryAuditSink, verify};
use downshift::engine::{
    Call, CallResult, Engine, ModelClient, ModelError, ModelRequest, ModelResponse, TokenUsage,
};
use downshift::policy::PolicySet;
use downshift::{ManualClock, OutcomeClass, Timestamp};
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

struct World {
    engine: Engine,
    script: Arc<Script>,
    clock: ManualClock,
    audit: Arc<MemoryAuditSink>,
}

fn world() -> World {
    let script = Arc::new(Script::default());
    let clock = ManualClock::new(Timestamp::from_millis(1_795_000_000_000));
    let audit = Arc::new(MemoryAuditSink::new());
    let engine = Engine::builder(
        PolicySet::load(&["examples/policies"]).unwrap(),
        Arc::new(Scripted(Arc::clone(&script))),
    )
    .clock(Arc::new(clock.clone()))
    .audit(audit.clone())
    .build()
    .unwrap();
    World {
        engine,
        script,
        clock,
        audit,
    }
}

fn kinds(audit: &MemoryAuditSink) -> Vec<&'static str> {
    audit
        .records()
        .iter()
        .map(|r| r.event.kind.name())
        .collect()
}

#[test]
fn sessionless_calls_audit_the_transition_not_every_degraded_call() {
    let w = world();
    w.script.failing.lock().insert("frontier-vendor-eu".into());
    w.script.failing.lock().insert("frontier-vendor-us".into());
    let gateway = || Call::new("marketing-agency", "copywriting", json!({}));
    let mut cited = Vec::new();
    for _ in 0..10 {
        match block_on(w.engine.call(gateway())) {
            CallResult::Completed(c) => {
                assert!(c.degraded);
                assert_eq!(c.served_by.tier, 2);
                cited.push(c.audit.clone());
            }
            other => panic!("{other:?}"),
        }
    }
    // One transition, one record; every degraded call cites it.
    assert_eq!(kinds(&w.audit), ["tier_change"]);
    assert!(cited.iter().all(|a| a == &vec![0]), "{cited:?}");
    // Another task of the same tenant is its own (tenant, task): its move is recorded too.
    let _ = block_on(
        w.engine
            .call(Call::new("marketing-agency", "research", json!({}))),
    );
    assert_eq!(kinds(&w.audit), ["tier_change", "tier_change"]);
    // The provider returns: the move back up is one promotion record, then nothing more.
    w.script.failing.lock().clear();
    w.clock.advance(Duration::from_secs(3600));
    let mut back = 0;
    for _ in 0..5 {
        if let CallResult::Completed(c) = block_on(w.engine.call(gateway())) {
            if c.served_by.tier == 0 {
                back += 1;
                assert_eq!(c.audit, vec![2], "cites the promotion");
            }
        }
    }
    assert!(back > 0, "served by the primary again");
    assert_eq!(kinds(&w.audit), ["tier_change", "tier_change", "promotion"]);
    verify(&w.audit.records()).unwrap();
    // The records name the move: from tier 0 to tier 2, then from 2 back to 0.
    let records = w.audit.records();
    match (&records[0].event.kind, &records[2].event.kind) {
        (
            AuditEventKind::TierChange { from, to },
            AuditEventKind::Promotion { from: f2, to: t2 },
        ) => {
            assert_eq!((from.index, to.index), (0, 2));
            assert_eq!((f2.index, t2.index), (2, 0));
        }
        other => panic!("{other:?}"),
    }
}
