//! The ledger: records kept in memory for the admin API and metrics, and appended to a
//! JSON-lines file that is never rewritten.
//!
//! Durability: each record is written with one `write(2)` as it is made, so a crash of fcsup
//! loses nothing; `fdatasync` runs at most every [`SYNC_INTERVAL`] while there are unsynced
//! records and at shutdown, so a power loss loses at most that last second of records. On
//! start the file's records are read back (a torn last line is skipped and fenced off with a
//! newline), so `GET /admin/ledger` and `fcsup report` see earlier runs too.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::WindowRecord;

/// Longest time a written record may stay unsynced.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Records kept in memory (the file keeps all).
const IN_MEMORY: usize = 100_000;

/// The ledger.
#[derive(Debug, Default)]
pub struct Ledger {
    records: Mutex<VecDeque<WindowRecord>>,
    file: Option<Arc<File>>,
    dirty: Arc<AtomicBool>,
    /// Serialises writers so lines never interleave.
    write: Mutex<()>,
}

impl Ledger {
    /// A ledger appending to `path` (created if missing), with the records already in it.
    pub fn open(path: Option<PathBuf>) -> std::io::Result<Self> {
        let Some(path) = path else { return Ok(Ledger::default()) };
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let mut file = File::options().create(true).read(true).append(true).open(&path)?;
        let mut records = VecDeque::new();
        let mut skipped = 0;
        for line in BufReader::new(&file).lines() {
            let line = line?;
            match serde_json::from_str::<WindowRecord>(&line) {
                Ok(r) => {
                    if records.len() == IN_MEMORY {
                        records.pop_front();
                    }
                    records.push_back(r)
                }
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
        Ok(Ledger { records: Mutex::new(records), file: Some(Arc::new(file)), ..Ledger::default() })
    }

    /// Appends one record.
    pub fn record(&self, r: WindowRecord) {
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
        let mut recs = self.records.lock().expect("ledger");
        if recs.len() == IN_MEMORY {
            recs.pop_front();
        }
        recs.push_back(r);
    }

    /// Flushes written records to disk if any are unsynced.
    pub fn sync(&self) {
        if let Some(f) = &self.file {
            if self.dirty.swap(false, Ordering::AcqRel) {
                // SAFETY: fdatasync on a file we own.
                unsafe { libc::fdatasync(f.as_raw_fd()) };
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

    /// Records matching the filters.
    pub fn query(&self, function: Option<&str>, instance: Option<&str>, since_ms: Option<u64>) -> Vec<WindowRecord> {
        self.records
            .lock()
            .expect("ledger")
            .iter()
            .filter(|r| function.is_none_or(|f| r.function == f))
            .filter(|r| instance.is_none_or(|i| r.instance == i))
            .filter(|r| since_ms.is_none_or(|s| r.start_ms >= s))
            .cloned()
            .collect()
    }
}
