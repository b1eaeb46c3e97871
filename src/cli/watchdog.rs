//! `fcsup watchdog ROOT` (hidden): started by the supervisor; kills its instances once it has
//! exited. Runs before the tokio runtime starts.

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// The supervisor's cgroup2 root.
    root: PathBuf,
}

pub fn run(args: &Args) -> Result<()> {
    Ok(fcsup::watchdog::run(&args.root)?)
}
