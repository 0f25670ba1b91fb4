//! The article's 2 a.m. event end to end through the engine, with scripted provider clients.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use downshift::audit::{AuditEventKind, MemoryAuditSink, verify};
use downshift::checkpoint::MemoryCheckpointStore;
use downshift::engine::{
    Call, CallResult, Engine, ModelClient, ModelError, ModelRequest, ModelResponse, Notice,
    Notifier, RejectKind, TokenUsage,
};
use downshift::policy::PolicySet;
use downshift::{CheckpointStore, ManualClock, OutcomeClass, SessionId, Timestamp};
use futures::executor::block_on;
use parking_lot::Mutex;
use serde_json::{Value, json};

/// Endpoints listed here fail with the class; the rest answer.
#[derive(Default)]
struct Script {
    failing: Mutex<HashMap<String, (OutcomeClass, Option<Duration>)>>,
    calls: Mutex<Vec<String>>,
}

impl Script {
    fn fail(&self, id: &str, class: OutcomeClass, retry_after: Option<Duration>) {
        self.failing
            .lock()
            .insert(id.to_string(), (class, retry_after));
    }
    fn heal(&self, id: &str) {
        self.failing.lock().remove(id);
    }
}

struct Scripted(Arc<Script>);

#[async_trait]
impl ModelClient for Scripted {
    async fn call(&self, req: ModelRequest<Value>) -> Result<ModelResponse<Value>, ModelError> {
        self.0.calls.lock().push(req.endpoint.to_string());
        if let Some((class, ra)) = self.0.failing.lock().get(req.endpoint.as_str()).copied() {
            let mut e = ModelError::of(class, format!("scripted {class}"));
            e.classification.retry_after = ra;
            return Err(e);
        }
        Ok(ModelResponse::new(
            json!({"text": "ok", "by": req.endpoint.as_str()}),
            TokenUsage {
                input_tokens: 1000,
                output_tokens: 200,
            },
        ))
    }
}

#[derive(Default)]
struct Inbox(Mutex<Vec<Notice>>);

struct InboxRef(Arc<Inbox>);

#[async_trait]
impl Notifier for InboxRef {
    async fn notify(&self, notice: Notice) {
        self.0.0.lock().push(notice);
    }
}

struct World {
    engine: Engine,
    script: Arc<Script>,
    clock: ManualClock,
    audit: Arc<MemoryAuditSink>,
    store: Arc<MemoryCheckpointStore>,
    inbox: Arc<Inbox>,
}

fn world() -> World {
    let set = PolicySet::load(&["examples/policies"]).unwrap();
    let script = Arc::new(Script::default());
    let clock = ManualClock::new(Timestamp::from_millis(1_795_000_000_000));
    let audit = Arc::new(MemoryAuditSink::new());
    let store = Arc::new(MemoryCheckpointStore::new());
    let inbox = Arc::new(Inbox::default());
    let engine = Engine::builder(set, Arc::new(Scripted(Arc::clone(&script))))
        .clock(Arc::new(clock.clone()))
        .audit(audit.clone())
        .checkpoints(store.clone())
        .notifier(Arc::new(InboxRef(Arc::clone(&inbox))))
        .build()
        .unwrap();
    World {
        engine,
        script,
        clock,
        audit,
        store,
        inbox,
    }
}

fn served(r: &CallResult<Value>) -> (u32, String, bool) {
    match r {
        CallResult::Completed(c) => (
            c.served_by.tier,
            c.served_by.endpoint.to_string(),
            c.degraded,
        ),
        other => panic!("expected a completed call, got {other:?}"),
    }
}

#[test]
fn the_2am_event_end_to_end() {
    let w = world();
    let e = &w.engine;
    // 02:00: the primary provider throttles everyone.
    for id in ["frontier-vendor-eu", "frontier-vendor-us"] {
        w.script
            .fail(id, OutcomeClass::RateLimited, Some(Duration::from_secs(30)));
    }

    // Marketing: silently to tier 2, flagged degraded.
    let r =
        block_on(e.call(Call::new("marketing-agency", "copywriting", json!({})).session("copy-1")));
    assert_eq!(served(&r), (2, "mid70b-selfhosted-eu".into(), true));
    let c = r.completed().unwrap();
    assert!(c.flags.degraded);
    assert_eq!(
        c.flags.needs_review,
        c.flags.replay != downshift::policy::Replay::None
    );
    assert_eq!(
        c.attempts, 3,
        "both primary endpoints throttle, then the fallback serves"
    );
    // The next call of the same session skips the blocked primary without trying it.
    let again =
        block_on(e.call(Call::new("marketing-agency", "copywriting", json!({})).session("copy-1")));
    assert_eq!(again.completed().unwrap().attempts, 1);
    assert!(
        c.headers()
            .contains(&("x-downshift-degraded", "true".to_string()))
    );

    // Hospital: tier 1, the same model at the second provider, user told in real time.
    let hospital = |state: Value| {
        Call::new("hospital-network", "clinical_summarization", json!({}))
            .session("ward-7")
            .state(state)
    };
    let r = block_on(e.call(hospital(json!({"goal": "discharge summary", "step": 1}))));
    assert_eq!(served(&r), (1, "frontier-cloud-eu".into(), true));
    assert!(
        w.inbox
            .0
            .lock()
            .iter()
            .any(|n| n.tenant.as_str() == "hospital-network")
    );

    // Fintech risk assessment: approval first; granted; then the switch is made.
    let fin = || Call::new("fintech", "risk_assessment", json!({})).session("risk-9");
    let ticket = match block_on(e.call(fin())) {
        CallResult::AwaitingApproval {
            ticket,
            proposed_tier,
            proposed_endpoint,
            ..
        } => {
            assert_eq!(
                (proposed_tier, proposed_endpoint.as_str()),
                (1, "frontier-cloud-us")
            );
            ticket
        }
        other => panic!("{other:?}"),
    };
    // Asking again while pending gives the same ticket, not a new request.
    assert!(
        matches!(block_on(e.call(fin())), CallResult::AwaitingApproval { ticket: t, .. } if t == ticket)
    );
    assert_eq!(block_on(e.pending_approvals()).unwrap().len(), 1);
    block_on(e.approve(ticket, "risk-officer-17")).unwrap();
    assert_eq!(
        served(&block_on(e.call(fin()))),
        (1, "frontier-cloud-us".into(), true)
    );

    // 02:07: the second provider fails too: the hospital suspends, its checkpoint durable first.
    w.clock.advance(Duration::from_secs(60));
    for id in ["frontier-cloud-eu", "frontier-cloud-us", "frontier-alt-us"] {
        w.script
            .fail(id, OutcomeClass::Overloaded, Some(Duration::from_secs(300)));
    }
    let token = match block_on(e.call(hospital(json!({"goal": "discharge summary", "step": 2})))) {
        CallResult::Suspended { resume_token, .. } => resume_token,
        other => panic!("{other:?}"),
    };
    let cp = block_on(w.store.load(&SessionId::new("ward-7")))
        .unwrap()
        .unwrap();
    assert!(cp.is_suspended());
    assert_eq!(cp.state["step"], 2);
    assert_eq!(cp.suspended.as_ref().unwrap().resume_token, token);
    // Calls of a suspended session stay suspended until resumed.
    assert!(matches!(
        block_on(e.call(hospital(json!({})))),
        CallResult::Suspended { .. }
    ));

    // Recovery: the primary is back.
    w.clock.advance(Duration::from_secs(600));
    for id in [
        "frontier-vendor-eu",
        "frontier-vendor-us",
        "frontier-cloud-eu",
        "frontier-cloud-us",
        "frontier-alt-us",
    ] {
        w.script.heal(id);
    }
    // Nothing is "back" on no news: the platform's synthetic probes must see it answer.
    assert!(block_on(e.ready_to_resume()).unwrap().is_empty());
    for endpoint in e.probes_due() {
        while let Ok(Some(OutcomeClass::Ok)) = block_on(e.probe(&endpoint, json!({"ping": 1}))) {}
    }
    // ...and it must stay healthy for the policy's `healthy_for` (3 minutes in the template).
    w.clock.advance(Duration::from_secs(4 * 60));
    let ready = block_on(e.ready_to_resume()).unwrap();
    assert!(
        ready.iter().any(|r| r.session.as_str() == "ward-7"),
        "{ready:?}"
    );
    let resumed = block_on(e.resume(&SessionId::new("ward-7"), &token)).unwrap();
    assert_eq!(resumed.state["step"], 2);
    // Exactly once.
    assert!(block_on(e.resume(&SessionId::new("ward-7"), &token)).is_err());
    let r = block_on(e.call(hospital(json!({"step": 3}))));
    assert_eq!(served(&r).0, 0, "resumed on the primary");

    // The audit log verifies and holds exactly the expected transitions, in order.
    let records = w.audit.records();
    verify(&records).unwrap();
    let kinds: Vec<(&str, Option<&str>)> = records
        .iter()
        .map(|r| {
            (
                r.event.kind.name(),
                r.event.tenant.as_ref().map(|t| t.as_str()),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("tier_change", Some("marketing-agency")),
            ("tier_change", Some("hospital-network")),
            ("approval_requested", Some("fintech")),
            ("approval_granted", Some("fintech")),
            ("tier_change", Some("fintech")),
            ("suspension", Some("hospital-network")),
            ("resume", Some("hospital-network")),
        ]
    );
    let suspension = &records[5];
    assert!(suspension.event.checkpoint.is_some());
    assert!(
        suspension.event.consent.is_some(),
        "the hospital's consent record is cited"
    );
    assert!(
        matches!(&records[0].event.kind, AuditEventKind::TierChange { from, to } if from.index == 0 && to.index == 2)
    );
}

#[test]
fn a_request_error_is_not_retried_anywhere() {
    let w = world();
    w.script.fail(
        "frontier-vendor-eu",
        OutcomeClass::ContextLengthExceeded,
        None,
    );
    match block_on(
        w.engine
            .call(Call::new("marketing-agency", "copywriting", json!({}))),
    ) {
        CallResult::Rejected(r) => assert_eq!(
            r.kind,
            RejectKind::Provider {
                class: OutcomeClass::ContextLengthExceeded
            }
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.script.calls.lock().len(), 1);
}

#[test]
fn with_every_provider_failing_upstream_attempts_stay_within_the_retry_budget() {
    let w = world();
    for ep in w.engine.policies().current().catalog().endpoints() {
        w.script
            .fail(ep.id.as_str(), OutcomeClass::ServerError, None);
    }
    let n = 400;
    for i in 0..n {
        let _ = block_on(w.engine.call(
            Call::new("marketing-agency", "copywriting", json!({})).session(format!("s{i}")),
        ));
    }
    let upstream = w.script.calls.lock().len();
    // First attempts plus at most 20% retries (and 10/s of reserve over the 10 s window).
    assert!(
        upstream <= n + n / 5 + 100,
        "{upstream} upstream attempts for {n} calls"
    );
    assert!(upstream > 0);
}
