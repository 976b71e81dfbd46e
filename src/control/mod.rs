//! The control plane (`verge control`: API, plane, store, settings), its CLI client, and the wire
//! format it shares with nodes.

pub mod api;
pub mod cli_output;
pub mod audit;
pub mod client;
pub mod liveness;
pub mod plane;
pub mod purge_scope;
pub mod settings;
pub mod store;
pub mod wire;
