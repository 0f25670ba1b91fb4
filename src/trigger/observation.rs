//! [`Observation`]: what happened to one model call; [`ProviderSignal`]: what a provider said
//! outside of a call.

use std::time::Duration;

use crate::catalog::EndpointIdx;
use crate::clock::Timestamp;
use crate::id::{SessionId, TaskKind, TenantId, WorkflowId};
use crate::policy::{Budget, StatusPageState};

use super::breaker::ProbePermit;
use super::budget::BudgetHandle;
use super::{Classification, OutcomeClass, RateLimitState};

/// Tokens a call consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Usage {
    /// Input (prompt) tokens.
    pub input_tokens: u64,
    /// Output (completion) tokens.
    pub output_tokens: u64,
}

/// The outcome of one model call, as fed to
/// [`TriggerEvaluator::observe`](super::TriggerEvaluator::observe).
///
/// It borrows the caller's ids, so building one on the hot path neither allocates nor touches a
/// reference count.
///
/// ```
/// use downshift::trigger::{Observation, OutcomeClass};
/// use downshift::{EndpointIdx, TenantId, Timestamp};
/// use std::time::Duration;
///
/// let tenant = TenantId::new("hospital");
/// let obs = Observation::new(
///     EndpointIdx(0),
///     &tenant,
///     OutcomeClass::Ok,
///     Timestamp::from_millis(1_000),
///     Duration::from_millis(850),
/// )
/// .usage(1_200, 300)
/// .cost(0.0081);
/// assert_eq!(obs.finished(), Timestamp::from_millis(1_850));
/// ```
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct Observation<'a> {
    /// The endpoint that served (or failed) the call.
    pub endpoint: EndpointIdx,
    /// The tenant the call was made for.
    pub tenant: &'a TenantId,
    /// The agent session, if any.
    pub session: Option<&'a SessionId>,
    /// The workflow, if any.
    pub workflow: Option<&'a WorkflowId>,
    /// The task kind, if known.
    pub task: Option<&'a TaskKind>,
    /// When the call was sent.
    pub started: Timestamp,
    /// How long it took (until the response, the error or the timeout).
    pub latency: Duration,
    /// What happened.
    pub outcome: OutcomeClass,
    /// The provider's `retry-after` (relative to the end of the call).
    pub retry_after: Option<Duration>,
    /// An absolute time the provider said its limit resets.
    pub reset_at: Option<Timestamp>,
    /// The provider's reported rate-limit state.
    pub rate_limit: Option<RateLimitState>,
    /// Tokens consumed.
    pub usage: Usage,
    /// What the call cost, in USD (finite and not negative).
    pub cost_usd: f64,
    /// The half-open probe permit the call was sent with, if it was a probe.
    pub probe: Option<ProbePermit>,
    /// The tenant's budget guardrails: spend is tracked only for the budgets configured here.
    pub budget: Option<&'a Budget>,
    /// A handle to the tenant's (and session's, workflow's) budget state, skipping the lookup
    /// by id.
    pub budget_handle: Option<&'a BudgetHandle>,
}

impl<'a> Observation<'a> {
    /// An observation with no session, usage, cost, provider hints, probe or budget.
    pub fn new(
        endpoint: EndpointIdx,
        tenant: &'a TenantId,
        outcome: OutcomeClass,
        started: Timestamp,
        latency: Duration,
    ) -> Self {
        Observation {
            endpoint,
            tenant,
            session: None,
            workflow: None,
            task: None,
            started,
            latency,
            outcome,
            retry_after: None,
            reset_at: None,
            rate_limit: None,
            usage: Usage::default(),
            cost_usd: 0.0,
            probe: None,
            budget: None,
            budget_handle: None,
        }
    }

    /// The same observation with the outcome, retry-after, reset time and rate-limit state of a
    /// classified provider response.
    pub fn classified(mut self, c: &Classification) -> Self {
        self.outcome = c.class;
        self.retry_after = c.retry_after;
        self.reset_at = c.reset_at.map(Timestamp::from_system_time);
        self.rate_limit = c.rate_limit;
        self
    }

    /// The same observation for `session`.
    pub fn session(mut self, session: &'a SessionId) -> Self {
        self.session = Some(session);
        self
    }

    /// The same observation for `workflow`.
    pub fn workflow(mut self, workflow: &'a WorkflowId) -> Self {
        self.workflow = Some(workflow);
        self
    }

    /// The same observation for `task`.
    pub fn task(mut self, task: &'a TaskKind) -> Self {
        self.task = Some(task);
        self
    }

    /// The same observation with a provider `retry-after`.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The same observation with the provider's rate-limit state.
    pub fn rate_limit(mut self, state: RateLimitState) -> Self {
        self.rate_limit = Some(state);
        self
    }

    /// The same observation with token usage.
    pub fn usage(mut self, input_tokens: u64, output_tokens: u64) -> Self {
        self.usage = Usage {
            input_tokens,
            output_tokens,
        };
        self
    }

    /// The same observation with its cost in USD.
    pub fn cost(mut self, usd: f64) -> Self {
        self.cost_usd = usd;
        self
    }

    /// The same observation as the result of a half-open probe.
    pub fn probe(mut self, permit: ProbePermit) -> Self {
        self.probe = Some(permit);
        self
    }

    /// The same observation charged against `budget` (the tenant's resolved guardrails).
    pub fn budget(mut self, budget: &'a Budget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The same observation charged through `handle` (from
    /// [`TriggerEvaluator::budget_handle`](super::TriggerEvaluator::budget_handle) for the same
    /// tenant, session and workflow).
    pub fn budget_handle(mut self, handle: &'a BudgetHandle) -> Self {
        self.budget_handle = Some(handle);
        self
    }

    /// When the call ended: `started + latency`.
    #[must_use]
    pub fn finished(&self) -> Timestamp {
        self.started.saturating_add(self.latency)
    }
}

/// Something a provider reported outside of a call, pushed with
/// [`TriggerEvaluator::signal`](super::TriggerEvaluator::signal) whenever the caller learns it
/// (polling a status page, a queue-depth endpoint, rate-limit headers of a call made elsewhere).
///
/// Queue depth, status-page state and rate-limit readings without a reset time hold for the
/// evaluator's signal time-to-live and are replaced by newer readings; a poller that stops does
/// not leave an endpoint blocked forever.
// Signals are pushed rarely and moved once; boxing the rate-limit reading would only make
// them clumsier to build.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ProviderSignal {
    /// Requests waiting at the provider for this endpoint.
    QueueDepth {
        /// The endpoint.
        endpoint: EndpointIdx,
        /// Requests queued.
        depth: u64,
    },
    /// The provider's status-page component state for this endpoint.
    StatusPage {
        /// The endpoint.
        endpoint: EndpointIdx,
        /// The reported state.
        state: StatusPageState,
    },
    /// Rate-limit headroom (so the endpoint can be marked pressured before it returns 429s).
    RateLimit {
        /// The endpoint.
        endpoint: EndpointIdx,
        /// The reported state.
        state: RateLimitState,
    },
    /// The provider asked not to be called for this long (honoured only when the platform
    /// honours retry-after).
    RetryAfter {
        /// The endpoint.
        endpoint: EndpointIdx,
        /// How long.
        after: Duration,
    },
    /// Do not call the endpoint before this time (an explicit instruction; always honoured).
    NotBefore {
        /// The endpoint.
        endpoint: EndpointIdx,
        /// The earliest time.
        until: Timestamp,
    },
}

impl ProviderSignal {
    /// The endpoint the signal is about.
    #[must_use]
    pub const fn endpoint(&self) -> EndpointIdx {
        match self {
            ProviderSignal::QueueDepth { endpoint, .. }
            | ProviderSignal::StatusPage { endpoint, .. }
            | ProviderSignal::RateLimit { endpoint, .. }
            | ProviderSignal::RetryAfter { endpoint, .. }
            | ProviderSignal::NotBefore { endpoint, .. } => *endpoint,
        }
    }
}
