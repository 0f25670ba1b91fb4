//! [`AgentState`]: the model-agnostic intermediate representation of an agent session.
//!
//! A context built for one model does not transplant into another as is: windows differ, tool
//! calling schemas differ, some items (a provider's encrypted reasoning block) mean nothing to
//! another provider. The engine therefore keeps a session's state in a provider-neutral form —
//! goal, plan, completed steps with their provenance, key findings, the conversation as neutral
//! messages whose tool calls and results are paired by id, a rolling summary — and the caller's
//! [`ModelClient`](crate::engine::ModelClient) renders it into a provider's request.
//!
//! The state is versioned ([`AgentState::schema_version`]); [`AgentState::from_json`] refuses a
//! version newer than this release understands with
//! [`CheckpointError::UnsupportedStateVersion`] instead of misreading it. The JSON Schema is
//! committed as `docs/agent_state.schema.json` (see [`agent_state_schema`]).
//!
//! ```
//! use downshift::checkpoint::{AgentState, Message};
//!
//! let mut state = AgentState::new("reconcile the March invoices");
//! state.messages.push(Message::system("You are a careful accountant."));
//! state.messages.push(Message::user("Start with supplier 14."));
//! let json = serde_json::to_value(&state).unwrap();
//! assert_eq!(AgentState::from_json(json, None).unwrap(), state);
//! ```

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::TierAt;
use crate::clock::Timestamp;
use crate::digest::ContentDigest;
use crate::error::CheckpointError;
use crate::id::{EndpointId, SessionId};

/// The schema version this release writes and the newest it reads.
pub const AGENT_STATE_SCHEMA_VERSION: u32 = 1;

/// A session's state, independent of any model or provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentState {
    /// The version of this format ([`AGENT_STATE_SCHEMA_VERSION`] when written by this release).
    pub schema_version: u32,
    /// What the agent is trying to achieve. Never dropped when fitting.
    pub goal: String,
    /// The plan, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<String>,
    /// The step in progress. Never dropped when fitting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<Step>,
    /// Steps already done, each with who produced it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub completed_steps: Vec<CompletedStep>,
    /// Key findings so far (kept when fitting).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<String>,
    /// The conversation, oldest first, in provider-neutral form.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Message>,
    /// The rolling summary of messages no longer in [`messages`](AgentState::messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    /// The tools the agent may call (an endpoint without tool calling cannot serve it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    /// The agent asks for JSON / structured output (an endpoint without JSON mode cannot serve
    /// it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub json_mode: bool,
    /// The name of the [`TokenCounter`](super::TokenCounter) that produced the per-item
    /// [`Message::tokens`] estimates. Estimates from another counter are recounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_counter: Option<String>,
    /// The caller's own data, carried untouched.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extensions: BTreeMap<String, Value>,
}

/// A step of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The step's id in the caller's system.
    pub id: String,
    /// What the step does.
    pub description: String,
}

/// Who produced a step's output: where, under which policy, when, and whether it was degraded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// The tier (and endpoint) that served it.
    pub tier: TierAt,
    /// The provider's model name.
    pub model: String,
    /// The digest of the resolved policy the decision cited.
    pub policy_digest: ContentDigest,
    /// When it was produced.
    pub at: Timestamp,
    /// Produced below the tenant's top tier.
    #[serde(default)]
    pub degraded: bool,
}

/// Where a step's output is kept: a reference into the caller's storage and, optionally, its
/// digest (outputs are never copied into the audit log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputRef {
    /// The reference (a URI, a key, a row id).
    pub reference: String,
    /// SHA-256 of the output, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<ContentDigest>,
}

/// A completed step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompletedStep {
    /// The step.
    #[serde(flatten)]
    pub step: Step,
    /// Who produced it.
    pub provenance: Provenance,
    /// Its output.
    pub output: OutputRef,
}

/// The author of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Instructions (the system prompt). Never dropped when fitting.
    System,
    /// The user.
    User,
    /// The model; may carry [`Message::tool_calls`].
    Assistant,
    /// A tool's result; [`Message::tool_call_id`] names the call it answers.
    Tool,
}

/// One tool call an assistant message makes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    /// The call's id; the tool result quotes it.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments, as JSON.
    #[serde(default)]
    pub arguments: Value,
}

/// A tool the agent may call, provider-neutral (name, description, JSON Schema parameters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolSpec {
    /// The tool's name.
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// The JSON Schema of its arguments.
    #[serde(default)]
    pub parameters: Value,
}

/// An item only one provider understands (e.g. an encrypted reasoning block): on a switch to
/// another provider it is stripped or the session is pinned, as the policy's
/// `continuity.non_portable` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NonPortable {
    /// The provider (as in the catalog's `provider`) the item belongs to.
    pub provider: String,
    /// What it is (`encrypted_reasoning`, `cache_handle`...), for the audit and operators.
    pub kind: String,
}

/// One provider-neutral message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// The message's id in the caller's system, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Who wrote it.
    pub role: Role,
    /// Its text (or a provider's opaque data for a [`NonPortable`] item).
    #[serde(default)]
    pub content: String,
    /// Tool calls made by an assistant message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a [`Role::Tool`] message: the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The token estimate, by the counter named in [`AgentState::token_counter`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u32>,
    /// Set when only one provider understands this item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_portable: Option<NonPortable>,
}

impl Message {
    fn of(role: Role, content: impl Into<String>) -> Self {
        Message {
            id: None,
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            tokens: None,
            non_portable: None,
        }
    }

    /// A system message.
    #[must_use]
    pub fn system(content: impl Into<String>) -> Self {
        Self::of(Role::System, content)
    }

    /// A user message.
    #[must_use]
    pub fn user(content: impl Into<String>) -> Self {
        Self::of(Role::User, content)
    }

    /// An assistant message.
    #[must_use]
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::of(Role::Assistant, content)
    }

    /// An assistant message making tool calls.
    #[must_use]
    pub fn tool_calls(calls: Vec<ToolCall>) -> Self {
        let mut m = Self::of(Role::Assistant, "");
        m.tool_calls = calls;
        m
    }

    /// A tool's result for the call `call_id`.
    #[must_use]
    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        let mut m = Self::of(Role::Tool, content);
        m.tool_call_id = Some(call_id.into());
        m
    }

    /// The same message with an id.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The same message, marked as understood only by `provider`.
    #[must_use]
    pub fn non_portable(mut self, provider: impl Into<String>, kind: impl Into<String>) -> Self {
        self.non_portable = Some(NonPortable {
            provider: provider.into(),
            kind: kind.into(),
        });
        self
    }
}

/// The rolling summary: what older, no longer present messages said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    /// The summary text.
    pub text: String,
    /// How many messages it covers, in total (earlier summaries included).
    pub covers_messages: u64,
    /// The id of the newest message it covers, when messages carry ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covers_through: Option<String>,
    /// The digest of the messages the latest summarization dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_digest: Option<ContentDigest>,
    /// The endpoint that wrote it, when a model did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub produced_by: Option<EndpointId>,
    /// When it was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Timestamp>,
    /// Its token estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u32>,
}

impl AgentState {
    /// An empty state for `goal`, at the current schema version.
    #[must_use]
    pub fn new(goal: impl Into<String>) -> Self {
        AgentState {
            schema_version: AGENT_STATE_SCHEMA_VERSION,
            goal: goal.into(),
            plan: Vec::new(),
            current_step: None,
            completed_steps: Vec::new(),
            findings: Vec::new(),
            messages: Vec::new(),
            summary: None,
            tools: Vec::new(),
            json_mode: false,
            token_counter: None,
            extensions: BTreeMap::new(),
        }
    }

    /// Reads a state from JSON (a checkpoint's `state`), checking the schema version first so a
    /// state written by a newer release is refused rather than misread. `session` names the
    /// place in errors.
    ///
    /// # Errors
    /// [`CheckpointError::UnsupportedStateVersion`] for a version newer than
    /// [`AGENT_STATE_SCHEMA_VERSION`] (or `0`); [`CheckpointError::InvalidState`] with the JSON
    /// path of anything else that does not match the schema.
    pub fn from_json(value: Value, session: Option<&SessionId>) -> Result<Self, CheckpointError> {
        let place = session.map_or_else(|| "agent state".to_string(), |s| format!("session `{s}`"));
        let version = match value.get("schema_version") {
            None => {
                return Err(CheckpointError::InvalidState {
                    place,
                    path: "$.schema_version".into(),
                    reason: "missing: an agent state says which schema version it follows".into(),
                });
            }
            Some(v) => v.as_u64().ok_or_else(|| CheckpointError::InvalidState {
                place: place.clone(),
                path: "$.schema_version".into(),
                reason: format!("must be a positive integer, got {v}"),
            })?,
        };
        if version == 0 || version > u64::from(AGENT_STATE_SCHEMA_VERSION) {
            return Err(CheckpointError::UnsupportedStateVersion {
                place,
                found: version,
                supported: AGENT_STATE_SCHEMA_VERSION,
            });
        }
        serde_path_to_error::deserialize(value).map_err(|e| CheckpointError::InvalidState {
            place,
            path: format!("$.{}", e.path()),
            reason: e.inner().to_string(),
        })
    }

    /// The state as JSON, for a checkpoint.
    ///
    /// # Errors
    /// [`CheckpointError::InvalidState`] when an extension cannot be encoded.
    pub fn to_json(&self) -> Result<Value, CheckpointError> {
        serde_json::to_value(self).map_err(|e| CheckpointError::InvalidState {
            place: "agent state".into(),
            path: "$".into(),
            reason: e.to_string(),
        })
    }

    /// Whether the state uses tool calling (declares tools or holds tool calls).
    #[must_use]
    pub fn uses_tools(&self) -> bool {
        !self.tools.is_empty()
            || self
                .messages
                .iter()
                .any(|m| !m.tool_calls.is_empty() || m.role == Role::Tool)
    }

    /// Whether the state holds parallel tool calls (an assistant message making more than one).
    #[must_use]
    pub fn uses_parallel_tool_calls(&self) -> bool {
        self.messages.iter().any(|m| m.tool_calls.len() > 1)
    }

    /// The providers that non-portable items pin the session to, sorted and unique.
    #[must_use]
    pub fn non_portable_providers(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .messages
            .iter()
            .filter_map(|m| m.non_portable.as_ref().map(|n| n.provider.as_str()))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Removes the items only other providers than `provider` understand; returns how many.
    pub fn strip_non_portable(&mut self, provider: &str) -> usize {
        let before = self.messages.len();
        self.messages.retain(|m| {
            m.non_portable
                .as_ref()
                .is_none_or(|n| n.provider == provider)
        });
        before - self.messages.len()
    }
}

/// The JSON Schema of [`AgentState`], pretty-printed (committed as
/// `docs/agent_state.schema.json`).
#[must_use]
pub fn agent_state_schema() -> String {
    let mut s =
        serde_json::to_string_pretty(&schemars::schema_for!(AgentState)).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_future_schema_version_is_refused_with_a_clear_error() {
        let mut v = serde_json::to_value(AgentState::new("g")).unwrap();
        v["schema_version"] = json!(AGENT_STATE_SCHEMA_VERSION + 1);
        let e = AgentState::from_json(v, Some(&SessionId::new("s-9"))).unwrap_err();
        assert!(matches!(
            e,
            CheckpointError::UnsupportedStateVersion {
                found: 2,
                supported: 1,
                ..
            }
        ));
        let text = e.to_string();
        assert!(
            text.contains("session `s-9`") && text.contains("version 2"),
            "{text}"
        );
    }

    #[test]
    fn a_malformed_state_names_the_json_path() {
        let v = json!({"schema_version": 1, "goal": "g", "messages": [{"role": "robot"}]});
        let e = AgentState::from_json(v, None).unwrap_err();
        match e {
            CheckpointError::InvalidState { path, .. } => assert_eq!(path, "$.messages[0].role"),
            other => panic!("{other}"),
        }
        let e = AgentState::from_json(json!({"goal": "g"}), None).unwrap_err();
        assert!(
            matches!(e, CheckpointError::InvalidState { ref path, .. } if path == "$.schema_version")
        );
        let e =
            AgentState::from_json(json!({"schema_version": "one", "goal": "g"}), None).unwrap_err();
        assert!(matches!(e, CheckpointError::InvalidState { .. }));
    }

    #[test]
    fn tool_use_and_pinning_are_read_from_the_messages() {
        let mut s = AgentState::new("g");
        assert!(!s.uses_tools());
        s.messages.push(Message::tool_calls(vec![
            ToolCall {
                id: "a".into(),
                name: "f".into(),
                arguments: json!({}),
            },
            ToolCall {
                id: "b".into(),
                name: "f".into(),
                arguments: json!({}),
            },
        ]));
        s.messages
            .push(Message::assistant("opaque").non_portable("anthropic", "encrypted_reasoning"));
        assert!(s.uses_tools() && s.uses_parallel_tool_calls());
        assert_eq!(s.non_portable_providers(), vec!["anthropic"]);
        assert_eq!(s.strip_non_portable("anthropic"), 0);
        assert_eq!(s.strip_non_portable("openai"), 1);
        assert!(s.non_portable_providers().is_empty());
    }
}
