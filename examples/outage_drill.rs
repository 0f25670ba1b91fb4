//! The outage drill: what each tenant's policy decides as a capacity event unfolds.
//!
//! Loads the example policy set (`examples/policies/`), then walks the article's 2 a.m. event
//! stage by stage — the primary provider throttles, then the second provider of the same model
//! degrades too, then everything is down — and prints, for each tenant and task, where its
//! policy sends the next call: which tier and endpoint, whether a human must approve first,
//! whether the user is told, or whether the session is suspended or rejected.
//!
//! This drill reads the *policies* (resolved exactly as the engine will read them); the live
//! engine, breakers and simulator arrive in later releases and will replace the static stages
//! with a simulated run over virtual time.
//!
//! Run: `cargo run --example outage_drill [POLICY_DIR]`

use std::collections::BTreeSet;
use std::path::PathBuf;

use downshift::EndpointId;
use downshift::policy::{ApprovalRule, Exhausted, Notification, PolicySet, ResolvedPolicy};

/// One stage of the event: which endpoints are unusable.
struct Stage {
    time: &'static str,
    what: &'static str,
    down: &'static [&'static str],
}

const STAGES: [Stage; 4] = [
    Stage {
        time: "01:55",
        what: "all providers healthy",
        down: &[],
    },
    Stage {
        time: "02:00",
        what: "primary provider throttles every call (429, retry-after 30s)",
        down: &["frontier-vendor-eu", "frontier-vendor-us"],
    },
    Stage {
        time: "02:07",
        what: "the second provider of the same model degrades too",
        down: &[
            "frontier-vendor-eu",
            "frontier-vendor-us",
            "frontier-cloud-eu",
            "frontier-cloud-us",
            "frontier-alt-us",
        ],
    },
    Stage {
        time: "02:15",
        what: "every hosted endpoint is down (self-hosted cluster drained for the batch)",
        down: &[
            "frontier-vendor-eu",
            "frontier-vendor-us",
            "frontier-cloud-eu",
            "frontier-cloud-us",
            "frontier-alt-us",
            "mid70b-selfhosted-eu",
            "mid70b-selfhosted-us",
            "small8b-selfhosted-eu",
            "small8b-selfhosted-us",
            "small8b-fastinfer-global",
        ],
    },
];

/// Where the policy sends a call when `down` endpoints are unusable, for a session that was on
/// the tenant's top tier.
fn outcome(view: &ResolvedPolicy, down: &BTreeSet<EndpointId>) -> String {
    let top = view.top_tier().unwrap_or(0);
    for tier in view.usable_tiers() {
        let Some(ep) = tier.endpoints.iter().find(|e| !down.contains(*e)) else {
            continue;
        };
        if tier.index == top {
            return format!("tier {} {:<12} {ep}", tier.index, tier.name);
        }
        if view.approval.requires(top, tier.index) {
            return format!(
                "AWAIT APPROVAL to move to tier {} {} ({ep}); meanwhile {}",
                tier.index,
                tier.name,
                match view.on_approval_timeout {
                    Exhausted::Suspend => "suspend on expiry",
                    Exhausted::Reject => "reject on expiry",
                }
            );
        }
        let notice = match view.notification {
            Notification::Silent => "silent",
            Notification::Digest => "user told in the digest",
            Notification::Realtime => "user told in real time",
        };
        return format!(
            "tier {} {:<12} {ep}  (degraded, {notice})",
            tier.index, tier.name
        );
    }
    match view.when_exhausted {
        Exhausted::Suspend if view.suspension.is_some() => {
            "SUSPEND the session (save state, resume when capacity returns)".to_string()
        }
        _ => "REJECT: nothing permissible is usable".to_string(),
    }
}

fn main() {
    let dir = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("examples/policies"), PathBuf::from);
    let set = match PolicySet::load(&[&dir]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("outage_drill: cannot load {}: {e}", dir.display());
            std::process::exit(2);
        }
    };
    println!(
        "downshift outage drill — policy set {}",
        set.digest().short()
    );
    println!(
        "{} tenants, {} endpoints in the catalog\n",
        set.tenants().len(),
        set.catalog().len()
    );
    let drills: [(&str, &[&str]); 3] = [
        ("hospital-network", &["clinical_summarization", "triage"]),
        ("marketing-agency", &["copywriting", "triage"]),
        (
            "fintech",
            &["risk_assessment", "summarization", "code_generation"],
        ),
    ];
    for stage in &STAGES {
        let down: BTreeSet<EndpointId> = stage.down.iter().map(EndpointId::new).collect();
        println!("{}  {}", stage.time, stage.what);
        for (tenant, tasks) in drills {
            let Ok(tp) = set.tenant(tenant) else {
                continue;
            };
            for task in tasks {
                let view = tp.view(task);
                println!("    {tenant:<17} {task:<23} -> {}", outcome(view, &down));
            }
        }
        println!();
    }
    println!("Why each tenant behaves as it does (resolved policy, cited by digest):");
    for (tenant, tasks) in drills {
        let Ok(tp) = set.tenant(tenant) else {
            continue;
        };
        for task in tasks {
            let v = tp.view(task);
            let permitted: Vec<String> = v
                .usable_tiers()
                .map(|t| format!("{} {}", t.index, t.name))
                .collect();
            let approval = match v.approval {
                ApprovalRule::Never => "no approval".to_string(),
                ApprovalRule::Always => "approval before any switch".to_string(),
                ApprovalRule::AtOrBelow(k) => format!("approval at tier {k} or below"),
            };
            println!(
                "    {tenant:<17} {task:<23} permits [{}], floor {}, {approval}, digest {}",
                permitted.join(", "),
                v.floor,
                v.digest.short()
            );
            if let Some(c) = &v.consent {
                println!(
                    "    {:<17} {:<23}    consent `{}` v{} (lowest tier {}) accepted by {}",
                    "",
                    "",
                    c.agreement_id,
                    c.version,
                    match &c.lowest_tier {
                        downshift::policy::TierRef::Index(i) => i.to_string(),
                        downshift::policy::TierRef::Name(n) => n.clone(),
                    },
                    c.accepted_by
                );
            }
        }
    }
}
