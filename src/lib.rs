//! fcsup: a Linux-native supervisor that runs Function Compute style functions faithfully.
//! Each instance lives in its own cgroup v2 and namespaces, is frozen through `cgroup.freeze`
//! between requests, and its CPU time is read per phase from `cpu.stat`.
#![warn(missing_docs)]

pub mod admin_socket;
pub mod api;
pub mod bench;
pub mod billing;
pub mod cgroup;
pub mod check;
pub mod client;
pub mod clock;
pub mod config;
pub mod demo;
pub mod etcd;
pub mod front;
pub mod hazards;
pub mod health;
pub mod image;
pub mod instance;
pub mod logs;
pub mod metrics;
pub mod oci;
pub mod outcome;
pub mod pool;
pub mod queue;
pub mod runtime_api;
pub mod sandbox;
pub mod supervisor;
pub mod timer;
pub mod watchdog;
