//! The retry budget: retries and fallbacks as a bounded share of calls (Finagle-style), so a
//! platform-wide outage does not become a retry storm. [`RetryBudgetStore`] is the contract a
//! replica-shared budget honours; [`MemoryRetryBudget`] is the in-memory one (lock-free: ten
//! one-second buckets of packed (second, first attempts, extra attempts) counters), shared by
//! every engine given the same instance.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use crate::clock::Timestamp;
use crate::error::EngineError;
use crate::policy::RetryBudget as RetryBudgetSettings;

/// Where the retry budget is counted: per engine (the default, a fresh [`MemoryRetryBudget`])
/// or shared by replicas.
///
/// Contract:
/// - `record_call` is called once per call, on the hot path: it must not block or allocate; a
///   database-backed store counts locally and adds its counts to the shared total on its own
///   cadence (every second or so — the budget's window is ten seconds).
/// - `try_retry` is called before every retry or fallback (rare: only after a failed attempt).
///   It grants a retry only while the retries of the last ten seconds, across every replica
///   sharing the store, stay below `settings.ratio` × the first attempts of those ten seconds
///   plus `settings.min_per_second` × 10, and counts the retry it grants — atomically, so two
///   replicas cannot both take the last one.
/// - An `Err` from `try_retry` is treated as "no retry": the call ends `Rejected(RetryBudget)`
///   rather than adding load while the budget cannot be checked.
#[async_trait]
pub trait RetryBudgetStore: Send + Sync + fmt::Debug {
    /// Counts one first attempt at `now`.
    fn record_call(&self, now: Timestamp);

    /// Takes one retry from the budget at `now` if there is room.
    ///
    /// # Errors
    /// [`EngineError::Store`] when a shared store cannot be reached.
    async fn try_retry(
        &self,
        settings: &RetryBudgetSettings,
        now: Timestamp,
    ) -> Result<bool, EngineError>;
}

#[async_trait]
impl RetryBudgetStore for MemoryRetryBudget {
    fn record_call(&self, now: Timestamp) {
        MemoryRetryBudget::record_call(self, now);
    }

    async fn try_retry(
        &self,
        settings: &RetryBudgetSettings,
        now: Timestamp,
    ) -> Result<bool, EngineError> {
        Ok(MemoryRetryBudget::try_retry(self, settings, now))
    }
}

const BUCKETS: usize = 10;

/// Per-second counters: second (24 bits, wrapping), calls (20 bits), retries (20 bits).
#[derive(Debug, Default)]
struct Bucket(AtomicU64);

const SEC_BITS: u32 = 24;
const CNT_BITS: u32 = 20;
const CNT_MAX: u64 = (1 << CNT_BITS) - 1;

fn pack(sec: u64, calls: u64, retries: u64) -> u64 {
    ((sec & ((1 << SEC_BITS) - 1)) << (2 * CNT_BITS))
        | (calls.min(CNT_MAX) << CNT_BITS)
        | retries.min(CNT_MAX)
}

fn unpack(v: u64) -> (u64, u64, u64) {
    (v >> (2 * CNT_BITS), (v >> CNT_BITS) & CNT_MAX, v & CNT_MAX)
}

/// The in-memory retry budget: lock-free counters over the last ten seconds. Give the same
/// instance to several engines of one process (`EngineBuilder::retry_budget`) to share it.
#[derive(Debug, Default)]
pub struct MemoryRetryBudget {
    buckets: [Bucket; BUCKETS],
}

impl MemoryRetryBudget {
    /// An empty budget.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn sec(now: Timestamp) -> u64 {
        (now.as_millis() / 1000) & ((1 << SEC_BITS) - 1)
    }

    fn bump(&self, now: Timestamp, calls: u64, retries: u64) {
        let sec = Self::sec(now);
        let b = &self.buckets[(sec as usize) % BUCKETS];
        let _ = b.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            let (s, c, r) = unpack(v);
            Some(if s == sec {
                pack(s, c + calls, r + retries)
            } else {
                pack(sec, calls, retries)
            })
        });
    }

    /// Counts a first attempt.
    pub fn record_call(&self, now: Timestamp) {
        self.bump(now, 1, 0);
    }

    /// Takes one retry from the budget if there is room: retries over the last ten seconds stay
    /// within `ratio` of first attempts plus `min_per_second` per second.
    pub fn try_retry(&self, settings: &RetryBudgetSettings, now: Timestamp) -> bool {
        let sec = Self::sec(now);
        let (mut calls, mut retries) = (0u64, 0u64);
        for b in &self.buckets {
            let (s, c, r) = unpack(b.0.load(Ordering::Acquire));
            let age = sec.wrapping_sub(s) & ((1 << SEC_BITS) - 1);
            if (age as usize) < BUCKETS {
                calls += c;
                retries += r;
            }
        }
        let allowed = settings.ratio.max(0.0) * calls as f64
            + settings.min_per_second.max(0.0) * BUCKETS as f64;
        if (retries as f64) < allowed {
            self.bump(now, 0, 1);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_within_ratio_plus_reserve() {
        let b = MemoryRetryBudget::new();
        let s = RetryBudgetSettings {
            ratio: 0.2,
            min_per_second: 0.0,
        };
        let now = Timestamp::from_millis(1_000_000);
        for _ in 0..100 {
            b.record_call(now);
        }
        let granted = (0..100).filter(|_| b.try_retry(&s, now)).count();
        assert_eq!(granted, 20);
        // Ten seconds later the window has slid.
        let later = Timestamp::from_millis(1_011_000);
        assert!(!b.try_retry(&s, later));
        let reserve = RetryBudgetSettings {
            ratio: 0.2,
            min_per_second: 1.0,
        };
        assert_eq!((0..50).filter(|_| b.try_retry(&reserve, later)).count(), 10);
    }
}
