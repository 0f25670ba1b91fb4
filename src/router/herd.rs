//! Herd control: per-second counters of calls moved off their tenants' top tiers, per fallback
//! endpoint. Touched only on degraded routes, so the healthy path never contends on them.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::catalog::EndpointIdx;
use crate::clock::Timestamp;

/// A (second, count) pair packed in one atomic.
#[derive(Debug, Default)]
struct Bucket(AtomicU64);

impl Bucket {
    fn count(&self, sec: u32) -> u32 {
        let v = self.0.load(Ordering::Acquire);
        if (v >> 32) as u32 == sec { v as u32 } else { 0 }
    }

    fn bump(&self, sec: u32) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                let (s, c) = ((v >> 32) as u32, v as u32);
                Some(if s == sec {
                    (u64::from(s) << 32) | u64::from(c.saturating_add(1))
                } else {
                    (u64::from(sec) << 32) | 1
                })
            });
    }
}

#[derive(Debug)]
pub(crate) struct HerdCounters {
    per_endpoint: Box<[Bucket]>,
    total: Bucket,
}

fn second(now: Timestamp) -> u32 {
    (now.as_millis() / 1000) as u32
}

impl HerdCounters {
    pub(crate) fn new(endpoints: usize) -> Self {
        HerdCounters {
            per_endpoint: (0..endpoints).map(|_| Bucket::default()).collect(),
            total: Bucket::default(),
        }
    }

    /// The share of this second's moved calls that went to `e`, once at least `min` were moved.
    pub(crate) fn share(&self, e: EndpointIdx, now: Timestamp, min: u32) -> Option<f64> {
        let sec = second(now);
        let total = self.total.count(sec);
        if total == 0 || total < min {
            return None;
        }
        let mine = self.per_endpoint.get(e.0 as usize)?.count(sec);
        Some(f64::from(mine) / f64::from(total))
    }

    /// Counts one call moved to `e`.
    pub(crate) fn record(&self, e: EndpointIdx, now: Timestamp) {
        let sec = second(now);
        self.total.bump(sec);
        if let Some(b) = self.per_endpoint.get(e.0 as usize) {
            b.bump(sec);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_reset_each_second() {
        let h = HerdCounters::new(2);
        let t = Timestamp::from_millis(5_000);
        for _ in 0..3 {
            h.record(EndpointIdx(0), t);
        }
        h.record(EndpointIdx(1), t);
        assert_eq!(h.share(EndpointIdx(0), t, 4), Some(0.75));
        assert_eq!(h.share(EndpointIdx(0), t, 5), None);
        let later = Timestamp::from_millis(6_001);
        assert_eq!(h.share(EndpointIdx(0), later, 0), None);
    }
}
