//! Approvals denied and expired, synthetic probes, and hot reload through the engine.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use downshift::audit::{AuditEventKind, MemoryAuditSink, verify};
use downshift::engine::{
    Call, CallResult, Engine, ModelClient, ModelError, ModelRequest, ModelResponse, RejectKind,
    TokenUsage,
};
use downshift::error::EngineError;
use downshift::policy::{PolicySet, Source};
use downshift::{EndpointId, ManualClock, OutcomeClass, Timestamp};
use futures::executor::block_on;
use parking_lot::Mutex;
use serde_json::{Value, json};

#[derive(Default)]
struct Script {
    failing: Mutex<HashSet<String>>,
    probes: Mutex<Vec<String>>,
}

struct Scripted(Arc<Script>);

#[async_trait]
impl ModelClient for Scripted {
    async fn call(&self, req: ModelRequest<Value>) -> Result<ModelResponse<Value>, ModelError> {
        if req.probe {
            self.0.probes.lock().push(req.endpoint.to_string());
        }
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

fn risk() -> Call<Value> {
    Call::new("fintech", "risk_assessment", json!({}))
        .session("risk-1")
        .state(json!({"step": 4}))
}

#[test]
fn a_denied_switch_suspends_the_session_as_the_policy_says() {
    let w = world();
    w.script.failing.lock().insert("frontier-vendor-us".into());
    let CallResult::AwaitingApproval { ticket, .. } = block_on(w.engine.call(risk())) else {
        panic!("expected an approval request");
    };
    block_on(
        w.engine
            .deny(ticket, "officer-3", Some("wait for the primary")),
    )
    .unwrap();
    // fintech: on_approval_timeout is `suspend` (the default) and the ladder has a suspension.
    assert!(matches!(
        block_on(w.engine.call(risk())),
        CallResult::Suspended { .. }
    ));
    let kinds: Vec<&str> = w
        .audit
        .records()
        .iter()
        .map(|r| r.event.kind.name())
        .collect();
    assert_eq!(
        kinds,
        ["approval_requested", "approval_denied", "suspension"]
    );
    // A denied ticket cannot then be approved.
    assert!(block_on(w.engine.approve(ticket, "officer-4")).is_err());
}

#[test]
fn an_unanswered_approval_expires_and_is_audited() {
    let w = world();
    w.script.failing.lock().insert("frontier-vendor-us".into());
    let CallResult::AwaitingApproval { ticket, .. } = block_on(w.engine.call(risk())) else {
        panic!("expected an approval request");
    };
    w.clock.advance(Duration::from_secs(11 * 60)); // fintech's approval_timeout is 10m
    assert_eq!(block_on(w.engine.expire_approvals()).unwrap(), 1);
    assert!(block_on(w.engine.approve(ticket, "late")).is_err());
    assert!(block_on(w.engine.pending_approvals()).unwrap().is_empty());
    let records = w.audit.records();
    verify(&records).unwrap();
    assert!(
        records
            .iter()
            .any(|r| matches!(r.event.kind, AuditEventKind::ApprovalExpired {}))
    );
    match block_on(w.engine.call(risk())) {
        CallResult::Suspended { reason, .. } => {
            assert!(reason.contains("not approved in time"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_sessionless_call_the_policy_would_suspend_is_rejected_with_the_reason() {
    let w = world();
    for id in ["frontier-vendor-eu", "frontier-cloud-eu"] {
        w.script.failing.lock().insert(id.into());
    }
    match block_on(w.engine.call(Call::new(
        "hospital-network",
        "clinical_summarization",
        json!({}),
    ))) {
        CallResult::Rejected(r) => assert_eq!(r.kind, RejectKind::NoSession),
        other => panic!("{other:?}"),
    }
}

#[test]
fn synthetic_probes_test_a_recovering_endpoint_instead_of_a_user_call() {
    let w = world();
    w.script.failing.lock().insert("frontier-vendor-eu".into());
    // Five failures in a row open the primary's breaker.
    for i in 0..5 {
        let _ = block_on(w.engine.call(
            Call::new("marketing-agency", "copywriting", json!({})).session(format!("m{i}")),
        ));
    }
    let primary = EndpointId::new("frontier-vendor-eu");
    assert!(
        w.engine.probes_due().is_empty(),
        "nothing due during the open wait"
    );
    w.clock.advance(Duration::from_secs(120));
    assert!(w.engine.probes_due().contains(&primary));
    // The provider is back; the platform's cheap probe closes the breaker after 3 successes.
    w.script.failing.lock().clear();
    for _ in 0..3 {
        assert_eq!(
            block_on(w.engine.probe(&primary, json!({"ping": true}))).unwrap(),
            Some(OutcomeClass::Ok)
        );
    }
    assert_eq!(w.script.probes.lock().len(), 3);
    assert!(!w.engine.probes_due().contains(&primary));
    // Users are served by the primary again, and none of them was a probe.
    match block_on(
        w.engine
            .call(Call::new("marketing-agency", "copywriting", json!({}))),
    ) {
        CallResult::Completed(c) => {
            assert_eq!(c.served_by.endpoint, primary);
            assert!(!c.flags.probe);
        }
        other => panic!("{other:?}"),
    }
    assert!(block_on(w.engine.probe(&EndpointId::new("nope"), json!({}))).is_err());
}

#[test]
fn a_reload_is_validated_whole_audited_and_cited_by_later_calls() {
    let w = world();
    let before = match block_on(w.engine.call(Call::new(
        "marketing-agency",
        "copywriting",
        json!({}),
    ))) {
        CallResult::Completed(c) => c.policy_digest.clone(),
        other => panic!("{other:?}"),
    };
    let mut sources = Source::read_paths(&["examples/policies"]).unwrap();
    // A broken reload is rejected and leaves the active set alone.
    let mut broken = sources.clone();
    broken.push(Source::new("oops.json", "{\"kind\": \"policy\""));
    assert!(block_on(w.engine.reload(broken)).is_err());
    assert!(w.audit.records().is_empty());
    // A valid change is activated and audited.
    for s in &mut sources {
        if s.name.ends_with("marketing-agency.json") {
            s.text = s
                .text
                .replace("\"version\": \"", "\"version\": \"reloaded-");
        }
    }
    let set = block_on(w.engine.reload(sources)).unwrap();
    let records = w.audit.records();
    assert!(
        matches!(&records[0].event.kind, AuditEventKind::PolicyActivation { digest, .. } if digest == set.digest())
    );
    let after = match block_on(w.engine.call(Call::new(
        "marketing-agency",
        "copywriting",
        json!({}),
    ))) {
        CallResult::Completed(c) => c.policy_digest.clone(),
        other => panic!("{other:?}"),
    };
    assert_ne!(before, after);
}

/// Answers with OpenAI-style rate-limit headers showing almost no requests left.
struct NearlyThrottled;

#[async_trait]
impl ModelClient for NearlyThrottled {
    async fn call(&self, _req: ModelRequest<Value>) -> Result<ModelResponse<Value>, ModelError> {
        let mut r = ModelResponse::new(json!({}), TokenUsage::default());
        r.headers = vec![
            ("x-ratelimit-limit-requests".into(), "1000".into()),
            ("x-ratelimit-remaining-requests".into(), "3".into()),
            ("x-ratelimit-reset-requests".into(), "20s".into()),
        ];
        Ok(r)
    }
}

#[test]
fn rate_limit_headers_on_successes_move_traffic_off_before_any_429() {
    let mut sources = Source::read_paths(&["examples/policies"]).unwrap();
    for s in &mut sources {
        if s.name.ends_with("marketing-agency.json") {
            let mut v: Value = serde_json::from_str(&s.text).unwrap();
            v["triggers"]["rate_limit_remaining"] = json!({"min_requests_fraction": 0.05});
            s.text = v.to_string();
        }
    }
    let set = PolicySet::from_sources(sources).unwrap();
    let clock = ManualClock::new(Timestamp::from_millis(1_795_000_000_000));
    let engine: Engine = Engine::builder(set, Arc::new(NearlyThrottled))
        .clock(Arc::new(clock))
        .build()
        .unwrap();
    let first = block_on(engine.call(Call::new("marketing-agency", "copywriting", json!({}))));
    assert_eq!(
        first.completed().unwrap().served_by.endpoint.as_str(),
        "frontier-vendor-eu"
    );
    // 3 of 1000 left (0.3% < 5%): the next call goes elsewhere, though nothing failed.
    match block_on(engine.call(Call::new("marketing-agency", "copywriting", json!({})))) {
        CallResult::Completed(c) => assert_ne!(c.served_by.endpoint.as_str(), "frontier-vendor-eu"),
        other => panic!("{other:?}"),
    }
}

/// The example sources with `edit` applied to the file named `file` (parsed as JSON).
fn edited(file: &str, edit: impl Fn(&mut Value)) -> Vec<Source> {
    let mut sources = Source::read_paths(&["examples/policies"]).unwrap();
    for s in &mut sources {
        if s.name.ends_with(file) {
            let mut v: Value = serde_json::from_str(&s.text).unwrap();
            edit(&mut v);
            s.text = serde_json::to_string(&v).unwrap();
        }
    }
    sources
}

#[test]
fn a_reload_that_changes_the_breaker_or_the_endpoint_list_is_refused_naming_the_field() {
    let w = world();
    let digest = w.engine.policies().current().digest().clone();
    let breaker = edited("platform.json", |v| {
        v["triggers"]["breaker"]["min_calls"] = json!(40);
    });
    match block_on(w.engine.reload(breaker)) {
        Err(downshift::Error::Engine(EngineError::ReloadNeedsNewEngine { field, .. })) => {
            assert_eq!(field, "platform policy: triggers.breaker")
        }
        other => panic!("{other:?}"),
    }
    let open_wait = edited("platform.json", |v| {
        v["recovery"]["open_wait"]["initial"] = json!("45s");
    });
    match block_on(w.engine.reload(open_wait)) {
        Err(downshift::Error::Engine(EngineError::ReloadNeedsNewEngine { field, .. })) => {
            assert_eq!(field, "platform policy: recovery.open_wait")
        }
        other => panic!("{other:?}"),
    }
    let added = edited("catalog.json", |v| {
        let eps = v["endpoints"].as_array_mut().unwrap();
        let mut copy = eps[0].clone();
        copy["id"] = json!("frontier-vendor-ap");
        eps.push(copy);
    });
    match block_on(w.engine.reload(added)) {
        Err(e @ downshift::Error::Engine(EngineError::ReloadNeedsNewEngine { .. })) => {
            let text = e.to_string();
            assert!(text.contains("`catalog.endpoints`"), "{text}");
            assert!(text.contains("added [\"frontier-vendor-ap\"]"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    // Nothing was applied or recorded.
    assert_eq!(w.engine.policies().current().digest(), &digest);
    assert!(w.audit.records().is_empty());
}

#[test]
fn a_reload_that_changes_an_endpoints_price_applies_to_the_running_engine() {
    let w = world();
    let before = w.engine.policies().current().digest().clone();
    let cheaper = edited("catalog.json", |v| {
        for e in v["endpoints"].as_array_mut().unwrap() {
            if e["id"] == "mid70b-selfhosted-eu" {
                e["pricing"]["input_per_mtok"] = json!(0.05);
            }
        }
    });
    let set = block_on(w.engine.reload(cheaper)).unwrap();
    assert_ne!(set.digest(), &before);
    let mid = set.catalog().index_of("mid70b-selfhosted-eu").unwrap();
    assert_eq!(set.catalog().endpoint(mid).pricing.input_per_mtok, 0.05);
    assert!(matches!(
        w.audit.records()[0].event.kind,
        AuditEventKind::PolicyActivation { .. }
    ));
}

/// A world whose fintech policy sets `constraints.approval_lifetime`.
fn world_with_lifetime(lifetime: &str) -> World {
    let w = world();
    let sources = edited("fintech.json", |v| {
        v["constraints"]["approval_lifetime"] = json!(lifetime);
    });
    let set = PolicySet::from_sources(sources).unwrap();
    let engine = Engine::builder(set, Arc::new(Scripted(Arc::clone(&w.script))))
        .clock(Arc::new(w.clock.clone()))
        .audit(w.audit.clone())
        .build()
        .unwrap();
    World { engine, ..w }
}

fn gateway_risk() -> Call<Value> {
    Call::new("fintech", "risk_assessment", json!({}))
}

/// Asks for the switch, approves it, and checks the next call is served by tier 1.
fn approve_switch(w: &World, call: impl Fn() -> Call<Value>) {
    let CallResult::AwaitingApproval { ticket, .. } = block_on(w.engine.call(call())) else {
        panic!("expected an approval request");
    };
    block_on(w.engine.approve(ticket, "officer-1")).unwrap();
    match block_on(w.engine.call(call())) {
        CallResult::Completed(c) => assert_eq!(c.served_by.tier, 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_single_switch_grant_is_spent_by_its_switch() {
    let w = world(); // single_switch is the default
    w.script.failing.lock().insert("frontier-vendor-us".into());
    approve_switch(&w, gateway_risk);
    // Each sessionless call is routed from the top: the next one is a new switch, asked again.
    assert!(matches!(
        block_on(w.engine.call(gateway_risk())),
        CallResult::AwaitingApproval { .. }
    ));
    // A session that lost its tier (forgotten) asks again too.
    approve_switch(&w, risk);
    w.engine
        .forget_session(&downshift::SessionId::new("risk-1"));
    // `risk()` carries state, so its move was checkpointed: the session is still on tier 1 and
    // needs no switch. Without state it would ask again.
    assert!(matches!(
        block_on(w.engine.call(risk())),
        CallResult::Completed(_)
    ));
    let stateless = || Call::new("fintech", "risk_assessment", json!({})).session("risk-2");
    approve_switch(&w, stateless);
    w.engine
        .forget_session(&downshift::SessionId::new("risk-2"));
    assert!(matches!(
        block_on(w.engine.call(stateless())),
        CallResult::AwaitingApproval { .. }
    ));
}

#[test]
fn a_while_on_tier_grant_holds_until_the_traffic_leaves_the_tier() {
    let w = world_with_lifetime("while_on_tier");
    w.script.failing.lock().insert("frontier-vendor-us".into());
    approve_switch(&w, gateway_risk);
    for _ in 0..3 {
        match block_on(w.engine.call(gateway_risk())) {
            CallResult::Completed(c) => assert_eq!(c.served_by.tier, 1),
            other => panic!("{other:?}"),
        }
    }
    let stateless = || Call::new("fintech", "risk_assessment", json!({})).session("risk-3");
    approve_switch(&w, stateless);
    w.engine
        .forget_session(&downshift::SessionId::new("risk-3"));
    assert!(matches!(
        block_on(w.engine.call(stateless())),
        CallResult::Completed(_)
    ));
    // The primary recovers: the gateway traffic moves back to tier 0, which spends its grant;
    // the next outage asks again.
    w.script.failing.lock().clear();
    w.clock.advance(Duration::from_secs(3600));
    let mut on_top = false;
    for _ in 0..5 {
        if let CallResult::Completed(c) = block_on(w.engine.call(gateway_risk())) {
            on_top |= c.served_by.tier == 0;
        }
    }
    assert!(on_top);
    w.script.failing.lock().insert("frontier-vendor-us".into());
    assert!(matches!(
        block_on(w.engine.call(gateway_risk())),
        CallResult::AwaitingApproval { .. }
    ));
}
