//! What a call tried before it was refused, so a rejection after failed attempts (a timed-out
//! attempt ending in `deadline_unreachable`, say) names the endpoints, how long each was given
//! and how each ended.

use std::fmt::Write as _;
use std::time::Duration;

use super::result::{CallResult, RejectKind};
use crate::id::EndpointId;
use crate::trigger::OutcomeClass;

/// One failed attempt of a call.
#[derive(Debug, Clone)]
pub(crate) struct Tried {
    pub(crate) endpoint: EndpointId,
    pub(crate) class: OutcomeClass,
    /// How long the engine waited for it.
    pub(crate) waited: Duration,
    /// Whether it was still running at the call's deadline (the engine stopped waiting).
    pub(crate) at_deadline: bool,
}

/// Appends the attempts made to a policy rejection's message (other outcomes are returned as
/// they are).
pub(crate) fn explain<O>(end: CallResult<O>, tried: &[Tried]) -> CallResult<O> {
    match end {
        CallResult::Rejected(mut r) if r.kind == RejectKind::Policy && !tried.is_empty() => {
            r.message = describe(&r.message, tried);
            CallResult::Rejected(r)
        }
        other => other,
    }
}

/// `message; 2 attempt(s) made: frontier-vendor-eu timed out after 30s (the call's deadline),
/// mid70b-selfhosted-eu overloaded after 1s 200ms`.
fn describe(message: &str, tried: &[Tried]) -> String {
    let mut out = format!("{message}; {} attempt(s) made: ", tried.len());
    for (i, t) in tried.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let waited = humantime::format_duration(Duration::from_millis(
            u64::try_from(t.waited.as_millis()).unwrap_or(u64::MAX),
        ));
        let what = if t.class == OutcomeClass::Timeout {
            "timed out".to_string()
        } else {
            serde_json::to_value(t.class)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| format!("{:?}", t.class))
        };
        let _ = write!(out, "{} {what} after {waited}", t.endpoint);
        if t.at_deadline {
            out.push_str(" (the call's deadline)");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_each_endpoint_its_wait_and_its_end() {
        let tried = [
            Tried {
                endpoint: EndpointId::new("a"),
                class: OutcomeClass::Overloaded,
                waited: Duration::from_millis(1200),
                at_deadline: false,
            },
            Tried {
                endpoint: EndpointId::new("b"),
                class: OutcomeClass::Timeout,
                waited: Duration::from_secs(30),
                at_deadline: true,
            },
        ];
        assert_eq!(
            describe("deadline_unreachable", &tried),
            "deadline_unreachable; 2 attempt(s) made: a overloaded after 1s 200ms, b timed out \
             after 30s (the call's deadline)"
        );
    }
}
