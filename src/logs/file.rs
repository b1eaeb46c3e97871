//! The per-function log files, `<dir>/<function>.log`, rotated by size so a function that
//! prints without pause cannot fill the disk: when a line would take the file past
//! `max_bytes`, `f.log.N-1` becomes `f.log.N` … `f.log` becomes `f.log.1` (the oldest beyond
//! `max_files` is dropped) and a new `f.log` starts.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// When to rotate and how many rotated files to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Largest size of one file (a single line longer than this still goes in whole).
    pub max_bytes: u64,
    /// Rotated files kept besides the current one (`f.log.1` … `f.log.N`).
    pub max_files: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation { max_bytes: 64 << 20, max_files: 4 }
    }
}

/// One function's log file.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    rotation: Rotation,
}

impl LogFile {
    fn open(path: PathBuf, rotation: Rotation) -> std::io::Result<Self> {
        let file = private(File::options().create(true).append(true)).open(&path)?;
        // A file left by an older fcsup may still be world-readable.
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o640))?;
        }
        let size = file.metadata()?.len();
        Ok(LogFile { path, file: Some(file), size, rotation })
    }

    /// Appends one line (`line` without its newline) with one `write(2)`.
    pub fn write_line(&mut self, line: &str) {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.rotation.max_bytes {
            if let Err(e) = self.rotate() {
                tracing::warn!("cannot rotate {}: {e}", self.path.display());
            }
        }
        let Some(f) = &mut self.file else { return };
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        if f.write_all(&buf).is_ok() {
            self.size += len;
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let numbered = |n: u32| -> PathBuf {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            p.into()
        };
        let keep = self.rotation.max_files;
        if keep == 0 {
            remove_if_there(&self.path)?;
        } else {
            remove_if_there(&numbered(keep))?;
            for n in (1..keep).rev() {
                rename_if_there(&numbered(n), &numbered(n + 1))?;
            }
            rename_if_there(&self.path, &numbered(1))?;
        }
        // Whatever went wrong above, output goes on into a fresh file (never past its size).
        self.file = Some(private(File::options().create(true).write(true).truncate(true)).open(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

fn remove_if_there(p: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_there(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The per-function log files, opened once and shared by a function's instances.
#[derive(Debug, Default)]
pub struct LogFiles {
    dir: Option<PathBuf>,
    rotation: Rotation,
    open: Mutex<HashMap<String, Arc<Mutex<LogFile>>>>,
}

impl LogFiles {
    /// Log files under `dir` (created if missing); `None` keeps logs in memory only.
    pub fn new(dir: Option<PathBuf>, rotation: Rotation) -> std::io::Result<Self> {
        if let Some(d) = &dir {
            std::fs::DirBuilder::new().recursive(true).mode(0o750).create(d)?;
        }
        Ok(LogFiles { dir, rotation, open: Mutex::default() })
    }

    /// The file of `function`.
    pub fn for_function(&self, function: &str) -> Option<Arc<Mutex<LogFile>>> {
        let dir = self.dir.as_ref()?;
        let mut open = self.open.lock().expect("log files");
        if let Some(f) = open.get(function) {
            return Some(f.clone());
        }
        let path = dir.join(format!("{function}.log"));
        match LogFile::open(path.clone(), self.rotation) {
            Ok(f) => {
                let f = Arc::new(Mutex::new(f));
                open.insert(function.to_string(), f.clone());
                Some(f)
            }
            Err(e) => {
                tracing::warn!("cannot open {}: {e}; {function}'s output is kept in memory only", path.display());
                None
            }
        }
    }
}

/// Parses a size such as `65536`, `64K`, `64M` or `1G` (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 10),
        Some((i, 'm' | 'M')) => (&s[..i], 20),
        Some((i, 'g' | 'G')) => (&s[..i], 30),
        _ => (s, 0),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("'{s}' is not a size (e.g. 65536, 64K, 64M, 1G)"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("'{s}' is too large"))
}

/// Functions' output is theirs: log files are created 0640 (root and the log group), and a
/// symlink planted where a log file goes is not followed.
fn private(o: &mut std::fs::OpenOptions) -> &mut std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    o.mode(0o640).custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_newest_files_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let rotation = Rotation { max_bytes: 100, max_files: 2 };
        let files = LogFiles::new(Some(dir.path().into()), rotation).unwrap();
        let f = files.for_function("f").unwrap();
        for i in 0..100 {
            f.lock().unwrap().write_line(&format!("line {i:04} {}", "x".repeat(20)));
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["f.log", "f.log.1", "f.log.2"]);
        let total: u64 = names.iter().map(|n| std::fs::metadata(dir.path().join(n)).unwrap().len()).sum();
        assert!(total <= 3 * 100, "{total}");
        assert!(std::fs::read_to_string(dir.path().join("f.log")).unwrap().contains("line 0099"));
        assert!(std::fs::read_to_string(dir.path().join("f.log.2")).unwrap().starts_with("line 00"));
    }

    #[test]
    fn an_existing_file_counts_toward_the_size() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.log"), "x".repeat(90)).unwrap();
        let files = LogFiles::new(Some(dir.path().into()), Rotation { max_bytes: 100, max_files: 0 }).unwrap();
        files.for_function("f").unwrap().lock().unwrap().write_line(&"y".repeat(20));
        assert_eq!(std::fs::read_to_string(dir.path().join("f.log")).unwrap(), format!("{}\n", "y".repeat(20)));
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("100"), Ok(100));
        parse_size("lots").unwrap_err();
    }
}
