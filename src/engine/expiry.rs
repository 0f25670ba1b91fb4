//! `suspension.max_duration`: a session suspended longer than its policy allows is given up —
//! its checkpoint removed (compare-and-swap, so one replica does it), a `rejection` record
//! written, its owner notified — instead of waiting forever.

use std::time::Duration;

use super::{Engine, EngineError, Notice, NoticeKind, RejectKind, Rejection};
use crate::audit::{AuditEvent, AuditEventKind};
use crate::checkpoint::{Checkpoint, ListFilter};
use crate::clock::Timestamp;
use crate::error::{CheckpointError, Error};
use crate::id::{SessionId, TaskKind, TenantId, WorkflowId};
use crate::policy::PolicySet;

/// A suspended session given up because it stayed suspended longer than its policy's
/// `suspension.max_duration`. Its checkpoint is gone from the store; its last saved state is
/// here, for the orchestrator to fail or archive the agent's job.
#[derive(Debug, Clone, PartialEq)]
pub struct GivenUp {
    /// The tenant.
    pub tenant: TenantId,
    /// The session.
    pub session: SessionId,
    /// Its workflow, if any.
    pub workflow: Option<WorkflowId>,
    /// Its task kind, when known.
    pub task: Option<TaskKind>,
    /// When it was suspended.
    pub suspended_at: Timestamp,
    /// The policy's limit it outlived.
    pub max_duration: Duration,
    /// The agent state saved with the suspension.
    pub state: serde_json::Value,
    /// The audit record of the giving up.
    pub audit: u64,
}

impl GivenUp {
    /// The error [`Engine::resume`] reports for it.
    #[must_use]
    pub fn error(&self) -> EngineError {
        EngineError::SuspensionExpired {
            session: self.session.clone(),
            suspended_at: self.suspended_at,
            max_duration_ms: u64::try_from(self.max_duration.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The refusal a call of the session gets.
    #[must_use]
    pub fn rejection(&self) -> Rejection {
        Rejection {
            kind: RejectKind::SuspensionExpired,
            reason: None,
            message: self.error().to_string(),
        }
    }
}

/// The `suspension.max_duration` of a session's policy view, if its ladder has a suspension
/// step.
pub(super) fn max_duration(
    set: &PolicySet,
    tenant: &TenantId,
    task: Option<&TaskKind>,
) -> Option<Duration> {
    let tp = set.tenant(tenant.as_str()).ok()?;
    let view = match task {
        Some(t) => tp.view(t.as_str()),
        None => tp.default_view(),
    };
    view.suspension.as_ref().map(|s| s.max_duration)
}

/// Whether a suspension that began at `since` has outlived `max` at `now`.
pub(super) fn expired(since: Timestamp, max: Option<Duration>, now: Timestamp) -> bool {
    max.is_some_and(|m| now.duration_since(since) >= m)
}

impl<P, O> Engine<P, O>
where
    P: Clone + Send + Sync + 'static,
    O: Send + Sync + 'static,
{
    /// Gives `cp` up if it is suspended and has outlived its policy's `max_duration`: deletes
    /// it (compare-and-swap on its version), audits a `rejection`, forgets the session here and
    /// notifies. `None` when it has not expired, or another caller changed it first.
    pub(super) async fn give_up_if_expired(
        &self,
        cp: Checkpoint,
        now: Timestamp,
    ) -> Result<Option<GivenUp>, Error> {
        if cp.suspended.is_none() {
            return Ok(None);
        }
        let set = self.inner.policies.current();
        let max = max_duration(&set, &cp.tenant, cp.task.as_ref());
        let Some(max) = max.filter(|_| expired(cp.created_at, max, now)) else {
            return Ok(None);
        };
        match self.inner.checkpoints.delete(&cp.session, cp.version).await {
            Ok(()) => {}
            Err(CheckpointError::Conflict { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let limit = humantime::format_duration(max);
        let reason = format!(
            "suspended since {} — longer than the policy's suspension.max_duration ({limit}): \
             given up",
            cp.created_at
        );
        let mut ev = AuditEvent::new(
            now,
            AuditEventKind::Rejection {
                reason: reason.clone(),
            },
        )
        .tenant(cp.tenant.clone())
        .session(cp.session.clone());
        if let Some(w) = &cp.workflow {
            ev = ev.workflow(w.clone());
        }
        if let Some(t) = &cp.task {
            ev = ev.task(t.clone());
        }
        if let Ok(r) = cp.reference() {
            ev = ev.checkpoint(r);
        }
        let record = self.inner.audit.append(ev).await?;
        self.forget_session(&cp.session);
        if let Some(n) = &self.inner.notifier {
            n.notify(Notice {
                tenant: cp.tenant.clone(),
                session: Some(cp.session.clone()),
                workflow: cp.workflow.clone(),
                task: cp.task.clone().unwrap_or_else(|| TaskKind::new("")),
                kind: NoticeKind::SuspensionExpired {
                    suspended_at: cp.created_at,
                },
                reason,
                at: now,
            })
            .await;
        }
        Ok(Some(GivenUp {
            tenant: cp.tenant,
            session: cp.session,
            workflow: cp.workflow,
            task: cp.task,
            suspended_at: cp.created_at,
            max_duration: max,
            state: cp.state,
            audit: record.seq,
        }))
    }

    /// Gives up every suspended session that has outlived its policy's
    /// `suspension.max_duration` (also done when such a session calls again and when someone
    /// tries to resume it); returns them, with their last saved state. Run it periodically,
    /// e.g. with [`Engine::ready_to_resume`].
    ///
    /// # Errors
    /// A checkpoint store or audit error (sessions given up before it stay given up).
    pub async fn expire_suspensions(&self) -> Result<Vec<GivenUp>, Error> {
        let now = self.inner.clock.now();
        let set = self.inner.policies.current();
        let mut out = Vec::new();
        for tenant in set.tenants() {
            let list = self
                .inner
                .checkpoints
                .list(tenant, &ListFilter::all().suspended_only())
                .await?;
            for s in list.sessions {
                let max = max_duration(&set, &s.tenant, s.task.as_ref());
                if s.suspended.is_none() || !expired(s.created_at, max, now) {
                    continue;
                }
                let Some(cp) = self.inner.checkpoints.load(&s.session).await? else {
                    continue;
                };
                if let Some(g) = self.give_up_if_expired(cp, now).await? {
                    out.push(g);
                }
            }
        }
        Ok(out)
    }
}
