//! [`MemoryCheckpointStore`]: checkpoints in a map behind a lock.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{Checkpoint, CheckpointList, CheckpointStore, ListFilter, next_version};
use crate::error::CheckpointError;
use crate::id::{SessionId, TenantId};

/// An in-memory [`CheckpointStore`]: for tests, simulations and single-process deployments that
/// accept losing suspended sessions on restart. Clones share the same map.
///
/// Every operation holds a short lock (no I/O), so it never blocks an executor for long.
#[derive(Debug, Clone, Default)]
pub struct MemoryCheckpointStore {
    map: Arc<Mutex<BTreeMap<SessionId, Arc<Checkpoint>>>>,
}

impl MemoryCheckpointStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How many checkpoints are stored.
    #[must_use]
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// Whether the store is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.lock().is_empty()
    }
}

#[async_trait]
impl CheckpointStore for MemoryCheckpointStore {
    async fn load(&self, session: &SessionId) -> Result<Option<Checkpoint>, CheckpointError> {
        let found = self.map.lock().get(session).cloned();
        // Clone the (possibly large) state outside the lock.
        Ok(found.map(|c| (*c).clone()))
    }

    async fn save(
        &self,
        mut checkpoint: Checkpoint,
        expected_version: Option<u64>,
    ) -> Result<u64, CheckpointError> {
        checkpoint.validate()?;
        let mut map = self.map.lock();
        let stored = map.get(&checkpoint.session);
        if let Some(s) = stored {
            if s.tenant != checkpoint.tenant {
                return Err(CheckpointError::TenantMismatch {
                    session: checkpoint.session.clone(),
                    stored: s.tenant.clone(),
                    given: checkpoint.tenant.clone(),
                });
            }
        }
        let version = next_version(
            &checkpoint.session,
            stored.map(|s| s.version),
            expected_version,
        )?;
        checkpoint.version = version;
        map.insert(checkpoint.session.clone(), Arc::new(checkpoint));
        Ok(version)
    }

    async fn list(
        &self,
        tenant: &TenantId,
        filter: &ListFilter,
    ) -> Result<CheckpointList, CheckpointError> {
        let map = self.map.lock();
        let sessions = map
            .values()
            .filter(|c| &c.tenant == tenant && filter.matches(c))
            .map(|c| c.summary())
            .collect();
        Ok(CheckpointList {
            sessions,
            unreadable: Vec::new(),
        })
    }

    async fn delete(
        &self,
        session: &SessionId,
        expected_version: u64,
    ) -> Result<(), CheckpointError> {
        let mut map = self.map.lock();
        let stored = map.get(session).map(|c| c.version);
        if stored != Some(expected_version) {
            return Err(CheckpointError::Conflict {
                session: session.clone(),
                expected: Some(expected_version),
                actual: stored,
            });
        }
        map.remove(session);
        Ok(())
    }
}
