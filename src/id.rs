//! Identifier newtypes: tenants, sessions, workflows, endpoints, task kinds, tickets.
//!
//! Each is a cheap-to-clone shared string (`Arc<str>`), serialized as a plain JSON string. Distinct
//! types keep a tenant id from being passed where an endpoint id is expected.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Creates the identifier from any string.
            #[must_use]
            pub fn new(s: impl AsRef<str>) -> Self {
                $name(Arc::from(s.as_ref()))
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

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // `pad` honours width and alignment (`{:<17}`).
                f.pad(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name::new(s)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(Arc::from(s))
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
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

id_type!(
    /// A tenant: one customer organisation with its own policy.
    TenantId
);
id_type!(
    /// An agent session: a sequence of steps that stays on one tier between steps.
    SessionId
);
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
