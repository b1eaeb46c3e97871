//! `fcsup haproxy-config`: prints an HAProxy 2.6 configuration for a list of nodes.

use anyhow::Result;
use fcsup::front::{config, Front, Node};

#[derive(clap::Args)]
pub struct Args {
    /// A node, as its `fcsup serve --node-name NAME --listen HOST:PORT`; repeat per node.
    #[arg(long = "node", value_name = "NAME=HOST:PORT", required = true)]
    nodes: Vec<Node>,
    /// Where HAProxy listens for clients (`HOST:PORT`, or `:PORT` for every address).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: String,
    /// Bounded load: no node gets more than this percentage of the average number of in-flight
    /// requests (HAProxy's hash-balance-factor; 0 for none).
    #[arg(long, default_value_t = 150)]
    hash_balance_factor: u32,
    /// Milliseconds between health checks (`GET /healthz`) of a node; a node is out after two
    /// failures, so give `fcsup serve --drain-seconds` at least twice this and a second.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    check_inter: u32,
}

pub fn run(args: &Args) -> Result<()> {
    let front = Front {
        nodes: args.nodes.clone(),
        listen: args.listen.clone(),
        hash_balance_factor: args.hash_balance_factor,
        check_inter_ms: args.check_inter,
    };
    print!("{}", config(&front)?);
    Ok(())
}
