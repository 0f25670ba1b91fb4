//! The outage drill: the article's 2 a.m. capacity event, run through the real engine.
//!
//! A SaaS platform serves a hospital network, a marketing agency and a fintech from one policy
//! set (`examples/policies/`). During a batch agentic pipeline at 02:00 the primary provider
//! throttles every call (429 with retry-after); at 02:07 the second provider of the same model
//! degrades too; from 02:20 capacity returns. Each tenant's agents make one step a minute. The
//! providers are scripted clients; time is virtual (a `ManualClock`), so the drill takes a
//! moment, and nothing is written outside memory.
//!
//! Run: `cargo run --example outage_drill`

use std::collections::{BTreeMap, HashMap};
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

/// The providers: endpoints listed as failing answer with that error.
#[derive(Default)]
struct Providers {
    failing: Mutex<HashMap<&'static str, (OutcomeClass, Option<Duration>)>>,
}

struct Scripted(Arc<Providers>);

#[async_trait]
impl ModelClient for Scripted {
    async fn call(&self, req: ModelRequest<Value>) -> Result<ModelResponse<Value>, ModelError> {
        if let Some((class, retry_after)) = self.0.failing.lock().get(req.endpoint.as_str()) {
            let mut e = ModelError::of(*class, format!("scripted {class}"));
            e.classification.retry_after = *retry_after;
            return Err(e);
        }
        Ok(ModelResponse::new(
            json!({"text": "..."}),
            TokenUsage {
                input_tokens: 6_000,
                output_tokens: 800,
            },
        ))
    }
}

const PRIMARY: [&str; 2] = ["frontier-vendor-eu", "frontier-vendor-us"];
const SECOND: [&str; 3] = ["frontier-cloud-eu", "frontier-cloud-us", "frontier-alt-us"];

struct Agent {
    tenant: &'static str,
    task: &'static str,
    session: &'static str,
}

const AGENTS: [Agent; 4] = [
    Agent {
        tenant: "hospital-network",
        task: "clinical_summarization",
        session: "ward-7",
    },
    Agent {
        tenant: "marketing-agency",
        task: "copywriting",
        session: "campaign-12",
    },
    Agent {
        tenant: "fintech",
        task: "risk_assessment",
        session: "risk-9",
    },
    Agent {
        tenant: "fintech",
        task: "summarization",
        session: "digest-3",
    },
];

#[derive(Default)]
struct Tally {
    timeline: String,
    by_tier: BTreeMap<u32, u32>,
    calls: u32,
    degraded: u32,
    suspended: u32,
    approvals: u32,
    rejected: u32,
    cost: f64,
    primary_cost: f64,
}

fn main() {
    let set = match PolicySet::load(&["examples/policies"]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("outage_drill: {e}");
            std::process::exit(2);
        }
    };
    let catalog = Arc::clone(set.catalog());
    let digest = set.digest().short().to_string();
    let start = Timestamp::parse_rfc3339("2026-11-28T01:55:00Z").unwrap_or_default();
    let clock = ManualClock::new(start);
    let providers = Arc::new(Providers::default());
    let audit = Arc::new(MemoryAuditSink::new());
    let engine: Engine = match Engine::builder(set, Arc::new(Scripted(Arc::clone(&providers))))
        .clock(Arc::new(clock.clone()))
        .audit(audit.clone())
        .seed(7)
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("outage_drill: {e}");
            std::process::exit(2);
        }
    };

    println!("downshift outage drill — policy set {digest}, virtual time from 01:55 UTC");
    println!("  02:00 primary provider throttles (429, retry-after 30s)");
    println!("  02:07 the second provider of the same model degrades too (529 overloaded)");
    println!("  02:20 capacity returns\n");

    let mut tallies: Vec<Tally> = AGENTS.iter().map(|_| Tally::default()).collect();
    let mut tokens: HashMap<&str, downshift::checkpoint::ResumeToken> = HashMap::new();
    let mut events: Vec<String> = Vec::new();
    for minute in 0..40u64 {
        let now = start.saturating_add(Duration::from_secs(minute * 60));
        clock.set(now);
        let hhmm = format!("{}", now).get(11..16).unwrap_or("").to_string();
        // The capacity event.
        {
            let mut f = providers.failing.lock();
            f.clear();
            if (5..25).contains(&minute) {
                for p in PRIMARY {
                    f.insert(
                        p,
                        (OutcomeClass::RateLimited, Some(Duration::from_secs(30))),
                    );
                }
            }
            if (12..25).contains(&minute) {
                for p in SECOND {
                    f.insert(p, (OutcomeClass::Overloaded, None));
                }
            }
        }
        // The platform probes recovering endpoints with a cheap request of its own, instead of
        // risking a user's call on them.
        for endpoint in engine.probes_due() {
            // A half-open round wants several successful probes; stop at the first failure.
            let mut results = Vec::new();
            while let Ok(Some(class)) = block_on(engine.probe(&endpoint, json!({"ping": true}))) {
                results.push(class.to_string());
                if class != OutcomeClass::Ok || results.len() >= 5 {
                    break;
                }
            }
            if !results.is_empty() {
                events.push(format!(
                    "{hhmm}  {:<17} probes of {endpoint}: {}",
                    "platform",
                    results.join(", ")
                ));
            }
        }
        // The orchestrator resumes suspended sessions whose providers are back.
        if let Ok(ready) = block_on(engine.ready_to_resume()) {
            for r in ready {
                if let Some(token) = tokens.remove(r.session.as_str()) {
                    if block_on(engine.resume(&r.session, &token)).is_ok() {
                        events.push(format!("{hhmm}  {:<17} {} resumed", r.tenant, r.session));
                    }
                }
            }
        }
        // A risk officer answers approval requests two minutes after they are raised.
        if let Ok(pending) = block_on(engine.pending_approvals()) {
            for p in pending {
                if now.duration_since(p.requested_at) >= Duration::from_secs(120)
                    && block_on(engine.approve(p.ticket, "risk-officer-17")).is_ok()
                {
                    events.push(format!(
                        "{hhmm}  {:<17} switch to tier {} approved by risk-officer-17 ({})",
                        p.tenant, p.to, p.ticket
                    ));
                }
            }
        }
        for (agent, t) in AGENTS.iter().zip(tallies.iter_mut()) {
            let call = Call::new(agent.tenant, agent.task, json!({"step": minute}))
                .session(agent.session)
                .state(json!({"goal": agent.task, "step": minute}));
            let mark = match block_on(engine.call(call)) {
                CallResult::Completed(c) => {
                    t.calls += 1;
                    *t.by_tier.entry(c.served_by.tier).or_default() += 1;
                    let ep = catalog.get(c.served_by.endpoint.as_str());
                    let u = c.response.usage;
                    t.cost += ep.map_or(0.0, |e| e.pricing.cost(u.input_tokens, u.output_tokens));
                    t.primary_cost += catalog
                        .get(PRIMARY[0])
                        .map_or(0.0, |e| e.pricing.cost(u.input_tokens, u.output_tokens));
                    if c.degraded {
                        t.degraded += 1;
                    }
                    char::from_digit(c.served_by.tier, 10).unwrap_or('?')
                }
                CallResult::Suspended {
                    resume_token,
                    reason,
                    ..
                } => {
                    if tokens.insert(agent.session, resume_token).is_none() {
                        t.suspended += 1;
                        events.push(format!(
                            "{hhmm}  {:<17} {} suspended: {reason}",
                            agent.tenant, agent.session
                        ));
                    }
                    'S'
                }
                CallResult::AwaitingApproval {
                    ticket,
                    proposed_tier,
                    ..
                } => {
                    if t.timeline.ends_with('A') {
                        'A'
                    } else {
                        t.approvals += 1;
                        events.push(format!(
                            "{hhmm}  {:<17} {} asks approval to move to tier {proposed_tier} ({ticket})",
                            agent.tenant, agent.session
                        ));
                        'A'
                    }
                }
                CallResult::Rejected(r) => {
                    t.rejected += 1;
                    events.push(format!(
                        "{hhmm}  {:<17} {} rejected: {}",
                        agent.tenant, agent.session, r.message
                    ));
                    'R'
                }
            };
            t.timeline.push(mark);
        }
    }

    println!(
        "Tier per minute (0-3 = tier served, S = suspended, A = awaiting approval, R = rejected):"
    );
    println!(
        "  {:<17} {:<23} 01:55    02:00    02:05    02:10    02:15    02:20    02:25    02:30",
        "", ""
    );
    for (agent, t) in AGENTS.iter().zip(&tallies) {
        println!("  {:<17} {:<23} {}", agent.tenant, agent.task, t.timeline);
    }
    println!("\nWhat happened and why:");
    for e in &events {
        println!("  {e}");
    }

    let records = audit.records();
    println!();
    match verify(&records) {
        Ok(report) => println!("Audit log: {report}"),
        Err(e) => println!("Audit log DOES NOT VERIFY: {e}"),
    }
    let mut kinds: BTreeMap<&str, u32> = BTreeMap::new();
    for r in &records {
        *kinds.entry(r.event.kind.name()).or_default() += 1;
    }
    let summary: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} x{n}")).collect();
    println!("  {}", summary.join(", "));
    if let Some(r) = records
        .iter()
        .find(|r| matches!(r.event.kind, AuditEventKind::Suspension { .. }))
    {
        let consent = r.event.consent.as_ref().map_or("none".to_string(), |c| {
            format!("{} v{}", c.agreement_id, c.version)
        });
        println!(
            "  e.g. seq {}: {} suspended under policy {} (consent {consent}), checkpoint v{}",
            r.seq,
            r.event.session.as_ref().map_or("?", |s| s.as_str()),
            r.event.policy.as_ref().map_or("?", |p| p.digest.short()),
            r.event.checkpoint.as_ref().map_or(0, |c| c.version)
        );
    }

    println!("\nPer tenant:");
    println!(
        "  {:<17} {:<23} {:>5} {:>16} {:>9} {:>5} {:>5} {:>5} {:>9} {:>9}",
        "tenant",
        "task",
        "calls",
        "served per tier",
        "degraded",
        "susp",
        "appr",
        "rej",
        "cost $",
        "saving $"
    );
    for (agent, t) in AGENTS.iter().zip(&tallies) {
        let tiers: Vec<String> = t.by_tier.iter().map(|(k, v)| format!("t{k}:{v}")).collect();
        let share = if t.calls == 0 {
            0.0
        } else {
            100.0 * f64::from(t.degraded) / f64::from(t.calls)
        };
        println!(
            "  {:<17} {:<23} {:>5} {:>16} {:>8.0}% {:>5} {:>5} {:>5} {:>9.3} {:>9.3}",
            agent.tenant,
            agent.task,
            t.calls,
            tiers.join(" "),
            share,
            t.suspended,
            t.approvals,
            t.rejected,
            t.cost,
            t.primary_cost - t.cost
        );
    }
    let hospital = &tallies[0];
    let below_floor = hospital.by_tier.keys().any(|&k| k > 1);
    println!(
        "\nThe hospital never went below its floor (tier 1): {}",
        if below_floor { "VIOLATED" } else { "held" }
    );
}
