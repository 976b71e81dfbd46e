//! Upstream side: backend pools, selection, passive ejection, the probes of active health
//! checks, and the tier ring of verge nodes with its hop marker.

pub mod hop_marker;
pub mod pool;
pub mod tier;
