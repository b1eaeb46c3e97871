//! `fcsup image pull REF | ls | rm REF`: the image cache custom-container functions start from.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use fcsup::image::registry::{self, RegistryOptions};
use fcsup::image::Store;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub cache: ImageArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Pull an image from a registry (`registry/repo:tag`, `repo@sha256:…`; short names are
    /// Docker Hub's, as with `docker pull`) into the cache; cached layers are not fetched again.
    /// `oci:DIR[:TAG]` and `docker-archive:FILE[:NAME:TAG]` import a local source instead.
    Pull {
        /// The image reference.
        reference: String,
    },
    /// List the cached images: reference, manifest digest, size, last used.
    Ls,
    /// Remove an image from the cache, with the blobs and layers no other image uses.
    Rm {
        /// The image reference, as `ls` shows it or as it was pulled.
        reference: String,
    },
}

/// Where images are cached and how registries are reached; shared by every command that pulls.
#[derive(clap::Args, Clone, Debug)]
pub struct ImageArgs {
    /// The image cache (blobs by digest, unpacked layers, images by reference).
    #[arg(long, value_name = "DIR", default_value = fcsup::image::DEFAULT_DIR, env = "FCSUP_IMAGE_CACHE", global = true)]
    pub image_cache: PathBuf,
    /// Registry credentials in `~/.docker/config.json`'s format (`auths.<host>.auth`, base64
    /// `user:password`); by default that file is read.
    #[arg(long, value_name = "FILE", env = "FCSUP_REGISTRY_AUTH", global = true)]
    pub registry_auth: Option<PathBuf>,
    /// A registry reached over plain HTTP (`HOST` or `HOST:PORT`; repeatable, or
    /// comma-separated in the variable). Loopback registries always are, as with Docker.
    #[arg(long, value_name = "HOST[:PORT]", env = "FCSUP_INSECURE_REGISTRY", value_delimiter = ',', global = true)]
    pub insecure_registry: Vec<String>,
    /// Keep the cache under this size (e.g. 512M, 20G): after a pull, images other than the
    /// one pulled are removed, least recently used first, until it fits.
    #[arg(long, value_name = "SIZE", value_parser = fcsup::logs::parse_size, global = true)]
    pub image_cache_max: Option<u64>,
}

impl ImageArgs {
    pub fn registry_options(&self) -> RegistryOptions {
        RegistryOptions { auth_file: self.registry_auth.clone(), insecure: self.insecure_registry.clone() }
    }

    pub fn store(&self) -> Result<Store> {
        Store::open(&self.image_cache).with_context(|| format!("image cache {}", self.image_cache.display()))
    }
}

pub async fn run(args: Args) -> Result<()> {
    let store = args.cache.store()?;
    match args.command {
        Command::Pull { reference } => {
            let store = std::sync::Arc::new(store);
            let name = if registry::is_local(&reference) {
                // A local source: copied into the cache as a pull would be (the store verifies it).
                let (s, r) = (store.clone(), reference.clone());
                let image = tokio::task::spawn_blocking(move || fcsup::image::import(&s, &r)).await??;
                registry::mark_used(&store, &reference);
                println!("{reference} {}: imported", image.manifest_digest);
                reference
            } else {
                let pulled = registry::pull(&store, &reference, &args.cache.registry_options()).await?;
                println!(
                    "{} {}: {} of {} blobs downloaded ({})",
                    pulled.reference,
                    pulled.manifest_digest,
                    pulled.downloaded,
                    pulled.blobs,
                    human(pulled.downloaded_bytes)
                );
                pulled.reference
            };
            if let Some(max) = args.cache.image_cache_max {
                for r in registry::evict(&store, max, &[name])? {
                    println!("evicted {r}");
                }
            }
        }
        Command::Ls => {
            let images = store.list()?;
            println!("{:<50} {:<71} {:>10}  LAST USED", "REFERENCE", "DIGEST", "SIZE");
            for (reference, digest) in images {
                let size = registry::image_size(&store, &digest).map_or_else(|| "?".to_string(), human);
                let used = registry::last_used(&store, &reference).map_or_else(|| "never".to_string(), ago);
                println!("{reference:<50} {digest:<71} {size:>10}  {used}");
            }
        }
        Command::Rm { reference } => {
            let name = registry::normalize(&reference);
            // As pulled (normalized) or as given (a local source's name).
            let removed = store.remove(&name)? || (name != reference && store.remove(&reference)?);
            if !removed {
                bail!("{reference}: no such image in the cache {}", store.dir().display());
            }
            registry::forget_used(&store, &name);
            println!("removed {name}");
        }
    }
    Ok(())
}

/// Bytes in the units `docker images` uses (powers of 1000).
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    #[allow(clippy::cast_precision_loss, reason = "a size shown with one decimal")]
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// "3 minutes ago", as `docker images` shows times.
fn ago(t: SystemTime) -> String {
    let s = SystemTime::now().duration_since(t).map_or(0, |d| d.as_secs());
    match s {
        0..=59 => format!("{s} seconds ago"),
        60..=3599 => format!("{} minutes ago", s / 60),
        3600..=86_399 => format!("{} hours ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_docker_prints_them() {
        assert_eq!(human(999), "999B");
        assert_eq!(human(1500), "1.5kB");
        assert_eq!(human(72_800_000), "72.8MB");
    }
}
