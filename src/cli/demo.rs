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
    let mut supervisor = sup.options();
    // A demo keeps its Async tasks in memory unless told where to keep them.
    if !sup.queue_db_given() {
        supervisor.queue_db = None;
    }
    let opts = fcsup::demo::DemoOptions { listen: sup.listen.clone(), no_wait, supervisor, front_door: sup.front_door()? };
    Ok(fcsup::demo::run(opts, super::shutdown_signal()).await?)
}
