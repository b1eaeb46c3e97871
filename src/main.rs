//! The `fcsup` command line: argument parsing and dispatch; each subcommand is a file in
//! `src/cli/`.

mod cli;

use clap::Parser;

/// mimalloc rather than glibc's malloc: on the proxy path every request allocates on one
/// runtime thread and frees on another, and glibc's arena locks showed as futex waits.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // An instance's init, re-executed to leave the supervisor's memory (see sandbox::child):
    // nothing else of fcsup starts.
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some(std::ffi::OsStr::new("instance-init")) {
        let pid = args.next().and_then(|p| p.to_str()?.parse().ok()).unwrap_or(0);
        fcsup::sandbox::instance_init(pid);
    }
    cli::run(cli::Cli::parse())
}
