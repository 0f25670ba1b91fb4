//! Workflow state shared by replicas: a workflow's deadline and its suspension, behind
//! [`WorkflowStore`] (in-memory default: [`MemoryWorkflowStore`]).

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::clock::Timestamp;
use crate::error::EngineError;
use crate::id::WorkflowId;

/// Why and until when a workflow is suspended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowSuspension {
    /// Why (the first suspended sub-agent's reason).
    pub reason: String,
    /// When a resume may be tried, if known.
    pub retry_at: Option<Timestamp>,
}

/// What the engine keeps per workflow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkflowState {
    /// Every call of the workflow must finish by then.
    pub deadline: Option<Timestamp>,
    /// Set while the workflow is suspended.
    pub suspended: Option<WorkflowSuspension>,
}

/// Where workflow deadlines and suspensions are kept, shared by the replicas that serve a
/// workflow's sub-agents.
///
/// Contract: reads see every completed write (from any replica); `suspend` is
/// set-if-not-suspended (the first suspension's reason and retry time stay — two replicas
/// suspending one workflow at once leave one suspension); `lift` clears the suspension and keeps
/// the deadline; `set_deadline` replaces the deadline and keeps the suspension. `get` is called
/// on every call that names a workflow: keep it to one indexed read.
#[async_trait]
pub trait WorkflowStore: Send + Sync + fmt::Debug {
    /// The workflow's state, `None` when nothing was ever set for it.
    ///
    /// # Errors
    /// [`EngineError::Store`] when the store cannot be read.
    async fn get(&self, workflow: &WorkflowId) -> Result<Option<WorkflowState>, EngineError>;

    /// Sets the workflow's deadline.
    ///
    /// # Errors
    /// [`EngineError::Store`].
    async fn set_deadline(
        &self,
        workflow: &WorkflowId,
        deadline: Timestamp,
    ) -> Result<(), EngineError>;

    /// Marks the workflow suspended unless it already is.
    ///
    /// # Errors
    /// [`EngineError::Store`].
    async fn suspend(
        &self,
        workflow: &WorkflowId,
        suspension: WorkflowSuspension,
    ) -> Result<(), EngineError>;

    /// Lifts the workflow's suspension.
    ///
    /// # Errors
    /// [`EngineError::Store`].
    async fn lift(&self, workflow: &WorkflowId) -> Result<(), EngineError>;
}

/// The in-memory [`WorkflowStore`]: shared by every engine given the same instance (clones share
/// it too).
#[derive(Debug, Clone, Default)]
pub struct MemoryWorkflowStore {
    map: std::sync::Arc<Mutex<HashMap<WorkflowId, WorkflowState>>>,
}

impl MemoryWorkflowStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl WorkflowStore for MemoryWorkflowStore {
    async fn get(&self, workflow: &WorkflowId) -> Result<Option<WorkflowState>, EngineError> {
        Ok(self.map.lock().get(workflow).cloned())
    }

    async fn set_deadline(
        &self,
        workflow: &WorkflowId,
        deadline: Timestamp,
    ) -> Result<(), EngineError> {
        self.map
            .lock()
            .entry(workflow.clone())
            .or_default()
            .deadline = Some(deadline);
        Ok(())
    }

    async fn suspend(
        &self,
        workflow: &WorkflowId,
        suspension: WorkflowSuspension,
    ) -> Result<(), EngineError> {
        let mut map = self.map.lock();
        let st = map.entry(workflow.clone()).or_default();
        if st.suspended.is_none() {
            st.suspended = Some(suspension);
        }
        Ok(())
    }

    async fn lift(&self, workflow: &WorkflowId) -> Result<(), EngineError> {
        if let Some(st) = self.map.lock().get_mut(workflow) {
            st.suspended = None;
        }
        Ok(())
    }
}
