//! Upstream side: backend pools, selection, passive ejection, and the probes of active health
//! checks.

pub mod pool;
