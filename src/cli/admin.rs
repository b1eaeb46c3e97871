//! How a client subcommand (`ps`, `report`) reaches a running fcsup's `/admin/`: its admin
//! socket, or TCP with the admin token.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper::Method;

/// How the CLI reaches a running fcsup's `/admin/`.
#[derive(clap::Args, Clone)]
pub struct AdminArgs {
    /// The running fcsup's admin socket (default: /run/fcsup/<cgroup root>/admin.sock).
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// The running fcsup's cgroup root (finds its admin socket).
    #[arg(long, default_value = "fcsup", env = "FCSUP_CGROUP_ROOT")]
    cgroup_root: String,
    /// Ask over TCP instead (host:port), with the token of the server's --admin-token-file.
    #[arg(long, requires = "admin_token_file")]
    url: Option<String>,
    /// The bearer token file for --url.
    #[arg(long)]
    pub(super) admin_token_file: Option<PathBuf>,
}

impl AdminArgs {
    /// `GET path` on the running fcsup; fails on anything but 2xx.
    pub async fn get(&self, path: &str) -> Result<fcsup::client::Response> {
        let r = match (&self.url, &self.admin_token_file) {
            (Some(url), Some(file)) => {
                let token = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
                let auth = format!("Bearer {}", token.trim_end_matches(['\n', '\r']));
                fcsup::client::request(url, Method::GET, path, &[("authorization", &auth)], Bytes::new())
                    .await
                    .with_context(|| format!("cannot reach fcsup at {url}"))?
            }
            _ => {
                let socket = self.admin_socket.clone().unwrap_or_else(|| fcsup::admin_socket::default_path(&self.cgroup_root));
                fcsup::client::request_unix(&socket, Method::GET, path, &[], Bytes::new())
                    .await
                    .with_context(|| format!("cannot reach fcsup's admin socket {} (as root? --cgroup-root/--admin-socket?)", socket.display()))?
            }
        };
        if !r.status.is_success() {
            bail!("fcsup answered HTTP {}: {}", r.status.as_u16(), String::from_utf8_lossy(&r.body));
        }
        Ok(r)
    }
}
