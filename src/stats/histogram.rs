//! A fixed-size, lock-free latency histogram: log-linear buckets over milliseconds.
//!
//! Values below 16 ms have a bucket each (exact); above, every power of two is split into four
//! buckets, so a reported percentile is the upper bound of its bucket and at most 25 % above the
//! true value. The range ends at 2^26 ms (about 18.6 hours); longer values count in the last
//! bucket. 104 `AtomicU32` counters: 416 bytes per histogram, recording is one relaxed
//! `fetch_add`.

use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

const EXACT: u64 = 16;
const SUB_BITS: u32 = 2;
const SUB: u64 = 1 << SUB_BITS;
const MAX_EXP: u32 = 26;
/// Buckets per histogram.
pub(crate) const BUCKETS: usize = EXACT as usize + (MAX_EXP as usize - 4) * SUB as usize;

/// The bucket of a value in milliseconds.
pub(crate) fn bucket_of(ms: u64) -> usize {
    if ms < EXACT {
        return ms as usize;
    }
    let exp = 63 - ms.leading_zeros();
    if exp >= MAX_EXP {
        return BUCKETS - 1;
    }
    let sub = (ms >> (exp - SUB_BITS)) & (SUB - 1);
    EXACT as usize + (exp as usize - 4) * SUB as usize + sub as usize
}

/// The largest value in milliseconds that falls in bucket `b`.
pub(crate) fn upper_bound(b: usize) -> u64 {
    if b < EXACT as usize {
        return b as u64;
    }
    let k = (b - EXACT as usize) as u64;
    let exp = 4 + k / SUB;
    let sub = k % SUB;
    let width = 1u64 << (exp - u64::from(SUB_BITS));
    (1u64 << exp) + (sub + 1) * width - 1
}

/// The atomic histogram. It also keeps the lowest and highest bucket used, so a snapshot
/// reads only the buckets in between (latencies cluster: a few cache lines, not 416 bytes).
/// `repr(C)`: the range comes first, on the cache line of the first buckets.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Histogram {
    /// Lowest bucket used (`u8::MAX`: none yet).
    lo: AtomicU8,
    /// Highest bucket used.
    hi: AtomicU8,
    buckets: [AtomicU32; BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            lo: AtomicU8::new(u8::MAX),
            hi: AtomicU8::new(0),
            buckets: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

impl Histogram {
    /// Counts one value.
    #[inline]
    pub(crate) fn record(&self, ms: u64) {
        let b = bucket_of(ms);
        if let Some(c) = self.buckets.get(b) {
            c.fetch_add(1, Ordering::Relaxed);
            // `BUCKETS` < 255, so the index fits; the read-then-update keeps the common case
            // (a bucket inside the range) to two plain loads.
            let b8 = b as u8;
            if b8 < self.lo.load(Ordering::Relaxed) {
                self.lo.fetch_min(b8, Ordering::Relaxed);
            }
            if b8 > self.hi.load(Ordering::Relaxed) {
                self.hi.fetch_max(b8, Ordering::Relaxed);
            }
        }
    }

    /// Adds this histogram's counts into `into`; returns the range of buckets touched.
    #[cfg(test)]
    pub(crate) fn add_to(&self, into: &mut [u64; BUCKETS]) -> Option<(usize, usize)> {
        let lo = usize::from(self.lo.load(Ordering::Relaxed));
        let hi = usize::from(self.hi.load(Ordering::Relaxed)).min(BUCKETS - 1);
        if lo > hi {
            return None;
        }
        let (Some(src), Some(dst)) = (self.buckets.get(lo..=hi), into.get_mut(lo..=hi)) else {
            return None;
        };
        for (a, b) in dst.iter_mut().zip(src) {
            *a += u64::from(b.load(Ordering::Relaxed));
        }
        Some((lo, hi))
    }

    /// The percentiles of this histogram alone, read straight from its used range (no copy).
    /// Counts only grow, so a value counted between the two passes can only move a rank to an
    /// earlier bucket: every percentile is found.
    pub(crate) fn percentiles(&self) -> Percentiles {
        let lo = usize::from(self.lo.load(Ordering::Relaxed));
        let hi = usize::from(self.hi.load(Ordering::Relaxed)).min(BUCKETS - 1);
        let Some(range) = self.buckets.get(lo..=hi) else {
            return Percentiles::default();
        };
        if let [one] = range {
            // One bucket used (a tenant with few calls): every percentile is in it.
            let samples = u64::from(one.load(Ordering::Relaxed));
            let at = (samples > 0).then(|| upper_bound(lo));
            return Percentiles {
                samples,
                p50_ms: at,
                p95_ms: at,
                p99_ms: at,
            };
        }
        let samples: u64 = range
            .iter()
            .map(|c| u64::from(c.load(Ordering::Relaxed)))
            .sum();
        if samples == 0 {
            return Percentiles::default();
        }
        let ranks = [0.50, 0.95, 0.99].map(|q| rank(q, samples));
        let mut found = [None; 3];
        let mut seen = 0u64;
        for (b, c) in range.iter().enumerate() {
            seen += u64::from(c.load(Ordering::Relaxed));
            for (f, r) in found.iter_mut().zip(ranks) {
                if f.is_none() && seen >= r {
                    *f = Some(upper_bound(lo + b));
                }
            }
            if found[2].is_some() {
                break;
            }
        }
        let [p50_ms, p95_ms, p99_ms] = found;
        Percentiles {
            samples,
            p50_ms,
            p95_ms,
            p99_ms,
        }
    }
}

/// The rank of quantile `q` among `samples` values: the smallest bucket whose cumulative count
/// reaches `ceil(q * n)` holds it.
fn rank(q: f64, samples: u64) -> u64 {
    ((q * samples as f64).ceil() as u64).clamp(1, samples)
}

/// Latency percentiles in milliseconds (each the upper bound of its bucket: exact below 16 ms,
/// within 25 % above).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Percentiles {
    /// How many values were counted.
    pub samples: u64,
    /// Median, `None` with no samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<u64>,
    /// 95th percentile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<u64>,
    /// 99th percentile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<u64>,
}

impl Percentiles {
    /// The percentiles of summed bucket counts.
    #[cfg(test)]
    pub(crate) fn of(counts: &[u64; BUCKETS]) -> Self {
        Self::of_range(counts, (0, BUCKETS - 1))
    }

    /// The percentiles of summed bucket counts, all of them within `lo..=hi`.
    #[cfg(test)]
    pub(crate) fn of_range(counts: &[u64; BUCKETS], (lo, hi): (usize, usize)) -> Self {
        let Some(range) = counts.get(lo..=hi) else {
            return Percentiles::default();
        };
        let samples: u64 = range.iter().sum();
        if samples == 0 {
            return Percentiles::default();
        }
        let at = |q: f64| {
            let rank = rank(q, samples);
            let mut seen = 0;
            for (b, c) in range.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Some(upper_bound(lo + b));
                }
            }
            None
        };
        Percentiles {
            samples,
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_values_are_exact() {
        for v in 0..16 {
            assert_eq!(upper_bound(bucket_of(v)), v);
        }
    }

    #[test]
    fn percentiles_of_known_values() {
        let h = Histogram::default();
        for v in 1..=100u64 {
            h.record(v % 10);
        }
        let p = h.percentiles();
        let mut c = [0; BUCKETS];
        assert_eq!(h.add_to(&mut c), Some((0, 9)));
        assert_eq!(Percentiles::of(&c), p);
        assert_eq!(p.samples, 100);
        assert_eq!(p.p50_ms, Some(4));
        assert_eq!(p.p95_ms, Some(9));
        assert_eq!(Percentiles::of(&[0; BUCKETS]).p50_ms, None);
    }

    proptest! {
        #[test]
        fn a_bucket_bound_is_never_below_nor_25_percent_above_the_value(v in 0u64..(1 << 26)) {
            let ub = upper_bound(bucket_of(v));
            prop_assert!(ub >= v);
            prop_assert!(ub as f64 <= v as f64 * 1.25 + 1.0);
        }

        #[test]
        fn percentiles_read_in_place_equal_those_of_the_copied_counts(
            values in proptest::collection::vec(0u64..100_000, 0..300)
        ) {
            let h = Histogram::default();
            for v in &values {
                h.record(*v);
            }
            let mut c = [0; BUCKETS];
            h.add_to(&mut c);
            prop_assert_eq!(h.percentiles(), Percentiles::of(&c));
            prop_assert_eq!(h.percentiles().samples, values.len() as u64);
        }

        #[test]
        fn buckets_are_ordered(a in 0u64..(1 << 30), b in 0u64..(1 << 30)) {
            prop_assert!(a > b || bucket_of(a) <= bucket_of(b));
        }
    }
}
