//! The shared per-endpoint circuit breaker: states, manual modes, events, probe permits, the
//! sliding call window and the growing, jittered open wait.
//!
//! Semantics follow resilience4j:
//! - a count-based (last N calls) or time-based (rotating buckets) sliding window;
//! - failure-rate and slow-call-rate thresholds compared with `>=`, and no rate counts before the
//!   window holds `min_calls` calls;
//! - a consecutive-failure trigger that, like the policy says, fires "whatever the window says"
//!   (it is *not* gated by `min_calls`; leave it unset for a purely rate-based breaker);
//! - only the policy's capacity error classes count as failures. Every other outcome that is not
//!   a success (context length, content filter, auth, bad request) is left out of the window
//!   entirely: it counts as neither a failure nor a success, so a burst of bad requests neither
//!   opens a breaker nor dilutes a real outage's failure rate. Slow calls are counted among the
//!   calls in the window whatever their outcome (success or capacity failure);
//! - a bounded number of half-open probe permits shared by every tenant: all of them succeeding
//!   closes the breaker, one failing (a capacity error, or a slow call when a slow-call trigger
//!   is set) re-opens it, one ending in a request error (context length, ...) frees its permit
//!   for another probe, and a round not finished within the half-open timeout re-opens it;
//! - an open wait of `initial * multiplier^n` (capped at `max`) plus seeded jitter, `n` being
//!   the number of consecutive re-opens;
//! - manual modes for operators: forced open, disabled, metrics only.
//!
//! The state machine here is single-threaded; the evaluator keeps one per endpoint behind that
//! endpoint's own mutex and publishes what queries need to atomics.

use std::time::Duration;

use serde::Serialize;

use super::reason::{Trigger, TriggerKind};
use super::ring::RingClock;
use crate::catalog::EndpointIdx;
use crate::clock::Timestamp;
use crate::policy::{Breaker, OpenWait, Window};
use crate::trigger::OutcomeClass;

/// Count windows longer than this are clamped (the policy loader should reject them first).
pub(crate) const MAX_COUNT_WINDOW: u32 = 65_536;
/// Buckets a time-based breaker window is divided into (the ring holds one more).
pub(crate) const TIME_BUCKETS: usize = 20;
/// Half-open probe permits are clamped to this many.
pub const MAX_PROBES: u32 = 64;

/// The state of an endpoint's breaker as reported to callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls flow; outcomes are counted.
    Closed,
    /// Calls are refused until the open wait passes; then probes may be admitted.
    Open,
    /// A bounded number of probe calls is admitted, platform-wide.
    HalfOpen,
    /// An operator forced the breaker open: every call is refused.
    ForcedOpen,
    /// An operator disabled the breaker: it never blocks and records nothing.
    Disabled,
    /// An operator set metrics-only: outcomes are recorded and rates computed, but it never
    /// blocks.
    MetricsOnly,
}

impl BreakerState {
    pub(crate) const fn to_u8(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
            BreakerState::ForcedOpen => 3,
            BreakerState::Disabled => 4,
            BreakerState::MetricsOnly => 5,
        }
    }

    pub(crate) const fn from_u8(v: u8) -> Self {
        match v {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            3 => BreakerState::ForcedOpen,
            4 => BreakerState::Disabled,
            5 => BreakerState::MetricsOnly,
            _ => BreakerState::Closed,
        }
    }

    /// The snake_case name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
            BreakerState::ForcedOpen => "forced_open",
            BreakerState::Disabled => "disabled",
            BreakerState::MetricsOnly => "metrics_only",
        }
    }
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an operator runs an endpoint's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerMode {
    /// The normal state machine (closed / open / half-open).
    #[default]
    Auto,
    /// Refuse every call until the mode changes.
    ForcedOpen,
    /// Never block, record nothing: the breaker, the retry-after block and nothing else of the
    /// shared endpoint health applies. Tenant-specific triggers (latency ceiling, provider
    /// signals against the tenant's thresholds, budgets) still apply.
    Disabled,
    /// Like [`BreakerMode::Disabled`], but outcomes are still recorded and rates computed, so
    /// operators can watch what the breaker would do before enforcing it.
    MetricsOnly,
}

/// A real change of an endpoint's breaker state, with the condition that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BreakerEvent {
    /// The endpoint.
    pub endpoint: EndpointIdx,
    /// The state before.
    pub from: BreakerState,
    /// The state after (never equal to `from`).
    pub to: BreakerState,
    /// When it changed.
    pub at: Timestamp,
    /// Why: the measured value and threshold (`until` = end of the open wait when opening).
    pub trigger: Trigger,
    /// Consecutive re-opens so far (0 for a first opening; reset when the breaker closes).
    pub reopens: u32,
}

/// Permission to send one half-open probe call to a recovering endpoint. Pass it back on the
/// call's [`Observation`](super::Observation) so its outcome counts as the probe's.
///
/// A permit belongs to one half-open round: reporting it twice, or after the round ended, is
/// ignored by the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct ProbePermit {
    /// The endpoint being probed.
    pub endpoint: EndpointIdx,
    pub(crate) round: u32,
    pub(crate) slot: u8,
}

/// The answer to [`TriggerEvaluator::try_acquire_probe`](super::TriggerEvaluator::try_acquire_probe).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Probe {
    /// A probe permit: send the call and report it with the permit.
    Granted(ProbePermit),
    /// The breaker is not recovering: an ordinary call may go (if the tenant's own triggers
    /// allow it).
    NotNeeded,
    /// No probe may be sent now, with the reason and, where known, when to ask again.
    Refused(Trigger),
}

/// The open wait before the `reopens`-th consecutive re-open may be probed: `initial *
/// multiplier^reopens`, capped at `max`, plus up to `jitter` of itself drawn deterministically
/// from `seed`, the endpoint and `reopens` (splitmix64), so replicas with different seeds spread
/// out while every run with the same seed is reproducible.
///
/// Odd settings never panic: a multiplier below 1 (or not finite) counts as 1, a `max` below
/// `initial` as `initial`, and jitter is clamped to `0..=1`. The result always lies in
/// `[initial, max * (1 + jitter)]`.
///
/// ```
/// use downshift::policy::OpenWait;
/// use downshift::trigger::open_wait;
/// use downshift::EndpointIdx;
/// use std::time::Duration;
///
/// let w = OpenWait {
///     initial: Duration::from_secs(30),
///     multiplier: 2.0,
///     max: Duration::from_secs(600),
///     jitter: 0.2,
/// };
/// let first = open_wait(&w, 7, EndpointIdx(0), 0);
/// assert!(first >= Duration::from_secs(30) && first <= Duration::from_secs(36));
/// let later = open_wait(&w, 7, EndpointIdx(0), 10);
/// assert!(later >= Duration::from_secs(600) && later <= Duration::from_secs(720));
/// ```
#[must_use]
pub fn open_wait(wait: &OpenWait, seed: u64, endpoint: EndpointIdx, reopens: u32) -> Duration {
    let initial = wait.initial.as_secs_f64();
    let max = wait.max.as_secs_f64().max(initial);
    let multiplier = if wait.multiplier.is_finite() && wait.multiplier >= 1.0 {
        wait.multiplier
    } else {
        1.0
    };
    let jitter = if wait.jitter.is_finite() {
        wait.jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let exp = i32::try_from(reopens).unwrap_or(i32::MAX);
    let grown = initial * multiplier.powi(exp);
    // NaN (0 * inf) or overflow both land on the cap.
    let capped = if grown.is_finite() {
        grown.min(max)
    } else {
        max
    };
    let u = unit_interval(jitter_hash(seed, endpoint, reopens));
    let secs = (capped * (1.0 + jitter * u)).clamp(initial, max * (1.0 + jitter));
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}

/// splitmix64's finaliser: a well-mixed 64-bit hash of `z`.
pub(crate) const fn splitmix64(z: u64) -> u64 {
    let mut z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn jitter_hash(seed: u64, endpoint: EndpointIdx, reopens: u32) -> u64 {
    splitmix64(seed ^ splitmix64((u64::from(endpoint.0) << 32) | u64::from(reopens)))
}

/// A hash mapped to `[0, 1)`.
fn unit_interval(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The breaker settings, sanitised so that no value can panic or divide by zero.
#[derive(Debug, Clone)]
pub(crate) struct BreakerConfig {
    failure_mask: u16,
    window: WindowSpec,
    min_calls: u32,
    failure_rate: Option<f64>,
    slow: Option<(Duration, f64)>,
    consecutive: Option<u32>,
    pub(crate) probes: u32,
    half_open_timeout: u64,
    wait: OpenWait,
    seed: u64,
}

#[derive(Debug, Clone, Copy)]
enum WindowSpec {
    Calls(u32),
    Time { window: Duration, width: u64 },
}

fn class_bit(c: OutcomeClass) -> u16 {
    let i = OutcomeClass::ALL.iter().position(|x| *x == c).unwrap_or(0);
    1u16 << i
}

fn threshold(x: f64) -> Option<f64> {
    // A rate threshold of zero or less would fire on a window full of successes; not finite
    // never compares. Both disable the trigger (the policy loader rejects them).
    (x.is_finite() && x > 0.0).then_some(x)
}

impl BreakerConfig {
    pub(crate) fn new(
        breaker: &Breaker,
        probes: u32,
        half_open_timeout: Duration,
        wait: &OpenWait,
        seed: u64,
    ) -> Self {
        let failure_mask = breaker
            .capacity_errors
            .iter()
            .filter(|c| c.is_capacity())
            .fold(0u16, |m, c| m | class_bit(*c));
        let window = match breaker.window {
            Window::Calls(n) => WindowSpec::Calls(n.clamp(1, MAX_COUNT_WINDOW)),
            Window::Time(d) => {
                let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                WindowSpec::Time {
                    window: d,
                    width: (ms / TIME_BUCKETS as u64).max(1),
                }
            }
        };
        BreakerConfig {
            failure_mask,
            window,
            min_calls: breaker.min_calls.max(1),
            failure_rate: threshold(breaker.failure_rate),
            slow: breaker
                .slow_calls
                .as_ref()
                .and_then(|s| threshold(s.rate).map(|r| (s.latency, r))),
            consecutive: breaker.consecutive_failures.filter(|n| *n > 0),
            probes: probes.clamp(1, MAX_PROBES),
            half_open_timeout: u64::try_from(half_open_timeout.as_millis()).unwrap_or(u64::MAX),
            wait: wait.clone(),
            seed,
        }
    }

    /// How an outcome counts.
    pub(crate) fn flags(&self, outcome: OutcomeClass, latency: Duration) -> CallFlags {
        let failure = self.failure_mask & class_bit(outcome) != 0;
        let counted = failure || outcome == OutcomeClass::Ok;
        CallFlags {
            counted,
            failure,
            slow: counted && self.slow.is_some_and(|(l, _)| latency >= l),
        }
    }

    fn window_duration(&self) -> Option<Duration> {
        match self.window {
            WindowSpec::Calls(_) => None,
            WindowSpec::Time { window, .. } => Some(window),
        }
    }

    /// The smallest number of calls any rate is computed on.
    pub(crate) fn min_calls(&self) -> u32 {
        self.min_calls
    }

    /// The ms to wait after the `reopens`-th re-open, rounded up so it never ends early.
    pub(crate) fn wait_ms(&self, endpoint: EndpointIdx, reopens: u32) -> u64 {
        let d = open_wait(&self.wait, self.seed, endpoint, reopens);
        u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }
}

/// How one call counts in the breaker window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CallFlags {
    /// Counted in the window at all (a success or a capacity failure).
    pub(crate) counted: bool,
    /// A capacity failure.
    pub(crate) failure: bool,
    /// At least as slow as the slow-call latency.
    pub(crate) slow: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    calls: u32,
    failures: u32,
    slow: u32,
}

impl Counts {
    fn add(&mut self, f: CallFlags) {
        self.calls = self.calls.saturating_add(1);
        self.failures = self.failures.saturating_add(u32::from(f.failure));
        self.slow = self.slow.saturating_add(u32::from(f.slow));
    }

    fn sub(&mut self, other: Counts) {
        self.calls = self.calls.saturating_sub(other.calls);
        self.failures = self.failures.saturating_sub(other.failures);
        self.slow = self.slow.saturating_sub(other.slow);
    }
}

const FAIL: u8 = 1;
const SLOW: u8 = 2;

#[derive(Debug)]
enum CallWindow {
    Count {
        ring: Box<[u8]>,
        next: usize,
        filled: usize,
        total: Counts,
    },
    Time {
        clock: RingClock,
        slots: Box<[Counts]>,
        total: Counts,
    },
}

impl CallWindow {
    fn new(spec: WindowSpec) -> Self {
        match spec {
            WindowSpec::Calls(n) => CallWindow::Count {
                ring: vec![0u8; n as usize].into_boxed_slice(),
                next: 0,
                filled: 0,
                total: Counts::default(),
            },
            WindowSpec::Time { width, .. } => CallWindow::Time {
                clock: RingClock::new(width, TIME_BUCKETS + 1),
                slots: vec![Counts::default(); TIME_BUCKETS + 1].into_boxed_slice(),
                total: Counts::default(),
            },
        }
    }

    fn advance(&mut self, now: u64) {
        if let CallWindow::Time {
            clock,
            slots,
            total,
        } = self
        {
            clock.advance(now, |slot| {
                if let Some(s) = slots.get_mut(slot) {
                    total.sub(*s);
                    *s = Counts::default();
                }
            });
        }
    }

    fn push(&mut self, f: CallFlags, now: u64) {
        match self {
            CallWindow::Count {
                ring,
                next,
                filled,
                total,
            } => {
                let len = ring.len();
                let Some(cell) = ring.get_mut(*next) else {
                    return;
                };
                if *filled == len {
                    let old = *cell;
                    total.sub(Counts {
                        calls: 1,
                        failures: u32::from(old & FAIL != 0),
                        slow: u32::from(old & SLOW != 0),
                    });
                } else {
                    *filled += 1;
                }
                *cell = (if f.failure { FAIL } else { 0 }) | (if f.slow { SLOW } else { 0 });
                total.add(f);
                *next = (*next + 1) % len;
            }
            CallWindow::Time {
                clock,
                slots,
                total,
            } => {
                clock.advance(now, |slot| {
                    if let Some(s) = slots.get_mut(slot) {
                        total.sub(*s);
                        *s = Counts::default();
                    }
                });
                if let Some(s) = slots.get_mut(clock.head()) {
                    s.add(f);
                }
                total.add(f);
            }
        }
    }

    fn totals(&self) -> Counts {
        match self {
            CallWindow::Count { total, .. } | CallWindow::Time { total, .. } => *total,
        }
    }

    fn clear(&mut self) {
        match self {
            CallWindow::Count {
                ring,
                next,
                filled,
                total,
            } => {
                ring.fill(0);
                *next = 0;
                *filled = 0;
                *total = Counts::default();
            }
            CallWindow::Time { slots, total, .. } => {
                slots.fill(Counts::default());
                *total = Counts::default();
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auto {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug, Clone, Copy, Default)]
struct Round {
    id: u32,
    started: u64,
    outstanding: u64,
    succeeded: u64,
}

/// What the window says, for snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct WindowStats {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
    pub(crate) consecutive: u32,
}

/// The per-endpoint breaker state machine.
#[derive(Debug)]
pub(crate) struct BreakerCore {
    endpoint: EndpointIdx,
    mode: BreakerMode,
    state: Auto,
    window: CallWindow,
    consecutive: u32,
    reopens: u32,
    opened_at: u64,
    open_until: u64,
    round: Round,
    last_trip: Option<Trigger>,
}

impl BreakerCore {
    pub(crate) fn new(endpoint: EndpointIdx, cfg: &BreakerConfig) -> Self {
        BreakerCore {
            endpoint,
            mode: BreakerMode::Auto,
            state: Auto::Closed,
            window: CallWindow::new(cfg.window),
            consecutive: 0,
            reopens: 0,
            opened_at: 0,
            open_until: 0,
            round: Round::default(),
            last_trip: None,
        }
    }

    /// The state callers see.
    pub(crate) fn reported(&self) -> BreakerState {
        match self.mode {
            BreakerMode::ForcedOpen => BreakerState::ForcedOpen,
            BreakerMode::Disabled => BreakerState::Disabled,
            BreakerMode::MetricsOnly => BreakerState::MetricsOnly,
            BreakerMode::Auto => match self.state {
                Auto::Closed => BreakerState::Closed,
                Auto::Open => BreakerState::Open,
                Auto::HalfOpen => BreakerState::HalfOpen,
            },
        }
    }

    pub(crate) fn mode(&self) -> BreakerMode {
        self.mode
    }

    pub(crate) fn open_until(&self) -> u64 {
        self.open_until
    }

    pub(crate) fn reopens(&self) -> u32 {
        self.reopens
    }

    pub(crate) fn last_trip(&self) -> Option<Trigger> {
        self.last_trip
    }

    /// When the current half-open round times out (`u64::MAX` outside half-open).
    pub(crate) fn half_open_deadline(&self, cfg: &BreakerConfig) -> u64 {
        if self.mode == BreakerMode::Auto && self.state == Auto::HalfOpen {
            self.round.started.saturating_add(cfg.half_open_timeout)
        } else {
            u64::MAX
        }
    }

    /// Probe permits still available in the current half-open round.
    pub(crate) fn probes_left(&self, cfg: &BreakerConfig) -> u32 {
        let used = (self.round.outstanding | self.round.succeeded).count_ones();
        cfg.probes.saturating_sub(used)
    }

    pub(crate) fn window_stats(&mut self, now: u64) -> WindowStats {
        self.window.advance(now);
        let t = self.window.totals();
        WindowStats {
            calls: t.calls,
            failures: t.failures,
            slow: t.slow,
            consecutive: self.consecutive,
        }
    }

    fn event(
        &self,
        from: BreakerState,
        now: u64,
        trigger: Trigger,
        emit: &mut impl FnMut(BreakerEvent),
    ) {
        let to = self.reported();
        if from != to {
            emit(BreakerEvent {
                endpoint: self.endpoint,
                from,
                to,
                at: Timestamp::from_millis(now),
                trigger: trigger.at(self.endpoint),
                reopens: self.reopens,
            });
        }
    }

    fn open(
        &mut self,
        cfg: &BreakerConfig,
        now: u64,
        trigger: Trigger,
        emit: &mut impl FnMut(BreakerEvent),
    ) {
        let from = self.reported();
        if self.state == Auto::HalfOpen {
            self.reopens = self.reopens.saturating_add(1);
        }
        self.state = Auto::Open;
        self.opened_at = now;
        self.open_until = now.saturating_add(cfg.wait_ms(self.endpoint, self.reopens));
        self.window.clear();
        self.consecutive = 0;
        self.round.outstanding = 0;
        self.round.succeeded = 0;
        let trigger = trigger
            .at(self.endpoint)
            .until(Timestamp::from_millis(self.open_until));
        self.last_trip = Some(trigger);
        self.event(from, now, trigger, emit);
    }

    fn close(&mut self, now: u64, trigger: Trigger, emit: &mut impl FnMut(BreakerEvent)) {
        let from = self.reported();
        self.state = Auto::Closed;
        self.reopens = 0;
        self.window.clear();
        self.consecutive = 0;
        self.round.outstanding = 0;
        self.round.succeeded = 0;
        self.event(from, now, trigger, emit);
    }

    /// Re-opens a half-open breaker whose round outlived the timeout.
    pub(crate) fn expire_round(
        &mut self,
        cfg: &BreakerConfig,
        now: u64,
        emit: &mut impl FnMut(BreakerEvent),
    ) {
        if self.mode != BreakerMode::Auto || self.state != Auto::HalfOpen {
            return;
        }
        let deadline = self.half_open_deadline(cfg);
        if now >= deadline {
            let elapsed = now.saturating_sub(self.round.started);
            let t = Trigger::new(
                TriggerKind::ProbeTimeout,
                elapsed as f64,
                cfg.half_open_timeout as f64,
            );
            self.open(cfg, now, t, emit);
        }
    }

    /// Records one call's outcome (`probe`: the permit it was sent with, if any).
    pub(crate) fn record(
        &mut self,
        cfg: &BreakerConfig,
        flags: CallFlags,
        probe: Option<ProbePermit>,
        now: u64,
        emit: &mut impl FnMut(BreakerEvent),
    ) {
        match self.mode {
            BreakerMode::Disabled | BreakerMode::ForcedOpen => return,
            BreakerMode::MetricsOnly => {
                if flags.counted {
                    self.count(flags, now);
                }
                return;
            }
            BreakerMode::Auto => {}
        }
        self.expire_round(cfg, now, emit);
        match self.state {
            Auto::Closed => {
                if flags.counted {
                    self.count(flags, now);
                    if let Some(t) = self.tripped(cfg) {
                        self.open(cfg, now, t, emit);
                    }
                }
            }
            Auto::HalfOpen => {
                let Some(p) = probe else { return };
                let bit = 1u64.checked_shl(u32::from(p.slot)).unwrap_or(0);
                if p.round != self.round.id || self.round.outstanding & bit == 0 {
                    return; // stale or duplicate permit
                }
                self.round.outstanding &= !bit;
                if !flags.counted {
                    return; // inconclusive: the permit is free again
                }
                let done = self.round.succeeded.count_ones();
                if flags.failure || flags.slow {
                    let t = Trigger::new(
                        TriggerKind::ProbeFailed,
                        f64::from(done),
                        f64::from(cfg.probes),
                    );
                    self.open(cfg, now, t, emit);
                } else {
                    self.round.succeeded |= bit;
                    let done = done + 1;
                    if done >= cfg.probes {
                        let t = Trigger::new(
                            TriggerKind::ProbesSucceeded,
                            f64::from(done),
                            f64::from(cfg.probes),
                        );
                        self.close(now, t, emit);
                    }
                }
            }
            // Calls still in flight when the breaker opened say nothing about recovery.
            Auto::Open => {}
        }
    }

    fn count(&mut self, flags: CallFlags, now: u64) {
        self.window.push(flags, now);
        if flags.failure {
            self.consecutive = self.consecutive.saturating_add(1);
        } else {
            self.consecutive = 0;
        }
    }

    /// The first trip condition that holds, if any.
    fn tripped(&self, cfg: &BreakerConfig) -> Option<Trigger> {
        let t = self.window.totals();
        let window = cfg.window_duration();
        if let Some(k) = cfg.consecutive {
            if self.consecutive >= k {
                return Some(
                    Trigger::new(
                        TriggerKind::ConsecutiveFailures,
                        f64::from(self.consecutive),
                        f64::from(k),
                    )
                    .over(window, t.calls),
                );
            }
        }
        if t.calls < cfg.min_calls {
            return None;
        }
        let calls = f64::from(t.calls);
        if let Some(thr) = cfg.failure_rate {
            let rate = f64::from(t.failures) / calls;
            if rate >= thr {
                return Some(
                    Trigger::new(TriggerKind::FailureRate, rate, thr).over(window, t.calls),
                );
            }
        }
        if let Some((_, thr)) = cfg.slow {
            let rate = f64::from(t.slow) / calls;
            if rate >= thr {
                return Some(
                    Trigger::new(TriggerKind::SlowCallRate, rate, thr).over(window, t.calls),
                );
            }
        }
        None
    }

    /// Asks for a half-open probe permit.
    pub(crate) fn acquire(
        &mut self,
        cfg: &BreakerConfig,
        now: u64,
        emit: &mut impl FnMut(BreakerEvent),
    ) -> Probe {
        match self.mode {
            BreakerMode::ForcedOpen => {
                return Probe::Refused(
                    Trigger::new(TriggerKind::ForcedOpen, 0.0, 0.0).at(self.endpoint),
                );
            }
            BreakerMode::Disabled | BreakerMode::MetricsOnly => return Probe::NotNeeded,
            BreakerMode::Auto => {}
        }
        self.expire_round(cfg, now, emit);
        match self.state {
            Auto::Closed => return Probe::NotNeeded,
            Auto::Open => {
                if now < self.open_until {
                    return Probe::Refused(self.open_trigger());
                }
                let from = self.reported();
                let waited = now.saturating_sub(self.opened_at);
                self.state = Auto::HalfOpen;
                self.round = Round {
                    id: self.round.id.wrapping_add(1),
                    started: now,
                    outstanding: 0,
                    succeeded: 0,
                };
                let t = Trigger::new(
                    TriggerKind::OpenWaitElapsed,
                    waited as f64,
                    self.open_until.saturating_sub(self.opened_at) as f64,
                );
                self.event(from, now, t, emit);
            }
            Auto::HalfOpen => {}
        }
        let all = if cfg.probes >= 64 {
            u64::MAX
        } else {
            (1u64 << cfg.probes) - 1
        };
        let free = !(self.round.outstanding | self.round.succeeded) & all;
        if free == 0 {
            return Probe::Refused(
                Trigger::new(
                    TriggerKind::ProbesExhausted,
                    f64::from(cfg.probes),
                    f64::from(cfg.probes),
                )
                .at(self.endpoint)
                .until(Timestamp::from_millis(self.half_open_deadline(cfg))),
            );
        }
        let slot = free.trailing_zeros();
        self.round.outstanding |= 1u64 << slot;
        Probe::Granted(ProbePermit {
            endpoint: self.endpoint,
            round: self.round.id,
            slot: u8::try_from(slot).unwrap_or(u8::MAX),
        })
    }

    /// Gives back a probe permit that was not used (e.g. another replica already claimed the
    /// platform-wide probe slot), so the round does not wait for it to time out.
    pub(crate) fn release(&mut self, permit: ProbePermit) {
        if self.mode == BreakerMode::Auto
            && self.state == Auto::HalfOpen
            && permit.round == self.round.id
            && permit.slot < 64
        {
            self.round.outstanding &= !(1u64 << permit.slot);
        }
    }

    /// Adopts another replica's open state: open until `until` (if that is later than what this
    /// replica has), keeping the larger re-open count. Returns whether anything changed.
    pub(crate) fn adopt_open(
        &mut self,
        until: u64,
        reopens: u32,
        now: u64,
        trigger: Trigger,
        emit: &mut impl FnMut(BreakerEvent),
    ) -> bool {
        if self.mode != BreakerMode::Auto || until <= now {
            return false;
        }
        let later = match self.state {
            Auto::Closed | Auto::HalfOpen => true,
            Auto::Open => until > self.open_until,
        };
        if !later {
            return false;
        }
        let from = self.reported();
        self.state = Auto::Open;
        self.opened_at = now;
        self.open_until = until;
        self.reopens = self.reopens.max(reopens);
        self.window.clear();
        self.consecutive = 0;
        self.round.outstanding = 0;
        self.round.succeeded = 0;
        let trigger = trigger
            .at(self.endpoint)
            .until(Timestamp::from_millis(until));
        self.last_trip = Some(trigger);
        self.event(from, now, trigger, emit);
        true
    }

    /// The trigger a refused call reports while open.
    pub(crate) fn open_trigger(&self) -> Trigger {
        Trigger::new(TriggerKind::BreakerOpen, f64::from(self.reopens), 0.0)
            .at(self.endpoint)
            .until(Timestamp::from_millis(self.open_until))
    }

    /// Operator change of mode. Leaving a manual mode starts afresh, closed.
    pub(crate) fn set_mode(
        &mut self,
        mode: BreakerMode,
        now: u64,
        emit: &mut impl FnMut(BreakerEvent),
    ) {
        if mode == self.mode {
            return;
        }
        let from = self.reported();
        self.mode = mode;
        self.state = Auto::Closed;
        self.reopens = 0;
        self.open_until = 0;
        self.window.clear();
        self.consecutive = 0;
        self.round.outstanding = 0;
        self.round.succeeded = 0;
        self.event(from, now, Trigger::new(TriggerKind::Manual, 0.0, 0.0), emit);
    }

    /// Operator reset: automatic mode, closed, empty window, no re-opens.
    pub(crate) fn reset(&mut self, now: u64, emit: &mut impl FnMut(BreakerEvent)) {
        let from = self.reported();
        self.mode = BreakerMode::Auto;
        self.state = Auto::Closed;
        self.reopens = 0;
        self.open_until = 0;
        self.window.clear();
        self.consecutive = 0;
        self.round.outstanding = 0;
        self.round.succeeded = 0;
        self.last_trip = None;
        self.event(from, now, Trigger::new(TriggerKind::Manual, 0.0, 0.0), emit);
    }
}
