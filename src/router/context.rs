//! [`CallContext`]: everything the router needs to know about one call.

use crate::catalog::{EndpointIdx, Requirements};
use crate::clock::Timestamp;
use crate::id::{SessionId, TaskKind, TenantId, WorkflowId};
use crate::policy::TenantHandle;
use crate::trigger::{BudgetHandle, OutcomeClass};

/// One attempt already made within the current call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// The endpoint tried.
    pub endpoint: EndpointIdx,
    /// What happened.
    pub outcome: OutcomeClass,
}

/// The tier a session is on and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTier {
    /// Tier index.
    pub tier: u32,
    /// When the session moved to it.
    pub since: Timestamp,
}

/// One call to route. Borrowed, so building one allocates nothing.
///
/// ```
/// use downshift::router::CallContext;
/// use downshift::{Requirements, TaskKind, TenantId, Timestamp};
///
/// let tenant = TenantId::new("acme");
/// let task = TaskKind::new("summarization");
/// let ctx = CallContext::new(&tenant, &task)
///     .requirements(Requirements { input_tokens: 12_000, output_tokens: 1_000, ..Default::default() })
///     .deadline(Timestamp::from_millis(60_000));
/// assert!(ctx.step_boundary);
/// ```
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct CallContext<'a> {
    /// The tenant.
    pub tenant: &'a TenantId,
    /// The agent session, if any.
    pub session: Option<&'a SessionId>,
    /// The workflow, if any.
    pub workflow: Option<&'a WorkflowId>,
    /// The task kind.
    pub task: &'a TaskKind,
    /// What the request needs from an endpoint.
    pub requirements: Requirements,
    /// When the call must be finished (absolute). Without one, the tenant's (or task's) default
    /// deadline applies from `now`.
    pub deadline: Option<Timestamp>,
    /// The session's current tier, if it has one.
    pub session_tier: Option<SessionTier>,
    /// Whether this call starts a new step of the session: promotion happens only here, never
    /// mid-step.
    pub step_boundary: bool,
    /// A human approved switching down to this tier (and any above it) for this session.
    pub approved_to: Option<u32>,
    /// Attempts already made in this call, oldest first.
    pub attempts: &'a [Attempt],
    /// A handle to the tenant in the active policy set (skips the lookup by id).
    pub handle: Option<&'a TenantHandle>,
    /// A handle to the budget state of the tenant, session and workflow (skips their lookup by
    /// id when a budget guardrail is checked).
    pub budget: Option<&'a BudgetHandle>,
}

impl<'a> CallContext<'a> {
    /// A call of `tenant` for `task`, at a step boundary, with no session, no requirements, no
    /// deadline and no attempts yet.
    pub const fn new(tenant: &'a TenantId, task: &'a TaskKind) -> Self {
        CallContext {
            tenant,
            session: None,
            workflow: None,
            task,
            requirements: Requirements {
                input_tokens: 0,
                output_tokens: 0,
                tools: false,
                parallel_tool_calls: false,
                vision: false,
                json_mode: false,
            },
            deadline: None,
            session_tier: None,
            step_boundary: true,
            approved_to: None,
            attempts: &[],
            handle: None,
            budget: None,
        }
    }

    /// A call of the handle's tenant for `task`: [`CallContext::new`] with the handle's own id
    /// ([`TenantHandle::tenant`]) and [`CallContext::tenant_handle`]. The cheapest way to route
    /// a tenant: the router confirms the handle is for the call's tenant by comparing pointers,
    /// without reading the id's text.
    pub fn for_handle(handle: &'a TenantHandle, task: &'a TaskKind) -> Self {
        CallContext::new(handle.tenant(), task).tenant_handle(handle)
    }

    /// With a handle to the tenant (from
    /// [`PolicySet::tenant_handle`](crate::policy::PolicySet::tenant_handle)): the router reads
    /// the tenant's routing through it instead of looking the tenant up by id. A handle for
    /// another tenant or from before a reload is ignored. The check is a pointer comparison
    /// when the context's tenant is the handle's own id ([`TenantHandle::tenant`], or a clone
    /// of it); with another `TenantId` of the same text it compares the text, which for a
    /// tenant not in cache costs a memory access or two.
    pub const fn tenant_handle(mut self, handle: &'a TenantHandle) -> Self {
        self.handle = Some(handle);
        self
    }

    /// With a handle to the budget state (from
    /// [`TriggerEvaluator::budget_handle`](crate::trigger::TriggerEvaluator::budget_handle)).
    pub const fn budget_handle(mut self, handle: &'a BudgetHandle) -> Self {
        self.budget = Some(handle);
        self
    }

    /// With a session.
    pub const fn session(mut self, session: &'a SessionId) -> Self {
        self.session = Some(session);
        self
    }

    /// With a workflow.
    pub const fn workflow(mut self, workflow: &'a WorkflowId) -> Self {
        self.workflow = Some(workflow);
        self
    }

    /// With requirements.
    pub const fn requirements(mut self, requirements: Requirements) -> Self {
        self.requirements = requirements;
        self
    }

    /// With an absolute deadline.
    pub const fn deadline(mut self, deadline: Timestamp) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// With the session's current tier.
    pub const fn on_tier(mut self, tier: u32, since: Timestamp) -> Self {
        self.session_tier = Some(SessionTier { tier, since });
        self
    }

    /// Within a step (no promotion) or at a step boundary.
    pub const fn step_boundary(mut self, yes: bool) -> Self {
        self.step_boundary = yes;
        self
    }

    /// With an approval to switch down to `tier`.
    pub const fn approved_to(mut self, tier: u32) -> Self {
        self.approved_to = Some(tier);
        self
    }

    /// With the attempts already made in this call.
    pub const fn attempts(mut self, attempts: &'a [Attempt]) -> Self {
        self.attempts = attempts;
        self
    }
}
