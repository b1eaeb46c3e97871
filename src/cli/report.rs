//! `fcsup report`: the per-function bill, from a ledger file or a running fcsup's ledger.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::admin::AdminArgs;

#[derive(clap::Args)]
pub struct Args {
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
}

pub async fn run(args: Args) -> Result<()> {
    let Args { ledger, admin, since, json } = args;
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
    // Freeze hazards live in the running fcsup only (README, Freeze hazards).
    let hazards: Option<Vec<fcsup::hazards::FunctionHazards>> = match &ledger {
        _ if json => None,
        Some(_) => None,
        None => admin.get("/admin/hazards").await.ok().and_then(|r| serde_json::from_slice(&r.body).ok()),
    };
    if json {
        // The JSON stays the bill alone; the hazards are `GET /admin/hazards`.
        println!("{}", serde_json::to_string_pretty(&bills)?);
    } else {
        print!("{}", fcsup::billing::report::table(&bills));
        if let Some(h) = &hazards {
            print!("{}", fcsup::hazards::table(h));
        }
    }
    Ok(())
}
