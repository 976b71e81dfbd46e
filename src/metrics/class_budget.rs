//! Content classes' time budgets as metrics: each class's budget, and the answers from the
//! cache that were older than it, so alerts can hold each class to its own time budget.

use super::{counter, registered, METRICS};
use once_cell::sync::Lazy;
use prometheus::{GaugeVec, IntCounterVec, Opts};

/// The per-class time-budget metrics of a node.
pub struct ClassBudgetMetrics {
    /// `verge_content_class_budget_seconds{class}`: each class's staleness budget, as the
    /// snapshot in force declares it.
    pub budget: GaugeVec,
    /// `verge_cache_served_over_budget_total{class}`: answers from the cache whose age when
    /// served (from the origin's response, its own `Age` included) was over the class's budget.
    pub over_budget: IntCounterVec,
}

/// The per-class time-budget metrics (see [`ClassBudgetMetrics`]).
pub static CLASS_BUDGET_METRICS: Lazy<ClassBudgetMetrics> = Lazy::new(|| {
    // a handle on the same registry (a `Registry` is shared, not copied, by `clone`)
    let node = METRICS.node_registry.clone();
    ClassBudgetMetrics {
        budget: registered(
            &node,
            "verge_content_class_budget_seconds",
            GaugeVec::new(
                Opts::new(
                    "verge_content_class_budget_seconds",
                    "Staleness budget of each content class",
                ),
                &["class"],
            ),
        ),
        over_budget: counter(
            &node,
            "verge_cache_served_over_budget_total",
            "Answers from the cache older than their class's staleness budget",
            &["class"],
        ),
    }
});
