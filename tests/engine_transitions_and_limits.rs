//! Sessionless traffic audits transitions only; checkpoint conflicts are reconciled; suspensions
//! end after the policy's `max_duration`; timed-out attempts say what they tried.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use downshift::audit::{AuditEventKind, MemoryAuditSink, verify};
use downshift::checkpoint::{
    Checkpoint, CheckpointList, CheckpointStore, ListFilter, MemoryCheckpointStore, ResumeToken,
    Suspended, TierAt,
};
use downshift::engine::{
    Call, CallResult, Engine, ModelClient, ModelError, ModelRequest, ModelResponse, RejectKind,
    TokenUsage,
};
use downshift::error::EngineError;
use downshift::policy::PolicySet;
use downshift::{
    CheckpointError, ContentDigest, ManualClock, OutcomeClass, SessionId, TenantId, Timestamp,
};
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

/// A checkpoint store where "another replica" writes the session just before this engine's
/// saves: `interleave` checkpoints are saved (on top of whatever is stored) before each of the
/// next saves, `times` times.
#[derive(Debug)]
struct Racing {
    inner: MemoryCheckpointStore,
    interleave: Mutex<Option<(Checkpoint, u32)>>,
}

#[async_trait]
impl CheckpointStore for Racing {
    async fn load(&self, session: &SessionId) -> Result<Option<Checkpoint>, CheckpointError> {
        self.inner.load(session).await
    }
    async fn save(&self, cp: Checkpoint, expected: Option<u64>) -> Result<u64, CheckpointError> {
        let other = {
            let mut g = self.interleave.lock();
            match g.as_mut() {
                Some((c, n)) if *n > 0 => {
                    *n -= 1;
                    Some(c.clone())
                }
                _ => None,
            }
        };
        if let Some(c) = other {
            let stored = self.inner.load(&c.session).await?.map(|c| c.version);
            self.inner.save(c, stored).await?;
        }
        self.inner.save(cp, expected).await
    }
    async fn list(
        &self,
        tenant: &TenantId,
        filter: &ListFilter,
    ) -> Result<CheckpointList, CheckpointError> {
        self.inner.list(tenant, filter).await
    }
    async fn delete(&self, session: &SessionId, expected: u64) -> Result<(), CheckpointError> {
        self.inner.delete(session, expected).await
    }
}

fn racing_world(other: Checkpoint, times: u32) -> (World, Arc<Racing>) {
    let script = Arc::new(Script::default());
    let clock = ManualClock::new(Timestamp::from_millis(1_795_000_000_000));
    let audit = Arc::new(MemoryAuditSink::new());
    let store = Arc::new(Racing {
        inner: MemoryCheckpointStore::new(),
        interleave: Mutex::new(Some((other, times))),
    });
    let engine = Engine::builder(
        PolicySet::load(&["examples/policies"]).unwrap(),
        Arc::new(Scripted(Arc::clone(&script))),
    )
    .clock(Arc::new(clock.clone()))
    .audit(audit.clone())
    .checkpoints(store.clone())
    .build()
    .unwrap();
    (
        World {
            engine,
            script,
            clock,
            audit,
        },
        store,
    )
}

fn other_replicas(suspended: Option<&str>) -> Checkpoint {
    let cp = Checkpoint::new(
        TenantId::new("marketing-agency"),
        SessionId::new("s"),
        Timestamp::from_millis(1_795_000_000_000),
        TierAt::new(0, "primary"),
        ContentDigest::of_bytes(b"policy"),
        json!({"from": "the other replica"}),
    );
    match suspended {
        Some(token) => cp.suspend(Suspended {
            reason: "suspended on replica b".into(),
            trigger: None,
            retry_at: None,
            resume_token: ResumeToken::from_string(token),
        }),
        None => cp,
    }
}

fn degrade(w: &World) {
    for id in ["frontier-vendor-eu", "frontier-vendor-us"] {
        w.script.failing.lock().insert(id.into());
    }
}

fn step() -> Call<Value> {
    Call::new("marketing-agency", "copywriting", json!({}))
        .session("s")
        .state(json!({"step": 1}))
}

#[test]
fn a_tier_change_save_that_meets_a_newer_checkpoint_is_reconciled_and_retried() {
    let (w, store) = racing_world(other_replicas(None), 1);
    degrade(&w);
    match block_on(w.engine.call(step())) {
        CallResult::Completed(c) => assert_eq!(c.served_by.tier, 2),
        other => panic!("{other:?}"),
    }
    // The other replica's save (version 1) was not lost: this one went on top of it.
    let cp = block_on(store.load(&SessionId::new("s"))).unwrap().unwrap();
    assert_eq!(cp.version, 2);
    assert_eq!(cp.tier.index, 2);
    assert_eq!(cp.state, json!({"step": 1}));
    assert_eq!(kinds(&w.audit), ["tier_change"]);
}

#[test]
fn a_suspension_saved_by_another_replica_stands_over_this_replicas_tier_change() {
    let (w, store) = racing_world(other_replicas(Some("rt-from-b")), 1);
    degrade(&w);
    match block_on(w.engine.call(step())) {
        CallResult::Suspended {
            resume_token,
            reason,
            ..
        } => {
            assert_eq!(resume_token, ResumeToken::from_string("rt-from-b"));
            assert_eq!(reason, "suspended on replica b");
        }
        other => panic!("{other:?}"),
    }
    let cp = block_on(store.load(&SessionId::new("s"))).unwrap().unwrap();
    assert_eq!(cp.version, 1, "nothing written over the suspension");
    assert!(cp.suspended.is_some());
    // No tier change was recorded by this replica, and its next call is suspended too.
    assert!(kinds(&w.audit).is_empty());
    assert!(matches!(
        block_on(w.engine.call(step())),
        CallResult::Suspended { .. }
    ));
    let _ = &w.clock;
}

#[test]
fn a_checkpoint_that_keeps_changing_ends_in_a_typed_error_after_bounded_retries() {
    let (w, store) = racing_world(other_replicas(None), u32::MAX);
    degrade(&w);
    match block_on(w.engine.call(step())) {
        CallResult::Rejected(r) => {
            assert_eq!(r.kind, RejectKind::Durability);
            assert!(
                r.message.contains("each of 3 compare-and-swap attempts"),
                "{}",
                r.message
            );
        }
        other => panic!("{other:?}"),
    }
    // Three tries, each preceded by the other replica's write: nothing of this replica's stored.
    let cp = block_on(store.load(&SessionId::new("s"))).unwrap().unwrap();
    assert_eq!(cp.version, 3);
    assert_eq!(cp.state, json!({"from": "the other replica"}));
    assert!(kinds(&w.audit).is_empty());
}

fn clinical(session: &str) -> Call<Value> {
    Call::new("hospital-network", "clinical_summarization", json!({}))
        .session(session)
        .state(json!({"note": session}))
}

/// Suspends `session` (the hospital's permitted EU endpoints all fail) and returns its token.
fn suspend_clinical(w: &World, session: &str) -> ResumeToken {
    for id in ["frontier-vendor-eu", "frontier-cloud-eu"] {
        w.script.failing.lock().insert(id.into());
    }
    match block_on(w.engine.call(clinical(session))) {
        CallResult::Suspended { resume_token, .. } => resume_token,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_session_suspended_past_max_duration_is_given_up_at_its_next_call() {
    let w = world();
    suspend_clinical(&w, "c1");
    // The template's suspension.max_duration is 6h: at 5h the session is still suspended.
    w.clock.advance(Duration::from_secs(5 * 3600));
    assert!(matches!(
        block_on(w.engine.call(clinical("c1"))),
        CallResult::Suspended { .. }
    ));
    w.clock.advance(Duration::from_secs(3600));
    match block_on(w.engine.call(clinical("c1"))) {
        CallResult::Rejected(r) => {
            assert_eq!(r.kind, RejectKind::SuspensionExpired);
            assert!(r.message.contains("max_duration"), "{}", r.message);
        }
        other => panic!("{other:?}"),
    }
    // Audited, with the checkpoint it gave up; the checkpoint is gone.
    let records = w.audit.records();
    verify(&records).unwrap();
    let last = records.last().unwrap();
    match &last.event.kind {
        AuditEventKind::Rejection { reason } => {
            assert!(reason.contains("suspension.max_duration (6h)"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(last.event.checkpoint.is_some());
    assert!(
        block_on(w.engine.checkpoints().load(&SessionId::new("c1")))
            .unwrap()
            .is_none()
    );
}

#[test]
fn resuming_a_session_past_max_duration_reports_it_given_up() {
    let w = world();
    let token = suspend_clinical(&w, "c2");
    w.script.failing.lock().clear();
    w.clock.advance(Duration::from_secs(7 * 3600));
    // Its providers are back, but it outlived its limit: not listed as ready, and resume says why.
    assert!(block_on(w.engine.ready_to_resume()).unwrap().is_empty());
    let err = block_on(w.engine.resume(&SessionId::new("c2"), &token)).unwrap_err();
    assert!(
        matches!(
            err,
            downshift::Error::Engine(EngineError::SuspensionExpired { ref session, max_duration_ms, .. })
                if session.as_str() == "c2" && max_duration_ms == 6 * 3600 * 1000
        ),
        "{err}"
    );
}

#[test]
fn expire_suspensions_gives_up_every_expired_session_once_with_its_state() {
    let w = world();
    suspend_clinical(&w, "c3");
    w.clock.advance(Duration::from_secs(3 * 3600));
    suspend_clinical(&w, "c4");
    w.clock.advance(Duration::from_secs(3 * 3600 + 1));
    let given_up = block_on(w.engine.expire_suspensions()).unwrap();
    assert_eq!(given_up.len(), 1, "only c3 is past 6h");
    assert_eq!(given_up[0].session.as_str(), "c3");
    assert_eq!(given_up[0].state, json!({"note": "c3"}));
    assert_eq!(given_up[0].max_duration, Duration::from_secs(6 * 3600));
    assert!(block_on(w.engine.expire_suspensions()).unwrap().is_empty());
    // c4 is still suspended.
    assert!(
        block_on(w.engine.checkpoints().load(&SessionId::new("c4")))
            .unwrap()
            .unwrap()
            .suspended
            .is_some()
    );
}
