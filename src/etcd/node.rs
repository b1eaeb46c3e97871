//! A node following etcd: it applies what it read at start, then every change the watch
//! reports, as SIGHUP applies a re-read file (a changed function gets new instances, a removed
//! one drains, a change of scaling alone keeps the instances). A value that does not parse is
//! logged and changes nothing. When etcd cannot be reached the node keeps serving what it has,
//! says so once in the log and in [`crate::health`], retries with backoff, and on reconnect
//! re-reads everything (a watch cannot resume from a compacted revision) and applies the
//! difference.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::EventType;
use tokio::sync::{watch, Notify};

use super::{EtcdError, Snapshot, Store};
use crate::config::{Config, Function};
use crate::health::SourceState;
use crate::supervisor::Supervisor;

/// First wait before reconnecting; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long `PUT`/`DELETE /admin/functions/NAME` waits for its own node to apply the change.
const APPLY_WAIT: Duration = Duration::from_secs(60);

/// A node's tie to etcd, shared by the watcher and the admin API.
#[derive(Debug)]
pub struct Node {
    /// The current connection (replaced on reconnect).
    store: Mutex<Store>,
    access: super::Access,
    /// The etcd revision this node has applied up to.
    applied: watch::Sender<i64>,
    /// The last apply of each function: its revision and error, if it failed.
    outcomes: Mutex<BTreeMap<String, (i64, Option<String>)>>,
    /// SIGHUP: re-read everything now.
    reread: Notify,
}

/// What a write through the admin API did.
#[derive(Debug)]
pub struct Written {
    /// The etcd revision of the write.
    pub revision: i64,
    /// Whether the key existed before.
    pub existed: bool,
    /// Whether this node applied it: `None` when it had not within [`APPLY_WAIT`], else the
    /// error if applying failed here.
    pub applied: Option<Result<(), String>>,
}

/// What the node read at start, before its supervisor exists.
#[derive(Debug)]
pub struct Booting {
    node: Arc<Node>,
    snapshot: Snapshot,
    seen: BTreeMap<String, String>,
}

/// What the watcher knows: the revision applied, and each function's value as last applied
/// (or found not to parse), so an event that changes nothing does nothing.
struct State {
    revision: i64,
    seen: BTreeMap<String, String>,
}

enum Next {
    Stop,
    Reread,
    Lost(EtcdError),
}

impl Booting {
    /// Connects and reads every function. Fails when etcd cannot be reached: a node that
    /// starts has no functions to keep serving.
    pub async fn read(access: super::Access) -> Result<Booting, EtcdError> {
        let store = Store::connect(&access).await?;
        let snapshot = store.read().await?;
        let node = Node { store: Mutex::new(store), access, applied: watch::channel(0).0, outcomes: Mutex::default(), reread: Notify::new() };
        Ok(Booting { node: Arc::new(node), snapshot, seen: BTreeMap::new() })
    }

    /// The functions read, for the supervisor to start with (so that Async tasks left by the
    /// previous run find them); a value with a relative path is refused. A value that does not
    /// parse is logged and left out.
    pub async fn config(&mut self, base: &Path) -> Config {
        let mut functions = Vec::new();
        for key in &self.snapshot.ignored {
            tracing::warn!("etcd: {key} is not a function's key or value: ignored");
        }
        for (name, value) in &self.snapshot.functions {
            match parse(value, name, base).await {
                Ok(f) => {
                    functions.push(f);
                    self.seen.insert(name.clone(), value.clone());
                }
                // Not marked seen: parsing also looks at this node's files (the code directory,
                // a shared mount not there yet), so a re-read (SIGHUP) tries again.
                Err(e) => tracing::error!("etcd revision {}: function {name} does not parse and is not served: {e}", self.snapshot.revision),
            }
        }
        Config { functions, base: base.to_path_buf(), ..Config::default() }
    }

    /// Follows etcd for `sup` (started on [`Booting::config`]) until `stop` turns true.
    pub fn run(self, sup: Arc<Supervisor>, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let Booting { node, snapshot, seen } = self;
        let _ = sup.node.set(node.clone());
        let at = node.store().at;
        sup.health.set_source(SourceState::Connected { at: at.clone() });
        node.applied.send_replace(snapshot.revision);
        tracing::info!("node mode: functions from etcd at {at}, watching from revision {}", snapshot.revision + 1);
        tokio::spawn(node.follow_forever(sup, State { revision: snapshot.revision, seen }, stop))
    }
}

impl Node {
    fn store(&self) -> Store {
        self.store.lock().expect("etcd store").clone()
    }

    /// Re-reads every function now (SIGHUP in node mode).
    pub fn reread(&self) {
        self.reread.notify_one();
    }

    /// Writes `props` (JSON) as function `name` and waits until this node applied it.
    pub async fn put(&self, name: &str, props: &str) -> Result<Written, EtcdError> {
        let (revision, existed) = self.store().put(name, props).await?;
        Ok(Written { revision, existed, applied: self.wait_applied(name, revision).await })
    }

    /// Deletes function `name` and waits until this node removed it.
    pub async fn delete(&self, name: &str) -> Result<Written, EtcdError> {
        let (revision, existed) = self.store().delete(name).await?;
        let applied = if existed { self.wait_applied(name, revision).await } else { Some(Ok(())) };
        Ok(Written { revision, existed, applied })
    }

    async fn wait_applied(&self, name: &str, revision: i64) -> Option<Result<(), String>> {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(APPLY_WAIT, rx.wait_for(|r| *r >= revision)).await.ok()?.ok()?;
        match self.outcomes.lock().expect("outcomes").get(name) {
            Some((r, Some(e))) if *r >= revision => Some(Err(e.clone())),
            _ => Some(Ok(())),
        }
    }

    async fn follow_forever(self: Arc<Self>, sup: Arc<Supervisor>, mut state: State, mut stop: watch::Receiver<bool>) {
        let mut lost_since: Option<Instant> = None;
        let mut backoff = MIN_BACKOFF;
        let mut reread = false;
        loop {
            let next = if reread {
                match self.store().read().await {
                    Ok(snap) => {
                        self.resync(&sup, &mut state, snap).await;
                        if let Some(since) = lost_since.take() {
                            tracing::info!(
                                "etcd at {} reachable again after {:.1} s; re-read and applied",
                                self.store().at,
                                since.elapsed().as_secs_f64()
                            );
                            sup.health.set_source(SourceState::Connected { at: self.store().at });
                        }
                        backoff = MIN_BACKOFF;
                        self.follow(&sup, &mut state, &mut stop).await
                    }
                    Err(e) => Next::Lost(e),
                }
            } else {
                self.follow(&sup, &mut state, &mut stop).await
            };
            reread = true;
            match next {
                Next::Stop => return,
                Next::Reread => {}
                Next::Lost(e) => {
                    if lost_since.is_none() {
                        tracing::warn!("lost etcd: {e}; serving the functions last read, reconnecting with backoff");
                        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                        sup.health.set_source(SourceState::Lost { at: self.store().at, error: e.to_string(), since });
                        lost_since = Some(Instant::now());
                    } else {
                        tracing::debug!("etcd still unreachable: {e}");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    // A fresh connection: the old one may be stuck on an address that died.
                    if let Ok(s) = Store::connect(&self.access).await {
                        *self.store.lock().expect("etcd store") = s;
                    }
                }
            }
        }
    }

    /// Applies the watch's events until it breaks, is cancelled, or `stop`.
    async fn follow(&self, sup: &Arc<Supervisor>, state: &mut State, stop: &mut watch::Receiver<bool>) -> Next {
        let store = self.store();
        let mut stream = match store.watch(state.revision + 1).await {
            Ok(s) => s,
            Err(e) => return Next::Lost(e),
        };
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = self.reread.notified() => return Next::Reread,
                _ = stop.changed() => return Next::Stop,
            };
            let resp = match message {
                Ok(Some(r)) => r,
                Ok(None) => return Next::Lost(EtcdError::WatchEnded(store.at.clone())),
                Err(source) => return Next::Lost(EtcdError::Client { at: store.at.clone(), source }),
            };
            if resp.compact_revision() > 0 || resp.canceled() {
                tracing::warn!(
                    "etcd ended the watch from revision {} (compacted to {}; {}): re-reading every function",
                    state.revision + 1,
                    resp.compact_revision(),
                    resp.cancel_reason()
                );
                return Next::Reread;
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let revision = kv.mod_revision();
                match store.name_of(kv.key()) {
                    Some(name) => match (event.event_type(), kv.value_str()) {
                        (EventType::Delete, _) => self.apply(sup, state, &name, None, revision).await,
                        (EventType::Put, Ok(v)) => self.apply(sup, state, &name, Some(v), revision).await,
                        (EventType::Put, Err(_)) => {
                            tracing::error!("etcd revision {revision}: function {name} is not UTF-8; what runs stays as it was")
                        }
                    },
                    None => {
                        tracing::warn!("etcd: {} is not a function's key (<prefix>/functions/<name>): ignored", String::from_utf8_lossy(kv.key()))
                    }
                }
                state.revision = state.revision.max(revision);
            }
            self.applied.send_replace(state.revision);
        }
    }

    /// Makes the node serve exactly `snap`: changed and new functions applied, missing ones
    /// removed.
    async fn resync(&self, sup: &Arc<Supervisor>, state: &mut State, snap: Snapshot) {
        for key in &snap.ignored {
            tracing::warn!("etcd: {key} is not a function's key or value: ignored");
        }
        for (name, value) in &snap.functions {
            self.apply(sup, state, name, Some(value), snap.revision).await;
        }
        let known: BTreeSet<String> = sup.pools().iter().map(|p| p.function.name.clone()).chain(state.seen.keys().cloned()).collect();
        for name in known.iter().filter(|n| !snap.functions.contains_key(*n)) {
            self.apply(sup, state, name, None, snap.revision).await;
        }
        state.revision = snap.revision;
        self.applied.send_replace(snap.revision);
    }

    /// Applies one key's new value (`None`: deleted).
    async fn apply(&self, sup: &Arc<Supervisor>, state: &mut State, name: &str, value: Option<&str>, revision: i64) {
        let error = match value {
            None => {
                state.seen.remove(name);
                if sup.remove_function(name) {
                    tracing::info!(removed = ?[name], "etcd revision {revision}: function removed; its instances drain");
                }
                None
            }
            Some(v) if state.seen.get(name).is_some_and(|s| s == v) => return,
            Some(v) => match parse(v, name, &sup.config_base).await {
                // Not marked seen: the value may parse on a re-read once this node's files are
                // there (`code` is checked on the node).
                Err(e) => {
                    tracing::error!("etcd revision {revision}: function {name} does not parse; what runs stays as it was: {e}");
                    Some(e)
                }
                Ok(f) => match set_function(sup, f).await {
                    Ok(r) => {
                        tracing::info!(added = ?r.added, replaced = ?r.replaced, rescaled = ?r.rescaled, unchanged = ?r.unchanged, "etcd revision {revision}: applied");
                        state.seen.insert(name.to_string(), v.to_string());
                        None
                    }
                    // Not marked seen: the same value is tried again on the next re-read.
                    Err(e) => {
                        tracing::error!("etcd revision {revision}: function {name} cannot start here; what runs stays as it was: {e}");
                        Some(e.to_string())
                    }
                },
            },
        };
        self.outcomes.lock().expect("outcomes").insert(name.to_string(), (revision, error));
    }
}

/// Parses a value as `PUT /admin/functions/NAME` parses its body (off the runtime: it reads
/// the code to checksum it, and may unpack a package).
async fn parse(value: &str, name: &str, base: &Path) -> Result<Function, String> {
    // What a node would resolve against its own working directory (a value written to etcd by
    // hand): push and PUT make every path absolute.
    if let Some(p) = super::props::to_json(value).ok().and_then(|v| super::props::relative_path(&v)) {
        return Err(format!(
            "{p:?} is a relative path: a value in etcd must name absolute paths (fcsup functions push and PUT /admin/functions make them so)"
        ));
    }
    let (value, owned, base): (String, String, PathBuf) = (value.to_string(), name.to_string(), base.to_path_buf());
    match tokio::task::spawn_blocking(move || Config::parse_function(&value, &owned, &base)).await {
        // The parser names its input after the admin route; here it is a key.
        Ok(r) => r.map_err(|e| e.to_string().replacen(&format!("PUT /admin/functions/{name}: "), "", 1)),
        Err(e) => Err(format!("parsing panicked: {e}")),
    }
}

/// `f` set as a reload would set it: every other function as it runs, `f` new or changed.
async fn set_function(sup: &Supervisor, f: Function) -> Result<crate::supervisor::Reloaded, crate::supervisor::SupervisorError> {
    let mut functions: Vec<Function> = sup.pools().iter().filter(|p| p.function.name != f.name).map(|p| (*p.function).clone()).collect();
    functions.push(f);
    sup.reload(&Config { functions, base: sup.config_base.clone(), ..Config::default() }).await
}
