//! Resolution of one layer's effective document into views, and the narrowing checks between a
//! layer and its parent.

use std::collections::BTreeSet;

use serde_json::Value;

use super::merge::has_path;
use super::model::{Approval, BudgetAction, Exhausted, PolicyLayer, TierRef};
use super::resolved::{
    ApprovalRule, BudgetRule, EndpointExclusion, ExcludedEndpoint, ResolvedBudget, ResolvedPolicy,
    ResolvedTier, TierExclusion,
};
use super::source::problem;
use crate::catalog::{Catalog, Deployment};
use crate::digest::ContentDigest;
use crate::error::{Problem, ProblemCode, Severity};
use crate::id::{TaskKind, TenantId};
use crate::trigger::TenantTriggers;

/// A parsed policy file.
#[derive(Debug, Clone)]
pub(crate) struct LayerDoc {
    pub(crate) file: String,
    pub(crate) layer: PolicyLayer,
    pub(crate) raw: Value,
    pub(crate) digest: ContentDigest,
}

/// Attributes a problem in an effective document to the file that set the value.
pub(crate) struct Attrib<'a> {
    /// Root (platform) first, the layer being resolved last.
    pub(crate) chain: &'a [&'a LayerDoc],
}

impl Attrib<'_> {
    pub(crate) fn own(&self) -> &LayerDoc {
        // The chain always holds at least the layer itself.
        self.chain[self.chain.len() - 1]
    }

    /// The file of the lowest layer that sets `keys`, or the layer's own file.
    pub(crate) fn file_for(&self, keys: &[&str]) -> &str {
        self.chain
            .iter()
            .rev()
            .find(|d| has_path(&d.raw, keys))
            .map_or(self.own().file.as_str(), |d| d.file.as_str())
    }

    pub(crate) fn err(
        &self,
        keys: &[&str],
        suffix: &str,
        code: ProblemCode,
        msg: String,
    ) -> Problem {
        problem(
            Severity::Error,
            code,
            self.file_for(keys),
            format!("$.{}{suffix}", keys.join(".")),
            msg,
        )
    }
}

/// Whether `region` satisfies one allowed-region pattern (`eu-west-1`, or a prefix `eu-*`).
#[must_use]
pub fn region_matches(pattern: &str, region: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => region
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix)),
        None => pattern.eq_ignore_ascii_case(region),
    }
}

fn resolve_ref(
    eff: &PolicyLayer,
    r: &TierRef,
    at: &Attrib<'_>,
    keys: &[&str],
    suffix: &str,
    out_of_range: ProblemCode,
    out: &mut Vec<Problem>,
) -> Option<u32> {
    let n = eff.tiers.len();
    match r {
        TierRef::Index(i) if (*i as usize) < n => Some(*i),
        TierRef::Index(i) => {
            out.push(at.err(
                keys,
                suffix,
                out_of_range,
                format!(
                    "tier {i} is outside the ladder, which has {n} tier(s) (0 to {})",
                    n.saturating_sub(1)
                ),
            ));
            None
        }
        TierRef::Name(name) => match eff.tiers.iter().position(|t| &t.name == name) {
            Some(i) => u32::try_from(i).ok(),
            None => {
                let names: Vec<&str> = eff.tiers.iter().map(|t| t.name.as_str()).collect();
                out.push(at.err(
                    keys,
                    suffix,
                    ProblemCode::UnknownTier,
                    format!(
                        "unknown tier `{name}`{}; the ladder is: {}",
                        did_you_mean(name, names.iter().copied()),
                        names.join(", ")
                    ),
                ));
                None
            }
        },
    }
}

/// ` (did you mean `x`?)` when a candidate is close.
pub(crate) fn did_you_mean<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    let best = candidates
        .map(|c| (strsim::levenshtein(word, c), c))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, c)) if d <= 3.max(word.len() / 3) => format!(" (did you mean `{c}`?)"),
        _ => String::new(),
    }
}

fn approval_rule(
    eff: &PolicyLayer,
    a: &Approval,
    at: &Attrib<'_>,
    keys: &[&str],
    out: &mut Vec<Problem>,
) -> Option<ApprovalRule> {
    Some(match a {
        Approval::Never => ApprovalRule::Never,
        Approval::Always => ApprovalRule::Always,
        Approval::AtOrBelow(r) => ApprovalRule::AtOrBelow(resolve_ref(
            eff,
            r,
            at,
            keys,
            ".at_or_below",
            ProblemCode::UnknownTier,
            out,
        )?),
    })
}

/// Computes the view of `eff` for `task` (`None`: the default view). Problems found are pushed
/// to `out`; `None` is returned when the view cannot be built.
pub(crate) fn compute_view(
    eff: &PolicyLayer,
    catalog: &Catalog,
    task: Option<&TaskKind>,
    at: &Attrib<'_>,
    out: &mut Vec<Problem>,
) -> Option<ResolvedPolicy> {
    let n = u32::try_from(eff.tiers.len()).ok()?;
    if n == 0 {
        return None;
    }
    let before = out.len();
    let c = &eff.constraints;
    let task_key = task.map(TaskKind::as_str).unwrap_or("");
    let ov = task.and_then(|t| c.tasks.get(t));
    let tkeys = |field: &'static str| -> [&str; 4] { ["constraints", "tasks", task_key, field] };

    let tenant_floor = match &c.floor {
        Some(r) => resolve_ref(
            eff,
            r,
            at,
            &["constraints", "floor"],
            "",
            ProblemCode::FloorOutOfRange,
            out,
        ),
        None => Some(n - 1),
    };
    let task_floor = match ov.and_then(|o| o.floor.as_ref()) {
        Some(r) => resolve_ref(
            eff,
            r,
            at,
            &tkeys("floor"),
            "",
            ProblemCode::FloorOutOfRange,
            out,
        ),
        None => tenant_floor,
    };
    let mut forbidden = BTreeSet::new();
    for (i, r) in c.forbid_tiers.iter().enumerate() {
        if let Some(x) = resolve_ref(
            eff,
            r,
            at,
            &["constraints", "forbid_tiers"],
            &format!("[{i}]"),
            ProblemCode::UnknownTier,
            out,
        ) {
            forbidden.insert(x);
        }
    }
    let allowed: Option<BTreeSet<u32>> = ov.and_then(|o| o.allowed_tiers.as_ref()).map(|list| {
        list.iter()
            .enumerate()
            .filter_map(|(i, r)| {
                resolve_ref(
                    eff,
                    r,
                    at,
                    &tkeys("allowed_tiers"),
                    &format!("[{i}]"),
                    ProblemCode::UnknownTier,
                    out,
                )
            })
            .collect()
    });
    let tenant_approval = approval_rule(eff, &c.approval, at, &["constraints", "approval"], out);
    let task_approval = match ov.and_then(|o| o.approval.as_ref()) {
        Some(a) => approval_rule(eff, a, at, &tkeys("approval"), out),
        None => tenant_approval,
    };
    let budget = match &c.budget {
        Some(b) => {
            let on_exceeded = match &b.on_exceeded {
                BudgetAction::DownshiftTo(r) => resolve_ref(
                    eff,
                    r,
                    at,
                    &["constraints", "budget", "on_exceeded"],
                    ".downshift_to",
                    ProblemCode::UnknownTier,
                    out,
                )
                .map(BudgetRule::DownshiftTo),
                BudgetAction::Suspend => Some(BudgetRule::Suspend),
                BudgetAction::Reject => Some(BudgetRule::Reject),
            };
            on_exceeded.map(|on_exceeded| {
                Some(ResolvedBudget {
                    tenant: b.tenant.clone(),
                    session_usd: b.session_usd,
                    workflow_usd: b.workflow_usd,
                    on_exceeded,
                })
            })
        }
        None => Some(None),
    };
    let consent_lowest = match &c.consent {
        Some(con) => resolve_ref(
            eff,
            &con.lowest_tier,
            at,
            &["constraints", "consent", "lowest_tier"],
            "",
            ProblemCode::UnknownTier,
            out,
        )
        .map(Some),
        None => Some(None),
    };
    let (
        Some(tenant_floor),
        Some(task_floor),
        Some(tenant_approval),
        Some(task_approval),
        Some(budget),
        Some(consent_lowest),
    ) = (
        tenant_floor,
        task_floor,
        tenant_approval,
        task_approval,
        budget,
        consent_lowest,
    )
    else {
        return None;
    };
    if out.len() > before {
        return None;
    }

    // A task override may only narrow the tenant's own settings.
    if task_floor > tenant_floor {
        out.push(at.err(
            &tkeys("floor"),
            "",
            ProblemCode::Widening,
            format!(
                "task `{task_key}` floor tier {task_floor} is below the tenant floor tier {tenant_floor}; a task override may only raise the floor"
            ),
        ));
    }
    let free = |rule: ApprovalRule| (0..n).filter(move |&i| !rule.requires(0, i));
    if free(task_approval).any(|i| tenant_approval.requires(0, i)) {
        out.push(at.err(
            &tkeys("approval"),
            "",
            ProblemCode::Widening,
            format!(
                "task `{task_key}` approval is looser than the tenant's; a task override may only require more approval"
            ),
        ));
    }
    let notification = ov.and_then(|o| o.notification).unwrap_or(c.notification);
    if notification < c.notification {
        out.push(at.err(
            &tkeys("notification"),
            "",
            ProblemCode::Widening,
            format!(
                "task `{task_key}` notification is quieter than the tenant's; a task override may only ask for more notice"
            ),
        ));
    }
    let floor = tenant_floor.min(task_floor);
    let approval = tenant_approval.stricter(task_approval);
    let min_quality = ov.and_then(|o| o.min_quality);

    let mut tiers = Vec::with_capacity(eff.tiers.len());
    for (i, tier) in eff.tiers.iter().enumerate() {
        let idx = u32::try_from(i).unwrap_or(u32::MAX);
        let excluded = if idx > floor {
            Some(TierExclusion::BelowFloor { floor })
        } else if forbidden.contains(&idx) {
            Some(TierExclusion::Forbidden)
        } else if allowed.as_ref().is_some_and(|a| !a.contains(&idx)) {
            Some(TierExclusion::NotAllowedForTask)
        } else if tier
            .tasks
            .as_ref()
            .is_some_and(|ts| task.is_none_or(|t| !ts.contains(t)))
        {
            Some(TierExclusion::TaskNotServed)
        } else {
            None
        };
        let mut endpoints = Vec::new();
        let mut endpoint_idx = Vec::new();
        let mut removed = Vec::new();
        if excluded.is_none() {
            for id in &tier.endpoints {
                let (Some(ix), Some(e)) = (catalog.index_of(id.as_str()), catalog.get(id.as_str()))
                else {
                    continue;
                };
                let reason = if c.forbid_endpoints.contains(id) {
                    Some(EndpointExclusion::Forbidden)
                } else if c
                    .allowed_endpoints
                    .as_ref()
                    .is_some_and(|a| !a.contains(id))
                {
                    Some(EndpointExclusion::NotAllowlisted)
                } else if c
                    .allowed_regions
                    .as_ref()
                    .is_some_and(|rs| !rs.iter().any(|p| region_matches(p, &e.region)))
                {
                    Some(EndpointExclusion::Residency {
                        region: e.region.clone(),
                    })
                } else if c.data.forbid_prompt_retention && e.data.retains_prompts {
                    Some(EndpointExclusion::RetainsPrompts)
                } else if c.data.self_hosted_only && e.data.deployment != Deployment::SelfHosted {
                    Some(EndpointExclusion::NotSelfHosted)
                } else if let Some(min) = min_quality {
                    let q = e.quality_for(task_key);
                    (q.is_none_or(|q| q < min)).then_some(EndpointExclusion::QualityBelowMinimum {
                        quality: q,
                        minimum: min,
                    })
                } else {
                    None
                };
                match reason {
                    Some(reason) => removed.push(ExcludedEndpoint {
                        endpoint: id.clone(),
                        reason,
                    }),
                    None => {
                        endpoints.push(id.clone());
                        endpoint_idx.push(ix);
                    }
                }
            }
        }
        tiers.push(ResolvedTier {
            index: idx,
            name: tier.name.as_str().into(),
            excluded,
            all_endpoints: tier.endpoints.clone(),
            endpoints,
            endpoint_idx,
            removed,
            selection: tier.selection,
        });
    }

    let when_exhausted = ov
        .and_then(|o| o.when_exhausted)
        .unwrap_or(c.when_exhausted);
    let mut sla = c.sla.clone();
    if let Some(d) = ov.and_then(|o| o.deadline) {
        sla.default_deadline = Some(d);
    }

    let view = ResolvedPolicy {
        tenant: TenantId::new(eff.id.as_str()),
        task: task.cloned(),
        layers: Vec::new(),
        digest: ContentDigest::of_bytes(b""),
        tiers,
        floor,
        approval,
        approval_timeout: c.approval_timeout,
        on_approval_timeout: c.on_approval_timeout,
        approval_lifetime: c.approval_lifetime,
        notification,
        when_exhausted,
        suspension: eff.suspension.clone(),
        sla,
        budget,
        min_quality,
        data: c.data.clone(),
        allowed_regions: c.allowed_regions.clone(),
        consent: c.consent.clone(),
        probe_eligible: c.probe_eligible,
        triggers: eff.triggers.clone(),
        recovery: eff.recovery.clone(),
        retry: eff.retry.clone(),
        continuity: eff.continuity.clone(),
        tenant_triggers: TenantTriggers::from_policy(&eff.triggers, c),
    };

    // Consent: no floor may permit what the tenant did not consent to.
    if let (Some(lowest), Some(con)) = (consent_lowest, &c.consent) {
        if floor > lowest {
            let keys: &[&str] =
                if task_floor < tenant_floor || ov.is_some_and(|o| o.floor.is_some()) {
                    &tkeys("floor")
                } else {
                    &["constraints", "floor"]
                };
            out.push(at.err(
                keys,
                "",
                ProblemCode::ConsentViolation,
                format!(
                    "{}floor tier {floor} permits degradation below tier {lowest}, the lowest tier consented to in agreement `{}` version {}",
                    task.map(|t| format!("task `{t}`: ")).unwrap_or_default(),
                    con.agreement_id,
                    con.version
                ),
            ));
        }
    }
    // A policy that suspends needs a suspension step.
    if view.suspension.is_none() {
        let needs = [
            (
                view.when_exhausted == Exhausted::Suspend,
                if ov.is_some_and(|o| o.when_exhausted.is_some()) {
                    tkeys("when_exhausted").to_vec()
                } else {
                    vec!["constraints", "when_exhausted"]
                },
                "`when_exhausted` is `suspend`",
            ),
            (
                view.approval != ApprovalRule::Never
                    && view.on_approval_timeout == Exhausted::Suspend,
                vec!["constraints", "on_approval_timeout"],
                "approvals are required and `on_approval_timeout` is `suspend` (the default)",
            ),
            (
                view.budget
                    .as_ref()
                    .is_some_and(|b| b.on_exceeded == BudgetRule::Suspend),
                vec!["constraints", "budget", "on_exceeded"],
                "the budget's `on_exceeded` is `suspend`",
            ),
        ];
        for (yes, keys, why) in needs {
            if yes {
                out.push(at.err(
                    &keys,
                    "",
                    ProblemCode::MissingSuspension,
                    format!(
                        "{why}, but the ladder has no `suspension` step; add one or choose `reject`"
                    ),
                ));
            }
        }
    }
    Some(view)
}

/// Checks that `child` permits nothing `parent` forbids. Both are views of the same task;
/// `child_eff` is the child's effective document (to tell task-level causes from tenant-level
/// ones, so one tenant-level mistake is reported once, not once per task view).
pub(crate) fn check_narrowing(
    parent: &ResolvedPolicy,
    parent_doc: &LayerDoc,
    child: &ResolvedPolicy,
    child_eff: &PolicyLayer,
    at: &Attrib<'_>,
    out: &mut Vec<Problem>,
) {
    let task = child.task.as_ref().map(TaskKind::as_str);
    let ov = task.and_then(|t| child_eff.constraints.tasks.get(t));
    let pname = format!("`{}` ({})", parent_doc.layer.id, parent_doc.file);
    // (keys, task-specific) for a constraint field.
    let field = |f: &'static str| -> (Vec<&str>, bool) {
        let task_level = ov.is_some_and(|o| match f {
            "floor" => o.floor.is_some(),
            "approval" => o.approval.is_some(),
            "notification" => o.notification.is_some(),
            "allowed_tiers" | "min_quality" => true,
            _ => false,
        });
        match (task, task_level) {
            (Some(t), true) => (vec!["constraints", "tasks", t, f], true),
            _ => (vec!["constraints", f], false),
        }
    };
    let suffix = |task_level: bool| match (task, task_level) {
        (Some(t), true) => format!(" for task `{t}`"),
        _ => String::new(),
    };
    for ct in child.usable_tiers() {
        let pt = parent.tiers.iter().find(|t| t.name == ct.name);
        for ep in &ct.endpoints {
            let ((keys, task_level), why): ((Vec<&str>, bool), String) = match pt {
                None => ((vec!["tiers"], false), "has no such tier".to_string()),
                Some(pt) => match &pt.excluded {
                    Some(ex) => {
                        let k = match ex {
                            TierExclusion::BelowFloor { .. } => field("floor"),
                            TierExclusion::Forbidden => {
                                (vec!["constraints", "forbid_tiers"], false)
                            }
                            TierExclusion::NotAllowedForTask => field("allowed_tiers"),
                            TierExclusion::TaskNotServed => (vec!["tiers"], true),
                        };
                        (k, format!("excludes that tier: {ex}"))
                    }
                    None => {
                        if pt.endpoints.contains(ep) {
                            continue;
                        }
                        match pt.removed.iter().find(|r| &r.endpoint == ep) {
                            Some(r) => {
                                let k = match &r.reason {
                                    EndpointExclusion::Residency { .. } => {
                                        (vec!["constraints", "allowed_regions"], false)
                                    }
                                    EndpointExclusion::NotAllowlisted => {
                                        (vec!["constraints", "allowed_endpoints"], false)
                                    }
                                    EndpointExclusion::Forbidden => {
                                        (vec!["constraints", "forbid_endpoints"], false)
                                    }
                                    EndpointExclusion::RetainsPrompts => (
                                        vec!["constraints", "data", "forbid_prompt_retention"],
                                        false,
                                    ),
                                    EndpointExclusion::NotSelfHosted => {
                                        (vec!["constraints", "data", "self_hosted_only"], false)
                                    }
                                    EndpointExclusion::QualityBelowMinimum { .. } => {
                                        field("min_quality")
                                    }
                                };
                                (k, format!("excludes it: {}", r.reason))
                            }
                            None => (
                                (vec!["tiers"], false),
                                "does not list it in that tier".to_string(),
                            ),
                        }
                    }
                },
            };
            out.push(at.err(
                &keys,
                "",
                ProblemCode::Widening,
                format!(
                    "permits endpoint `{ep}` at tier `{}`{}, but parent layer {pname} {why}; a lower layer may only narrow",
                    ct.name,
                    suffix(task_level)
                ),
            ));
        }
        // Approval: entering this tier from the top must need at least the parent's approval.
        if let Some(pt) = pt {
            if parent.approval.requires(0, pt.index) && !child.approval.requires(0, ct.index) {
                let (keys, task_level) = field("approval");
                out.push(at.err(
                    &keys,
                    "",
                    ProblemCode::Widening,
                    format!(
                        "switching to tier `{}`{} needs no approval here, but parent layer {pname} requires approval; a lower layer may only require more",
                        ct.name,
                        suffix(task_level)
                    ),
                ));
            }
        }
    }
    if child.notification < parent.notification {
        let (keys, task_level) = field("notification");
        out.push(at.err(
            &keys,
            "",
            ProblemCode::Widening,
            format!(
                "notification{} is quieter than parent layer {pname}'s; a lower layer may only ask for more notice",
                suffix(task_level)
            ),
        ));
    }
    if parent.suspension.as_ref().is_some_and(|s| s.notify)
        && child.suspension.as_ref().is_some_and(|s| !s.notify)
    {
        out.push(at.err(
            &["suspension", "notify"],
            "",
            ProblemCode::Widening,
            format!(
                "parent layer {pname} notifies users of a suspension; a lower layer cannot turn that off"
            ),
        ));
    }
    if child.probe_eligible && !parent.probe_eligible {
        out.push(at.err(
            &["constraints", "probe_eligible"],
            "",
            ProblemCode::Widening,
            format!(
                "parent layer {pname} makes this tenant ineligible for probes; a lower layer cannot turn that back on"
            ),
        ));
    }
    if let (Some(pr), Some(cr)) = (&parent.allowed_regions, &child.allowed_regions) {
        for (i, r) in cr.iter().enumerate() {
            let covered = pr.iter().any(|p| match r.strip_suffix('*') {
                Some(prefix) => p.strip_suffix('*').is_some_and(|pp| {
                    prefix
                        .to_ascii_lowercase()
                        .starts_with(&pp.to_ascii_lowercase())
                }),
                None => region_matches(p, r),
            });
            if !covered {
                out.push(at.err(
                    &["constraints", "allowed_regions"],
                    &format!("[{i}]"),
                    ProblemCode::Widening,
                    format!(
                        "region `{r}` is not allowed by parent layer {pname} (allowed: {}); a lower layer may only remove regions",
                        pr.join(", ")
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_patterns() {
        assert!(region_matches("eu-*", "eu-west-1"));
        assert!(region_matches("EU-*", "eu-west-1"));
        assert!(!region_matches("eu-*", "us-east-1"));
        assert!(!region_matches("eu-*", "global"));
        assert!(region_matches("global", "global"));
        assert!(!region_matches("eu-west-1", "eu-west-2"));
    }

    #[test]
    fn approval_rules() {
        assert!(!ApprovalRule::Never.requires(0, 3));
        assert!(ApprovalRule::Always.requires(0, 1));
        assert!(ApprovalRule::Always.requires(2, 1));
        assert!(!ApprovalRule::Always.requires(1, 1));
        assert!(ApprovalRule::AtOrBelow(1).requires(0, 1));
        assert!(ApprovalRule::AtOrBelow(1).requires(1, 2));
        assert!(!ApprovalRule::AtOrBelow(2).requires(0, 1));
        assert!(
            !ApprovalRule::AtOrBelow(1).requires(2, 1),
            "promotion needs none"
        );
        assert_eq!(
            ApprovalRule::AtOrBelow(2).stricter(ApprovalRule::AtOrBelow(1)),
            ApprovalRule::AtOrBelow(1)
        );
    }

    #[test]
    fn did_you_mean_suggests_close_names() {
        let c = ["frontier-eu", "mid70b-eu"];
        assert_eq!(
            did_you_mean("frontier-ue", c.iter().copied()),
            " (did you mean `frontier-eu`?)"
        );
        assert_eq!(did_you_mean("zzzzzzzzzzzzzz", c.iter().copied()), "");
    }
}
