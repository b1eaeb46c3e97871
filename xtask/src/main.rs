//! `cargo xtask ci | bench | soak | cluster | install`: project chores.

mod cluster_cli;
mod soak;

use std::process::Command;

use anyhow::{bail, Context, Result};

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "ci" => run(Command::new("bash").arg(".ci/run")),
        "bench" => {
            // fcsup in release; the native fixture static, so it also runs alone in a
            // container rootfs (cargo rustc passes the flag to that one crate only).
            run(Command::new("cargo").args(["build", "--release", "--bin", "fcsup", "--bin", "fcsup-init"]))?;
            run(Command::new("cargo").args(["rustc", "--release", "--bin", "fcsup-fixture", "--", "-C", "target-feature=+crt-static"]))?;
            let args: Vec<String> = std::env::args().skip(2).collect();
            run(Command::new("target/release/fcsup").arg("bench").args(args))
        }
        "soak" => soak::main(&std::env::args().skip(2).collect::<Vec<_>>()),
        "cluster" => cluster_cli::main(&std::env::args().skip(2).collect::<Vec<_>>()),
        "install" => {
            run(Command::new("cargo").args(["build", "--release", "--bin", "fcsup", "--bin", "fcsup-init"]))?;
            run(Command::new("install").args(["-m", "0755", "target/release/fcsup", "/usr/local/bin/fcsup"]))?;
            // The instances' small init: found next to fcsup.
            run(Command::new("install").args(["-m", "0711", "target/release/fcsup-init", "/usr/local/bin/fcsup-init"]))?;
            run(Command::new("install").args(["-m", "0644", "systemd/fcsup.service", "/etc/systemd/system/fcsup.service"]))?;
            run(Command::new("mkdir").args(["-p", "/etc/fcsup", "/var/lib/fcsup"]))?;
            println!("installed; put your s.yaml at /etc/fcsup/s.yaml, then: systemctl daemon-reload && systemctl enable --now fcsup");
            Ok(())
        }
        _ => {
            bail!("usage: cargo xtask ci | bench [--quick] [--json FILE] [--svg FILE] | soak [--lifecycles N] [--minutes M] [--json FILE] | cluster [--nodes N] [--bench] (--help) | install")
        }
    }
}
