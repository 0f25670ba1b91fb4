//! [`RingClock`]: the time arithmetic shared by every rotating-bucket window (breaker time
//! windows, latency slices, tenant spend).
//!
//! Time is cut into slots of `width` ms, numbered `t / width`. A ring of `len` slots holds the
//! slots `head_epoch - len + 1 ..= head_epoch`; a value recorded at `t` therefore counts until
//! slot `t / width + len` begins. With `len = K + 1` and `width = window / K` that is at least
//! `window` and at most `window + width` after `t`.

/// Slot arithmetic for a ring of time buckets. `repr(C)`, what [`RingClock::moves_at`] reads
/// (on every recorded value) first.
#[derive(Debug, Clone)]
#[repr(C)]
pub(crate) struct RingClock {
    width: u64,
    head_epoch: u64,
    head: usize,
    len: usize,
}

impl RingClock {
    /// A ring of `len` (at least 1) slots of `width` (at least 1) ms each.
    pub(crate) const fn new(width: u64, len: usize) -> Self {
        RingClock {
            width: if width == 0 { 1 } else { width },
            len: if len == 0 { 1 } else { len },
            head: 0,
            head_epoch: 0,
        }
    }

    /// The slot new values go into.
    pub(crate) fn head(&self) -> usize {
        self.head
    }

    /// Whether [`RingClock::advance`] to `now` would move the head.
    pub(crate) fn moves_at(&self, now: u64) -> bool {
        now / self.width > self.head_epoch
    }

    /// Moves the head to the slot of `now`, calling `expire(slot)` for every slot that is reused
    /// (its old contents leave the window). A `now` earlier than the head's slot (another thread
    /// observed a later time first) leaves the ring as it is: its value goes into the head slot.
    pub(crate) fn advance(&mut self, now: u64, mut expire: impl FnMut(usize)) {
        let epoch = now / self.width;
        if epoch <= self.head_epoch {
            return;
        }
        let steps = (epoch - self.head_epoch).min(self.len as u64);
        for _ in 0..steps {
            self.head = (self.head + 1) % self.len;
            expire(self.head);
        }
        self.head_epoch = epoch;
    }

    /// When the oldest slot for which `occupied(slot)` holds will be reused (`u64::MAX` when none
    /// is occupied).
    pub(crate) fn oldest_expiry(&self, occupied: impl Fn(usize) -> bool) -> u64 {
        // Walk from the oldest slot (just after head) towards the head.
        for age in (0..self.len).rev() {
            let slot = (self.head + self.len - age) % self.len;
            if occupied(slot) {
                let epoch = self.head_epoch.saturating_sub(age as u64);
                return epoch
                    .saturating_add(self.len as u64)
                    .saturating_mul(self.width);
            }
        }
        u64::MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_counts_between_window_and_window_plus_one_slot() {
        // window 10 ms in 10 slots of 1 ms, ring of 11
        let mut r = RingClock::new(1, 11);
        r.advance(5, |_| {});
        let slot = r.head();
        let mut gone_at = None;
        for t in 6..30 {
            r.advance(t, |s| {
                if s == slot && gone_at.is_none() {
                    gone_at = Some(t);
                }
            });
        }
        assert_eq!(gone_at, Some(16));
    }

    #[test]
    fn time_going_backwards_keeps_the_head() {
        let mut r = RingClock::new(10, 4);
        r.advance(100, |_| {});
        let h = r.head();
        r.advance(50, |_| panic!("nothing expires"));
        assert_eq!(r.head(), h);
    }

    #[test]
    fn a_long_gap_expires_each_slot_once() {
        let mut r = RingClock::new(10, 4);
        let mut n = 0;
        r.advance(1_000_000, |_| n += 1);
        assert_eq!(n, 4);
    }
}
