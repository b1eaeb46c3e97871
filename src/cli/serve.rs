//! `fcsup serve -f s.yaml`: the supervisor, until SIGTERM/SIGINT; SIGHUP re-reads the file.
//! `fcsup serve --etcd URL`: node mode, the functions from etcd ([`fcsup::etcd`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fcsup::config::Config;
use fcsup::supervisor::Supervisor;

use super::supervisor::SupervisorArgs;

#[derive(clap::Args)]
pub struct Args {
    /// The s.yaml (functions under resources.<name>.props; default s.yaml). Not with --etcd:
    /// push the file with `fcsup functions push` instead.
    #[arg(short = 'f', long = "file", conflicts_with = "endpoints")]
    file: Option<PathBuf>,
    #[command(flatten)]
    pub etcd: super::functions::EtcdArgs,
    /// Seconds to keep serving after SIGTERM/SIGINT while `/healthz` fails, so that a front
    /// (HAProxy) moves new requests away first; then in-flight requests finish and PreStop runs.
    /// A second signal ends the wait.
    #[arg(long, default_value_t = 0, value_name = "S")]
    drain_seconds: u64,
    #[command(flatten)]
    pub sup: SupervisorArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let Args { file, etcd, drain_seconds, sup } = args;
    let file = file.unwrap_or_else(|| "s.yaml".into());
    let mut booting = None;
    if !etcd.endpoints.is_empty() {
        booting = Some(fcsup::etcd::Booting::read(etcd.access()?).await.context("node mode cannot start")?);
    }
    let config = match &mut booting {
        // Node mode: a value with a relative path is refused (etcd::props::relative_path).
        Some(b) => b.config(&std::env::current_dir()?).await,
        None => Config::load(&file)?,
    };
    let front_door = sup.front_door()?;
    // Bound before the supervisor starts: a port in use must not leave a cgroup root.
    let listener = tokio::net::TcpListener::bind(&sup.listen).await.with_context(|| format!("cannot listen on {}", sup.listen))?;
    let supervisor = Supervisor::start(&config, &sup.options()).await?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let watcher = booting.map(|b| b.run(supervisor.clone(), rx.clone()));
    tracing::info!(
        "serving {} function(s) on http://{}, admin on {} (cgroup root {})",
        config.functions.len(),
        listener.local_addr()?,
        supervisor.admin_socket.display(),
        supervisor.launcher().cgroups().path().display()
    );
    let server = tokio::spawn(fcsup::api::serve(listener, supervisor.clone(), front_door.clone(), rx.clone()));
    let admin = supervisor.take_admin_listener().map(|l| tokio::spawn(fcsup::api::serve_admin(l, supervisor.clone(), front_door, rx)));
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let stop = super::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = hangup.recv() => match supervisor.node.get() {
                Some(node) => node.reread(),
                None => reload(&supervisor, &file).await,
            },
        }
    }
    supervisor.health.start_draining();
    if drain_seconds > 0 {
        tracing::info!("draining: /healthz fails, serving on for {drain_seconds} s (a second signal stops at once)");
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(drain_seconds)) => {}
            _ = super::shutdown_signal() => {}
        }
    }
    tracing::info!("shutting down: PreStop on every instance");
    let _ = tx.send(true);
    let _ = server.await;
    if let Some(w) = watcher {
        let _ = w.await;
    }
    if let Some(a) = admin {
        let _ = a.await;
    }
    supervisor.shutdown().await;
    tracing::info!("stopped; nothing left behind");
    Ok(())
}

/// SIGHUP: re-reads the file; a bad file changes nothing.
async fn reload(supervisor: &Supervisor, file: &Path) {
    match Config::load(file) {
        Ok(config) => match supervisor.reload(&config).await {
            Ok(r) => tracing::info!(
                added = ?r.added,
                replaced = ?r.replaced,
                rescaled = ?r.rescaled,
                removed = ?r.removed,
                unchanged = ?r.unchanged,
                "reloaded {}",
                file.display()
            ),
            Err(e) => tracing::error!("reload of {} failed: {e}", file.display()),
        },
        Err(e) => tracing::error!("reload refused, the running configuration stays: {e}"),
    }
}
