//! The control path: `verge control` (API, store, state) and the node side (index, poller).

pub mod api;
pub mod client;
pub mod index;
pub mod plane;
pub mod poller;
pub mod settings;
pub mod store;
pub mod wire;
