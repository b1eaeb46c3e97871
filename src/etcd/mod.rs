//! Node mode: the functions live in etcd, one key per function, and every node serves what
//! etcd holds. `<prefix>/functions/<name>` holds the function's FC 3.0 `props` as JSON (what
//! `PUT /admin/functions/NAME` takes). A node reads them all, then watches the prefix from
//! the revision it read, so no change falls between the read and the watch ([`node`]).
//!
//! etcd is reached over plain HTTP (no TLS, no auth yet): whoever can write there defines what
//! the nodes run, as whoever can write the s.yaml does, so it belongs on a private network.

pub mod admin;
pub mod node;
pub mod props;

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions, WatchStream};

pub use node::{Booting, Node};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/fcsup";

/// How long one request to etcd may take before the node takes etcd as lost.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest answer taken from etcd (every function at once, or a watch's batch). gRPC's
/// default of 4 MiB is three values at etcd's largest (1.5 MiB): past it no node could start
/// or re-read, whoever wrote the keys.
const MAX_ANSWER: usize = 256 << 20;

/// Errors talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The client failed (cannot connect, request refused, stream broken).
    #[error("etcd at {at}: {source}")]
    Client {
        /// The endpoints.
        at: String,
        /// The cause.
        #[source]
        source: etcd_client::Error,
    },
    /// A request took longer than [`REQUEST_TIMEOUT`].
    #[error("etcd at {0}: no answer within 5 s")]
    Timeout(String),
    /// The watch stream ended (etcd closed it).
    #[error("etcd at {0}: the watch stream ended")]
    WatchEnded(String),
    /// A push would need more operations than one etcd transaction allows.
    #[error("{0} changes do not fit in one etcd transaction (etcd's --max-txn-ops, default 128): push fewer functions at once")]
    TooMany(usize),
}

/// What etcd holds under the prefix at one revision.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The store's revision when read.
    pub revision: i64,
    /// Each function's value (text, as stored) by name.
    pub functions: BTreeMap<String, String>,
    /// Keys under the prefix that are not a function (bad name, not UTF-8): logged, skipped.
    pub ignored: Vec<String>,
}

/// What a push did.
#[derive(Debug, Default)]
pub struct Pushed {
    /// The revision of the transaction.
    pub revision: i64,
    /// Functions written.
    pub written: Vec<String>,
    /// Functions deleted (`--prune`).
    pub pruned: Vec<String>,
}

/// A connection to etcd and the key prefix the functions live under.
#[derive(Clone)]
pub struct Store {
    client: Client,
    /// The endpoints, for messages.
    pub at: String,
    /// `<prefix>/functions/`.
    dir: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("at", &self.at).field("dir", &self.dir).finish()
    }
}

/// Whether `name` is a function name (FC's rule): a key that is not one is never applied.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Where etcd is, the prefix, and the etcd user (with its password) fcsup signs in as, if etcd
/// has authentication on.
#[derive(Clone, Default)]
pub struct Access {
    /// `http://host:port` endpoints.
    pub endpoints: Vec<String>,
    /// The key prefix (`<prefix>/functions/<name>`).
    pub prefix: String,
    /// User and password.
    pub user: Option<(String, String)>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("user", &self.user.as_ref().map(|u| &u.0))
            .finish()
    }
}

impl Store {
    /// Connects to `endpoints` (`http://host:port`). HTTP/2 keep-alive pings notice a peer
    /// that vanished without closing the connection, so a watch never hangs on a dead etcd.
    pub async fn connect(access: &Access) -> Result<Store, EtcdError> {
        let (endpoints, prefix) = (&access.endpoints, &access.prefix);
        let at = endpoints.join(",");
        let mut options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), REQUEST_TIMEOUT)
            .with_keep_alive_while_idle(true);
        if let Some((user, password)) = &access.user {
            options = options.with_user(user.clone(), password.clone());
        }
        let client = timed(&at, Client::connect(endpoints, Some(options))).await?;
        Ok(Store { client, dir: format!("{}/functions/", prefix.trim_end_matches('/')), at })
    }

    /// The key of function `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.dir)
    }

    /// Every function under the prefix and the revision they were read at.
    pub async fn read(&self) -> Result<Snapshot, EtcdError> {
        let mut c = self.client.kv_client().max_decoding_message_size(MAX_ANSWER);
        let resp = timed(&self.at, c.get(self.dir.as_str(), Some(GetOptions::new().with_prefix()))).await?;
        let mut snap = Snapshot { revision: resp.header().map_or(0, |h| h.revision()), ..Snapshot::default() };
        for kv in resp.kvs() {
            match (self.name_of(kv.key()), kv.value_str()) {
                (Some(name), Ok(value)) => {
                    snap.functions.insert(name, value.to_string());
                }
                _ => snap.ignored.push(String::from_utf8_lossy(kv.key()).into_owned()),
            }
        }
        Ok(snap)
    }

    /// The function name a key under the prefix stands for, if it is one.
    pub fn name_of(&self, key: &[u8]) -> Option<String> {
        let name = std::str::from_utf8(key).ok()?.strip_prefix(&self.dir)?;
        valid_name(name).then(|| name.to_string())
    }

    /// Writes one function; its revision and whether it existed before.
    pub async fn put(&self, name: &str, props: &str) -> Result<(i64, bool), EtcdError> {
        let mut c = self.client.clone();
        let resp = timed(&self.at, c.put(self.key(name), props, Some(PutOptions::new().with_prev_key()))).await?;
        Ok((resp.header().map_or(0, |h| h.revision()), resp.prev_key().is_some()))
    }

    /// Deletes one function; the revision and whether it existed.
    pub async fn delete(&self, name: &str) -> Result<(i64, bool), EtcdError> {
        let mut c = self.client.clone();
        let resp = timed(&self.at, c.delete(self.key(name), Some(DeleteOptions::new()))).await?;
        Ok((resp.header().map_or(0, |h| h.revision()), resp.deleted() > 0))
    }

    /// Writes `functions` (name → props JSON) in one transaction, deleting with `prune` the
    /// functions etcd holds that are not among them: every node sees the whole change at once.
    pub async fn push(&self, functions: &BTreeMap<String, String>, prune: bool) -> Result<Pushed, EtcdError> {
        let mut pushed = Pushed { written: functions.keys().cloned().collect(), ..Pushed::default() };
        if prune {
            pushed.pruned = self.read().await?.functions.into_keys().filter(|n| !functions.contains_key(n)).collect();
        }
        let ops: Vec<TxnOp> = functions
            .iter()
            .map(|(name, props)| TxnOp::put(self.key(name), props.as_str(), None))
            .chain(pushed.pruned.iter().map(|name| TxnOp::delete(self.key(name), None)))
            .collect();
        if ops.len() > 128 {
            return Err(EtcdError::TooMany(ops.len()));
        }
        let mut c = self.client.clone();
        let resp = timed(&self.at, c.txn(Txn::new().and_then(ops))).await?;
        pushed.revision = resp.header().map_or(0, |h| h.revision());
        Ok(pushed)
    }

    /// Watches the prefix from `revision` on (puts and deletes, in order).
    pub async fn watch(&self, revision: i64) -> Result<WatchStream, EtcdError> {
        let mut c = self.client.watch_client().max_decoding_message_size(MAX_ANSWER);
        timed(&self.at, c.watch(self.dir.as_str(), Some(WatchOptions::new().with_prefix().with_start_revision(revision)))).await
    }
}

/// `f` bounded by [`REQUEST_TIMEOUT`], its error said with where etcd is.
async fn timed<T>(at: &str, f: impl std::future::Future<Output = Result<T, etcd_client::Error>>) -> Result<T, EtcdError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => r.map_err(|source| EtcdError::Client { at: at.to_string(), source }),
        Err(_) => Err(EtcdError::Timeout(at.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_are_fc_names() {
        assert!(valid_name("hello_1-x"));
        assert!(valid_name("_a"));
        for bad in ["", "1a", "a/b", "..", "a b", "é", &"a".repeat(129)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
