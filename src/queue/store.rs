//! Where Async tasks live: one SQLite table, so that a task accepted with 202 is still there
//! after fcsup stops or is killed, and runs then (FC's at-least-once).
//!
//! WAL with `synchronous=NORMAL`: a commit is a `write(2)` to the WAL and no fsync, so a task is
//! safe from a crash of fcsup the moment 202 goes out. Automatic checkpoints are off on the
//! connection that writes; a second connection checkpoints once a second while something was
//! written, which syncs the WAL first, so a power loss loses at most the last second of changes
//! (the same bound as the ledger) and no fsync ever runs on the accept path. A checkpoint that
//! runs while tasks keep coming cannot empty the WAL; past [`WAL_LIMIT`] the thread asks for a
//! `RESTART` checkpoint, which makes writers wait (a few ms) while it empties it.
//!
//! The table has no index besides its keys (each index is one more page written per change):
//! the scan for unfinished tasks happens once, at start.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method};
use rusqlite::{params, Connection, OptionalExtension};

use super::{TaskState, TaskStatus};

/// A store that cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file or its directory.
    #[error("cannot open the Async queue database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// SQLite refused.
    #[error("Async queue database: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// WAL size past which the checkpoint thread makes writers wait to empty it.
const WAL_LIMIT: u64 = 64 << 20;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    function TEXT NOT NULL,
    request_id TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    function_errors INTEGER NOT NULL DEFAULT 0,
    throttles INTEGER NOT NULL DEFAULT 0,
    submitted TEXT NOT NULL,
    submitted_ms INTEGER NOT NULL,
    finished TEXT,
    instance_id TEXT,
    status_code INTEGER,
    error_type TEXT,
    error_message TEXT,
    result TEXT,
    result_encoding TEXT,
    destination_task TEXT,
    http_trigger INTEGER NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB
);
";

/// A task's request as kept for its attempts (what a [`crate::instance::Call`] needs).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// HTTP trigger or API invoke.
    pub http_trigger: bool,
    /// The request id the function sees.
    pub request_id: String,
    /// Method.
    pub method: Method,
    /// Path and query.
    pub path_and_query: String,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// A new task.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// Task id.
    pub id: String,
    /// Function.
    pub function: String,
    /// The request.
    pub request: Request,
    /// Arrival, ms since the epoch: the event's age counts from here, across restarts.
    pub submitted_ms: u64,
}

/// An unfinished task found at start, to be run again.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Task id.
    pub id: String,
    /// Function.
    pub function: String,
    /// The request.
    pub request: Request,
    /// Arrival, ms since the epoch.
    pub submitted_ms: u64,
    /// Attempts so far (the one cut short by a stop or kill included).
    pub attempts: u32,
    /// Function errors so far.
    pub function_errors: u32,
    /// Throttles so far.
    pub throttles: u32,
}

/// What one attempt returned, as kept.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// Instance of the attempt.
    pub instance_id: Option<String>,
    /// The function's HTTP status.
    pub status_code: Option<u16>,
    /// FC's error type.
    pub error_type: Option<String>,
    /// Error message.
    pub error_message: Option<String>,
    /// Response body, UTF-8 or base64.
    pub result: Option<String>,
    /// `utf8` or `base64`.
    pub result_encoding: Option<&'static str>,
    /// Function errors so far.
    pub function_errors: u32,
    /// Throttles so far.
    pub throttles: u32,
}

/// The task table, on disk or in memory.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    path: Option<PathBuf>,
    /// Written since the last checkpoint.
    dirty: Arc<AtomicBool>,
    /// Ends the checkpoint thread when the store is dropped.
    alive: Arc<AtomicBool>,
}

impl Store {
    /// Opens (creating it 0600, its directory 0700) the database at `path`, or an in-memory
    /// one for `None` (then nothing survives fcsup).
    pub fn open(path: Option<&Path>) -> Result<Store, StoreError> {
        let conn = match path {
            Some(p) => {
                let io = |source| StoreError::Open { path: p.to_path_buf(), source };
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
                }
                // SQLite gives the -wal and -shm files the database file's mode. The file holds
                // request bodies and drives what runs: it must be fcsup's user's alone.
                let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(p).map_err(io)?;
                let meta = file.metadata().map_err(io)?;
                let me = nix::unistd::geteuid().as_raw();
                if std::os::unix::fs::MetadataExt::uid(&meta) != me || std::os::unix::fs::MetadataExt::mode(&meta) & 0o077 != 0 {
                    return Err(io(std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        format!("it must be owned by uid {me} and closed to group and others (mode 0600)"),
                    )));
                }
                Connection::open(p)?
            }
            None => Connection::open_in_memory()?,
        };
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // An emptied WAL is truncated to this size rather than kept at its largest.
        conn.pragma_update(None, "journal_size_limit", 8 << 20)?;
        conn.execute_batch(SCHEMA)?;
        let store =
            Store { conn: Mutex::new(conn), path: path.map(Path::to_path_buf), dirty: Arc::default(), alive: Arc::new(AtomicBool::new(true)) };
        Ok(store)
    }

    /// Whether tasks outlive this process.
    pub fn durable(&self) -> bool {
        self.path.is_some()
    }

    /// Starts the thread that checkpoints (and so syncs) the WAL once a second while there
    /// are changes, on its own connection so that writers never wait for an fsync.
    pub fn start_syncing(&self) -> Result<(), StoreError> {
        let Some(path) = self.path.clone() else { return Ok(()) };
        let conn = Connection::open(&path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_size_limit", 8 << 20)?;
        let (dirty, alive) = (self.dirty.clone(), self.alive.clone());
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        std::thread::Builder::new()
            .name("fcsup-queue-sync".into())
            .spawn(move || {
                while alive.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_secs(1));
                    if dirty.swap(false, Ordering::AcqRel) {
                        let big = std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_LIMIT);
                        let mode = if big { "RESTART" } else { "PASSIVE" };
                        if let Err(e) = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(())) {
                            tracing::warn!("cannot checkpoint the Async queue database {}: {e}", path.display());
                            dirty.store(true, Ordering::Release);
                        }
                    }
                }
            })
            .map_err(|source| StoreError::Open { path: self.path.clone().unwrap_or_default(), source })?;
        Ok(())
    }

    /// Checkpoints now (at shutdown).
    pub fn sync(&self) {
        if self.durable() {
            let conn = self.conn.lock().expect("queue db");
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::warn!("cannot checkpoint the Async queue database: {e}");
            }
        }
    }

    fn write<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().expect("queue db");
        let r = f(&mut conn)?;
        self.dirty.store(true, Ordering::Release);
        Ok(r)
    }

    /// Adds a task as `Enqueued`; `false` when its id is taken.
    pub fn insert(&self, t: &NewTask) -> Result<bool, StoreError> {
        self.write(|c| insert(c, t))
    }

    /// Whether task `id` exists.
    pub fn contains(&self, id: &str) -> bool {
        let conn = self.conn.lock().expect("queue db");
        conn.query_row("SELECT 1 FROM tasks WHERE id = ?1", [id], |_| Ok(())).optional().ok().flatten().is_some()
    }

    /// Task `id` as the status endpoint shows it.
    pub fn status(&self, id: &str) -> Option<TaskStatus> {
        let conn = self.conn.lock().expect("queue db");
        let r = conn
            .query_row(
                "SELECT id, request_id, function, status, attempts, submitted, finished, instance_id, status_code,
                        error_type, error_message, result, result_encoding, destination_task FROM tasks WHERE id = ?1",
                [id],
                |r| {
                    Ok(TaskStatus {
                        id: r.get(0)?,
                        request_id: r.get(1)?,
                        function: r.get(2)?,
                        status: TaskState::parse(&r.get::<_, String>(3)?).unwrap_or(TaskState::Enqueued),
                        attempts: r.get(4)?,
                        submitted: r.get(5)?,
                        finished: r.get(6)?,
                        instance_id: r.get(7)?,
                        status_code: r.get(8)?,
                        error_type: r.get(9)?,
                        error_message: r.get(10)?,
                        result: r.get(11)?,
                        result_encoding: r.get::<_, Option<String>>(12)?.map(|e| if e == "base64" { "base64" } else { "utf8" }),
                        destination_task_id: r.get(13)?,
                    })
                },
            )
            .optional();
        match r {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot read async task {id}: {e}");
                None
            }
        }
    }

    /// Sets the state of an unfinished task (`Running` also counts an attempt).
    pub fn set_state(&self, id: &str, state: TaskState) -> Result<(), StoreError> {
        let add = u32::from(state == TaskState::Running);
        self.write(|c| c.execute("UPDATE tasks SET status = ?2, attempts = attempts + ?3 WHERE id = ?1", params![id, state.as_str(), add]))?;
        Ok(())
    }

    /// Keeps what an attempt returned.
    pub fn record(&self, id: &str, r: &Record) -> Result<(), StoreError> {
        self.write(|c| {
            c.execute(
                "UPDATE tasks SET instance_id = ?2, status_code = ?3, error_type = ?4, error_message = ?5, result = ?6,
                        result_encoding = ?7, function_errors = ?8, throttles = ?9 WHERE id = ?1",
                params![id, r.instance_id, r.status_code, r.error_type, r.error_message, r.result, r.result_encoding, r.function_errors, r.throttles],
            )
        })?;
        Ok(())
    }

    /// Ends a task in `state` (its request is dropped: nothing runs it again) and, in the same
    /// transaction, adds the task that takes its record to a destination, so that a kill
    /// between the two can neither lose the record nor send it twice.
    pub fn finish(&self, id: &str, state: TaskState, message: Option<&str>, destination: Option<&NewTask>) -> Result<(), StoreError> {
        self.write(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE tasks SET status = ?2, finished = ?3, error_message = coalesce(?4, error_message), body = NULL,
                        destination_task = ?5 WHERE id = ?1",
                params![id, state.as_str(), crate::clock::now_rfc3339(), message, destination.map(|d| &d.id)],
            )?;
            if let Some(d) = destination {
                insert(&tx, d)?;
            }
            tx.commit()
        })
    }

    /// Unfinished tasks in arrival order, each set back to `Enqueued`.
    pub fn pending(&self) -> Result<Vec<Pending>, StoreError> {
        self.write(|c| {
            let tx = c.transaction()?;
            let out = {
                let mut q = tx.prepare(
                    "SELECT id, function, request_id, submitted_ms, attempts, function_errors, throttles, http_trigger, method, path,
                            headers, body FROM tasks WHERE finished IS NULL ORDER BY seq",
                )?;
                let rows = q.query_map([], |r| {
                    let method: String = r.get(8)?;
                    let headers: String = r.get(10)?;
                    Ok(Pending {
                        id: r.get(0)?,
                        function: r.get(1)?,
                        submitted_ms: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                        attempts: r.get(4)?,
                        function_errors: r.get(5)?,
                        throttles: r.get(6)?,
                        request: Request {
                            request_id: r.get(2)?,
                            http_trigger: r.get(7)?,
                            method: Method::from_bytes(method.as_bytes()).unwrap_or(Method::POST),
                            path_and_query: r.get(9)?,
                            headers: decode_headers(&headers),
                            body: Bytes::from(r.get::<_, Option<Vec<u8>>>(11)?.unwrap_or_default()),
                        },
                    })
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            tx.execute("UPDATE tasks SET status = 'Enqueued' WHERE finished IS NULL", [])?;
            tx.commit()?;
            Ok(out)
        })
    }

    /// At a stop: unfinished tasks become `Enqueued` again (a durable store runs them at the
    /// next start) or `Stopped` (an in-memory one).
    pub fn stop(&self) -> Result<(), StoreError> {
        if self.durable() {
            self.write(|c| c.execute("UPDATE tasks SET status = 'Enqueued' WHERE finished IS NULL", []))?;
        } else {
            self.write(|c| c.execute("UPDATE tasks SET status = 'Stopped', finished = ?1 WHERE finished IS NULL", [crate::clock::now_rfc3339()]))?;
        }
        Ok(())
    }

    /// Forgets finished tasks that are not among the newest `keep` tasks (unfinished ones
    /// stay, however old): a range delete on the primary key, cheap enough for the accept path.
    pub fn prune(&self, keep: usize) -> Result<usize, StoreError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.write(|c| c.execute("DELETE FROM tasks WHERE seq <= (SELECT max(seq) FROM tasks) - ?1 AND finished IS NOT NULL", [keep]))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::Relaxed);
    }
}

fn insert(c: &Connection, t: &NewTask) -> rusqlite::Result<bool> {
    let r = &t.request;
    let n = c.execute(
        "INSERT OR IGNORE INTO tasks (id, function, request_id, status, submitted, submitted_ms, http_trigger, method, path, headers, body)
         VALUES (?1, ?2, ?3, 'Enqueued', ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            t.id,
            t.function,
            r.request_id,
            crate::clock::rfc3339_ms(t.submitted_ms),
            i64::try_from(t.submitted_ms).unwrap_or(i64::MAX),
            r.http_trigger,
            r.method.as_str(),
            r.path_and_query,
            encode_headers(&r.headers),
            &r.body[..],
        ],
    )?;
    Ok(n == 1)
}

/// `name: value` lines: a header value can hold neither CR nor LF, and a name no colon.
fn encode_headers(h: &HeaderMap) -> String {
    let mut s = String::new();
    for (k, v) in h {
        s.push_str(k.as_str());
        s.push(':');
        // Values are kept as bytes; non-UTF-8 ones (rare) are escaped losslessly as latin-1.
        s.extend(v.as_bytes().iter().map(|&b| char::from(b)));
        s.push('\n');
    }
    s
}

fn decode_headers(s: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in s.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        let bytes: Vec<u8> = v.chars().filter_map(|c| u8::try_from(u32::from(c)).ok()).collect();
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_bytes(&bytes)) {
            h.append(k, v);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, function: &str, submitted_ms: u64) -> NewTask {
        let mut headers = HeaderMap::new();
        headers.insert("x-custom", HeaderValue::from_static("a: b"));
        headers.append("x-custom", HeaderValue::from_bytes(b"\xe9t\xe9").unwrap());
        NewTask {
            id: id.into(),
            function: function.into(),
            request: Request {
                http_trigger: true,
                request_id: format!("r-{id}"),
                method: Method::PUT,
                path_and_query: "/p?q=1".into(),
                headers,
                body: Bytes::from_static(b"\x00\xffbody"),
            },
            submitted_ms,
        }
    }

    #[test]
    fn a_database_others_could_change_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let loose = dir.path().join("loose.db");
        std::fs::write(&loose, b"").unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o666)).unwrap();
        let Err(e) = Store::open(Some(&loose)) else { panic!("a world-writable database is refused") };
        let e = e.to_string();
        assert!(e.contains("mode 0600"), "{e}");
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(dir.path().join("elsewhere.db"), &link).unwrap();
        assert!(Store::open(Some(&link)).is_err(), "a symlink is not followed");
        assert!(!dir.path().join("elsewhere.db").exists());
    }

    #[test]
    fn unfinished_tasks_survive_a_reopen_with_their_request_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/async.db");
        {
            let s = Store::open(Some(&path)).unwrap();
            assert!(s.insert(&task("a", "f", 1000)).unwrap());
            assert!(!s.insert(&task("a", "f", 2000)).unwrap(), "an id is taken once");
            assert!(s.insert(&task("b", "g", 2000)).unwrap());
            assert!(s.insert(&task("c", "f", 3000)).unwrap());
            s.set_state("a", TaskState::Running).unwrap();
            s.record("a", &Record { function_errors: 1, error_type: Some("UnhandledInvocationError".into()), ..Record::default() }).unwrap();
            s.set_state("a", TaskState::Retrying).unwrap();
            s.set_state("b", TaskState::Running).unwrap();
            s.finish("c", TaskState::Succeeded, None, None).unwrap();
            // Dropped without stop(): as a SIGKILL leaves it.
        }
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        let s = Store::open(Some(&path)).unwrap();
        assert_eq!(s.status("b").unwrap().status, TaskState::Running, "the status is as the kill left it");
        let p = s.pending().unwrap();
        assert_eq!(p.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["a", "b"], "in arrival order, finished ones not");
        assert_eq!((p[0].attempts, p[0].function_errors, p[0].submitted_ms), (1, 1, 1000));
        assert_eq!(p[0].request, task("a", "f", 0).request, "method, path, headers and body come back as they were");
        assert_eq!(s.status("b").unwrap().status, TaskState::Enqueued);
        let c = s.status("c").unwrap();
        assert_eq!(c.status, TaskState::Succeeded);
        assert!(c.finished.is_some());
        assert!(s.contains("c") && !s.contains("d"));
    }

    #[test]
    fn a_finish_and_its_destination_task_are_one_write() {
        let s = Store::open(None).unwrap();
        s.insert(&task("a", "f", 1)).unwrap();
        s.finish("a", TaskState::Failed, Some("why"), Some(&task("d", "dest", 2))).unwrap();
        let a = s.status("a").unwrap();
        assert_eq!((a.status, a.error_message.as_deref(), a.destination_task_id.as_deref()), (TaskState::Failed, Some("why"), Some("d")));
        assert_eq!(s.pending().unwrap().iter().map(|p| p.id.clone()).collect::<Vec<_>>(), ["d"]);
    }

    #[test]
    fn a_stop_requeues_on_disk_and_stops_in_memory() {
        let s = Store::open(None).unwrap();
        s.insert(&task("a", "f", 1)).unwrap();
        s.set_state("a", TaskState::Running).unwrap();
        s.stop().unwrap();
        assert_eq!(s.status("a").unwrap().status, TaskState::Stopped);
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(Some(&dir.path().join("q.db"))).unwrap();
        s.insert(&task("a", "f", 1)).unwrap();
        s.set_state("a", TaskState::Running).unwrap();
        s.stop().unwrap();
        assert_eq!(s.status("a").unwrap().status, TaskState::Enqueued);
        assert_eq!(s.status("a").unwrap().attempts, 1);
    }

    #[test]
    fn pruning_keeps_the_newest_tasks_and_every_unfinished_one() {
        let s = Store::open(None).unwrap();
        for i in 0..6 {
            s.insert(&task(&i.to_string(), "f", 1)).unwrap();
            if i != 1 {
                s.finish(&i.to_string(), TaskState::Succeeded, None, None).unwrap();
            }
        }
        assert_eq!(s.prune(2).unwrap(), 3);
        let left: Vec<bool> = (0..6).map(|i| s.contains(&i.to_string())).collect();
        assert_eq!(left, [false, true, false, false, true, true]);
    }
}
