//! Latency percentiles per endpoint over a sliding time window.
//!
//! Samples go into a fixed-size log-linear histogram: exact below 32 ms, then 16 sub-buckets per
//! power of two (values from 2^22 ms, about 70 minutes, share the top bucket). Each bucket also
//! keeps the sum of its samples, and a percentile reports the mean of the samples in the bucket
//! that holds it: exact when those samples are equal (a steady 200 ms endpoint reports 200 ms,
//! not a bucket edge), and never further from the true value than the bucket's width (1/16 of
//! the value, 6.25%). The window is a ring of [`SLICES`] + 1 time slices, each
//! with its own histogram, plus an aggregate histogram over all of them: a sample counts for at
//! least `window` and at most `window + window / SLICES`. Expiring a slice subtracts its counts
//! from the aggregate.
//!
//! P50/P95/P99 are tracked incrementally by three cursors into the aggregate (nearest-rank
//! definition: the `ceil(q * n)`-th smallest sample), so an added sample costs O(1) amortised
//! and nothing is sorted or allocated after construction. Cursors are rebuilt with one pass over
//! the buckets only when a slice expires.

use std::time::Duration;

use super::ring::RingClock;

/// Values below this are stored exactly (one bucket per millisecond).
const LINEAR: u64 = 32;
/// Sub-buckets per power of two above [`LINEAR`].
const SUB: u64 = 16;
/// log2 of [`SUB`].
const SUB_BITS: u32 = 4;
/// log2 of [`LINEAR`].
const LINEAR_BITS: u32 = 5;
/// Values at or above `2^MAX_EXP` ms share the top bucket.
const MAX_EXP: u32 = 22;
/// Number of histogram buckets.
pub(crate) const BUCKETS: usize = (LINEAR + (MAX_EXP - LINEAR_BITS) as u64 * SUB) as usize;
/// Number of slices a window is divided into (the ring holds one more).
pub(crate) const SLICES: usize = 10;
const RING: usize = SLICES + 1;

/// Quantiles tracked, in per-mille: P50, P95, P99.
const QUANTILES: [u64; 3] = [500, 950, 990];

/// The histogram bucket of a latency in milliseconds.
pub(crate) fn bucket_of(ms: u64) -> usize {
    if ms < LINEAR {
        return ms as usize;
    }
    let ms = ms.min((1u64 << MAX_EXP) - 1);
    let exp = 63 - ms.leading_zeros(); // LINEAR_BITS..MAX_EXP
    let sub = (ms >> (exp - SUB_BITS)) & (SUB - 1);
    (LINEAR + u64::from(exp - LINEAR_BITS) * SUB + sub) as usize
}

/// The value a bucket reports: its midpoint (exact below [`LINEAR`]).
pub(crate) fn bucket_value(idx: usize) -> u64 {
    let idx = idx as u64;
    if idx < LINEAR {
        return idx;
    }
    let k = idx - LINEAR;
    let exp = LINEAR_BITS as u64 + k / SUB;
    let width = 1u64 << (exp - u64::from(SUB_BITS));
    let lo = (1u64 << exp) + (k % SUB) * width;
    lo + width / 2
}

/// Nearest-rank target: the rank (1-based) of the sample that is the quantile.
fn target_rank(per_mille: u64, n: u64) -> u64 {
    (per_mille * n).div_ceil(1000).max(1)
}

#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    /// Bucket holding the target sample.
    bucket: usize,
    /// Samples in buckets below `bucket`.
    below: u64,
}

/// P50/P95/P99 in milliseconds and the number of samples behind them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Percentiles {
    pub(crate) p50: u64,
    pub(crate) p95: u64,
    pub(crate) p99: u64,
    pub(crate) samples: u64,
}

/// A sliding-window latency histogram. Not thread-safe on its own: the evaluator keeps one per
/// endpoint behind that endpoint's mutex and publishes [`Percentiles`] to atomics.
///
/// Counts and sums are interleaved (`[count, sum]` per bucket) so recording a sample touches one
/// cache line per histogram; the arrays are zero-initialised, so pages of buckets never used are
/// never touched.
#[derive(Debug)]
pub(crate) struct LatencyWindow {
    clock: RingClock,
    /// `RING` slices of `BUCKETS` `[count, sum_ms]` pairs, flattened.
    slices: Box<[u64]>,
    slice_n: [u64; RING],
    /// `BUCKETS` `[count, sum_ms]` pairs over the whole window.
    agg: Box<[u64]>,
    n: u64,
    cursors: [Cursor; 3],
    window: Duration,
}

impl LatencyWindow {
    /// A window of `window` (odd values are clamped to at least one millisecond per slice).
    pub(crate) fn new(window: Duration) -> Self {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let width = (window_ms / SLICES as u64).max(1);
        LatencyWindow {
            clock: RingClock::new(width, RING),
            slices: vec![0u64; RING * BUCKETS * 2].into_boxed_slice(),
            slice_n: [0; RING],
            agg: vec![0u64; BUCKETS * 2].into_boxed_slice(),
            n: 0,
            cursors: [Cursor::default(); 3],
            window,
        }
    }

    /// The configured window.
    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    /// Samples in bucket `b` of the aggregate.
    fn count(&self, b: usize) -> u64 {
        self.agg.get(2 * b).copied().unwrap_or(0)
    }

    /// Expires slices that left the window at `now`. Returns whether anything expired.
    pub(crate) fn advance(&mut self, now: u64) -> bool {
        let mut expired = false;
        let slices = &mut self.slices;
        let slice_n = &mut self.slice_n;
        let agg = &mut self.agg;
        let n = &mut self.n;
        self.clock.advance(now, |slot| {
            let Some(count) = slice_n.get_mut(slot) else {
                return;
            };
            if *count == 0 {
                return;
            }
            *n = n.saturating_sub(*count);
            *count = 0;
            let start = slot * BUCKETS * 2;
            if let Some(slice) = slices.get_mut(start..start + BUCKETS * 2) {
                for (a, s) in agg.iter_mut().zip(slice.iter_mut()) {
                    *a = a.saturating_sub(*s);
                    *s = 0;
                }
            }
            expired = true;
        });
        if expired {
            self.rebuild_cursors();
        }
        expired
    }

    /// Records a sample of `ms` milliseconds at `now`.
    pub(crate) fn record(&mut self, ms: u64, now: u64) {
        self.advance(now);
        let b = bucket_of(ms);
        let ms = ms.min(1u64 << 40); // keeps sums far from overflow
        let head = self.clock.head();
        let at = (head * BUCKETS + b) * 2;
        if let Some([c, sum]) = self.slices.get_mut(at..at + 2) {
            *c += 1;
            *sum = sum.saturating_add(ms);
        }
        if let Some([c, sum]) = self.agg.get_mut(2 * b..2 * b + 2) {
            *c += 1;
            *sum = sum.saturating_add(ms);
        }
        if let Some(c) = self.slice_n.get_mut(head) {
            *c += 1;
        }
        self.n += 1;
        if self.n == 1 {
            // First sample: every cursor points at it.
            self.cursors = [Cursor {
                bucket: b,
                below: 0,
            }; 3];
            return;
        }
        for (i, q) in QUANTILES.iter().enumerate() {
            let r = target_rank(*q, self.n);
            let mut c = self.cursors[i];
            if b < c.bucket {
                c.below += 1;
            }
            self.cursors[i] = self.fix(c, r);
        }
    }

    /// Moves a cursor so that `below < r <= below + count(bucket)`.
    fn fix(&self, mut c: Cursor, r: u64) -> Cursor {
        loop {
            let here = self.count(c.bucket);
            if c.below >= r && c.bucket > 0 {
                c.bucket -= 1;
                c.below = c.below.saturating_sub(self.count(c.bucket));
            } else if c.below + here < r && c.bucket + 1 < BUCKETS {
                c.below += here;
                c.bucket += 1;
            } else {
                return c;
            }
        }
    }

    /// Rebuilds every cursor with one pass over the aggregate.
    fn rebuild_cursors(&mut self) {
        if self.n == 0 {
            self.cursors = [Cursor::default(); 3];
            return;
        }
        let targets = QUANTILES.map(|q| target_rank(q, self.n));
        let mut found = [false; 3];
        let mut below = 0u64;
        for b in 0..BUCKETS {
            let upto = below + self.count(b);
            for i in 0..3 {
                if !found[i] && upto >= targets[i] {
                    self.cursors[i] = Cursor { bucket: b, below };
                    found[i] = true;
                }
            }
            if found[2] {
                break;
            }
            below = upto;
        }
    }

    /// The current percentiles (all zero with no samples).
    pub(crate) fn percentiles(&self) -> Percentiles {
        if self.n == 0 {
            return Percentiles::default();
        }
        Percentiles {
            p50: self.value(self.cursors[0].bucket),
            p95: self.value(self.cursors[1].bucket),
            p99: self.value(self.cursors[2].bucket),
            samples: self.n,
        }
    }

    /// The mean of the samples in bucket `b` (its midpoint if empty).
    fn value(&self, b: usize) -> u64 {
        match self.agg.get(2 * b..2 * b + 2) {
            Some(&[n, sum]) if n > 0 => sum / n,
            _ => bucket_value(b),
        }
    }

    /// The time at which the oldest sample still counted leaves the window (`u64::MAX` when the
    /// window is empty): until then, published percentiles stay exact without a new sample.
    pub(crate) fn fresh_until(&self) -> u64 {
        if self.n == 0 {
            return u64::MAX;
        }
        self.clock
            .oldest_expiry(|slot| self.slice_n.get(slot).is_some_and(|c| *c > 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotone_and_values_close() {
        let mut last = 0;
        for ms in 0..(1u64 << MAX_EXP) {
            let b = bucket_of(ms);
            assert!(b >= last && b < BUCKETS, "ms {ms} bucket {b}");
            last = b;
            let v = bucket_value(b) as f64;
            let err = (v - ms as f64).abs() / (ms.max(1) as f64);
            assert!(err <= 1.0 / 32.0 + 1e-9, "ms {ms} value {v}");
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_value(bucket_of(17)), 17);
    }

    fn exact(samples: &mut [u64], q: u64) -> u64 {
        samples.sort_unstable();
        let r = target_rank(q, samples.len() as u64) as usize;
        samples[r - 1]
    }

    #[test]
    fn incremental_cursors_match_a_sort() {
        let mut w = LatencyWindow::new(Duration::from_secs(60));
        let mut all = Vec::new();
        let mut x: u64 = 12345;
        for i in 0..2000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let ms = (x >> 33) % 20 + if i % 7 == 0 { 25 } else { 0 };
            all.push(ms);
            w.record(ms, 1_000);
            let p = w.percentiles();
            // The reported value lies in the bucket of the true one.
            assert_eq!(bucket_of(p.p50), bucket_of(exact(&mut all.clone(), 500)));
            assert_eq!(bucket_of(p.p95), bucket_of(exact(&mut all.clone(), 950)));
            assert_eq!(bucket_of(p.p99), bucket_of(exact(&mut all.clone(), 990)));
        }
    }

    #[test]
    fn slices_expire_after_the_window() {
        let mut w = LatencyWindow::new(Duration::from_secs(10));
        w.record(500, 0);
        w.record(20, 5_000);
        assert_eq!(w.percentiles().samples, 2);
        assert_eq!(w.fresh_until(), 11_000);
        w.advance(10_999);
        assert_eq!(w.percentiles().samples, 2);
        w.advance(11_000);
        let p = w.percentiles();
        assert_eq!((p.samples, p.p99), (1, 20));
        w.record(4_200, 11_000);
        w.record(4_200, 11_000);
        assert_eq!(w.percentiles().p99, 4_200, "equal samples report exactly");
        w.advance(22_000);
        assert_eq!(w.percentiles(), Percentiles::default());
        assert_eq!(w.fresh_until(), u64::MAX);
    }
}
