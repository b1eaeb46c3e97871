//! What `/healthz` tells a front (HAProxy) and an operator about this node: whether it takes
//! new requests (not while draining after SIGTERM) and whether its configuration source (the
//! file, or etcd in node mode) is reachable. Owned by the supervisor; set by whoever knows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The node's health, shared by the API (which reports it) and the parts that change it.
#[derive(Debug, Default)]
pub struct Health {
    draining: AtomicBool,
    source: Mutex<SourceState>,
}

/// Whether the functions' source is reachable. A node that loses it keeps serving what it has.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum SourceState {
    /// A local file (or nothing to watch): always reachable.
    #[default]
    Local,
    /// The store is reachable and watched.
    Connected {
        /// Where (e.g. the etcd endpoints).
        at: String,
    },
    /// The store cannot be reached; the functions last read keep serving.
    Lost {
        /// Where.
        at: String,
        /// Why, as the last error said.
        error: String,
        /// Since when (Unix seconds).
        since: u64,
    },
}

impl Health {
    /// From now on the node fails its health check so that fronts send new requests elsewhere.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the node is draining.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Records the configuration source's state.
    pub fn set_source(&self, state: SourceState) {
        *self.source.lock().expect("health") = state;
    }

    /// The configuration source's state.
    pub fn source(&self) -> SourceState {
        self.source.lock().expect("health").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draining_is_one_way_and_source_is_kept() {
        let h = Health::default();
        assert!(!h.draining());
        assert_eq!(h.source(), SourceState::Local);
        h.start_draining();
        assert!(h.draining());
        h.set_source(SourceState::Lost { at: "http://127.0.0.1:2379".into(), error: "refused".into(), since: 1 });
        assert!(matches!(h.source(), SourceState::Lost { .. }));
    }
}
