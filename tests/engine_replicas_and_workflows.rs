//! Several replicas sharing state; workflows; deadlines; probes; many concurrent calls.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use downshift::audit::{MemoryAuditSink, verify};
use downshift::checkpoint::{CheckpointStore, MemoryCheckpointStore};
use downshift::engine::{
    Call, CallResult, Engine, MemoryApprovalStore, MemoryHealthExchange, MemoryRetryBudget,
    MemoryWorkflowStore, ModelClient, ModelError, ModelRequest, ModelResponse, RejectKind,
    RetryBudgetStore, Sleeper, TokenUsage,
};
use downshift::error::EngineError;
use downshift::policy::{PolicySet, RetryBudget};
use downshift::{Clock, ManualClock, OutcomeClass, SessionId, TenantId, Timestamp, WorkflowId};
use futures::executor::block_on;
use parking_lot::Mutex;
use serde_json::{Value, json};

#[derive(Default)]
struct Script {
    failing: Mutex<HashMap<String, OutcomeClass>>,
    calls: AtomicUsize,
    probes: AtomicUsize,
}

struct Scripted(Arc<Script>);

#[async_trait]
impl ModelClient for Scripted {
    async fn call(&self, req: ModelRequest<Value>) -> Result<ModelResponse<Value>, ModelError> {
        self.0.calls.fetch_add(1, Ordering::Relaxed);
        if req.probe {
            self.0.probes.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(class) = self.0.failing.lock().get(req.endpoint.as_str()).copied() {
            return Err(ModelError::of(class, "scripted"));
        }
        Ok(ModelResponse::new(
            json!({"ok": true}),
            TokenUsage {
                input_tokens: 100,
                output_tokens: 10,
            },
        ))
    }
}

const T0: u64 = 1_795_000_000_000;

struct Shared {
    store: Arc<MemoryCheckpointStore>,
    audit: Arc<MemoryAuditSink>,
    approvals: Arc<MemoryApprovalStore>,
    exchange: Arc<MemoryHealthExchange>,
    workflows: Arc<MemoryWorkflowStore>,
    budget: Arc<MemoryRetryBudget>,
    clock: ManualClock,
    script: Arc<Script>,
}

fn shared() -> Shared {
    Shared {
        store: Arc::new(MemoryCheckpointStore::new()),
        audit: Arc::new(MemoryAuditSink::new()),
        approvals: Arc::new(MemoryApprovalStore::new()),
        exchange: Arc::new(MemoryHealthExchange::new()),
        workflows: Arc::new(MemoryWorkflowStore::new()),
        budget: Arc::new(MemoryRetryBudget::new()),
        clock: ManualClock::new(Timestamp::from_millis(T0)),
        script: Arc::new(Script::default()),
    }
}

fn replica(s: &Shared, name: &str, seed: u64) -> Engine {
    Engine::builder(
        PolicySet::load(&["examples/policies"]).unwrap(),
        Arc::new(Scripted(Arc::clone(&s.script))),
    )
    .checkpoints(s.store.clone())
    .audit(s.audit.clone())
    .approvals(s.approvals.clone())
    .health_exchange(s.exchange.clone())
    .workflows(s.workflows.clone())
    .retry_budget(s.budget.clone())
    .replica(name)
    .clock(Arc::new(s.clock.clone()))
    .seed(seed)
    .build()
    .unwrap()
}

fn hospital(session: &str) -> Call<Value> {
    Call::new("hospital-network", "clinical_summarization", json!({}))
        .session(session)
        .state(json!({"goal": "summary"}))
}

#[test]
fn a_session_suspended_by_one_replica_resumes_on_the_other_exactly_once() {
    let s = shared();
    let (a, b) = (replica(&s, "a", 1), replica(&s, "b", 2));
    for id in ["frontier-vendor-eu", "frontier-cloud-eu"] {
        s.script
            .failing
            .lock()
            .insert(id.into(), OutcomeClass::Overloaded);
    }
    let token = match block_on(a.call(hospital("ward-1"))) {
        CallResult::Suspended { resume_token, .. } => resume_token,
        other => panic!("{other:?}"),
    };
    // Replica b, which never saw the session, knows it is suspended from the shared store.
    assert!(matches!(
        block_on(b.call(hospital("ward-1"))),
        CallResult::Suspended { .. }
    ));
    s.script.failing.lock().clear();
    s.clock.advance(Duration::from_secs(3600));
    let sid = SessionId::new("ward-1");
    // Both replicas race to resume: exactly one wins.
    let (ra, rb) = block_on(futures::future::join(
        a.resume(&sid, &token),
        b.resume(&sid, &token),
    ));
    assert_eq!(
        u8::from(ra.is_ok()) + u8::from(rb.is_ok()),
        1,
        "{ra:?} / {rb:?}"
    );
    // Either replica serves the session's next call.
    assert!(matches!(
        block_on(a.call(hospital("ward-1"))),
        CallResult::Completed(_)
    ));
    assert!(matches!(
        block_on(b.call(hospital("ward-1"))),
        CallResult::Completed(_)
    ));
    verify(&s.audit.records()).unwrap();
}

#[test]
fn an_approval_granted_through_one_replica_is_honoured_by_another() {
    let s = shared();
    let (a, b) = (replica(&s, "a", 1), replica(&s, "b", 2));
    s.script
        .failing
        .lock()
        .insert("frontier-vendor-us".into(), OutcomeClass::RateLimited);
    let call = || Call::new("fintech", "risk_assessment", json!({})).session("risk-1");
    let ticket = match block_on(a.call(call())) {
        CallResult::AwaitingApproval { ticket, .. } => ticket,
        other => panic!("{other:?}"),
    };
    match block_on(b.call(call())) {
        CallResult::AwaitingApproval { ticket: t, .. } => {
            assert_eq!(t, ticket, "same ticket on every replica")
        }
        other => panic!("{other:?}"),
    }
    block_on(b.approve(ticket, "officer-1")).unwrap();
    assert!(
        block_on(a.approve(ticket, "officer-2")).is_err(),
        "answered once"
    );
    match block_on(a.call(call())) {
        CallResult::Completed(c) => assert_eq!(c.served_by.tier, 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_breaker_opened_on_one_replica_blocks_the_endpoint_on_the_other_after_a_sync() {
    let s = shared();
    let (a, b) = (replica(&s, "a", 1), replica(&s, "b", 2));
    s.script
        .failing
        .lock()
        .insert("frontier-vendor-eu".into(), OutcomeClass::Overloaded);
    // Replica a sees five consecutive failures (the platform's consecutive_failures) and opens.
    for i in 0..5 {
        let _ = block_on(a.call(
            Call::new("marketing-agency", "copywriting", json!({})).session(format!("m{i}")),
        ));
    }
    let before = s.script.calls.load(Ordering::Relaxed);
    block_on(a.sync_health()).unwrap();
    assert!(block_on(b.sync_health()).unwrap() >= 1);
    // b now skips the failing primary without trying it.
    match block_on(b.call(Call::new("marketing-agency", "copywriting", json!({})))) {
        CallResult::Completed(c) => {
            assert_ne!(c.served_by.endpoint.as_str(), "frontier-vendor-eu");
        }
        other => panic!("{other:?}"),
    }
    let tried_primary = s.script.calls.load(Ordering::Relaxed) - before;
    assert_eq!(tried_primary, 1, "only the fallback was called");
}

#[test]
fn half_open_probes_are_limited_across_replicas() {
    let s = shared();
    let engines: Vec<Engine> = (0..4).map(|i| replica(&s, &format!("r{i}"), i)).collect();
    s.script
        .failing
        .lock()
        .insert("frontier-vendor-eu".into(), OutcomeClass::Overloaded);
    for i in 0..5 {
        let _ = block_on(engines[0].call(
            Call::new("marketing-agency", "copywriting", json!({})).session(format!("m{i}")),
        ));
    }
    for e in &engines {
        block_on(e.sync_health()).unwrap();
    }
    for e in &engines {
        block_on(e.sync_health()).unwrap();
    }
    // After the open wait, every replica wants to probe; the platform allows 3 probes in all.
    s.clock.advance(Duration::from_secs(60 * 11));
    for e in &engines {
        for _ in 0..5 {
            let _ = block_on(e.call(Call::new("marketing-agency", "copywriting", json!({}))));
        }
    }
    assert!(
        s.script.probes.load(Ordering::Relaxed) <= 3,
        "{} probes",
        s.script.probes.load(Ordering::Relaxed)
    );
    assert!(s.script.probes.load(Ordering::Relaxed) >= 1);
}

#[test]
fn suspending_one_sub_agent_suspends_its_workflow_and_they_resume_together() {
    let s = shared();
    let e = replica(&s, "a", 1);
    let wf = WorkflowId::new("discharge-42");
    let sub = |sid: &str| hospital(sid).workflow("discharge-42");
    // Two sub-agents working.
    for sid in ["w-a", "w-b"] {
        assert!(matches!(
            block_on(e.call(sub(sid))),
            CallResult::Completed(_)
        ));
    }
    for id in ["frontier-vendor-eu", "frontier-cloud-eu"] {
        s.script
            .failing
            .lock()
            .insert(id.into(), OutcomeClass::Overloaded);
    }
    assert!(matches!(
        block_on(e.call(sub("w-a"))),
        CallResult::Suspended { .. }
    ));
    assert!(block_on(e.workflow_suspended(&wf)).unwrap());
    // The sibling is suspended at its next call, with its own checkpoint, without calling out.
    let before = s.script.calls.load(Ordering::Relaxed);
    assert!(matches!(
        block_on(e.call(sub("w-b"))),
        CallResult::Suspended { .. }
    ));
    assert_eq!(s.script.calls.load(Ordering::Relaxed), before);
    s.script.failing.lock().clear();
    let resumed = block_on(e.resume_workflow(&TenantId::new("hospital-network"), &wf)).unwrap();
    let mut ids: Vec<&str> = resumed.iter().map(|r| r.session.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["w-a", "w-b"]);
    assert!(!block_on(e.workflow_suspended(&wf)).unwrap());
    assert!(matches!(
        block_on(e.call(sub("w-b"))),
        CallResult::Completed(_)
    ));
}

/// A sleeper on the manual clock: sleeping advances virtual time.
struct VirtualSleep(ManualClock);

#[async_trait]
impl Sleeper for VirtualSleep {
    async fn sleep(&self, d: Duration) {
        self.0.advance(d);
    }
}

/// A client that takes 3 virtual seconds per call.
struct Slow(ManualClock, Arc<AtomicUsize>);

#[async_trait]
impl ModelClient for Slow {
    async fn call(&self, _req: ModelRequest<Value>) -> Result<ModelResponse<Value>, ModelError> {
        self.1.fetch_add(1, Ordering::Relaxed);
        self.0.advance(Duration::from_secs(3));
        Ok(ModelResponse::new(json!({}), TokenUsage::default()))
    }
}

#[test]
fn a_workflow_deadline_bounds_its_sub_agents_calls_and_an_unreachable_one_returns_at_once() {
    let clock = ManualClock::new(Timestamp::from_millis(T0));
    let calls = Arc::new(AtomicUsize::new(0));
    let e: Engine = Engine::builder(
        PolicySet::load(&["examples/policies"]).unwrap(),
        Arc::new(Slow(clock.clone(), Arc::clone(&calls))),
    )
    .clock(Arc::new(clock.clone()))
    .sleeper(Arc::new(VirtualSleep(clock.clone())))
    .build()
    .unwrap();
    let wf = WorkflowId::new("batch-7");
    block_on(e.set_workflow_deadline(&wf, Timestamp::from_millis(T0))).unwrap();
    let r = block_on(
        e.call(Call::new("marketing-agency", "copywriting", json!({})).workflow("batch-7")),
    );
    match r {
        CallResult::Rejected(rej) => {
            assert_eq!(rej.kind, RejectKind::Policy);
            assert!(
                rej.message.starts_with("deadline_unreachable"),
                "{}",
                rej.message
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(calls.load(Ordering::Relaxed), 0, "no attempt wasted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_tasks_of_a_thousand_calls_each_end_in_exactly_one_outcome() {
    let s = shared();
    let e = replica(&s, "a", 1);
    s.script
        .failing
        .lock()
        .insert("frontier-vendor-eu".into(), OutcomeClass::RateLimited);
    let mut tasks = Vec::new();
    for t in 0..32 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let mut outcomes = [0usize; 4];
            for i in 0..1000 {
                let tenant = ["marketing-agency", "hospital-network", "fintech"][(t + i) % 3];
                let task = ["copywriting", "clinical_summarization", "summarization"][(t + i) % 3];
                let r = e
                    .call(Call::new(tenant, task, json!({})).session(format!("t{t}-s{}", i % 10)))
                    .await;
                outcomes[match r {
                    CallResult::Completed(_) => 0,
                    CallResult::Suspended { .. } => 1,
                    CallResult::AwaitingApproval { .. } => 2,
                    CallResult::Rejected(_) => 3,
                }] += 1;
            }
            outcomes
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap().iter().sum::<usize>();
    }
    assert_eq!(total, 32_000);
    let records = s.audit.records();
    let report = verify(&records).unwrap();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(
            r.seq,
            records[0].seq + i as u64,
            "contiguous sequence numbers"
        );
    }
    let _ = report;
}

#[test]
fn a_workflow_suspended_on_one_replica_is_suspended_on_the_other() {
    let s = shared();
    let (a, b) = (replica(&s, "a", 1), replica(&s, "b", 2));
    let wf = WorkflowId::new("discharge-77");
    let sub = |sid: &str| hospital(sid).workflow("discharge-77");
    for id in ["frontier-vendor-eu", "frontier-cloud-eu"] {
        s.script
            .failing
            .lock()
            .insert(id.into(), OutcomeClass::Overloaded);
    }
    assert!(matches!(
        block_on(a.call(sub("x-a"))),
        CallResult::Suspended { .. }
    ));
    // Replica b never saw the suspension happen, but the shared workflow store says so: its
    // sub-agent is suspended at once, with its own checkpoint, without calling a provider.
    assert!(block_on(b.workflow_suspended(&wf)).unwrap());
    let before = s.script.calls.load(Ordering::Relaxed);
    match block_on(b.call(sub("x-b"))) {
        CallResult::Suspended { reason, .. } => {
            assert!(reason.contains("discharge-77"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.script.calls.load(Ordering::Relaxed), before);
    assert!(
        block_on(s.store.load(&SessionId::new("x-b")))
            .unwrap()
            .unwrap()
            .suspended
            .is_some()
    );
    // Resumed through b, lifted for a too; a deadline set on a bounds b's calls.
    s.script.failing.lock().clear();
    let resumed = block_on(b.resume_workflow(&TenantId::new("hospital-network"), &wf)).unwrap();
    assert_eq!(resumed.len(), 2);
    assert!(!block_on(a.workflow_suspended(&wf)).unwrap());
    block_on(a.set_workflow_deadline(&wf, Timestamp::from_millis(T0))).unwrap();
    match block_on(b.call(sub("x-c"))) {
        CallResult::Rejected(r) => assert!(r.message.starts_with("deadline_unreachable"), "{r:?}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn replicas_sharing_a_retry_budget_draw_on_one_budget() {
    let s = shared();
    let (a, b) = (replica(&s, "a", 1), replica(&s, "b", 2));
    s.script
        .failing
        .lock()
        .insert("frontier-vendor-eu".into(), OutcomeClass::Overloaded);
    s.script
        .failing
        .lock()
        .insert("frontier-vendor-us".into(), OutcomeClass::Overloaded);
    let copy = || Call::new("marketing-agency", "copywriting", json!({}));
    // Another replica spent the platform's budget (ratio 0.1, 5 per second: 50 over 10 s).
    let settings = RetryBudget {
        ratio: 0.1,
        min_per_second: 5.0,
    };
    let now = s.clock.now();
    assert_eq!(
        (0..60)
            .filter(|_| s.budget.try_retry(&settings, now))
            .count(),
        50
    );
    // Replica a's first attempt adds 0.1 of room: it takes that one retry, and no more.
    let before = s.script.calls.load(Ordering::Relaxed);
    match block_on(a.call(copy())) {
        CallResult::Rejected(r) => assert_eq!(r.kind, RejectKind::RetryBudget, "{r:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.script.calls.load(Ordering::Relaxed), before + 2);
    // Replica b finds the same budget spent: one first attempt, no fallback.
    let before = s.script.calls.load(Ordering::Relaxed);
    match block_on(b.call(copy())) {
        CallResult::Rejected(r) => assert_eq!(r.kind, RejectKind::RetryBudget, "{r:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.script.calls.load(Ordering::Relaxed), before + 1);
    // A replica with a budget of its own would have fallen back.
    let own = Engine::builder(
        PolicySet::load(&["examples/policies"]).unwrap(),
        Arc::new(Scripted(Arc::clone(&s.script))),
    )
    .clock(Arc::new(s.clock.clone()))
    .build()
    .unwrap();
    assert!(matches!(
        block_on(own.call(copy())),
        CallResult::Completed(_)
    ));
}

/// A shared budget that cannot be reached.
#[derive(Debug)]
struct Unreachable;

#[async_trait]
impl RetryBudgetStore for Unreachable {
    fn record_call(&self, _now: Timestamp) {}
    async fn try_retry(&self, _s: &RetryBudget, _now: Timestamp) -> Result<bool, EngineError> {
        Err(EngineError::Store {
            message: "budget database unreachable".into(),
        })
    }
}

#[test]
fn an_unreachable_retry_budget_refuses_the_retry_and_says_why() {
    let s = shared();
    s.script
        .failing
        .lock()
        .insert("frontier-vendor-eu".into(), OutcomeClass::Overloaded);
    let e: Engine = Engine::builder(
        PolicySet::load(&["examples/policies"]).unwrap(),
        Arc::new(Scripted(Arc::clone(&s.script))),
    )
    .clock(Arc::new(s.clock.clone()))
    .retry_budget(Arc::new(Unreachable))
    .build()
    .unwrap();
    match block_on(e.call(Call::new("marketing-agency", "copywriting", json!({})))) {
        CallResult::Rejected(r) => {
            assert_eq!(r.kind, RejectKind::RetryBudget);
            assert!(
                r.message.contains("budget database unreachable"),
                "{}",
                r.message
            );
        }
        other => panic!("{other:?}"),
    }
}
