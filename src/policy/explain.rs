//! The static explanation of a tenant's ladder: every tier and endpoint, usable or why not.
//!
//! This is what `downshift explain` prints. It covers what the policy and the catalog decide
//! (floors, task rules, residency, allowlists, data handling, quality, capabilities); the live
//! health of endpoints is the router's part.

use serde::Serialize;

use super::resolved::{ResolvedPolicy, TierExclusion};
use crate::catalog::{CapabilityGap, Catalog, Requirements};
use crate::id::EndpointId;

/// Why an endpoint is or is not a candidate in a view.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum CandidateStatus {
    /// Usable for this tenant, task and request.
    Usable,
    /// Its tier is not permitted.
    TierExcluded {
        /// Why.
        reason: TierExclusion,
    },
    /// Removed by the tenant's policy.
    Removed {
        /// Why, in words.
        reason: String,
    },
    /// Lacks a capability the request needs.
    Incapable {
        /// What it lacks.
        gap: CapabilityGap,
    },
}

/// One endpoint of the ladder, explained.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CandidateExplanation {
    /// The endpoint.
    pub endpoint: EndpointId,
    /// Provider.
    pub provider: String,
    /// Model.
    pub model: String,
    /// Region.
    pub region: String,
    /// Context window.
    pub context_window: u32,
    /// USD per million input tokens.
    pub input_per_mtok: f64,
    /// USD per million output tokens.
    pub output_per_mtok: f64,
    /// Usable or why not.
    #[serde(flatten)]
    pub status: CandidateStatus,
}

/// One tier, explained.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TierExplanation {
    /// Index (0 = primary).
    pub index: u32,
    /// Name.
    pub name: String,
    /// Whether entering it from the top tier needs approval.
    pub approval_required: bool,
    /// Its endpoints.
    pub candidates: Vec<CandidateExplanation>,
}

/// A view's whole ladder, explained for a request shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LadderExplanation {
    /// The tiers in order.
    pub tiers: Vec<TierExplanation>,
}

impl LadderExplanation {
    /// The usable candidates in ladder order.
    pub fn usable(&self) -> impl Iterator<Item = (&TierExplanation, &CandidateExplanation)> {
        self.tiers.iter().flat_map(|t| {
            t.candidates
                .iter()
                .filter(|c| c.status == CandidateStatus::Usable)
                .map(move |c| (t, c))
        })
    }
}

impl ResolvedPolicy {
    /// Explains every endpoint of every tier for a request with `req`.
    ///
    /// `ladder` is the tier list the view was resolved from (its endpoint order), taken from the
    /// view itself; `catalog` supplies endpoint details.
    #[must_use]
    pub fn explain_ladder(&self, catalog: &Catalog, req: &Requirements) -> LadderExplanation {
        let tiers = self
            .tiers
            .iter()
            .map(|t| {
                let mut candidates = Vec::new();
                let mut push = |id: &EndpointId, status: CandidateStatus| {
                    if let Some(e) = catalog.get(id.as_str()) {
                        let status = match status {
                            CandidateStatus::Usable => match e.capabilities.gap(req) {
                                Some(gap) => CandidateStatus::Incapable { gap },
                                None => CandidateStatus::Usable,
                            },
                            other => other,
                        };
                        candidates.push(CandidateExplanation {
                            endpoint: id.clone(),
                            provider: e.provider.clone(),
                            model: e.model.to_string(),
                            region: e.region.clone(),
                            context_window: e.capabilities.context_window,
                            input_per_mtok: e.pricing.input_per_mtok,
                            output_per_mtok: e.pricing.output_per_mtok,
                            status,
                        });
                    }
                };
                match &t.excluded {
                    Some(ex) => {
                        for id in &t.all_endpoints {
                            push(id, CandidateStatus::TierExcluded { reason: ex.clone() });
                        }
                    }
                    None => {
                        for id in &t.all_endpoints {
                            if t.endpoints.contains(id) {
                                push(id, CandidateStatus::Usable);
                            } else if let Some(r) = t.removed.iter().find(|r| &r.endpoint == id) {
                                push(
                                    id,
                                    CandidateStatus::Removed {
                                        reason: r.reason.to_string(),
                                    },
                                );
                            }
                        }
                    }
                }
                TierExplanation {
                    index: t.index,
                    name: t.name.to_string(),
                    approval_required: self.approval.requires(0, t.index),
                    candidates,
                }
            })
            .collect();
        LadderExplanation { tiers }
    }
}
