//! Policies: the four layers as data, layered resolution, validation and JSON Schema.

pub mod duration;
mod model;

pub use model::*;
