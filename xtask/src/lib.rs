//! What `cargo xtask` and fcsup's privileged tests share: the one-machine cluster (network
//! namespaces, etcd, nodes, HAProxy) is written once, here, and both drive it.

pub mod cluster;
pub mod http;
