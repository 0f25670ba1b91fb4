//! Policies: the four layers as data, layered resolution, validation and JSON Schema.
//!
//! A policy set is a catalog plus layers: one platform layer, application templates, and tenant
//! layers, each a JSON file ([`PolicyLayer`]). [`PolicySet`] validates them all at once (every
//! problem named by file and JSON path), resolves each tenant into immutable
//! [`ResolvedPolicy`] views with a stable digest, and [`PolicyStore`] swaps a new set in
//! atomically on hot reload.

mod check;
pub mod duration;
mod explain;
mod merge;
mod model;
mod resolve;
mod resolved;
mod routing;
pub mod schema;
mod set;
mod source;

pub use explain::{CandidateExplanation, CandidateStatus, LadderExplanation, TierExplanation};
pub use model::*;
pub use resolve::region_matches;
pub use resolved::{
    ApprovalRule, BudgetRule, EndpointExclusion, ExcludedEndpoint, LayerRef, ResolvedBudget,
    ResolvedPolicy, ResolvedTier, TierExclusion,
};
pub(crate) use routing::RoutingView;
pub use routing::TenantHandle;
pub use set::{PolicyGuard, PolicySet, PolicyStore, TenantPolicy};
pub use source::Source;
