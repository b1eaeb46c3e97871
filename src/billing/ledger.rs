//! The ledger: the last [`IN_MEMORY`] records kept in memory for the admin API, all of them
//! appended to a JSON-lines file that is never rewritten. A query that reaches past the
//! records in memory reads the file, so memory stays bounded however long fcsup runs (every
//! record in memory was ~1 KB per instance lifecycle, without end).
//!
//! Durability: each record is written with one `write(2)` as it is made, so a crash of fcsup
//! loses nothing; `fdatasync` runs at most every [`SYNC_INTERVAL`] while there are unsynced
//! records and at shutdown, so a power loss loses at most that last second of records. On
//! start the file's last records are read back (a torn last line is skipped and fenced off with a
//! newline), so `GET /admin/ledger` and `fcsup report` see earlier runs too.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::WindowRecord;

/// Longest time a written record may stay unsynced.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Records kept in memory (the file keeps all).
pub const IN_MEMORY: usize = 10_000;

/// The ledger.
#[derive(Debug)]
pub struct Ledger {
    records: Mutex<Window>,
    /// The file and its path (reopened for reading by queries past the window).
    file: Option<Arc<File>>,
    path: Option<PathBuf>,
    dirty: Arc<AtomicBool>,
    /// Serialises writers so lines never interleave.
    write: Mutex<()>,
    /// The node name written into each new record.
    node: Option<String>,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::in_memory(IN_MEMORY)
    }
}

/// The records in memory: the last `cap` made.
#[derive(Debug)]
struct Window {
    records: VecDeque<WindowRecord>,
    cap: usize,
    /// Latest `start_ms` of a record that left the window (records close out of start order),
    /// `None` while none has: a query from later on is answered from memory alone.
    evicted_start_ms: Option<u64>,
}

impl Window {
    fn push(&mut self, r: WindowRecord) {
        if self.records.len() >= self.cap {
            if let Some(old) = self.records.pop_front() {
                self.evicted_start_ms = self.evicted_start_ms.max(Some(old.start_ms));
            }
        }
        self.records.push_back(r);
    }

    /// Whether the records in memory hold every record starting at or after `since_ms`.
    fn covers(&self, since_ms: Option<u64>) -> bool {
        match (self.evicted_start_ms, since_ms) {
            (None, _) => true,
            (Some(e), Some(s)) => s > e,
            (Some(_), None) => false,
        }
    }
}

impl Ledger {
    /// A ledger appending to `path` (created if missing), with the records already in it.
    pub fn open(path: Option<PathBuf>) -> std::io::Result<Self> {
        Self::open_keeping(path, IN_MEMORY)
    }

    /// A ledger without a file, keeping the last `cap` records.
    fn in_memory(cap: usize) -> Self {
        Ledger {
            records: Mutex::new(Window { records: VecDeque::new(), cap, evicted_start_ms: None }),
            file: None,
            path: None,
            dirty: Arc::default(),
            write: Mutex::default(),
            node: None,
        }
    }

    /// [`Ledger::open`] keeping the last `cap` records in memory.
    fn open_keeping(path: Option<PathBuf>, cap: usize) -> std::io::Result<Self> {
        let Some(path) = path else { return Ok(Ledger::in_memory(cap)) };
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        // The bill says what ran and when: readable by root and the file's group only.
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            File::options().create(true).read(true).append(true).mode(0o640).custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits()).open(&path)?
        };
        let mut window = Ledger::in_memory(cap).records.into_inner().expect("ledger");
        let mut skipped = 0;
        for line in BufReader::new(&file).lines() {
            let line = line?;
            match serde_json::from_str::<WindowRecord>(&line) {
                Ok(r) => window.push(r),
                Err(_) if line.trim().is_empty() => {}
                Err(_) => skipped += 1,
            }
        }
        if skipped > 0 {
            tracing::warn!("{}: skipped {skipped} unreadable line(s)", path.display());
        }
        // A record torn by a crash must not glue itself to the next one.
        let len = file.seek(SeekFrom::End(0))?;
        if len > 0 {
            let mut last = [0u8];
            file.seek(SeekFrom::Start(len - 1))?;
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
            }
        }
        Ok(Ledger { records: Mutex::new(window), file: Some(Arc::new(file)), path: Some(path), ..Ledger::in_memory(cap) })
    }

    /// The same ledger, writing `node` into each new record (`--node-name`).
    #[must_use]
    pub fn for_node(mut self, node: &str) -> Self {
        self.node = Some(node.to_string());
        self
    }

    /// The node name written into new records, if set.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// Appends one record, giving it its identity and this ledger's node name (unless it has
    /// them already).
    pub fn record(&self, mut r: WindowRecord) {
        if r.id.is_none() {
            r.id = Some(uuid::Uuid::new_v4().simple().to_string());
        }
        if r.node.is_none() {
            r.node.clone_from(&self.node);
        }
        if let Some(f) = &self.file {
            if let Ok(mut line) = serde_json::to_vec(&r) {
                line.push(b'\n');
                let _g = self.write.lock().expect("ledger");
                if let Err(e) = (&**f).write_all(&line) {
                    tracing::error!("ledger write failed: {e}");
                }
                self.dirty.store(true, Ordering::Release);
            }
        }
        self.records.lock().expect("ledger").push(r);
    }

    /// Flushes written records to disk if any are unsynced.
    pub fn sync(&self) {
        if let Some(f) = &self.file {
            if self.dirty.swap(false, Ordering::AcqRel) {
                let _ = f.sync_data();
            }
        }
    }

    /// Syncs every [`SYNC_INTERVAL`] while records are unsynced, on a blocking thread so a
    /// slow disk never stalls the request path. Ends when the ledger is dropped.
    pub fn start_syncing(self: &Arc<Self>) {
        if self.file.is_none() {
            return;
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SYNC_INTERVAL).await;
                let Some(l) = me.upgrade() else { return };
                if l.dirty.load(Ordering::Acquire) {
                    let _ = tokio::task::spawn_blocking(move || l.sync()).await;
                }
            }
        });
    }

    /// Records matching the filters: from memory when it holds them all, else from the file
    /// (records that left memory of a ledger without a file are gone).
    pub fn query(&self, function: Option<&str>, instance: Option<&str>, since_ms: Option<u64>) -> Vec<WindowRecord> {
        let keep = |r: &WindowRecord| {
            function.is_none_or(|f| r.function == f) && instance.is_none_or(|i| r.instance == i) && since_ms.is_none_or(|s| r.start_ms >= s)
        };
        {
            let w = self.records.lock().expect("ledger");
            if w.covers(since_ms) || self.file.is_none() {
                return w.records.iter().filter(|r| keep(r)).cloned().collect();
            }
        }
        match self.read_file() {
            Ok(all) => all.into_iter().filter(|r| keep(r)).collect(),
            Err(e) => {
                tracing::error!("cannot read the ledger file: {e}; answering from the records in memory");
                self.records.lock().expect("ledger").records.iter().filter(|r| keep(r)).cloned().collect()
            }
        }
    }

    /// Every record in the file, up to the last whole one written when called.
    fn read_file(&self) -> std::io::Result<Vec<WindowRecord>> {
        let (Some(f), Some(path)) = (&self.file, &self.path) else { return Ok(Vec::new()) };
        let len = {
            let _g = self.write.lock().expect("ledger");
            f.metadata()?.len()
        };
        let mut out = Vec::new();
        for line in BufReader::new(File::open(path)?.take(len)).lines() {
            if let Ok(r) = serde_json::from_str::<WindowRecord>(&line?) {
                out.push(r);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::{MemorySource, Phase, ResourceMode, Usage};
    use crate::cgroup::CpuStat;

    fn records(n: u64) -> Vec<WindowRecord> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("code")).unwrap();
        let yaml = "resources:\n  f:\n    props: {code: ./code}\n";
        let f = crate::config::Config::parse(yaml, std::path::Path::new("s.yaml"), dir.path()).unwrap().functions.remove(0);
        let usage = Usage { wall: Duration::from_millis(1), cpu: CpuStat::default(), peak_memory_bytes: None, memory_source: MemorySource::None };
        (0..n).map(|i| WindowRecord::new(&f, &format!("i{i}"), Phase::Invoke, ResourceMode::OnDemand, false, vec![], i, usage)).collect()
    }

    #[test]
    fn memory_keeps_a_window_and_older_records_come_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let ledger = Ledger::open_keeping(Some(path.clone()), 10).unwrap();
        for r in records(25) {
            ledger.record(r);
        }
        assert_eq!(ledger.records.lock().unwrap().records.len(), 10);
        assert_eq!(ledger.query(None, None, None).len(), 25, "all of them, from the file");
        assert_eq!(ledger.query(None, Some("i3"), None).len(), 1);
        assert_eq!(ledger.query(None, None, Some(20)).len(), 5, "recent ones, from memory");
        drop(ledger);
        let reopened = Ledger::open_keeping(Some(path), 10).unwrap();
        assert_eq!(reopened.records.lock().unwrap().records.len(), 10);
        assert_eq!(reopened.query(None, None, Some(3)).len(), 22);
    }

    #[test]
    fn without_a_file_only_the_window_is_kept() {
        let ledger = Ledger::in_memory(10);
        for r in records(25) {
            ledger.record(r);
        }
        let got = ledger.query(None, None, None);
        assert_eq!((got.len(), got[0].start_ms), (10, 15));
    }

    #[test]
    fn each_record_gets_an_id_and_the_node_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let ledger = Ledger::open(Some(path.clone())).unwrap().for_node("n1");
        for r in records(2) {
            ledger.record(r);
        }
        drop(ledger);
        let got = Ledger::open(Some(path)).unwrap().query(None, None, None);
        assert!(got.iter().all(|r| r.node.as_deref() == Some("n1")), "{got:?}");
        assert!(got[0].id.as_ref().is_some_and(|i| i.len() == 32) && got[0].id != got[1].id, "{got:?}");
    }
}
