//! Upstream side: backend pools, selection, passive ejection and active health checks.

pub mod health;
pub mod pool;
