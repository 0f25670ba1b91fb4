//! The catalog of approved endpoints.
//!
//! An [`Endpoint`] is one model at one provider in one region: "the same frontier model via a
//! secondary provider" is a second endpoint. The ML platform team maintains the catalog (prices,
//! capabilities, benchmarked quality per task kind); policies only refer to endpoints by id.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::id::EndpointId;

/// What an endpoint can do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Context window in tokens (input plus output).
    pub context_window: u32,
    /// Largest number of output tokens one call may produce.
    pub max_output_tokens: u32,
    /// Supports tool (function) calling.
    #[serde(default)]
    pub tools: bool,
    /// Supports parallel tool calls in one turn.
    #[serde(default)]
    pub parallel_tool_calls: bool,
    /// Accepts image input.
    #[serde(default)]
    pub vision: bool,
    /// Supports a JSON / structured-output mode.
    #[serde(default)]
    pub json_mode: bool,
}

/// What one call needs from an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Requirements {
    /// Input tokens the request holds.
    pub input_tokens: u32,
    /// Output tokens the caller expects (reserved in the window).
    pub output_tokens: u32,
    /// Uses tool calling.
    pub tools: bool,
    /// Uses parallel tool calls.
    pub parallel_tool_calls: bool,
    /// Sends images.
    pub vision: bool,
    /// Needs JSON mode.
    pub json_mode: bool,
}

/// Why an endpoint cannot serve a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "gap")]
pub enum CapabilityGap {
    /// No tool calling.
    Tools,
    /// No parallel tool calls.
    ParallelToolCalls,
    /// No image input.
    Vision,
    /// No JSON mode.
    JsonMode,
    /// Input plus expected output does not fit the context window.
    ContextWindow {
        /// Tokens needed (input + expected output).
        needed: u64,
        /// The endpoint's window.
        window: u32,
    },
    /// The expected output exceeds the endpoint's maximum output.
    MaxOutput {
        /// Output tokens expected.
        needed: u32,
        /// The endpoint's maximum.
        max: u32,
    },
}

impl std::fmt::Display for CapabilityGap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CapabilityGap::Tools => f.write_str("no tool calling"),
            CapabilityGap::ParallelToolCalls => f.write_str("no parallel tool calls"),
            CapabilityGap::Vision => f.write_str("no image input"),
            CapabilityGap::JsonMode => f.write_str("no JSON mode"),
            CapabilityGap::ContextWindow { needed, window } => {
                write!(f, "needs {needed} tokens, context window is {window}")
            }
            CapabilityGap::MaxOutput { needed, max } => {
                write!(f, "expects {needed} output tokens, maximum is {max}")
            }
        }
    }
}

impl Capabilities {
    /// The first thing these capabilities lack for `req`, if any. Checked in a fixed order:
    /// tools, parallel tool calls, vision, JSON mode, maximum output, context window.
    #[must_use]
    pub fn gap(&self, req: &Requirements) -> Option<CapabilityGap> {
        if req.tools && !self.tools {
            return Some(CapabilityGap::Tools);
        }
        if req.parallel_tool_calls && !self.parallel_tool_calls {
            return Some(CapabilityGap::ParallelToolCalls);
        }
        if req.vision && !self.vision {
            return Some(CapabilityGap::Vision);
        }
        if req.json_mode && !self.json_mode {
            return Some(CapabilityGap::JsonMode);
        }
        if req.output_tokens > self.max_output_tokens {
            return Some(CapabilityGap::MaxOutput {
                needed: req.output_tokens,
                max: self.max_output_tokens,
            });
        }
        let needed = u64::from(req.input_tokens) + u64::from(req.output_tokens);
        if needed > u64::from(self.context_window) {
            return Some(CapabilityGap::ContextWindow {
                needed,
                window: self.context_window,
            });
        }
        None
    }
}

/// Price per million tokens, in US dollars.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    /// USD per million input tokens.
    pub input_per_mtok: f64,
    /// USD per million output tokens.
    pub output_per_mtok: f64,
}

impl Pricing {
    /// The cost in USD of a call with these token counts.
    #[must_use]
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        (input_tokens as f64 * self.input_per_mtok + output_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }
}

/// Where the endpoint runs, for data-handling constraints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Deployment {
    /// A third-party cloud API.
    #[default]
    Cloud,
    /// Hosted by the platform itself (the "private side").
    SelfHosted,
}

/// How the endpoint treats the data sent to it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataHandling {
    /// Where it runs.
    #[serde(default)]
    pub deployment: Deployment,
    /// Whether the provider retains prompts (for abuse monitoring, training, ...). Tenants may
    /// exclude such endpoints.
    #[serde(default)]
    pub retains_prompts: bool,
}

/// One approved endpoint: a model at a provider in a region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Unique id policies refer to.
    pub id: EndpointId,
    /// Provider name (`openai`, `anthropic`, `bedrock`, `self-hosted`, ...).
    pub provider: String,
    /// The provider's model name.
    pub model: Arc<str>,
    /// Concrete region the data is processed in (`eu-west-1`, `us-east-1`). `global` means the
    /// provider may process it anywhere; it never satisfies a residency restriction unless the
    /// tenant lists `global` itself.
    pub region: String,
    /// What can fail together: the account, API key or host this endpoint shares with others.
    /// Two tiers in one failure domain are one quota or outage away from failing together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_domain: Option<String>,
    /// Capabilities.
    pub capabilities: Capabilities,
    /// Prices.
    pub pricing: Pricing,
    /// Benchmarked quality relative to the primary model, per task kind (`1.0` = as good as the
    /// primary). The key `*` is used for task kinds not listed. Task overrides can require a
    /// minimum quality; an endpoint with no figure for a task (and no `*`) does not meet any
    /// minimum.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quality: BTreeMap<String, f64>,
    /// Data handling.
    #[serde(default)]
    pub data: DataHandling,
}

impl Endpoint {
    /// The benchmarked quality for `task`, falling back to the `*` entry.
    #[must_use]
    pub fn quality_for(&self, task: &str) -> Option<f64> {
        self.quality
            .get(task)
            .or_else(|| self.quality.get("*"))
            .copied()
    }

    /// The failure domain: the declared one, or the provider (endpoints at one provider share
    /// its capacity unless the catalog says otherwise).
    #[must_use]
    pub fn failure_domain(&self) -> &str {
        self.failure_domain.as_deref().unwrap_or(&self.provider)
    }
}

/// The file format of a catalog (`"kind": "catalog"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogFile {
    /// Optional editor hint; ignored.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Must be `catalog`.
    pub kind: CatalogKind,
    /// The catalog's version label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// The `kind` tag of a catalog file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatalogKind {
    /// A catalog file.
    Catalog,
}

/// Position of an endpoint in a [`Catalog`]: a cheap, copyable handle used on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct EndpointIdx(pub u32);

/// The approved endpoints, indexed by id.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    endpoints: Vec<Endpoint>,
    by_id: HashMap<EndpointId, EndpointIdx>,
}

impl Catalog {
    /// Builds a catalog. Later duplicates of an id are ignored here; the policy loader reports
    /// them as errors before a catalog is ever built from files.
    #[must_use]
    pub fn new(endpoints: impl IntoIterator<Item = Endpoint>) -> Self {
        let mut cat = Catalog::default();
        for e in endpoints {
            if cat.by_id.contains_key(&e.id) {
                continue;
            }
            let idx = EndpointIdx(u32::try_from(cat.endpoints.len()).unwrap_or(u32::MAX));
            cat.by_id.insert(e.id.clone(), idx);
            cat.endpoints.push(e);
        }
        cat
    }

    /// The endpoint with this id.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<&Endpoint> {
        self.index_of(id).map(|i| &self.endpoints[i.0 as usize])
    }

    /// The index of the endpoint with this id.
    #[must_use]
    pub fn index_of(&self, id: &str) -> Option<EndpointIdx> {
        self.by_id.get(id).copied()
    }

    /// The endpoint at an index from this catalog.
    ///
    /// # Panics
    /// Never for an index obtained from this catalog; an index from another catalog may panic.
    #[must_use]
    pub fn endpoint(&self, idx: EndpointIdx) -> &Endpoint {
        &self.endpoints[idx.0 as usize]
    }

    /// The endpoint at an index, if the index is in range.
    #[must_use]
    pub fn try_endpoint(&self, idx: EndpointIdx) -> Option<&Endpoint> {
        self.endpoints.get(idx.0 as usize)
    }

    /// All endpoints in catalog order.
    #[must_use]
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Number of endpoints.
    #[must_use]
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether the catalog is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(id: &str) -> Endpoint {
        Endpoint {
            id: id.into(),
            provider: "p".into(),
            model: "m".into(),
            region: "eu-west-1".into(),
            failure_domain: None,
            capabilities: Capabilities {
                context_window: 8000,
                max_output_tokens: 1000,
                tools: false,
                parallel_tool_calls: false,
                vision: false,
                json_mode: false,
            },
            pricing: Pricing {
                input_per_mtok: 3.0,
                output_per_mtok: 15.0,
            },
            quality: BTreeMap::from([("*".to_string(), 0.8), ("code".to_string(), 0.5)]),
            data: DataHandling::default(),
        }
    }

    #[test]
    fn lookup_quality_and_cost() {
        let c = Catalog::new([ep("a"), ep("b"), ep("a")]);
        assert_eq!(c.len(), 2);
        assert_eq!(c.index_of("b"), Some(EndpointIdx(1)));
        let a = c.get("a").unwrap();
        assert_eq!(a.quality_for("code"), Some(0.5));
        assert_eq!(a.quality_for("triage"), Some(0.8));
        assert!((a.pricing.cost(1_000_000, 100_000) - 4.5).abs() < 1e-9);
        assert_eq!(a.failure_domain(), "p");
    }

    #[test]
    fn capability_gaps_in_a_fixed_order() {
        let c = ep("a").capabilities;
        let mut r = Requirements {
            input_tokens: 7000,
            output_tokens: 1000,
            ..Requirements::default()
        };
        assert_eq!(c.gap(&r), None);
        r.input_tokens = 7001;
        assert_eq!(
            c.gap(&r),
            Some(CapabilityGap::ContextWindow {
                needed: 8001,
                window: 8000
            })
        );
        r.output_tokens = 2000;
        assert_eq!(
            c.gap(&r),
            Some(CapabilityGap::MaxOutput {
                needed: 2000,
                max: 1000
            })
        );
        r.vision = true;
        assert_eq!(c.gap(&r), Some(CapabilityGap::Vision));
        r.tools = true;
        assert_eq!(c.gap(&r), Some(CapabilityGap::Tools));
        assert_eq!(
            CapabilityGap::ContextWindow {
                needed: 9,
                window: 8
            }
            .to_string(),
            "needs 9 tokens, context window is 8"
        );
    }
}
