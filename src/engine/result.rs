//! What a call through the engine ends in: exactly one [`CallResult`].

use serde::Serialize;

use super::client::ModelResponse;
use crate::checkpoint::ResumeToken;
use crate::clock::Timestamp;
use crate::digest::ContentDigest;
use crate::id::EndpointId;
use crate::policy::Replay;
use crate::router::{ApprovalTicket, Reason};
use crate::trigger::OutcomeClass;

/// Who served a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServedBy {
    /// Tier index (0 = primary).
    pub tier: u32,
    /// Tier name.
    pub tier_name: std::sync::Arc<str>,
    /// The endpoint.
    pub endpoint: EndpointId,
}

/// Flags a downstream system or reviewer needs about an output (the article's output flagging).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutputFlags {
    /// Produced below the tier the tenant gets with every provider healthy.
    pub degraded: bool,
    /// The tier the tenant gets with every provider healthy.
    pub top_tier: u32,
    /// The tier that produced it.
    pub served_tier: u32,
    /// Produced by a half-open probe of a recovering endpoint.
    pub probe: bool,
    /// The context was fitted to a smaller window.
    pub fitted_context: bool,
    /// The policy's replay rule for degraded steps.
    pub replay: Replay,
    /// A reviewer should look at this output before relying on it (degraded, and the policy
    /// flags or re-runs degraded steps).
    pub needs_review: bool,
}

/// A completed call.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed<O> {
    /// The provider's response.
    pub response: ModelResponse<O>,
    /// Who served it.
    pub served_by: ServedBy,
    /// Below the tenant's top tier.
    pub degraded: bool,
    /// Output flags.
    pub flags: OutputFlags,
    /// Attempts made (1 = served at the first try).
    pub attempts: u32,
    /// The digest of the resolved policy the decision cited.
    pub policy_digest: ContentDigest,
    /// Sequence numbers of the audit records this call wrote (tier changes).
    pub audit: Vec<u64>,
}

impl<O> Completed<O> {
    /// The metadata as HTTP response headers, for gateways: `x-downshift-tier`,
    /// `x-downshift-endpoint`, `x-downshift-degraded`, `x-downshift-needs-review`,
    /// `x-downshift-policy-digest` (and `x-downshift-fitted-context` / `x-downshift-probe` when
    /// set).
    #[must_use]
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![
            (
                "x-downshift-tier",
                format!("{} {}", self.served_by.tier, self.served_by.tier_name),
            ),
            ("x-downshift-endpoint", self.served_by.endpoint.to_string()),
            ("x-downshift-degraded", self.degraded.to_string()),
            (
                "x-downshift-needs-review",
                self.flags.needs_review.to_string(),
            ),
            ("x-downshift-policy-digest", self.policy_digest.to_string()),
        ];
        if self.flags.fitted_context {
            h.push(("x-downshift-fitted-context", "true".into()));
        }
        if self.flags.probe {
            h.push(("x-downshift-probe", "true".into()));
        }
        h
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RejectKind {
    /// The router refused it (nothing permissible usable, deadline, capabilities, attempts,
    /// budget, unknown tenant); see the reason.
    Policy,
    /// The provider refused the request itself (context length, content filter, auth, bad
    /// request): it would fail the same way elsewhere, so it was not retried.
    Provider {
        /// The class of the provider's error.
        class: OutcomeClass,
    },
    /// The platform's retry budget is spent: no more retries or fallbacks for now.
    RetryBudget,
    /// A human denied the switch this call needed.
    ApprovalDenied,
    /// Nobody approved the switch in time.
    ApprovalExpired,
    /// The policy suspends, but the call has no session to suspend.
    NoSession,
    /// A checkpoint or audit record could not be written, so the engine refused to act
    /// without its durable record.
    Durability,
    /// The request cannot fit the routed endpoint's context window (nothing valid fits, the
    /// policy does not allow fitting, or a required summary could not be written), or the
    /// session is pinned to another provider: it was not sent.
    Context,
    /// The session stayed suspended longer than its policy's `suspension.max_duration` and was
    /// given up (audited; its checkpoint removed).
    SuspensionExpired,
}

/// A refused call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejection {
    /// What kind of refusal.
    pub kind: RejectKind,
    /// The router's reason, when it decided.
    pub reason: Option<Reason>,
    /// The refusal in words.
    pub message: String,
}

/// How one call through the engine ended: exactly one of these, never silence.
// Returned once per call; boxing the refusal would only make matching on it clumsier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum CallResult<O> {
    /// Served.
    Completed(Box<Completed<O>>),
    /// The session is suspended; its checkpoint was saved before this was returned.
    Suspended {
        /// Quote it to [`Engine::resume`](super::Engine::resume).
        resume_token: ResumeToken,
        /// When something may be usable again, if known.
        retry_at: Option<Timestamp>,
        /// Why.
        reason: String,
    },
    /// A switch needs a human's approval first.
    AwaitingApproval {
        /// The ticket to approve or deny.
        ticket: ApprovalTicket,
        /// The proposed tier.
        proposed_tier: u32,
        /// The proposed endpoint.
        proposed_endpoint: EndpointId,
        /// Why.
        reason: String,
    },
    /// Refused.
    Rejected(Rejection),
}

impl<O> CallResult<O> {
    /// The completed call, if served.
    #[must_use]
    pub fn completed(&self) -> Option<&Completed<O>> {
        match self {
            CallResult::Completed(c) => Some(c),
            _ => None,
        }
    }

    /// A short name of the outcome: `completed`, `suspended`, `awaiting_approval`, `rejected`.
    #[must_use]
    pub fn outcome(&self) -> &'static str {
        match self {
            CallResult::Completed(_) => "completed",
            CallResult::Suspended { .. } => "suspended",
            CallResult::AwaitingApproval { .. } => "awaiting_approval",
            CallResult::Rejected(_) => "rejected",
        }
    }
}
