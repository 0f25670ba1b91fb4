//! Time as a value: the [`Clock`] trait, [`Timestamp`], [`SystemClock`] and [`ManualClock`].
//!
//! The pure core (policy resolution, triggers, routing, audit digests) never reads the system
//! clock itself; callers pass `now` in. The [`Clock`] trait is how the async shell and the
//! simulator obtain that value, and [`ManualClock`] makes every time-dependent behaviour a
//! sleep-free table test.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time: milliseconds since the Unix epoch (UTC).
///
/// Serialized as an RFC 3339 string with millisecond precision (`2026-11-28T02:14:00.000Z`), so
/// audit records and checkpoints are readable and their digests are the same on every machine.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// A timestamp `ms` milliseconds after the Unix epoch.
    #[must_use]
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the Unix epoch.
    #[must_use]
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Converts a [`SystemTime`]; times before the epoch saturate to the epoch.
    #[must_use]
    pub fn from_system_time(t: SystemTime) -> Self {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Timestamp(ms)
    }

    /// Converts to a [`SystemTime`].
    #[must_use]
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// This time plus `d`, saturating at the largest representable time.
    #[must_use]
    pub fn saturating_add(self, d: Duration) -> Self {
        let add = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(add))
    }

    /// This time minus `d`, saturating at the epoch.
    #[must_use]
    pub fn saturating_sub(self, d: Duration) -> Self {
        let sub = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_sub(sub))
    }

    /// The time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    #[must_use]
    pub fn duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// Parses an RFC 3339 timestamp such as `2026-11-28T02:14:00Z` or
    /// `2026-11-28T02:14:00.250+00:00`.
    ///
    /// # Errors
    /// Returns a message naming what is wrong when `s` is not RFC 3339.
    pub fn parse_rfc3339(s: &str) -> Result<Self, String> {
        crate::trigger::parse_rfc3339(s)
            .map(Self::from_system_time)
            .ok_or_else(|| {
                format!("`{s}` is not an RFC 3339 timestamp (e.g. 2026-11-28T02:14:00Z)")
            })
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_rfc3339_millis(self.to_system_time())
        )
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "date-time",
            "description": "An RFC 3339 timestamp, e.g. 2026-11-28T02:14:00Z."
        })
    }
}

/// A source of the current time.
///
/// Implementations must be cheap: the engine reads the clock on every call.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }
}

/// A clock that moves only when told to; clones share the same time.
///
/// ```
/// use downshift::{Clock, ManualClock, Timestamp};
/// use std::time::Duration;
///
/// let clock = ManualClock::new(Timestamp::from_millis(1_000));
/// let shared = clock.clone();
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(shared.now(), Timestamp::from_millis(3_000));
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    ms: Arc<AtomicU64>,
}

impl ManualClock {
    /// A manual clock starting at `start`.
    #[must_use]
    pub fn new(start: Timestamp) -> Self {
        ManualClock {
            ms: Arc::new(AtomicU64::new(start.as_millis())),
        }
    }

    /// Moves the clock forward by `d` (saturating).
    pub fn advance(&self, d: Duration) {
        let add = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let _ = self
            .ms
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_add(add))
            });
    }

    /// Sets the clock to `t`. Moving it backwards is allowed (to test clock skew handling).
    pub fn set(&self, t: Timestamp) {
        self.ms.store(t.as_millis(), Ordering::Release);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.ms.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_and_accepts_offsets() {
        let t = Timestamp::parse_rfc3339("2026-11-28T02:14:00Z").unwrap();
        assert_eq!(t.to_string(), "2026-11-28T02:14:00.000Z");
        let z = Timestamp::parse_rfc3339("2026-11-28T03:14:00+01:00").unwrap();
        assert_eq!(z, t);
        let m = Timestamp::parse_rfc3339("2026-11-28T01:44:00-00:30").unwrap();
        assert_eq!(m, t);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn manual_clock_is_shared_and_saturates() {
        let c = ManualClock::new(Timestamp::from_millis(u64::MAX - 1));
        let d = c.clone();
        c.advance(Duration::from_secs(10));
        assert_eq!(d.now().as_millis(), u64::MAX);
    }
}
