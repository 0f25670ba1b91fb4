//! [`Decision`]: where one call goes, or why it does not go anywhere, with the triggers behind it.

use std::fmt;

use serde::Serialize;

use crate::catalog::EndpointIdx;
use crate::clock::Timestamp;
use crate::trigger::{ProbePermit, Trigger};

/// The most triggers a [`Reason`] carries inline (the first ones found, highest tier first).
pub const MAX_REASON_TRIGGERS: usize = 4;

/// A short, allocation-free list of the triggers behind a decision.
#[derive(Clone, Copy, PartialEq)]
pub struct TriggerList {
    items: [Option<Trigger>; MAX_REASON_TRIGGERS],
    len: u8,
    more: u16,
}

impl TriggerList {
    /// The empty list.
    pub const EMPTY: TriggerList = TriggerList {
        items: [None; MAX_REASON_TRIGGERS],
        len: 0,
        more: 0,
    };

    /// Adds a trigger (beyond [`MAX_REASON_TRIGGERS`] it is counted, not kept).
    pub fn push(&mut self, t: Trigger) {
        match self.items.get_mut(self.len as usize) {
            Some(slot) => {
                *slot = Some(t);
                self.len += 1;
            }
            None => self.more = self.more.saturating_add(1),
        }
    }

    /// The kept triggers.
    pub fn iter(&self) -> impl Iterator<Item = &Trigger> {
        self.items.iter().flatten()
    }

    /// How many triggers were found but not kept.
    #[must_use]
    pub const fn more(&self) -> u16 {
        self.more
    }

    /// Whether no trigger was recorded.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first trigger, if any.
    #[must_use]
    pub fn first(&self) -> Option<&Trigger> {
        self.items[0].as_ref()
    }

    /// The earliest `until` among the triggers: when something may become usable again.
    #[must_use]
    pub fn earliest_until(&self) -> Option<Timestamp> {
        self.iter().filter_map(|t| t.until).min()
    }
}

impl Default for TriggerList {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl fmt::Debug for TriggerList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for TriggerList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

/// Why a decision was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReasonKind {
    /// Served at the tenant's top tier: nothing is wrong.
    Healthy,
    /// The session stays on its (degraded) tier: promotion is not due yet.
    Sticky,
    /// Fell to a lower tier because higher ones are unusable.
    Fallback,
    /// Promoted back up at a step boundary after the higher tier stayed healthy.
    Promotion,
    /// A budget guardrail moved the call to a cheaper tier, suspended or rejected it.
    Budget,
    /// Sent as a half-open probe of a recovering endpoint.
    Probe,
    /// The switch needs a human's approval first.
    ApprovalRequired,
    /// Nothing the tenant may use is usable now.
    NothingUsable,
    /// No permitted endpoint can finish before the call's deadline.
    DeadlineUnreachable,
    /// No permitted endpoint has the capabilities the request needs, even when healthy.
    Incapable,
    /// The call already made as many attempts as the policy allows.
    AttemptsExhausted,
    /// The tenant has no policy.
    UnknownTenant,
}

impl ReasonKind {
    /// The snake_case name used in logs and metrics.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ReasonKind::Healthy => "healthy",
            ReasonKind::Sticky => "sticky",
            ReasonKind::Fallback => "fallback",
            ReasonKind::Promotion => "promotion",
            ReasonKind::Budget => "budget",
            ReasonKind::Probe => "probe",
            ReasonKind::ApprovalRequired => "approval_required",
            ReasonKind::NothingUsable => "nothing_usable",
            ReasonKind::DeadlineUnreachable => "deadline_unreachable",
            ReasonKind::Incapable => "incapable",
            ReasonKind::AttemptsExhausted => "attempts_exhausted",
            ReasonKind::UnknownTenant => "unknown_tenant",
        }
    }
}

/// Why a decision was taken, and the triggers (with measured values and thresholds) behind it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Reason {
    /// What kind of reason.
    pub kind: ReasonKind,
    /// The triggers that caused it (e.g. why each higher tier was skipped).
    pub triggers: TriggerList,
}

impl Reason {
    pub(crate) const fn new(kind: ReasonKind, triggers: TriggerList) -> Self {
        Reason { kind, triggers }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.as_str())?;
        for (i, t) in self.triggers.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            write!(f, "{t}")?;
        }
        if self.triggers.more() > 0 {
            write!(f, "; and {} more", self.triggers.more())?;
        }
        Ok(())
    }
}

/// An approval request's id: the same pending switch (tenant, session, from, to, policy) always
/// gets the same ticket, so repeated calls while a human decides do not pile up requests.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
pub struct ApprovalTicket(pub u64);

impl fmt::Display for ApprovalTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "apr-{:016x}", self.0)
    }
}

/// Where a call goes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Route {
    /// The endpoint to call.
    pub endpoint: EndpointIdx,
    /// Its tier index.
    pub tier: u32,
    /// Below the tier the tenant would get with every provider healthy.
    pub degraded: bool,
    /// The call is a half-open probe of a recovering endpoint: report it with this permit.
    pub probe: Option<ProbePermit>,
    /// The tenant's policy wants the user told of this tier change in real time.
    pub notice: bool,
    /// The session changes tier with this call (from its current tier or its top tier).
    pub switched: bool,
    /// The request does not fit this endpoint's window as is: its context must be fitted
    /// (the policy allows it).
    pub fit_context: bool,
    /// Why.
    pub reason: Reason,
}

/// The outcome of routing one call: exactly one of four.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "decision")]
pub enum Decision {
    /// Send the call here.
    Route(Route),
    /// The tenant must approve the switch first.
    AwaitApproval {
        /// The request's id.
        ticket: ApprovalTicket,
        /// The session's current tier.
        current: u32,
        /// The proposed tier.
        proposed_tier: u32,
        /// The proposed endpoint.
        proposed_endpoint: EndpointIdx,
        /// Why the switch is needed.
        reason: Reason,
    },
    /// Nothing permissible is usable and the policy suspends: save state, resume later.
    Suspend {
        /// Why.
        reason: Reason,
        /// When something may be usable again, when known.
        retry_at: Option<Timestamp>,
    },
    /// The call is refused.
    Reject {
        /// Why.
        reason: Reason,
    },
}

impl Decision {
    /// The reason, whichever the variant.
    #[must_use]
    pub const fn reason(&self) -> &Reason {
        match self {
            Decision::Route(r) => &r.reason,
            Decision::AwaitApproval { reason, .. }
            | Decision::Suspend { reason, .. }
            | Decision::Reject { reason } => reason,
        }
    }

    /// The route, if the call goes somewhere.
    #[must_use]
    pub const fn route(&self) -> Option<&Route> {
        match self {
            Decision::Route(r) => Some(r),
            _ => None,
        }
    }
}
