//! The policy file format: one [`PolicyLayer`] per file, every layer of the article as data.
//!
//! A layer is a platform default, an application template or a tenant override. Layers chain
//! through `extends`; resolution deep-merges them (objects key by key, everything else replaced)
//! and then checks that each lower layer only *narrowed* what its parent allowed. Every field has
//! a default, so a tenant file need only say what differs. Unknown fields are errors.
//!
//! Invariant relied on by the merge: every enum that has an object form has exactly one object
//! variant, so merging two valid layers can never produce an object with two variant keys.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::DurationStr;
use crate::clock::Timestamp;
use crate::id::{EndpointId, LayerId, TaskKind};
use crate::trigger::OutcomeClass;

/// The `kind` tag of a policy file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// A policy layer file.
    Policy,
}

/// Which level of the hierarchy a layer sits at.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Platform defaults: exactly one per policy set; extends nothing.
    Platform,
    /// An application template: extends the platform or another template.
    Template,
    /// A tenant: extends a template or the platform. Its `id` is the tenant id.
    Tenant,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Platform => "platform",
            Level::Template => "template",
            Level::Tenant => "tenant",
        })
    }
}

/// One policy file: a layer of the policy hierarchy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyLayer {
    /// Optional editor hint pointing at `policy.schema.json`; ignored.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Must be `policy`.
    pub kind: PolicyKind,
    /// The layer's id. For a tenant layer this is the tenant id.
    pub id: LayerId,
    /// The layer's version label (cited in every decision and audit record).
    pub version: String,
    /// The layer's level.
    pub level: Level,
    /// The parent layer's id (required for templates and tenants, forbidden for the platform).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<LayerId>,
    /// Free text for reviewers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Platform only: the task kinds the platform knows. When set, any task kind named elsewhere
    /// must be one of these (catches a policy aimed at a misspelled task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_kinds: Option<Vec<TaskKind>>,
    /// Layer 1: what counts as a degradation event.
    #[serde(default)]
    pub triggers: Triggers,
    /// Layer 2: the ordered fallback ladder, index 0 the primary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<Tier>,
    /// Layer 2: the optional last step, suspending the session (the "queue" tier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspension: Option<Suspension>,
    /// Layer 3: the tenant's constraints.
    #[serde(default)]
    pub constraints: Constraints,
    /// Layer 4: recovery and promotion.
    #[serde(default)]
    pub recovery: Recovery,
    /// Retries within a call.
    #[serde(default)]
    pub retry: Retry,
    /// Context continuity when a session moves to another endpoint.
    #[serde(default)]
    pub continuity: Continuity,
    /// Platform only: herd control during platform-wide events.
    #[serde(default)]
    pub herd: Herd,
}

// ---------------------------------------------------------------------------------------------
// Layer 1: triggers

/// Layer 1: the conditions that make an endpoint unusable (for everyone or for one tenant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Triggers {
    /// Platform only: the shared circuit breaker that tracks each endpoint's health for all
    /// tenants.
    pub breaker: Breaker,
    /// Treat a provider's `retry-after` as "not before" for the endpoint.
    pub honour_retry_after: bool,
    /// The latency window each tenant's P95 ceiling (`constraints.sla.p95_ceiling`) is checked
    /// against.
    pub latency: LatencyWindow,
    /// Provider-reported queue depth at or above which the endpoint is unusable for this tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<u64>,
    /// Status-page states (Atlassian Statuspage values) at which the endpoint is unusable.
    pub status_page: Vec<StatusPageState>,
    /// Move off an endpoint *before* it starts returning 429s: unusable when the remaining share
    /// of its rate limit falls under these fractions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_remaining: Option<RateLimitRemaining>,
}

impl Default for Triggers {
    fn default() -> Self {
        Triggers {
            breaker: Breaker::default(),
            honour_retry_after: true,
            latency: LatencyWindow::default(),
            queue_depth: None,
            status_page: vec![StatusPageState::MajorOutage],
            rate_limit_remaining: None,
        }
    }
}

/// The size of a breaker's sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Window {
    /// The last N calls (a JSON number).
    Calls(u32),
    /// The calls of the last span of time (a duration string such as `"60s"`).
    Time(
        #[serde(with = "super::duration")]
        #[schemars(with = "DurationStr")]
        Duration,
    ),
}

/// The shared per-endpoint circuit breaker (resilience4j semantics: `>=` comparisons, a minimum
/// number of calls before any rate counts, slow calls counted whatever their outcome).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Breaker {
    /// Outcome classes that count as capacity failures. Only `rate_limited`, `overloaded`,
    /// `quota_exhausted`, `server_error` and `timeout` are allowed.
    pub capacity_errors: Vec<OutcomeClass>,
    /// The sliding window: a number of calls, or a duration.
    pub window: Window,
    /// No rate counts until the window holds at least this many calls.
    pub min_calls: u32,
    /// Open when the failure rate in the window is `>=` this fraction (0 < x <= 1).
    pub failure_rate: f64,
    /// Slow-call trigger: open when the share of calls slower than `latency` is `>=` `rate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_calls: Option<SlowCalls>,
    /// Open after this many capacity failures in a row, whatever the window says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            capacity_errors: vec![
                OutcomeClass::RateLimited,
                OutcomeClass::Overloaded,
                OutcomeClass::QuotaExhausted,
                OutcomeClass::ServerError,
                OutcomeClass::Timeout,
            ],
            window: Window::Calls(20),
            min_calls: 10,
            failure_rate: 0.5,
            slow_calls: None,
            consecutive_failures: Some(5),
        }
    }
}

/// The slow-call trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlowCalls {
    /// A call at least this slow is slow.
    #[serde(with = "super::duration")]
    #[schemars(with = "DurationStr")]
    pub latency: Duration,
    /// Open when the slow share of the window is `>=` this fraction (0 < x <= 1).
    pub rate: f64,
}

/// The latency window behind the tenants' P95 ceilings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LatencyWindow {
    /// How far back samples count.
    #[serde(with = "super::duration")]
    #[schemars(with = "DurationStr")]
    pub window: Duration,
    /// No percentile is trusted with fewer samples than this.
    pub min_samples: u32,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        LatencyWindow {
            window: Duration::from_secs(60),
            min_samples: 20,
        }
    }
}

/// A provider status-page component state (Atlassian Statuspage values).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum StatusPageState {
    /// All good.
    Operational,
    /// Slower than usual.
    DegradedPerformance,
    /// Some requests fail.
    PartialOutage,
    /// Down.
    MajorOutage,
    /// Planned maintenance.
    UnderMaintenance,
}

/// Thresholds on the provider's reported rate-limit headroom.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRemaining {
    /// Unusable when remaining requests / limit falls below this fraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests_fraction: Option<f64>,
    /// Unusable when remaining tokens / limit falls below this fraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tokens_fraction: Option<f64>,
}

// ---------------------------------------------------------------------------------------------
// Layer 2: tiers

/// A reference to a tier: its index in the ladder (0 = primary) or its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum TierRef {
    /// By position.
    Index(u32),
    /// By name.
    Name(String),
}

impl fmt::Display for TierRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TierRef::Index(i) => write!(f, "tier {i}"),
            TierRef::Name(n) => write!(f, "tier `{n}`"),
        }
    }
}

/// How a tier chooses among its healthy endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// The first usable endpoint in the order listed.
    #[default]
    InOrder,
    /// Of two usable endpoints drawn deterministically from the call, the one with the lower
    /// recent P95 (power of two choices).
    LeastLatency,
}

/// One rung of the ladder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Unique name (`primary`, `hot-standby`, `mid`, `minimal`).
    pub name: String,
    /// Catalog endpoint ids serving this tier.
    pub endpoints: Vec<EndpointId>,
    /// When set, only these task kinds may be served by this tier (a "minimal" tier for triage
    /// and user messages only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Vec<TaskKind>>,
    /// How to choose among this tier's usable endpoints.
    #[serde(default)]
    pub selection: Selection,
    /// Free text for reviewers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The suspension step (the article's Tier 4, "queue"): save state, notify, resume later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Suspension {
    /// A session suspended longer than this is given up (rejected) and its owner notified.
    #[serde(with = "super::duration")]
    #[schemars(with = "DurationStr")]
    pub max_duration: Duration,
    /// Notify the user when the session is suspended and when it resumes.
    #[serde(default = "yes")]
    pub notify: bool,
}

fn yes() -> bool {
    true
}

// ---------------------------------------------------------------------------------------------
// Layer 3: tenant constraints

/// How the user is told about a tier change.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Notification {
    /// Not told (the change is still audited and flagged in response metadata).
    #[default]
    Silent,
    /// Told after the fact, in a digest.
    Digest,
    /// Told in real time, as the change happens.
    Realtime,
}

/// When a tier change needs a human's approval first.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    /// Never: switch automatically.
    #[default]
    Never,
    /// Before entering the given tier or any tier below it.
    AtOrBelow(TierRef),
    /// Before any change of tier.
    Always,
}

/// What to do when nothing permissible is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Exhausted {
    /// Refuse the call with the reason.
    #[default]
    Reject,
    /// Suspend the session (needs a `suspension` step) and resume when capacity returns.
    Suspend,
}

/// How long a granted approval lets a session (or a tenant's sessionless traffic for one task)
/// use the approved tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalLifetime {
    /// The grant is spent by the switch it approved: the next switch to that tier asks again.
    /// (Sessionless calls are each routed from the top, so each is a switch of its own.)
    #[default]
    SingleSwitch,
    /// The grant holds while the session (or the task's sessionless traffic) stays on the
    /// approved tier, and is spent when it leaves it.
    WhileOnTier,
}

/// What a budget guardrail does when crossed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BudgetAction {
    /// Move to the given (cheaper) tier or lower while over budget.
    DownshiftTo(TierRef),
    /// Suspend the session until the window slides.
    Suspend,
    /// Reject calls while over budget.
    #[default]
    Reject,
}

/// Per-task-kind overrides ("tier 2 allowed for summarization, not for code generation").
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskOverride {
    /// Lowest permissible tier for this task (may only be higher than the tenant floor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<TierRef>,
    /// Only these tiers may serve this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_tiers: Option<Vec<TierRef>>,
    /// Approval rule for this task (may only be stricter than the tenant's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// Endpoints whose benchmarked quality for this task is below this are not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_quality: Option<f64>,
    /// Notification for this task (may only be louder than the tenant's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<Notification>,
    /// Default deadline for this task's calls.
    #[serde(
        default,
        with = "super::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<DurationStr>")]
    pub deadline: Option<Duration>,
    /// What to do for this task when nothing permissible is left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_exhausted: Option<Exhausted>,
}

/// The tenant's service level.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sla {
    /// An endpoint whose recent P95 latency is `>=` this is unusable for this tenant.
    #[serde(
        default,
        with = "super::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<DurationStr>")]
    pub p95_ceiling: Option<Duration>,
    /// Deadline of a call that does not bring its own.
    #[serde(
        default,
        with = "super::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<DurationStr>")]
    pub default_deadline: Option<Duration>,
}

/// A cost limit over a rolling window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowBudget {
    /// USD allowed per window.
    pub limit_usd: f64,
    /// The rolling window.
    #[serde(with = "super::duration")]
    #[schemars(with = "DurationStr")]
    pub window: Duration,
}

/// Budget guardrails.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// The tenant's spend over a rolling window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<WindowBudget>,
    /// One session's total spend, in USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_usd: Option<f64>,
    /// One workflow's total spend, in USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_usd: Option<f64>,
    /// What happens when a guardrail is crossed.
    #[serde(default)]
    pub on_exceeded: BudgetAction,
}

/// Data-handling constraints: which endpoints may see this tenant's prompts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataConstraints {
    /// Never use an endpoint that retains prompts.
    #[serde(default)]
    pub forbid_prompt_retention: bool,
    /// Only self-hosted endpoints (traffic never leaves the private side).
    #[serde(default)]
    pub self_hosted_only: bool,
}

/// The machine-readable consent record the tenant signed: what degradation it accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    /// The agreement's id (e.g. the service agreement or DPA number).
    pub agreement_id: String,
    /// The agreement's version.
    pub version: String,
    /// When it was accepted.
    pub accepted_at: Timestamp,
    /// Who accepted it (name, role or account).
    pub accepted_by: String,
    /// `sha256:<64 hex>` of the signed document.
    pub document_digest: String,
    /// The lowest tier the tenant consented to. The policy's floors may never permit lower.
    pub lowest_tier: TierRef,
}

/// Layer 3: the tenant's constraints. In a lower layer these may only narrow the parent's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Constraints {
    /// The lowest permissible tier (default: the last tier).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor: Option<TierRef>,
    /// Tiers this tenant never uses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub forbid_tiers: Vec<TierRef>,
    /// Regions (exact, or a prefix pattern ending in `*` such as `eu-*`) whose endpoints may be
    /// used. Absent: any region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_regions: Option<Vec<String>>,
    /// The only endpoints this tenant may use. Absent: any in the ladder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_endpoints: Option<Vec<EndpointId>>,
    /// Endpoints this tenant never uses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub forbid_endpoints: Vec<EndpointId>,
    /// Data-handling constraints.
    pub data: DataConstraints,
    /// How the user is told of a tier change.
    pub notification: Notification,
    /// When a switch needs approval first.
    pub approval: Approval,
    /// How long an approval request stays open.
    #[serde(with = "super::duration")]
    #[schemars(with = "DurationStr")]
    pub approval_timeout: Duration,
    /// What happens when an approval request expires.
    pub on_approval_timeout: Exhausted,
    /// How long a granted approval lasts.
    pub approval_lifetime: ApprovalLifetime,
    /// Per-task-kind overrides.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tasks: BTreeMap<TaskKind, TaskOverride>,
    /// Service level.
    pub sla: Sla,
    /// Budget guardrails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// The consent record the floor comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consent: Option<Consent>,
    /// What to do when nothing permissible is left.
    pub when_exhausted: Exhausted,
    /// May this tenant's calls be used as half-open probes of a recovering endpoint?
    pub probe_eligible: bool,
}

impl Default for Constraints {
    fn default() -> Self {
        Constraints {
            floor: None,
            forbid_tiers: Vec::new(),
            allowed_regions: None,
            allowed_endpoints: None,
            forbid_endpoints: Vec::new(),
            data: DataConstraints::default(),
            notification: Notification::Silent,
            approval: Approval::Never,
            approval_timeout: Duration::from_secs(15 * 60),
            on_approval_timeout: Exhausted::Suspend,
            approval_lifetime: ApprovalLifetime::SingleSwitch,
            tasks: BTreeMap::new(),
            sla: Sla::default(),
            budget: None,
            consent: None,
            when_exhausted: Exhausted::Reject,
            probe_eligible: true,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Layer 4: recovery

/// Half-open probing of a recovering endpoint (platform only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HalfOpen {
    /// Probe calls admitted platform-wide while half-open.
    pub probes: u32,
    /// A half-open endpoint that has not finished its probes within this re-opens.
    #[serde(with = "super::duration")]
    #[schemars(with = "DurationStr")]
    pub timeout: Duration,
}

impl Default for HalfOpen {
    fn default() -> Self {
        HalfOpen {
            probes: 3,
            timeout: Duration::from_secs(30),
        }
    }
}

/// How long an open breaker waits before probing (platform only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OpenWait {
    /// The first wait.
    #[serde(with = "super::duration")]
    #[schemars(with = "DurationStr")]
    pub initial: Duration,
    /// Each consecutive re-open multiplies the wait by this (>= 1).
    pub multiplier: f64,
    /// The wait never exceeds this.
    #[serde(with = "super::duration")]
    #[schemars(with = "DurationStr")]
    pub max: Duration,
    /// Random spread added to each wait, as a fraction (0 <= x < 1), seeded so replicas do not
    /// synchronise.
    pub jitter: f64,
}

impl Default for OpenWait {
    fn default() -> Self {
        OpenWait {
            initial: Duration::from_secs(30),
            multiplier: 2.0,
            max: Duration::from_secs(600),
            jitter: 0.2,
        }
    }
}

/// How far a promotion moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PromotionMode {
    /// One tier up at a time.
    #[default]
    OneTier,
    /// Straight to the highest healthy permitted tier.
    StraightUp,
}

/// When a degraded session moves back up (only ever between steps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Promotion {
    /// The higher tier must have been healthy this long.
    #[serde(with = "super::duration")]
    #[schemars(with = "DurationStr")]
    pub healthy_for: Duration,
    /// The session must have dwelt this long at its current tier.
    #[serde(with = "super::duration")]
    #[schemars(with = "DurationStr")]
    pub min_dwell: Duration,
    /// One tier at a time or straight up.
    pub mode: PromotionMode,
    /// Only promote after a probe of the higher tier succeeded.
    pub require_probe: bool,
}

impl Default for Promotion {
    fn default() -> Self {
        Promotion {
            healthy_for: Duration::from_secs(120),
            min_dwell: Duration::from_secs(300),
            mode: PromotionMode::OneTier,
            require_probe: false,
        }
    }
}

/// What happens to steps served on a degraded tier once capacity returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Replay {
    /// Nothing.
    None,
    /// The outputs stay flagged for review.
    #[default]
    Flag,
    /// Re-run them on the original tier and diff the outputs for review.
    Rerun,
}

/// Layer 4: recovery and promotion.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Recovery {
    /// Platform only: half-open probing.
    pub half_open: HalfOpen,
    /// Platform only: the open wait.
    pub open_wait: OpenWait,
    /// Promotion back up.
    pub promotion: Promotion,
    /// Replay of degraded steps.
    pub replay: Replay,
}

// ---------------------------------------------------------------------------------------------
// Retry

/// Backoff between attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    /// First wait.
    #[serde(with = "super::duration")]
    #[schemars(with = "DurationStr")]
    pub initial: Duration,
    /// Largest wait.
    #[serde(with = "super::duration")]
    #[schemars(with = "DurationStr")]
    pub max: Duration,
    /// Growth per attempt (>= 1).
    pub multiplier: f64,
    /// Random spread as a fraction (0 <= x < 1).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

/// Retries and fallbacks as a bounded share of calls (platform only), so a platform-wide outage
/// does not become a retry storm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudget {
    /// Extra attempts allowed per first attempt, as a fraction (0 < x <= 1).
    pub ratio: f64,
    /// Extra attempts always allowed per second, whatever the ratio says.
    pub min_per_second: f64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: 0.2,
            min_per_second: 10.0,
        }
    }
}

/// Retries within one call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    /// Attempts at one endpoint before falling to the next (1 = no retry: the fallback is the
    /// retry).
    pub attempts_per_endpoint: u32,
    /// Attempts per call across all endpoints, at most.
    pub max_attempts: u32,
    /// Backoff between attempts at the same endpoint.
    pub backoff: Backoff,
    /// Platform only: the shared retry budget.
    pub budget: RetryBudget,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts_per_endpoint: 1,
            max_attempts: 4,
            backoff: Backoff::default(),
            budget: RetryBudget::default(),
        }
    }
}

/// Herd control (platform only): how much of the traffic moved off its tenants' top tiers may
/// land on any one fallback endpoint, so a platform-wide outage does not flatten the standby.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Herd {
    /// Within each second, once `min_moved_calls` calls have been moved off their top tier, a
    /// fallback endpoint that already received this share of them is skipped for further moved
    /// calls (they go to the next endpoint or tier, as each tenant's policy allows). Absent: no
    /// cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_fallback_share: Option<f64>,
    /// The share applies only once this many calls were moved in the current second.
    pub min_moved_calls: u32,
}

impl Default for Herd {
    fn default() -> Self {
        Herd {
            max_fallback_share: None,
            min_moved_calls: 20,
        }
    }
}

/// Context continuity when a session moves to another endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Continuity {
    /// Allow fitting a session's context into a smaller window (dropping old items, summarizing)
    /// when it moves to an endpoint that cannot hold it. Without it, such endpoints are skipped.
    pub fit_to_smaller_window: bool,
    /// What a streamed answer does when its stream fails after output was already forwarded
    /// (a cut connection, a stall past the deadline, an error event mid-answer).
    pub mid_stream: MidStream,
    /// Output tokens kept free for the answer when fitting (capped at the target endpoint's
    /// maximum output; a call's own `requirements.output_tokens` wins when larger).
    pub reserve_output_tokens: u32,
    /// When messages must be dropped to fit, drop until what is kept is within this fraction of
    /// the budget (window minus reserved output), leaving the rest for a summary of what was
    /// dropped (0 < x <= 1; 1 = drop only what must go).
    pub summarize_at: f64,
    /// The tier (by name) whose endpoints write the summary of dropped messages. Absent: no
    /// summary is written, dropped messages are only reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summarizer: Option<String>,
    /// Summary calls one fitting may make (dropped messages are summarized in chunks that fit
    /// the summarizer's window, each folding the previous summary in), at least 1.
    pub max_summary_calls: u32,
    /// Without a summary (no summarizer usable, a summary call failed, too many chunks) the
    /// context is not sent: the call is suspended or rejected per `on_unfittable`. Default
    /// false: the fitted context is sent without the dropped messages, and the audit says so.
    pub require_summary: bool,
    /// What happens when the context cannot be fitted (nothing valid fits, fitting is not
    /// allowed, or a required summary failed): the engine never sends a request that cannot
    /// fit. `suspend` needs a session and a `suspension` step; otherwise the call is rejected.
    pub on_unfittable: Exhausted,
    /// What happens to items only one provider understands (an encrypted reasoning block) when
    /// the session moves to another provider.
    pub non_portable: NonPortablePolicy,
    /// When the engine checkpoints a session's agent state.
    pub checkpoint: CheckpointCadence,
}

impl Default for Continuity {
    fn default() -> Self {
        Continuity {
            fit_to_smaller_window: false,
            mid_stream: MidStream::default(),
            reserve_output_tokens: 4096,
            summarize_at: 0.8,
            summarizer: None,
            max_summary_calls: 8,
            require_summary: false,
            on_unfittable: Exhausted::Reject,
            non_portable: NonPortablePolicy::default(),
            checkpoint: CheckpointCadence::default(),
        }
    }
}

/// What happens to a session's non-portable items when it moves to another provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NonPortablePolicy {
    /// Remove them from the context sent to the other provider (they stay in the checkpoint).
    #[default]
    Strip,
    /// Keep the session on their provider: suspend instead of switching.
    Pin,
}

/// When the engine checkpoints a session's agent state. Before every tier change and on every
/// suspension it always does (so a switch or a suspension starts from a saved state); this adds
/// a regular cadence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointCadence {
    /// Also checkpoint after every N completed steps of a session (0 = only before tier
    /// changes and on suspension).
    pub every_steps: u32,
}

/// What a streamed answer does when its stream fails after output was already forwarded.
///
/// A failure before the first chunk is an ordinary failed attempt either way (the engine falls
/// back as for a call). A request error mid-stream (content filter and the like) is always
/// surfaced: it would fail the same way elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MidStream {
    /// End the stream with an error outcome that carries the partial output, flagged partial:
    /// never a clean completion.
    #[default]
    Surface,
    /// Route again (the failed endpoint counts as an attempt) and have the next endpoint
    /// continue the answer from the partial output; the result is flagged continued (and
    /// degraded when the fallback is below the tenant's top tier), and the tier change audited.
    Continue,
}
