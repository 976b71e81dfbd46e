//! The control plane (`verge control`: API, plane, store, settings), its CLI client, and the wire
//! format it shares with nodes.

pub mod api;
pub mod audit;
pub mod cli_output;
pub mod client;
mod etcd_epoch;
mod etcd_leader;
mod etcd_receipts;
mod etcd_staged;
pub mod etcd_store;
mod etcd_watch;
pub mod liveness;
pub mod plane;
pub mod purge_scope;
pub mod settings;
pub mod staged_purge;
pub mod store;
pub mod store_settings;
pub mod wire;
