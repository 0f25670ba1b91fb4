//! [`MemoryCheckpointStore`]: checkpoints in a map behind a lock.

use std::collections::{BTreeSet, HashMap};
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
/// Checkpoints are indexed by tenant and, separately, the suspended ones, so
/// [`list`](CheckpointStore::list) costs what it returns, not the size of the store.
#[derive(Debug, Clone, Default)]
pub struct MemoryCheckpointStore {
    map: Arc<Mutex<Maps>>,
}

/// The checkpoints and the per-tenant indexes over them (kept in step under one lock).
#[derive(Debug, Default)]
struct Maps {
    by_session: HashMap<SessionId, Arc<Checkpoint>>,
    /// Every session of a tenant, in session order.
    by_tenant: HashMap<TenantId, BTreeSet<SessionId>>,
    /// The suspended sessions of a tenant, in session order.
    suspended: HashMap<TenantId, BTreeSet<SessionId>>,
}

impl Maps {
    fn index(map: &mut HashMap<TenantId, BTreeSet<SessionId>>, cp: &Checkpoint, on: bool) {
        if on {
            map.entry(cp.tenant.clone())
                .or_default()
                .insert(cp.session.clone());
        } else if let Some(set) = map.get_mut(&cp.tenant) {
            set.remove(&cp.session);
            if set.is_empty() {
                map.remove(&cp.tenant);
            }
        }
    }

    fn insert(&mut self, cp: Arc<Checkpoint>) {
        Self::index(&mut self.by_tenant, &cp, true);
        Self::index(&mut self.suspended, &cp, cp.is_suspended());
        self.by_session.insert(cp.session.clone(), cp);
    }

    fn remove(&mut self, session: &SessionId) {
        if let Some(cp) = self.by_session.remove(session) {
            Self::index(&mut self.by_tenant, &cp, false);
            Self::index(&mut self.suspended, &cp, false);
        }
    }
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
        self.map.lock().by_session.len()
    }

    /// Whether the store is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.lock().by_session.is_empty()
    }
}

#[async_trait]
impl CheckpointStore for MemoryCheckpointStore {
    async fn load(&self, session: &SessionId) -> Result<Option<Checkpoint>, CheckpointError> {
        let found = self.map.lock().by_session.get(session).cloned();
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
        let stored = map.by_session.get(&checkpoint.session);
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
        map.insert(Arc::new(checkpoint));
        Ok(version)
    }

    async fn list(
        &self,
        tenant: &TenantId,
        filter: &ListFilter,
    ) -> Result<CheckpointList, CheckpointError> {
        let map = self.map.lock();
        let index = if filter.suspended_only {
            &map.suspended
        } else {
            &map.by_tenant
        };
        let sessions = index
            .get(tenant)
            .into_iter()
            .flatten()
            .filter_map(|s| map.by_session.get(s))
            .filter(|c| filter.matches(c))
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
        let stored = map.by_session.get(session).map(|c| c.version);
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
