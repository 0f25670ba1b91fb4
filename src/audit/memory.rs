//! [`MemoryAuditSink`]: the chain in a vector behind a lock.

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::chain::{genesis, seal};
use super::{AuditEvent, AuditHead, AuditRecord, AuditSink};
use crate::error::AuditError;

/// An in-memory [`AuditSink`], for tests, simulations and as a staging buffer. Clones share the
/// same log.
///
/// Sequence numbers and digests are assigned under one short lock (no I/O), so concurrent
/// appends are never lost and the chain stays contiguous.
#[derive(Debug, Clone, Default)]
pub struct MemoryAuditSink {
    records: Arc<Mutex<Vec<AuditRecord>>>,
}

impl MemoryAuditSink {
    /// An empty log.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of every record, in order.
    #[must_use]
    pub fn records(&self) -> Vec<AuditRecord> {
        self.records.lock().clone()
    }

    /// How many records the log holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.records.lock().len()
    }

    /// Whether the log is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.records.lock().is_empty()
    }

    /// Appends synchronously (the sink does no I/O); [`AuditSink::append`] calls this.
    ///
    /// # Errors
    /// [`AuditError::InvalidEvent`] when the event cannot be recorded exactly.
    pub fn append_now(&self, event: AuditEvent) -> Result<AuditRecord, AuditError> {
        let mut records = self.records.lock();
        let seq = records.len() as u64;
        let prev = records.last().map_or_else(genesis, |r| r.digest.clone());
        let (digest, _) = seal(seq, &event, &prev, false)?;
        let record = AuditRecord {
            seq,
            event,
            prev,
            digest,
        };
        records.push(record.clone());
        Ok(record)
    }
}

#[async_trait]
impl AuditSink for MemoryAuditSink {
    async fn append(&self, event: AuditEvent) -> Result<AuditRecord, AuditError> {
        self.append_now(event)
    }

    async fn head(&self) -> Result<Option<AuditHead>, AuditError> {
        Ok(self.records.lock().last().map(AuditRecord::head))
    }
}
