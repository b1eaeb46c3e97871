//! The `fcsup` subcommands, one file each; `main.rs` parses the arguments and calls [`run`].
//! The hidden `watchdog` runs before the tokio runtime starts (and `instance-init` before the
//! arguments are even parsed, in `main.rs`): neither may carry the runtime's threads.

mod admin;
mod bench;
mod check;
mod demo;
mod functions;
mod haproxy;
mod image;
mod invoke;
mod ps;
mod report;
mod serve;
mod supervisor;
mod watchdog;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "fcsup", version, about = "Run Function Compute style functions in real cgroups and namespaces, frozen between requests")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the functions of a Serverless Devs s.yaml.
    Serve(serve::Args),
    /// Serve the bundled examples and show cold start, freeze, thaw and hooks.
    Demo(demo::Args),
    /// Invoke a function on a running `fcsup serve`.
    Invoke(invoke::Args),
    /// List the instances of a running `fcsup serve` (over its admin socket).
    Ps(ps::Args),
    /// Per-function bill from the ledger: invocations, cold starts, billed ms, CPU ms, CU, cost.
    Report(report::Args),
    /// Benchmark cold starts, freeze/thaw, warm invokes and scale against crun, runc,
    /// SIGSTOP and a plain process (release build; `cargo xtask bench` builds the fixture).
    Bench(bench::Args),
    /// Runs one container runtime's bench rows and prints them as JSON (used by `bench`).
    #[command(hide = true)]
    BenchWorker(bench::WorkerArgs),
    /// Kills a supervisor's instances once it has exited (started by the supervisor itself).
    #[command(hide = true)]
    Watchdog(watchdog::Args),
    /// Probe the host: cgroup mode, freezer, namespaces, capabilities, GPU.
    Check(check::Args),
    /// Functions in etcd for node mode (`serve --etcd`): push a file's functions.
    Functions(functions::Args),
    /// Pull, list and remove the container images custom-container functions start from.
    Image(image::Args),
    /// Print an HAProxy 2.6 configuration that fronts several `fcsup serve` nodes.
    HaproxyConfig(haproxy::Args),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    if let Command::Watchdog(args) = &cli.command {
        return watchdog::run(args);
    }
    if let Command::HaproxyConfig(args) = &cli.command {
        return haproxy::run(args);
    }
    // The bench's table is its output; the supervisor's per-instance lines would bury it.
    let default_log = if matches!(cli.command, Command::Bench(_) | Command::BenchWorker(_)) { "fcsup=warn" } else { "fcsup=info" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("FCSUP_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log)))
        .with_writer(std::io::stderr)
        .init();
    let realtime_wanted = match &cli.command {
        Command::Serve(serve::Args { sup, .. }) | Command::Demo(demo::Args { sup, .. }) => !sup.no_realtime,
        Command::Bench(_) => true,
        _ => false,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if realtime_wanted {
        realtime();
        // A new thread does not keep its creator's policy when reset-on-fork is set, so every
        // runtime thread sets it for itself.
        builder.on_thread_start(realtime);
    }
    let rt = builder.build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Invoke(args) => invoke::run(args).await,
            Command::Ps(args) => ps::run(args).await,
            Command::Report(args) => report::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::BenchWorker(args) => bench::worker(args),
            Command::Check(args) => check::run(args).await,
            Command::Image(args) => image::run(args).await,
            Command::Functions(args) => functions::run(args).await,
            Command::Watchdog(_) | Command::HaproxyConfig(_) => unreachable!("handled before the runtime starts"),
        }
    })
}

/// SCHED_FIFO with reset-on-fork for the calling thread: the supervisor's control path runs
/// before any thawed function thread; processes it starts begin at SCHED_OTHER.
fn realtime() {
    if let Err(e) = fcsup::sandbox::sys::sched_setscheduler(libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, 10) {
        tracing::warn!("cannot run at real-time priority ({}); thaw latency will suffer under load", std::io::Error::from(e));
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn subcommands_parse_their_flags() {
        let cli = Cli::try_parse_from(["fcsup", "serve", "-f", "x.yaml", "--no-realtime", "--max-body-memory", "8"]).unwrap();
        let Command::Serve(serve::Args { sup, .. }) = &cli.command else { panic!("not serve") };
        assert!(sup.no_realtime);
        assert!(Cli::try_parse_from(["fcsup", "serve", "--log-max-bytes", "1K"]).is_err(), "too small to hold 4 lines");
        assert!(Cli::try_parse_from(["fcsup", "ps", "--url", "h:1"]).is_err(), "--url needs --admin-token-file");
        assert!(matches!(Cli::try_parse_from(["fcsup", "watchdog", "/sys/fs/cgroup/fcsup"]).unwrap().command, Command::Watchdog(_)));
        assert!(Cli::try_parse_from(["fcsup", "serve", "-f", "s.yaml", "--etcd", "http://127.0.0.1:2379"]).is_err(), "a file or etcd, not both");
        assert!(Cli::try_parse_from(["fcsup", "functions", "push", "-f", "s.yaml"]).is_err(), "push needs --etcd");
    }
}
