//! `fcsup demo`: serves the bundled examples and walks through their lifecycle
//! (`fcsup::demo`).

use anyhow::Result;

use super::supervisor::SupervisorArgs;

#[derive(clap::Args)]
pub struct Args {
    /// Stop after the walk-through instead of serving until Ctrl-C.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    pub sup: SupervisorArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let Args { no_wait, sup } = args;
    let opts = fcsup::demo::DemoOptions { listen: sup.listen.clone(), no_wait, supervisor: sup.options(), front_door: sup.front_door()? };
    Ok(fcsup::demo::run(opts, super::shutdown_signal()).await?)
}
