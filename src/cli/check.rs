//! `fcsup check`: probes the host and says what will and won't work.

use anyhow::{bail, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> Result<()> {
    let findings = fcsup::check::run(std::path::Path::new("/proc/self/mountinfo"), "fcsup").await;
    if args.json {
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
