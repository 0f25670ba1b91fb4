//! State replicas must agree on, behind traits a caller can back with a shared database.
//!
//! An orchestrator runs several replicas, each embedding an [`Engine`](super::Engine). Each
//! piece of state they must agree on goes through a trait with an in-memory default:
//!
//! - checkpoints: [`CheckpointStore`](crate::checkpoint::CheckpointStore) (compare-and-swap on a
//!   version: two replicas resuming one session cannot both win);
//! - the audit log: [`AuditSink`](crate::audit::AuditSink) (the sink assigns sequence numbers and
//!   digests atomically);
//! - approval tickets: [`ApprovalStore`] (below);
//! - endpoint health and half-open probe permits: [`HealthExchange`](super::HealthExchange).
//!
//! Tickets are deterministic (the same pending switch of a session always has the same ticket,
//! on every replica), so an approval granted through one replica is found by another.

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::EngineError;
use crate::id::{SessionId, TenantId};
use crate::router::ApprovalTicket;

/// Where an approval request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for a human.
    Pending,
    /// Approved.
    Granted,
    /// Denied.
    Denied,
    /// Nobody answered in time.
    Expired,
}

/// An approval request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingApproval {
    /// The ticket.
    pub ticket: ApprovalTicket,
    /// The tenant.
    pub tenant: TenantId,
    /// The session, if any.
    pub session: Option<SessionId>,
    /// The session's tier when it was requested.
    pub from: u32,
    /// The proposed tier.
    pub to: u32,
    /// When it was requested.
    pub requested_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
    /// Its state.
    pub state: ApprovalState,
    /// Who answered, if anyone.
    pub answered_by: Option<String>,
}

/// Shared approval tickets.
///
/// Contract: `insert_if_absent` is atomic (two replicas requesting the same ticket store one
/// request and both get it back); `answer` moves a ticket from `Pending` to another state only
/// if it is still `Pending` (compare-and-set), returning `Err(current)` otherwise; reads see
/// every completed write (read-your-writes across replicas). A database table keyed by ticket
/// with a conditional update satisfies it.
#[async_trait]
pub trait ApprovalStore: Send + Sync + fmt::Debug {
    /// The ticket's request, if any.
    async fn get(&self, ticket: ApprovalTicket) -> Result<Option<PendingApproval>, EngineError>;
    /// Stores `request` unless the ticket exists; returns what is stored and whether it was
    /// this call that stored it.
    async fn insert_if_absent(
        &self,
        request: PendingApproval,
    ) -> Result<(PendingApproval, bool), EngineError>;
    /// Answers a pending ticket; `Ok(updated)` if it was pending, `Err(current)` if not.
    async fn answer(
        &self,
        ticket: ApprovalTicket,
        to: ApprovalState,
        by: Option<String>,
    ) -> Result<Result<PendingApproval, PendingApproval>, EngineError>;
    /// Every request still pending.
    async fn pending(&self) -> Result<Vec<PendingApproval>, EngineError>;
    /// Forgets a session's answered requests (after it resumes, a new outage asks again).
    async fn clear_session(&self, session: &SessionId) -> Result<(), EngineError>;
    /// Forgets a granted request whose grant was spent (see the policy's `approval_lifetime`),
    /// only if it is still `Granted` (a pending or newer request under the same ticket stays);
    /// the next identical switch asks again.
    async fn remove_granted(&self, ticket: ApprovalTicket) -> Result<(), EngineError>;
}

/// Approval tickets in memory (one process).
#[derive(Debug, Default)]
pub struct MemoryApprovalStore {
    tickets: Mutex<HashMap<ApprovalTicket, PendingApproval>>,
}

impl MemoryApprovalStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ApprovalStore for MemoryApprovalStore {
    async fn get(&self, ticket: ApprovalTicket) -> Result<Option<PendingApproval>, EngineError> {
        Ok(self.tickets.lock().get(&ticket).cloned())
    }

    async fn insert_if_absent(
        &self,
        request: PendingApproval,
    ) -> Result<(PendingApproval, bool), EngineError> {
        let mut t = self.tickets.lock();
        if let Some(p) = t.get(&request.ticket) {
            return Ok((p.clone(), false));
        }
        t.insert(request.ticket, request.clone());
        Ok((request, true))
    }

    async fn answer(
        &self,
        ticket: ApprovalTicket,
        to: ApprovalState,
        by: Option<String>,
    ) -> Result<Result<PendingApproval, PendingApproval>, EngineError> {
        let mut t = self.tickets.lock();
        let p = t.get_mut(&ticket).ok_or(EngineError::UnknownTicket {
            ticket: ticket.to_string(),
        })?;
        if p.state != ApprovalState::Pending {
            return Ok(Err(p.clone()));
        }
        p.state = to;
        p.answered_by = by;
        Ok(Ok(p.clone()))
    }

    async fn pending(&self) -> Result<Vec<PendingApproval>, EngineError> {
        let mut v: Vec<PendingApproval> = self
            .tickets
            .lock()
            .values()
            .filter(|p| p.state == ApprovalState::Pending)
            .cloned()
            .collect();
        v.sort_by_key(|p| p.ticket);
        Ok(v)
    }

    async fn clear_session(&self, session: &SessionId) -> Result<(), EngineError> {
        self.tickets.lock().retain(|_, p| {
            p.session.as_ref() != Some(session) || p.state == ApprovalState::Pending
        });
        Ok(())
    }

    async fn remove_granted(&self, ticket: ApprovalTicket) -> Result<(), EngineError> {
        let mut t = self.tickets.lock();
        if t.get(&ticket)
            .is_some_and(|p| p.state == ApprovalState::Granted)
        {
            t.remove(&ticket);
        }
        Ok(())
    }
}

/// One replica's view of one endpoint, as published to a [`HealthExchange`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedHealthRecord {
    /// The replica that published it.
    pub replica: String,
    /// The endpoint.
    pub endpoint: crate::id::EndpointId,
    /// When the replica took it.
    pub taken_at: Timestamp,
    /// The health.
    pub health: crate::trigger::SharedHealth,
}

/// Endpoint health and half-open probe slots shared between replicas.
///
/// Contract: `publish` replaces the replica's previous records (last write wins per replica and
/// endpoint); `fetch` returns the latest record of every *other* replica (stale ones are
/// ignored by the engine past its freshness bound, so the store need not expire them);
/// `claim_probe` is atomic: across all replicas, at most `limit` claims succeed for one
/// (endpoint, round). A table keyed by (replica, endpoint) and a counter row per (endpoint,
/// round) with a conditional increment satisfy it.
#[async_trait]
pub trait HealthExchange: Send + Sync + fmt::Debug {
    /// Publishes this replica's records.
    async fn publish(&self, records: Vec<SharedHealthRecord>) -> Result<(), EngineError>;
    /// The latest records of every replica but `replica`.
    async fn fetch(&self, replica: &str) -> Result<Vec<SharedHealthRecord>, EngineError>;
    /// Claims one of `limit` probe slots of an endpoint's recovery round.
    async fn claim_probe(
        &self,
        endpoint: &crate::id::EndpointId,
        round: u64,
        limit: u32,
    ) -> Result<bool, EngineError>;
}

/// A health exchange in memory (replicas in one process, and tests).
#[derive(Debug, Default)]
pub struct MemoryHealthExchange {
    records: Mutex<HashMap<(String, crate::id::EndpointId), SharedHealthRecord>>,
    claims: Mutex<HashMap<(crate::id::EndpointId, u64), u32>>,
}

impl MemoryHealthExchange {
    /// An empty exchange.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl HealthExchange for MemoryHealthExchange {
    async fn publish(&self, records: Vec<SharedHealthRecord>) -> Result<(), EngineError> {
        let mut m = self.records.lock();
        for r in records {
            m.insert((r.replica.clone(), r.endpoint.clone()), r);
        }
        Ok(())
    }

    async fn fetch(&self, replica: &str) -> Result<Vec<SharedHealthRecord>, EngineError> {
        Ok(self
            .records
            .lock()
            .values()
            .filter(|r| r.replica != replica)
            .cloned()
            .collect())
    }

    async fn claim_probe(
        &self,
        endpoint: &crate::id::EndpointId,
        round: u64,
        limit: u32,
    ) -> Result<bool, EngineError> {
        let mut c = self.claims.lock();
        let n = c.entry((endpoint.clone(), round)).or_insert(0);
        if *n >= limit {
            return Ok(false);
        }
        *n += 1;
        Ok(true)
    }
}
