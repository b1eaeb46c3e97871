//! The `fcsup` command line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use fcsup::api::{AdminToken, FrontDoor, Limits};
use fcsup::config::Config;
use fcsup::supervisor::{Options, Supervisor};
use hyper::Method;

#[derive(Parser)]
#[command(name = "fcsup", version, about = "Run Function Compute style functions in real cgroups and namespaces, frozen between requests")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct SupervisorArgs {
    /// Address of the front door.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: String,
    /// Name of fcsup's cgroup under the cgroup2 mount (instances are created beneath it).
    #[arg(long, default_value = "fcsup", env = "FCSUP_CGROUP_ROOT")]
    cgroup_root: String,
    /// Append the billing ledger (JSON lines) to this file.
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// Do not print the functions' output.
    #[arg(long)]
    quiet_functions: bool,
    /// Write each function's output and hook markers to DIR/<function>.log.
    #[arg(long, default_value = "/var/log/fcsup")]
    log_dir: PathBuf,
    /// Rotate a function's log file when it would pass this size (e.g. 65536, 64K, 64M, 1G).
    #[arg(long, default_value = "64M", value_parser = log_max_bytes)]
    log_max_bytes: u64,
    /// Rotated log files kept per function besides the current one (f.log.1 … f.log.N).
    #[arg(long, default_value_t = 4)]
    log_max_files: u32,
    /// Most lines of one function's output printed per second in fcsup's output (the rest are
    /// counted; the log file gets every line).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    print_rate: u32,
    /// Keep the supervisor at normal priority (by default its threads run SCHED_FIFO so a
    /// thawed, busy instance cannot delay the next thaw or freeze).
    #[arg(long)]
    no_realtime: bool,
    /// Run functions as host root, without a user namespace or seccomp filter (only for hosts
    /// that lack them; `fcsup check` tells).
    #[arg(long)]
    insecure_instances: bool,
    /// First host uid/gid of the instances' id ranges (65536 ids each; 0 inside each instance
    /// is an unprivileged id here).
    #[arg(long, default_value_t = fcsup::sandbox::DEFAULT_ID_BASE)]
    id_base: u32,
    /// The admin socket, where /admin/ is served (default: /run/fcsup/<cgroup root>/admin.sock).
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// Also serve /admin/ on --listen to requests with `Authorization: Bearer <token>`, the
    /// token being this file's content (trailing newline stripped; must not be world-readable).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    #[command(flatten)]
    limits: LimitArgs,
}

/// The front door's limits (README: "Front door limits").
#[derive(clap::Args, Clone)]
struct LimitArgs {
    /// Seconds a client has to send a request's line and headers.
    #[arg(long, default_value_t = 10)]
    header_read_timeout: u64,
    /// Seconds after which a connection with no request in flight is closed (and a request
    /// body that sends nothing is refused).
    #[arg(long, default_value_t = 60)]
    idle_timeout: u64,
    /// Open connections per listener; beyond it new ones wait in the kernel's backlog.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Request header bytes (FC: 8 KB); beyond it 400 InvalidArgument.
    #[arg(long, default_value_t = 8192)]
    max_header_bytes: usize,
    /// Path and query bytes (FC: 4 KB); beyond it 400 InvalidArgument.
    #[arg(long, default_value_t = 4096)]
    max_path_bytes: usize,
    /// Number of request headers; beyond it hyper answers 431.
    #[arg(long, default_value_t = 100)]
    max_headers: usize,
    /// Sync invocation body bytes (FC: 32 MB); beyond it 400 InvalidArgument.
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    max_sync_body: usize,
    /// Async invocation body bytes (FC: 128 KB); beyond it 400 InvalidArgument.
    #[arg(long, default_value_t = 128 * 1024)]
    max_async_body: usize,
    /// MiB of request bodies held at once over all requests; beyond it 429 ResourceExhausted.
    #[arg(long, default_value_t = 512)]
    max_body_memory: usize,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(self.header_read_timeout),
            idle_timeout: Duration::from_secs(self.idle_timeout),
            max_connections: fit_connections(self.max_connections),
            max_header_bytes: self.max_header_bytes,
            max_path_bytes: self.max_path_bytes,
            max_headers: self.max_headers,
            max_sync_body: self.max_sync_body,
            max_async_body: self.max_async_body,
            body_memory: self.max_body_memory.saturating_mul(1024 * 1024),
        }
    }
}

/// Raises the open-file limit to its hard limit and keeps the connection cap below it, so
/// connections can never use the descriptors instances need (pipes, pidfds, cgroup files).
fn fit_connections(wanted: usize) -> usize {
    const RESERVED: u64 = 1024;
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return wanted;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    let room = lim.rlim_cur.saturating_sub(RESERVED).max(64) as usize;
    if wanted > room {
        tracing::warn!("--max-connections {wanted} lowered to {room}: the open-file limit is {}", lim.rlim_cur);
        return room;
    }
    wanted
}

impl SupervisorArgs {
    fn options(&self) -> Options {
        Options {
            cgroup_root: self.cgroup_root.clone(),
            ledger: self.ledger.clone(),
            echo_logs: !self.quiet_functions,
            log_dir: Some(self.log_dir.clone()),
            insecure_instances: self.insecure_instances,
            id_base: self.id_base,
            admin_socket: self.admin_socket.clone(),
            log_rotation: fcsup::logs::Rotation { max_bytes: self.log_max_bytes, max_files: self.log_max_files },
            print_rate: self.print_rate,
            ..Options::default()
        }
    }

    /// The front door's settings; fails on a bad token file.
    fn front_door(&self) -> Result<Arc<FrontDoor>> {
        let token = self.admin_token_file.as_deref().map(AdminToken::load).transpose()?;
        Ok(FrontDoor::new(self.limits.limits(), token))
    }
}

/// How the CLI reaches a running fcsup's `/admin/`.
#[derive(clap::Args, Clone)]
struct AdminArgs {
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
    admin_token_file: Option<PathBuf>,
}

impl AdminArgs {
    /// `GET path` on the running fcsup; fails on anything but 2xx.
    async fn get(&self, path: &str) -> Result<fcsup::client::Response> {
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

/// `--log-max-bytes`: a size that holds at least a few whole lines.
fn log_max_bytes(s: &str) -> Result<u64, String> {
    let n = fcsup::logs::parse_size(s)?;
    let min = 4 * fcsup::logs::MAX_LINE as u64;
    if n < min {
        return Err(format!("at least {min} bytes (4 lines of the longest kind)"));
    }
    Ok(n)
}

#[derive(Subcommand)]
enum Command {
    /// Serve the functions of a Serverless Devs s.yaml.
    Serve {
        /// The s.yaml (functions under resources.<name>.props).
        #[arg(short = 'f', long = "file", default_value = "s.yaml")]
        file: PathBuf,
        #[command(flatten)]
        sup: SupervisorArgs,
    },
    /// Serve the bundled examples and show cold start, freeze, thaw and hooks.
    Demo {
        /// Stop after the walk-through instead of serving until Ctrl-C.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        sup: SupervisorArgs,
    },
    /// Invoke a function on a running `fcsup serve`.
    Invoke {
        /// Function name.
        name: String,
        /// Payload: text, @file, or - for standard input.
        #[arg(short, long, default_value = "")]
        data: String,
        /// Print the request's log (x-fc-log-type: Tail).
        #[arg(long)]
        tail: bool,
        /// Address of the running fcsup.
        #[arg(long, default_value = "127.0.0.1:9100")]
        url: String,
    },
    /// List the instances of a running `fcsup serve` (over its admin socket).
    Ps {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Per-function bill from the ledger: invocations, cold starts, billed ms, CPU ms, CU, cost.
    Report {
        /// Read this ledger file (JSON lines) instead of asking a running fcsup.
        #[arg(long)]
        ledger: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
        /// Only records starting at or after this time (ms since the epoch).
        #[arg(long)]
        since: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Benchmark cold starts, freeze/thaw, warm invokes and scale against crun, runc,
    /// SIGSTOP and a plain process (release build; `cargo xtask bench` builds the fixture).
    Bench {
        /// Fewer samples: every row in about a minute.
        #[arg(long)]
        quick: bool,
        /// Write every row's summary and the host facts as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write charts (cold-start phases, freeze/thaw distributions) as SVG.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// The native fixture binary (default: fcsup-fixture next to this executable).
        #[arg(long)]
        fixture: Option<PathBuf>,
        /// Measure fcsup and the plain process only.
        #[arg(long)]
        no_peers: bool,
        /// Only these groups: cold, freeze, warm, scale (comma-separated).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Runs one container runtime's bench rows and prints them as JSON (used by `bench`).
    #[command(hide = true)]
    BenchWorker {
        runtime: String,
        #[arg(long)]
        fixture: PathBuf,
        #[arg(long)]
        quick: bool,
    },
    /// Kills a supervisor's instances once it has exited (started by the supervisor itself).
    #[command(hide = true)]
    Watchdog {
        /// The supervisor's cgroup2 root.
        root: PathBuf,
    },
    /// Probe the host: cgroup mode, freezer, namespaces, capabilities, GPU.
    Check {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> Result<()> {
    // An instance's init, re-executed to leave the supervisor's memory (see sandbox::child):
    // nothing else of fcsup starts.
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some(std::ffi::OsStr::new("instance-init")) {
        let pid = args.next().and_then(|p| p.to_str()?.parse().ok()).unwrap_or(0);
        fcsup::sandbox::instance_init(pid);
    }
    let cli = Cli::parse();
    if let Command::Watchdog { root } = &cli.command {
        return Ok(fcsup::watchdog::run(root)?);
    }
    // The bench's table is its output; the supervisor's per-instance lines would bury it.
    let default_log = if matches!(cli.command, Command::Bench { .. } | Command::BenchWorker { .. }) { "fcsup=warn" } else { "fcsup=info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FCSUP_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log)),
        )
        .with_writer(std::io::stderr)
        .init();
    let realtime_wanted = match &cli.command {
        Command::Serve { sup, .. } | Command::Demo { sup, .. } => !sup.no_realtime,
        Command::Bench { .. } => true,
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
    rt.block_on(run(cli))
}

/// SCHED_FIFO with reset-on-fork for the calling thread: the supervisor's control path runs
/// before any thawed function thread; processes it starts begin at SCHED_OTHER.
fn realtime() {
    let p = libc::sched_param { sched_priority: 10 };
    // SAFETY: sched_setscheduler on the calling thread with a valid param.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &p) };
    if r != 0 {
        tracing::warn!("cannot run at real-time priority ({}); thaw latency will suffer under load", std::io::Error::last_os_error());
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// SIGHUP: re-reads the file; a bad file changes nothing.
async fn reload(supervisor: &Supervisor, file: &std::path::Path) {
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

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve { file, sup } => {
            let config = Config::load(&file)?;
            let front_door = sup.front_door()?;
            // Bound before the supervisor starts: a port in use must not leave a cgroup root.
            let listener = tokio::net::TcpListener::bind(&sup.listen).await.with_context(|| format!("cannot listen on {}", sup.listen))?;
            let supervisor = Supervisor::start(&config, &sup.options()).await?;
            tracing::info!(
                "serving {} function(s) on http://{}, admin on {} (cgroup root {})",
                config.functions.len(),
                listener.local_addr()?,
                supervisor.admin_socket.display(),
                supervisor.launcher().cgroups().path().display()
            );
            let (tx, rx) = tokio::sync::watch::channel(false);
            let server = tokio::spawn(fcsup::api::serve(listener, supervisor.clone(), front_door.clone(), rx.clone()));
            let admin = supervisor.take_admin_listener().map(|l| tokio::spawn(fcsup::api::serve_admin(l, supervisor.clone(), front_door, rx)));
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
            let stop = shutdown_signal();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = hangup.recv() => reload(&supervisor, &file).await,
                }
            }
            tracing::info!("shutting down: PreStop on every instance");
            let _ = tx.send(true);
            let _ = server.await;
            if let Some(a) = admin {
                let _ = a.await;
            }
            supervisor.shutdown().await;
            tracing::info!("stopped; nothing left behind");
            Ok(())
        }
        Command::Demo { no_wait, sup } => {
            let opts = fcsup::demo::DemoOptions { listen: sup.listen.clone(), no_wait, supervisor: sup.options(), front_door: sup.front_door()? };
            Ok(fcsup::demo::run(opts, shutdown_signal()).await?)
        }
        Command::Invoke { name, data, tail, url } => {
            let body = match data.as_str() {
                "-" => {
                    let mut v = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)?;
                    v
                }
                d if d.starts_with('@') => std::fs::read(&d[1..]).with_context(|| format!("cannot read {}", &d[1..]))?,
                d => d.as_bytes().to_vec(),
            };
            let headers: &[(&str, &str)] = if tail { &[("x-fc-log-type", "Tail")] } else { &[] };
            let path = format!("/2023-03-30/functions/{name}/invocations");
            let r = fcsup::client::request(&url, Method::POST, &path, headers, Bytes::from(body))
                .await
                .with_context(|| format!("cannot reach fcsup at {url}"))?;
            if tail {
                use base64::Engine;
                let log = base64::engine::general_purpose::STANDARD.decode(r.header("x-fc-log-result")).unwrap_or_default();
                eprint!("{}", String::from_utf8_lossy(&log));
            }
            println!("{}", String::from_utf8_lossy(&r.body));
            if !r.header("x-fc-error-type").is_empty() || !r.status.is_success() {
                bail!("invocation failed: HTTP {} {}", r.status.as_u16(), r.header("x-fc-error-type"));
            }
            Ok(())
        }
        Command::Ps { admin } => {
            let r = admin.get("/admin/instances").await?;
            let list: Vec<serde_json::Value> = serde_json::from_slice(&r.body)?;
            println!("{:<34} {:<16} {:<20} {:>8} {:>9} {:>12}  LAST USED", "INSTANCE", "FUNCTION", "STATE", "PID", "IN-FLIGHT", "COLD START");
            for i in list {
                let mut state = i["state"].as_str().unwrap_or("").to_string();
                if i["healthy"] == false {
                    state.push_str(",unhealthy");
                }
                if i["provisioned"] == true {
                    state.push_str(",min");
                }
                println!(
                    "{:<34} {:<16} {:<20} {:>8} {:>9} {:>10.1}ms  {}",
                    i["id"].as_str().unwrap_or(""),
                    i["function"].as_str().unwrap_or(""),
                    state,
                    i["pid"],
                    i["in_flight"],
                    i["cold_start_ms"].as_f64().unwrap_or(0.0),
                    i["last_used"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        Command::Report { ledger, admin, since, json } => {
            let text = match &ledger {
                Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
                None => {
                    let r = admin.get("/admin/ledger").await.context("(or pass --ledger FILE)")?;
                    String::from_utf8_lossy(&r.body).into_owned()
                }
            };
            let records: Vec<fcsup::billing::WindowRecord> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .filter(|r: &fcsup::billing::WindowRecord| since.is_none_or(|s| r.start_ms >= s))
                .collect();
            let bills = fcsup::billing::report::summarize(&records);
            if json {
                println!("{}", serde_json::to_string_pretty(&bills)?);
            } else {
                print!("{}", fcsup::billing::report::table(&bills));
            }
            Ok(())
        }
        Command::Bench { quick, json, svg, fixture, no_peers, only } => {
            let fixture = match fixture {
                Some(f) => f,
                None => std::env::current_exe()?.with_file_name("fcsup-fixture"),
            };
            fcsup::bench::run(fcsup::bench::BenchOptions { quick, json, svg, fixture, no_peers, only }).await?;
            Ok(())
        }
        Command::BenchWorker { runtime, fixture, quick } => {
            let out = fcsup::bench::worker(&runtime, &fixture, quick)?;
            println!("{}", serde_json::to_string(&out)?);
            Ok(())
        }
        Command::Watchdog { .. } => unreachable!("handled before the runtime starts"),
        Command::Check { json } => {
            let findings = fcsup::check::run(std::path::Path::new("/proc/self/mountinfo"), "fcsup").await;
            if json {
                println!("{}", serde_json::to_string_pretty(&findings)?);
            } else {
                for f in &findings {
                    println!("{:<5} {:<22} {}", f.level, f.item, f.detail);
                }
            }
            if findings.iter().any(|f| f.level == "fail") {
                bail!("this host cannot run fcsup as it is (see the 'fail' lines)");
            }
            Ok(())
        }
    }
}
