//! The resolved form of a policy: one immutable [`ResolvedPolicy`] per (tenant, task kind) view.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::duration::format as fmt_dur;
use super::model::{
    ApprovalLifetime, Consent, Continuity, DataConstraints, Exhausted, Level, Notification,
    Recovery, Retry, Selection, Sla, Suspension, Triggers, WindowBudget,
};
use crate::catalog::EndpointIdx;
use crate::digest::ContentDigest;
use crate::id::{EndpointId, LayerId, TaskKind, TenantId};
use crate::trigger::TenantTriggers;

/// One layer a resolved policy was built from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerRef {
    /// The layer id.
    pub id: LayerId,
    /// Its version label.
    pub version: String,
    /// Its level.
    pub level: Level,
    /// The file it was read from (not part of the digest: the same policy checked out elsewhere
    /// has the same digest).
    pub source: String,
    /// Digest of the layer's own content (canonical form of the parsed file).
    pub digest: ContentDigest,
}

/// When a tier change needs approval, with tier references resolved to indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalRule {
    /// Never.
    Never,
    /// Before moving down into this tier index or any below it.
    AtOrBelow(u32),
    /// Before any change of tier.
    Always,
}

impl ApprovalRule {
    /// Whether moving a session from tier `from` to tier `to` needs approval first.
    #[must_use]
    pub const fn requires(self, from: u32, to: u32) -> bool {
        match self {
            ApprovalRule::Never => false,
            ApprovalRule::Always => from != to,
            ApprovalRule::AtOrBelow(k) => to > from && to >= k,
        }
    }

    /// The strictest of two rules.
    #[must_use]
    pub fn stricter(self, other: ApprovalRule) -> ApprovalRule {
        match (self, other) {
            (ApprovalRule::Always, _) | (_, ApprovalRule::Always) => ApprovalRule::Always,
            (ApprovalRule::AtOrBelow(a), ApprovalRule::AtOrBelow(b)) => {
                ApprovalRule::AtOrBelow(a.min(b))
            }
            (ApprovalRule::AtOrBelow(a), ApprovalRule::Never)
            | (ApprovalRule::Never, ApprovalRule::AtOrBelow(a)) => ApprovalRule::AtOrBelow(a),
            (ApprovalRule::Never, ApprovalRule::Never) => ApprovalRule::Never,
        }
    }
}

/// What a budget guardrail does, with tier references resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetRule {
    /// Move to this tier index or lower while over budget.
    DownshiftTo(u32),
    /// Suspend the session.
    Suspend,
    /// Reject calls.
    Reject,
}

/// Budget guardrails, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResolvedBudget {
    /// The tenant's rolling-window limit.
    pub tenant: Option<WindowBudget>,
    /// Per-session limit in USD.
    pub session_usd: Option<f64>,
    /// Per-workflow limit in USD.
    pub workflow_usd: Option<f64>,
    /// What happens when crossed.
    pub on_exceeded: BudgetRule,
}

/// Why a whole tier is not permitted in a view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum TierExclusion {
    /// Below the tenant's (or the task's) floor.
    BelowFloor {
        /// The floor's tier index.
        floor: u32,
    },
    /// Listed in `forbid_tiers`.
    Forbidden,
    /// Not in the task override's `allowed_tiers`.
    NotAllowedForTask,
    /// The tier serves only other task kinds.
    TaskNotServed,
}

/// Why an endpoint of a permitted tier is not usable in a view.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum EndpointExclusion {
    /// Its region is not in the tenant's allowed regions (data residency).
    Residency {
        /// The endpoint's region.
        region: String,
    },
    /// Not in the tenant's endpoint allowlist.
    NotAllowlisted,
    /// In the tenant's `forbid_endpoints`.
    Forbidden,
    /// The provider retains prompts and the tenant forbids that.
    RetainsPrompts,
    /// Not self-hosted and the tenant requires self-hosted.
    NotSelfHosted,
    /// Benchmarked quality for the task is below the task's minimum.
    QualityBelowMinimum {
        /// The endpoint's quality for the task, if benchmarked.
        quality: Option<f64>,
        /// The minimum.
        minimum: f64,
    },
}

impl std::fmt::Display for EndpointExclusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointExclusion::Residency { region } => {
                write!(f, "region `{region}` not in allowed regions")
            }
            EndpointExclusion::NotAllowlisted => f.write_str("not in the tenant's allowlist"),
            EndpointExclusion::Forbidden => f.write_str("forbidden by the tenant"),
            EndpointExclusion::RetainsPrompts => {
                f.write_str("provider retains prompts; tenant forbids prompt retention")
            }
            EndpointExclusion::NotSelfHosted => {
                f.write_str("not self-hosted; tenant requires self-hosted")
            }
            EndpointExclusion::QualityBelowMinimum { quality, minimum } => match quality {
                Some(q) => write!(f, "quality {q} below minimum {minimum}"),
                None => write!(f, "no benchmarked quality; minimum is {minimum}"),
            },
        }
    }
}

impl std::fmt::Display for TierExclusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TierExclusion::BelowFloor { floor } => write!(f, "below the floor (tier {floor})"),
            TierExclusion::Forbidden => f.write_str("forbidden by the tenant"),
            TierExclusion::NotAllowedForTask => f.write_str("not allowed for this task"),
            TierExclusion::TaskNotServed => f.write_str("serves only other task kinds"),
        }
    }
}

/// An endpoint removed from a view, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExcludedEndpoint {
    /// The endpoint.
    pub endpoint: EndpointId,
    /// Why.
    #[serde(flatten)]
    pub reason: EndpointExclusion,
}

/// One rung of a resolved ladder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResolvedTier {
    /// Position in the ladder (0 = primary).
    pub index: u32,
    /// Name.
    pub name: Arc<str>,
    /// `None` when the tier is permitted in this view; otherwise why not.
    pub excluded: Option<TierExclusion>,
    /// Every endpoint the tier lists, in policy order.
    pub all_endpoints: Vec<EndpointId>,
    /// Endpoints usable in this view (empty when the tier is excluded), in policy order.
    pub endpoints: Vec<EndpointId>,
    /// The same endpoints as catalog indices, for the hot path.
    #[serde(skip)]
    pub endpoint_idx: Vec<EndpointIdx>,
    /// Endpoints of the tier removed in this view, and why.
    pub removed: Vec<ExcludedEndpoint>,
    /// How to choose among the usable endpoints.
    pub selection: Selection,
}

impl ResolvedTier {
    /// Whether the tier may be used in this view and has at least one usable endpoint.
    #[must_use]
    pub fn usable(&self) -> bool {
        self.excluded.is_none() && !self.endpoint_idx.is_empty()
    }
}

/// The immutable, resolved policy of one tenant for one task kind (or the tenant's default view
/// for task kinds without their own rules). Every decision and audit record cites its `digest`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResolvedPolicy {
    /// The tenant.
    pub tenant: TenantId,
    /// The task kind this view is for; `None` for the default view.
    pub task: Option<TaskKind>,
    /// The layers it was resolved from, platform first.
    pub layers: Vec<LayerRef>,
    /// Stable SHA-256 digest over the canonical form of this view: the same policy written with
    /// other key order, whitespace, descriptions or file names has the same digest; any change to
    /// what the view permits or how it behaves (or a layer's id or version) gives a new one.
    pub digest: ContentDigest,
    /// The ladder, every tier with its status in this view.
    pub tiers: Vec<ResolvedTier>,
    /// The lowest permissible tier index.
    pub floor: u32,
    /// When a switch needs approval.
    pub approval: ApprovalRule,
    /// How long an approval request stays open.
    #[serde(serialize_with = "ser_dur")]
    pub approval_timeout: Duration,
    /// What happens when it expires.
    pub on_approval_timeout: Exhausted,
    /// How long a granted approval lasts (not serialized at its default, so views that do not
    /// set it keep their digests).
    #[serde(skip_serializing_if = "is_single_switch")]
    pub approval_lifetime: ApprovalLifetime,
    /// How the user is told of a tier change.
    pub notification: Notification,
    /// What to do when nothing permissible is usable.
    pub when_exhausted: Exhausted,
    /// The suspension step, if the ladder has one.
    pub suspension: Option<Suspension>,
    /// Service level (the task's deadline applied).
    pub sla: Sla,
    /// Budget guardrails.
    pub budget: Option<ResolvedBudget>,
    /// Minimum benchmarked quality for this task.
    pub min_quality: Option<f64>,
    /// Data-handling constraints.
    pub data: DataConstraints,
    /// Allowed regions (residency), if restricted.
    pub allowed_regions: Option<Vec<String>>,
    /// The consent record.
    pub consent: Option<Consent>,
    /// May this tenant's calls probe a recovering endpoint?
    pub probe_eligible: bool,
    /// Layer 1 settings.
    pub triggers: Triggers,
    /// Layer 4 settings.
    pub recovery: Recovery,
    /// Retry settings.
    pub retry: Retry,
    /// Continuity settings.
    pub continuity: Continuity,
    /// The tenant's trigger thresholds in the form the evaluator checks (derived from `triggers`,
    /// `sla` and `budget`; precomputed so routing builds nothing per call).
    #[serde(skip)]
    pub tenant_triggers: TenantTriggers,
}

fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&fmt_dur(*d))
}

impl ResolvedPolicy {
    /// The tier a session gets when every provider is healthy: the first usable tier.
    #[must_use]
    pub fn top_tier(&self) -> Option<u32> {
        self.tiers.iter().find(|t| t.usable()).map(|t| t.index)
    }

    /// Usable tiers in ladder order.
    pub fn usable_tiers(&self) -> impl Iterator<Item = &ResolvedTier> {
        self.tiers.iter().filter(|t| t.usable())
    }

    /// The tier at an index.
    #[must_use]
    pub fn tier(&self, index: u32) -> Option<&ResolvedTier> {
        self.tiers.get(index as usize)
    }

    /// Digest of what the view permits and how it behaves: its canonical JSON without its
    /// identity (tenant, task, layers, digest). Tenants of one template with the same
    /// constraints have the same content digest, so a policy set computes it once per distinct
    /// content.
    pub(crate) fn content_digest(&self) -> ContentDigest {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(obj) = v.as_object_mut() {
            for k in ["digest", "tenant", "task", "layers"] {
                obj.remove(k);
            }
        }
        ContentDigest::of_bytes(crate::digest::canonical_json(&v).as_bytes())
    }

    /// Sets `digest`: SHA-256 over the tenant, the task, the layers (id, version, level and
    /// content digest; not the file name) and the `content` digest (from
    /// [`ResolvedPolicy::content_digest`]), each part length-prefixed.
    pub(crate) fn compute_digest(&mut self, content: &ContentDigest) {
        let levels: Vec<String> = self.layers.iter().map(|l| l.level.to_string()).collect();
        let mut parts: Vec<&[u8]> = vec![
            b"downshift/view/2",
            self.tenant.as_str().as_bytes(),
            self.task
                .as_ref()
                .map_or(b"\xff" as &[u8], |t| t.as_str().as_bytes()),
            content.as_str().as_bytes(),
        ];
        for (l, level) in self.layers.iter().zip(&levels) {
            parts.extend([
                l.id.as_str().as_bytes(),
                l.version.as_bytes(),
                level.as_bytes(),
                l.digest.as_str().as_bytes(),
            ]);
        }
        self.digest = ContentDigest::of_parts(parts);
    }
}

fn is_single_switch(l: &ApprovalLifetime) -> bool {
    *l == ApprovalLifetime::SingleSwitch
}
