//! Shared builders for the audit tests.
#![allow(dead_code)]

use downshift::audit::{AuditEvent, AuditEventKind, ConsentRef, PolicyRef, ReplayOutcome};
use downshift::checkpoint::{CheckpointRef, TierAt};
use downshift::{
    ContentDigest, EndpointId, LayerId, SessionId, TaskKind, TenantId, Timestamp, TriggerKind,
    TriggerRecord,
};

/// Digests the events cite, computed once (the tests build tens of thousands of events).
struct Digests {
    policy: ContentDigest,
    policy_old: ContentDigest,
    resolved: ContentDigest,
    dpa: String,
    checkpoint: ContentDigest,
    diff: ContentDigest,
}

fn digests() -> &'static Digests {
    static D: std::sync::OnceLock<Digests> = std::sync::OnceLock::new();
    D.get_or_init(|| Digests {
        policy: ContentDigest::of_bytes(b"policy-new"),
        policy_old: ContentDigest::of_bytes(b"policy-old"),
        resolved: ContentDigest::of_bytes(b"resolved"),
        dpa: ContentDigest::of_bytes(b"dpa").to_string(),
        checkpoint: ContentDigest::of_bytes(b"checkpoint"),
        diff: ContentDigest::of_bytes(b"diff"),
    })
}

pub fn tier(i: u32) -> TierAt {
    let names = ["primary", "hot-standby", "mid", "minimal"];
    TierAt::new(i, names[(i as usize) % names.len()]).on(EndpointId::new(format!("ep-{i}-eu-west")))
}

pub fn trigger(measured: f64) -> TriggerRecord {
    TriggerRecord {
        kind: TriggerKind::LatencyP95,
        endpoint: Some(EndpointId::new("ep-0-eu-west")),
        measured,
        threshold: 3000.0,
        unit: "ms".to_string(),
        window_ms: Some(60_000),
        samples: 212,
        until: None,
        text: format!("p95 {measured} ms >= ceiling 3.0 s over 1m, 212 samples"),
    }
}

/// One of every event kind, chosen by `n`, with references filled in.
pub fn event(n: u64) -> AuditEvent {
    let kind = match n % 13 {
        0 => AuditEventKind::TierChange {
            from: tier(0),
            to: tier(1),
        },
        1 => AuditEventKind::Promotion {
            from: tier(2),
            to: tier(1),
        },
        2 => AuditEventKind::Suspension {
            from: tier(3),
            reason: "every permissible tier is unavailable".into(),
            retry_at: Some(Timestamp::from_millis(1_800_000_060_000)),
        },
        3 => AuditEventKind::Resume { to: tier(0) },
        4 => AuditEventKind::ApprovalRequested {
            from: tier(0),
            proposed: tier(2),
            expires_at: Some(Timestamp::from_millis(1_800_000_900_000)),
        },
        5 => AuditEventKind::ApprovalGranted {
            approver: "role:clinical-lead".into(),
        },
        6 => AuditEventKind::ApprovalDenied {
            approver: "acct:42".into(),
            reason: Some("keep the frontier model for this case".into()),
        },
        7 => AuditEventKind::ApprovalExpired {},
        8 => AuditEventKind::Rejection {
            reason: "floor reached: no permissible tier".into(),
        },
        9 => AuditEventKind::PolicyActivation {
            digest: digests().policy.clone(),
            previous: Some(digests().policy_old.clone()),
            mode: None,
        },
        10 => AuditEventKind::ContextTransform {
            from_tokens: 180_000,
            to_tokens: 30_000,
            target_window: 32_768,
            messages_dropped: 41,
            summarized: true,
            strategy: None,
            summarizer: None,
            dropped_digest: None,
        },
        11 => AuditEventKind::ReplayResult {
            step: format!("step-{n}"),
            original: tier(0),
            outcome: ReplayOutcome::Differs,
            diff: Some(digests().diff.clone()),
        },
        _ => AuditEventKind::StepReviewed {
            step: format!("step-{n}"),
            served_by: tier(2),
            reviewer: "role:reviewer".into(),
        },
    };
    let mut e = AuditEvent::new(
        Timestamp::from_millis(1_800_000_000_000 + (n % 1_000_000) * 250),
        kind,
    )
    .tenant(TenantId::new(format!("tenant-{}", n % 3)))
    .session(SessionId::new(format!("session-{}", n % 7)))
    .task(TaskKind::new("clinical_summarization"))
    .policy(PolicyRef {
        id: LayerId::new("tenant-0"),
        version: "2027-01-15".into(),
        digest: digests().resolved.clone(),
    });
    if n % 2 == 0 {
        e = e.trigger(trigger(4200.5 + n as f64 / 3.0));
    }
    if n % 3 == 0 {
        e = e
            .consent(ConsentRef {
                agreement_id: "DPA-2027-113".into(),
                version: "3".into(),
                document_digest: digests().dpa.clone(),
            })
            .checkpoint(CheckpointRef {
                session: SessionId::new(format!("session-{}", n % 7)),
                version: n,
                digest: digests().checkpoint.clone(),
            })
            .approval(format!("ticket-{n}"))
            .workflow(downshift::WorkflowId::new("wf-1"));
    }
    e
}
