//! Upstream side: backend pools, selection, passive ejection, the probes of active health
//! checks, and the tier ring of verge nodes with its hop marker and the invalidation
//! positions learned from hops.

pub mod hop_marker;
pub mod idle_pool;
pub mod pool;
pub mod tier;
pub mod tier_positions;
