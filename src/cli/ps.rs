//! `fcsup ps`: the instances of a running `fcsup serve`, asked over its admin socket.

use anyhow::Result;

use super::admin::AdminArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    admin: AdminArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let r = args.admin.get("/admin/instances").await?;
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
