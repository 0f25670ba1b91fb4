//! Identifier newtypes: tenants, sessions, workflows, endpoints, task kinds, tickets.
//!
//! Each is a cheap-to-clone shared string (`Arc<str>`), serialized as a plain JSON string. Distinct
//! types keep a tenant id from being passed where an endpoint id is expected.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// FNV-1a over `bytes`: the stable 64-bit key deterministic choices are drawn from (the same on
/// every replica and in every run, unlike the `HashMap` hashers).
pub(crate) fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What every identifier has, written in terms of `as_str` and `from_arc`.
macro_rules! id_common {
    ($name:ident) => {
        impl $name {
            /// Creates the identifier from any string.
            #[must_use]
            pub fn new(s: impl AsRef<str>) -> Self {
                $name::from_arc(Arc::from(s.as_ref()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // `pad` honours width and alignment (`{:<17}`).
                f.pad(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name::new(s)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name::from_arc(Arc::from(s))
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                self.as_str()
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "minLength": 1 })
            }
        }
    };
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            fn from_arc(s: Arc<str>) -> Self {
                $name(s)
            }

            /// The identifier as a string slice.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Whether both share one allocation (equal without comparing the text).
            #[allow(dead_code)]
            pub(crate) fn same(&self, other: &Self) -> bool {
                Arc::ptr_eq(&self.0, &other.0)
            }
        }

        id_common!($name);
    };
}

id_type!(
    /// A tenant: one customer organisation with its own policy.
    TenantId
);
/// An agent session: a sequence of steps that stays on one tier between steps.
///
/// It carries its text's stable key ([`fnv`]) beside the shared text, computed once when the id
/// is made: the router draws a session's deterministic choices (which of two endpoints, which
/// approval ticket) from it on every call without reading the text, which on a gateway serving
/// many sessions is usually not in cache. Equality, ordering and hashing are the text's, as for
/// every identifier (so a `HashMap<SessionId, _>` is looked up by `&str`).
#[derive(Clone)]
pub struct SessionId {
    text: Arc<str>,
    key: u64,
}

impl SessionId {
    fn from_arc(text: Arc<str>) -> Self {
        let key = fnv(text.as_bytes());
        SessionId { text, key }
    }

    /// The identifier as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The text's stable key ([`fnv`] of its bytes), without reading the text.
    pub(crate) fn key(&self) -> u64 {
        self.key
    }

    /// Whether both share one allocation (equal without comparing the text).
    #[allow(dead_code)]
    pub(crate) fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.text, &other.text)
    }
}

impl PartialEq for SessionId {
    fn eq(&self, other: &Self) -> bool {
        // Different keys are different texts; equal keys are compared by text.
        self.key == other.key && (Arc::ptr_eq(&self.text, &other.text) || self.text == other.text)
    }
}

impl Eq for SessionId {}

impl PartialOrd for SessionId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SessionId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl std::hash::Hash for SessionId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `str` hashes, so `Borrow<str>` look-ups find it.
        self.as_str().hash(state);
    }
}

impl Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // As `Arc<str>` deserializes (the other identifiers are `serde(transparent)` over it).
        Arc::<str>::deserialize(d).map(SessionId::from_arc)
    }
}

id_common!(SessionId);
id_type!(
    /// A workflow: an orchestrator and its sub-agent sessions, suspended and resumed together.
    WorkflowId
);
id_type!(
    /// A catalog endpoint: one model at one provider in one region.
    EndpointId
);
id_type!(
    /// A kind of task an agent performs (`clinical_summarization`, `code_generation`, ...).
    TaskKind
);
id_type!(
    /// A policy layer's identifier (platform, application template or tenant layer).
    LayerId
);

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use super::*;

    #[test]
    fn a_session_id_keeps_its_texts_key_and_behaves_as_its_text() {
        let a = SessionId::new("session-000042");
        assert_eq!(a.key(), fnv(b"session-000042"));
        // Made from a `String`, from JSON, or cloned: the same id, the same key.
        let b = SessionId::from(String::from("session-000042"));
        let c: SessionId = serde_json::from_str("\"session-000042\"").expect("json");
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(c.key(), a.key());
        assert_eq!(
            serde_json::to_string(&c).expect("json"),
            "\"session-000042\""
        );
        assert_ne!(a, SessionId::new("session-000043"));
        // Hashing is the text's: a map keyed by ids is looked up by `&str`.
        let mut m = HashMap::new();
        m.insert(a.clone(), 1);
        assert_eq!(m.get("session-000042"), Some(&1));
        // Ordering is the text's.
        let set: BTreeSet<SessionId> = ["b", "a", "c"].into_iter().map(SessionId::new).collect();
        let order: Vec<&str> = set.iter().map(SessionId::as_str).collect();
        assert_eq!(order, ["a", "b", "c"]);
        assert_eq!(
            format!("{a:>16}|{a:?}"),
            "  session-000042|\"session-000042\""
        );
    }
}
