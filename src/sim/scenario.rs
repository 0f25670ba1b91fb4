//! The scenario file format: the policy files a simulation loads, the providers' faults, the
//! workload, the approvers and the expectations. `docs/scenario.schema.json` is its JSON Schema
//! (a test keeps it current); `docs/simulation.md` is the reference.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::SimError;
use crate::policy::StatusPageState;
use crate::policy::duration::DurationStr;

/// A scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The JSON Schema this file follows (ignored by the simulator).
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Always `"scenario"`.
    pub kind: ScenarioKind,
    /// A short name, printed in reports.
    pub name: String,
    /// What the scenario shows, for the reader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Policy and catalog files or directories, relative to the scenario file.
    pub policies: Vec<String>,
    /// A candidate policy set (files or directories, relative to the scenario file) evaluated
    /// in shadow alongside the active one: the report lists the calls where they disagree.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadow_policies: Vec<String>,
    /// When virtual time starts (RFC 3339, UTC).
    pub start: String,
    /// How long the workload runs; calls in flight at the end are finished.
    #[serde(with = "crate::policy::duration")]
    #[schemars(with = "DurationStr")]
    pub duration: Duration,
    /// The seed of every random choice (arrivals, latency jitter, error draws, the engine's
    /// jitter): the same scenario and seed give the same report on every machine.
    #[serde(default)]
    pub seed: u64,
    /// How often the platform's orchestrator runs: probes due, approvals answered, sessions
    /// resumed, provider signals pushed (default 10s).
    #[serde(
        default = "default_tick",
        with = "crate::policy::duration",
        skip_serializing_if = "is_default_tick"
    )]
    #[schemars(with = "DurationStr")]
    pub tick: Duration,
    /// The width of one column of the tier timeline (default 1m).
    #[serde(
        default = "default_bucket",
        with = "crate::policy::duration",
        skip_serializing_if = "is_default_bucket"
    )]
    #[schemars(with = "DurationStr")]
    pub bucket: Duration,
    /// How fast each endpoint answers when nothing is wrong (default: 2s, jitter 0.25 for every
    /// endpoint).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoints: BTreeMap<String, EndpointBehaviour>,
    /// What goes wrong, when.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<Fault>,
    /// Streams of agent sessions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workload: Vec<Workload>,
    /// Sessions started at given times.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arrivals: Vec<Arrival>,
    /// Who answers approval requests, how and when. A tenant without an approver never
    /// answers (its requests expire).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<Approver>,
    /// What must hold; the run fails when any does not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expectations: Vec<Expectation>,
}

/// The file kind tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScenarioKind {
    /// A simulation scenario.
    Scenario,
}

fn default_tick() -> Duration {
    Duration::from_secs(10)
}
fn is_default_tick(d: &Duration) -> bool {
    *d == default_tick()
}
fn default_bucket() -> Duration {
    Duration::from_secs(60)
}
fn is_default_bucket(d: &Duration) -> bool {
    *d == default_bucket()
}

/// An endpoint's normal behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointBehaviour {
    /// Typical time to answer.
    #[serde(with = "crate::policy::duration")]
    #[schemars(with = "DurationStr")]
    pub latency: Duration,
    /// Spread around `latency`, as a fraction (0.25: ±25%, uniformly).
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

fn default_jitter() -> f64 {
    0.25
}

impl Default for EndpointBehaviour {
    fn default() -> Self {
        EndpointBehaviour {
            latency: Duration::from_secs(2),
            jitter: default_jitter(),
        }
    }
}

/// A fault window: from `from` until `until`, the listed endpoints misbehave as described.
/// Several windows may overlap: the first failing one in file order decides an error, added
/// latencies add up, the last signal wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// The endpoints (catalog ids).
    pub endpoints: Vec<String>,
    /// Start (a time: `"02:00"`, `"02:00:30"`, `"+5m"` after the start, or RFC 3339).
    pub from: String,
    /// End (exclusive; same forms as `from`).
    pub until: String,
    /// The provider's error response: a real provider shape, classified by
    /// [`classify_http`](crate::trigger::classify_http) like any response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorResponse>,
    /// The share of calls that fail with `error` (default 1.0).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub error_rate: f64,
    /// How long a failing call takes before the error comes back (default 300ms).
    #[serde(
        default,
        with = "crate::policy::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<DurationStr>")]
    pub error_latency: Option<Duration>,
    /// Latency added to every answer.
    #[serde(
        default,
        with = "crate::policy::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<DurationStr>")]
    pub added_latency: Option<Duration>,
    /// The provider's reported queue depth, pushed as a signal at every tick of the window
    /// (and 0 at the first tick after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<u64>,
    /// The provider's status page, pushed as a signal at every tick of the window (and
    /// `operational` at the first tick after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_page: Option<StatusPageState>,
    /// Rate-limit headroom reported on successful answers (`x-ratelimit-*` headers), falling
    /// linearly over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitFault>,
    /// Streamed answers are cut after this many chunks with `error` (or a 529 overloaded
    /// event when no `error` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_stream_after: Option<u32>,
}

fn one() -> f64 {
    1.0
}
fn is_one(x: &f64) -> bool {
    (*x - 1.0).abs() < f64::EPSILON
}

/// An error response: a named real provider shape, or one written out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ErrorResponse {
    /// A named shape.
    Preset(Preset),
    /// Status, headers and body as the provider sends them.
    Http(HttpResponse),
}

/// Real provider error responses (status, headers and body as the providers send them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// OpenAI 429 `rate_limit_exceeded` with `retry-after: 30` and exhausted `x-ratelimit-*`.
    OpenaiRateLimited,
    /// OpenAI 429 `insufficient_quota` (not retryable).
    OpenaiQuotaExhausted,
    /// OpenAI 503 "The engine is currently overloaded".
    OpenaiOverloaded,
    /// Anthropic 429 `rate_limit_error` with `retry-after: 30`.
    AnthropicRateLimited,
    /// Anthropic 529 `overloaded_error`.
    AnthropicOverloaded,
    /// Azure OpenAI 429 with `retry-after-ms`.
    AzureRateLimited,
    /// AWS Bedrock `ThrottlingException`.
    BedrockThrottled,
    /// Google Gemini 503 `UNAVAILABLE`.
    GeminiUnavailable,
    /// A plain 500.
    ServerError,
    /// A 504 from a gateway.
    GatewayTimeout,
}

/// An HTTP error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Headers (names case-insensitive).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The body: a JSON value, or a string sent as is.
    #[serde(default)]
    pub body: serde_json::Value,
}

/// Rate-limit headroom falling over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFault {
    /// Requests allowed per window.
    pub requests_limit: u64,
    /// Requests remaining at the window's start.
    pub remaining_from: u64,
    /// Requests remaining at the window's end.
    pub remaining_to: u64,
}

/// A stream of agent sessions of one tenant and task.
///
/// With `sessions`, that many sessions run side by side from `from` to `until`, each starting
/// a step every `every` (or right after the previous one, if it took longer). With
/// `per_minute`, new sessions of `steps` steps arrive at that rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// The tenant.
    pub tenant: String,
    /// The task kind.
    pub task: String,
    /// Long-running sessions side by side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<u32>,
    /// New sessions per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_minute: Option<f64>,
    /// Arrivals at exponentially distributed gaps (Poisson) instead of evenly spaced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub poisson: bool,
    /// Steps per session (default: unlimited with `sessions`, 1 with `per_minute`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    /// Time from one step's start to the next's (default 1m).
    #[serde(
        default,
        with = "crate::policy::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<DurationStr>")]
    pub every: Option<Duration>,
    /// Start (default: the scenario's start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// End of arrivals and of new steps (default: the scenario's end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Session names: `prefix` + a number (default `tenant/task/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_prefix: Option<String>,
    /// The request's size and needs.
    #[serde(default)]
    pub request: RequestShape,
    /// Each call's deadline, from its start (default: the policy's).
    #[serde(
        default,
        with = "crate::policy::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<DurationStr>")]
    pub deadline: Option<Duration>,
    /// Use the streaming call ([`Engine::call_stream`](crate::engine::Engine::call_stream)).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

/// One session started at a given time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Arrival {
    /// When (same forms as a fault's `from`).
    pub at: String,
    /// The tenant.
    pub tenant: String,
    /// The task kind.
    pub task: String,
    /// The session's name (default `tenant/task/a<N>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Steps (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    /// Time from one step's start to the next's (default 1m).
    #[serde(
        default,
        with = "crate::policy::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<DurationStr>")]
    pub every: Option<Duration>,
    /// The request's size and needs.
    #[serde(default)]
    pub request: RequestShape,
    /// Each call's deadline, from its start.
    #[serde(
        default,
        with = "crate::policy::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<DurationStr>")]
    pub deadline: Option<Duration>,
    /// Use the streaming call.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

/// A request's size and needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestShape {
    /// Input tokens (default 6000); each step of a session adds `growth`.
    #[serde(default = "default_input")]
    pub input_tokens: u32,
    /// Output tokens (default 800).
    #[serde(default = "default_output")]
    pub output_tokens: u32,
    /// Input tokens each later step of a session adds (its context grows; default 0).
    #[serde(default)]
    pub growth: u32,
    /// Uses tools.
    #[serde(default)]
    pub tools: bool,
    /// Sends images.
    #[serde(default)]
    pub vision: bool,
}

fn default_input() -> u32 {
    6_000
}
fn default_output() -> u32 {
    800
}

impl Default for RequestShape {
    fn default() -> Self {
        RequestShape {
            input_tokens: default_input(),
            output_tokens: default_output(),
            growth: 0,
            tools: false,
            vision: false,
        }
    }
}

/// Who answers a tenant's approval requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Approver {
    /// The tenant.
    pub tenant: String,
    /// The approver's reference, as written to the audit log.
    pub name: String,
    /// What they answer.
    pub answer: ApproverAnswer,
    /// How long after the request they answer (default 2m).
    #[serde(
        default,
        with = "crate::policy::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<DurationStr>")]
    pub after: Option<Duration>,
}

/// An approver's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApproverAnswer {
    /// Approve the switch.
    Approve,
    /// Deny it.
    Deny,
    /// Never answer: the request expires.
    Timeout,
}

/// What must hold for the run to pass. Optional `from`/`until` restrict a check to calls that
/// started in that window; `task` to one task kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "expect", rename_all = "snake_case", deny_unknown_fields)]
pub enum Expectation {
    /// No call of the tenant is served below `tier` (a larger index), e.g. "tenant H task
    /// clinical_summarization never below tier 1".
    NeverBelowTier {
        /// The tenant.
        tenant: String,
        /// The task kind (default: all).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<String>,
        /// The lowest tier allowed.
        tier: u32,
        /// Window start.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// Window end.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<String>,
    },
    /// At least `share` of the tenant's calls in the window are served by `tier`, e.g. "tenant M
    /// served by tier 2 at least 95% of calls in 02:00-02:20".
    ServedByTier {
        /// The tenant.
        tenant: String,
        /// The task kind (default: all).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<String>,
        /// The tier.
        tier: u32,
        /// The smallest share (0 to 1).
        at_least: f64,
        /// Window start.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// Window end.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<String>,
    },
    /// No call of the tenant is rejected.
    NoRejections {
        /// The tenant.
        tenant: String,
        /// The task kind (default: all).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<String>,
        /// Window start.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// Window end.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<String>,
    },
    /// Every session suspended (of the tenant, or of all) is resumed within `within` of
    /// `recovery` (or of its suspension, if later).
    ResumedWithin {
        /// The tenant (default: all).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant: Option<String>,
        /// When capacity returned.
        recovery: String,
        /// The longest wait allowed.
        #[serde(with = "crate::policy::duration")]
        #[schemars(with = "DurationStr")]
        within: Duration,
    },
    /// At most `max_share` of the calls made after the endpoint's breaker first opened reach
    /// it (half-open probes excluded), e.g. "at most 2% of calls to the failing primary after
    /// the breaker opened".
    EndpointShareAfterBreakerOpen {
        /// The endpoint.
        endpoint: String,
        /// The largest share (0 to 1).
        max_share: f64,
        /// Window end (default: the end of the run).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<String>,
    },
    /// The audit log's hash chain verifies.
    AuditVerifies {},
    /// No served call used a tier or endpoint its tenant's policy does not allow for that task
    /// (below the floor, a forbidden tier, an endpoint removed by residency or data rules).
    NoPolicyViolations {},
    /// What the calls cost stays below `max_usd`.
    CostBelow {
        /// The tenant (default: all).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant: Option<String>,
        /// The bound.
        max_usd: f64,
    },
    /// A measured value within bounds.
    Metric {
        /// What to measure.
        metric: MetricName,
        /// The tenant (default: all).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant: Option<String>,
        /// The task kind (default: all).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<String>,
        /// Window start.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// Window end.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<String>,
        /// Lower bound (inclusive).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        /// Upper bound (inclusive).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
    },
}

/// A measurable value of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MetricName {
    /// Calls made.
    Calls,
    /// Calls served.
    Served,
    /// Share of calls served below the top tier (0 to 1).
    DegradedShare,
    /// Sessions suspended.
    Suspensions,
    /// Approval requests.
    Approvals,
    /// Calls rejected.
    Rejections,
    /// Calls that did not finish by their deadline.
    DeadlineMisses,
    /// Tier changes of sessions (down and up).
    TierChanges,
    /// Promotions back up.
    Promotions,
    /// Median latency of served calls, ms.
    P50LatencyMs,
    /// 95th percentile latency of served calls, ms.
    P95LatencyMs,
    /// Cost in USD.
    CostUsd,
    /// Calls whose active and shadow decisions differ.
    ShadowDifferences,
    /// Streamed calls continued on another endpoint after a cut.
    StreamContinuations,
    /// Contexts fitted to a smaller window (audited context transforms).
    ContextTransforms,
}

impl Scenario {
    /// Reads and parses a scenario file.
    ///
    /// # Errors
    /// [`SimError::Io`] or [`SimError::Parse`] (with the JSON path, line and column).
    pub fn load(path: impl AsRef<Path>) -> Result<Scenario, SimError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| SimError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses a scenario's text; `path` names it in errors.
    ///
    /// # Errors
    /// [`SimError::Parse`].
    pub fn parse(path: &Path, text: &str) -> Result<Scenario, SimError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let at = e.path().to_string();
            let inner = e.into_inner();
            SimError::Parse {
                path: path.to_path_buf(),
                at,
                line: inner.line(),
                column: inner.column(),
                message: inner.to_string(),
            }
        })
    }
}

/// Parses a scenario time: `"HH:MM"` or `"HH:MM:SS"` on the start's day (the next day if that
/// is before the start), `"+5m"` after the start, or an RFC 3339 timestamp.
///
/// # Errors
/// A message naming the bad string.
pub fn parse_time(s: &str, start: Timestamp) -> Result<Timestamp, String> {
    let s = s.trim();
    if let Some(rel) = s.strip_prefix('+') {
        let d = crate::policy::duration::parse(rel)?;
        return Ok(start.saturating_add(d));
    }
    if s.contains('T') {
        return Timestamp::parse_rfc3339(s);
    }
    let parts: Vec<&str> = s.split(':').collect();
    let num = |p: &str, max: u64| -> Result<u64, String> {
        p.parse::<u64>()
            .ok()
            .filter(|v| *v < max && p.len() == 2)
            .ok_or_else(|| {
                format!("`{s}` is not a time: write \"02:00\", \"02:00:30\", \"+5m\" or RFC 3339")
            })
    };
    let (h, m, sec) = match parts.as_slice() {
        [h, m] => (num(h, 24)?, num(m, 60)?, 0),
        [h, m, x] => (num(h, 24)?, num(m, 60)?, num(x, 60)?),
        _ => {
            return Err(format!(
                "`{s}` is not a time: write \"02:00\", \"02:00:30\", \"+5m\" or RFC 3339"
            ));
        }
    };
    const DAY: u64 = 86_400_000;
    let day = start.as_millis() / DAY * DAY;
    let mut t = day + (h * 3600 + m * 60 + sec) * 1000;
    if t < start.as_millis() {
        t += DAY;
    }
    Ok(Timestamp::from_millis(t))
}

/// Where the scenario's relative paths are resolved from.
#[must_use]
pub(crate) fn base_dir(path: &Path) -> PathBuf {
    path.parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The JSON Schema of scenario files (committed as `docs/scenario.schema.json`).
#[must_use]
pub fn scenario_schema() -> String {
    let mut s = serde_json::to_string_pretty(&schemars::schema_for!(Scenario)).unwrap_or_default();
    s.push('\n');
    s
}
