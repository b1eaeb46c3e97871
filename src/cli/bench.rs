//! `fcsup bench`, and the hidden `bench-worker` that runs one container runtime's rows in a
//! process of its own.

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
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
}

pub async fn run(args: Args) -> Result<()> {
    let Args { quick, json, svg, fixture, no_peers, only } = args;
    let fixture = match fixture {
        Some(f) => f,
        None => std::env::current_exe()?.with_file_name("fcsup-fixture"),
    };
    fcsup::bench::run(fcsup::bench::BenchOptions { quick, json, svg, fixture, no_peers, only }).await?;
    Ok(())
}

#[derive(clap::Args)]
pub struct WorkerArgs {
    runtime: String,
    #[arg(long)]
    fixture: PathBuf,
    #[arg(long)]
    quick: bool,
}

pub fn worker(args: WorkerArgs) -> Result<()> {
    let out = fcsup::bench::worker(&args.runtime, &args.fixture, args.quick)?;
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
