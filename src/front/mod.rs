//! The front of several fcsup nodes: HAProxy, configured by `fcsup haproxy-config`. fcsup
//! does not balance across nodes itself; each node enforces its own capacity and answers a
//! fast "full" (425, see `api/health.rs`) that HAProxy retries on another node.

pub mod haproxy;

pub use haproxy::{config, Front, FrontError, Node};
