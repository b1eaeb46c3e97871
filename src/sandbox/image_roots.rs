//! Image roots made ahead: an instance of a custom container needs a fresh writable layer (a
//! tmpfs of `diskSize`) and an overlay of its image's layers idmapped onto its own host ids
//! ([`super::rootfs::detached_image_root`], 0.5 – 1.5 ms). As network namespaces are made ahead
//! ([`super::NetnsPool`]), a background thread makes the next root of each image once a start
//! has taken one, together with the id range it is idmapped to, so a start only takes it. Each
//! root is still used by one instance only (its own upper directory and ids); a root nobody
//! took goes with the pool (its fds closed: detached mounts never were in a mount table).

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, Weak};

use super::{rootfs, IdRange, IdRanges};

/// A root made ahead and the ids it is idmapped to (`None` with `--insecure-instances`).
#[derive(Debug)]
pub struct PreparedRoot {
    /// The instance's host ids; the instance must use these.
    pub ids: Option<IdRange>,
    /// The detached overlay, ready for `move_mount`.
    pub root: OwnedFd,
}

/// What a root is made of: the image's layers (bottom first) and the writable layer's size.
type Key = (Vec<PathBuf>, u64);

/// A request for a root: what of, and where its ids come from.
type Job = (Key, Option<Arc<IdRanges>>);

/// One root kept ahead per image and size.
#[derive(Debug, Default)]
pub struct ImageRoots {
    ready: Mutex<HashMap<Key, PreparedRoot>>,
    /// Asks the background thread for a root (started on first need).
    jobs: Mutex<Option<Sender<Job>>>,
}

/// The host's `/etc/hosts` and `/etc/resolv.conf`, which each instance gets a copy of.
fn etc_files() -> [(&'static str, Vec<u8>); 2] {
    [("hosts", std::fs::read("/etc/hosts").unwrap_or_default()), ("resolv.conf", std::fs::read("/etc/resolv.conf").unwrap_or_default())]
}

/// Makes a root of `layers` on `disk_mb`, idmapped onto `ids` when given.
pub fn make(layers: &[PathBuf], disk_mb: u64, ids: Option<&IdRange>) -> io::Result<OwnedFd> {
    let userns = ids.map(|ids| ids.userns().map(|fd| (fd, ids.first))).transpose()?;
    let etc = etc_files();
    let etc: Vec<(&str, &[u8])> = etc.iter().map(|(n, c)| (*n, c.as_slice())).collect();
    rootfs::detached_image_root(layers, disk_mb, userns.as_ref().map(|(fd, id)| (fd, *id)), &etc)
}

impl ImageRoots {
    /// The root made ahead for `layers` on `disk_mb`, if there is one.
    pub fn take(&self, layers: &[PathBuf], disk_mb: u64) -> Option<PreparedRoot> {
        self.ready.lock().expect("image roots").remove(&(layers.to_vec(), disk_mb))
    }

    /// Has the next root of `layers` on `disk_mb` made in the background (ids from `ids`).
    pub fn prepare(self: &Arc<Self>, layers: &[PathBuf], disk_mb: u64, ids: Option<Arc<IdRanges>>) {
        let mut jobs = self.jobs.lock().expect("image root jobs");
        if jobs.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<Job>();
            let me: Weak<ImageRoots> = Arc::downgrade(self);
            let spawned = std::thread::Builder::new().name("fcsup-imageroot".into()).spawn(move || {
                // Not real-time: this is background work.
                let _ = super::sys::sched_setscheduler(libc::SCHED_OTHER, 0);
                while let Ok((key, ids)) = rx.recv() {
                    let Some(roots) = me.upgrade() else { return };
                    if roots.ready.lock().expect("image roots").contains_key(&key) {
                        continue;
                    }
                    let t0 = std::time::Instant::now();
                    let made = ids.as_ref().map(IdRanges::take).transpose().and_then(|ids| {
                        let root = make(&key.0, key.1, ids.as_ref())?;
                        Ok(PreparedRoot { ids, root })
                    });
                    match made {
                        Ok(p) => {
                            tracing::debug!(us = t0.elapsed().as_micros(), "image root made ahead");
                            roots.ready.lock().expect("image roots").insert(key, p);
                        }
                        Err(e) => tracing::warn!("cannot make an image root ahead: {e}"),
                    }
                }
            });
            match spawned {
                Ok(_) => *jobs = Some(tx),
                Err(e) => {
                    tracing::warn!("cannot start the image root thread: {e}");
                    return;
                }
            }
        }
        if let Some(tx) = &*jobs {
            let _ = tx.send(((layers.to_vec(), disk_mb), ids));
        }
    }
}
