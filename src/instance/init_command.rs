//! FC's execute-instruction Initializer (GPU functions): a command run inside the instance
//! once it listens, before it takes requests, as the function runs (its namespaces, root,
//! cgroup, user and confinement). Exit 0 is success; its output is in the instance's log; it
//! is never run again on that instance (a failure ends the instance, FC has no retry for it).

use std::os::fd::AsRawFd;

use tokio::io::unix::AsyncFd;

use super::{InitError, Instance, Kernel};
use crate::config::InitCommand;
use crate::sandbox;

impl<K: Kernel> Instance<K> {
    /// Runs `cmd` in the instance and waits for it (see the module's doc).
    pub(super) async fn run_init_command(&self, cmd: &InitCommand) -> Result<(), InitError> {
        let failed = |why: String| InitError::Command { command: cmd.argv.join(" "), why };
        self.log.note(&format!("FC Initialize Start RequestId: {}", self.id));
        let entered = self.kernel.enter(&cmd.argv).map_err(failed)?;
        self.log.attach(entered.stdout, entered.stderr);
        // SAFETY: the OwnedFd owns the pidfd for the AsyncFd's whole lifetime.
        let pidfd = unsafe { AsyncFd::register_with_interest(entered.pidfd, tokio::io::Interest::READABLE) }
            .map_err(|e| failed(format!("watch it: {}", e.into_parts().1)))?;
        let outcome = match tokio::time::timeout(cmd.timeout, exit_of(&pidfd)).await {
            Ok(Ok(0)) => Ok(()),
            Ok(Ok(status)) => Err(failed(format!("it exited with status {status}"))),
            Ok(Err(e)) => Err(failed(format!("waiting for it: {e}"))),
            Err(_) => {
                // The middle process dies, and the program with it (its parent-death signal).
                let _ = sandbox::pidfd_signal(pidfd.get_ref().as_raw_fd(), libc::SIGKILL);
                let _ = exit_of(&pidfd).await;
                Err(failed(format!("it ran past its timeout of {} s and was killed", cmd.timeout.as_secs())))
            }
        };
        self.log.drain().await;
        let end = match &outcome {
            Ok(()) => format!("FC Initialize End RequestId: {}", self.id),
            Err(e) => format!("FC Initialize End RequestId: {}, Error: {e}", self.id),
        };
        self.log.note(&end);
        outcome
    }
}

/// Waits until the process behind `pidfd` exits and reaps it: its status.
async fn exit_of(pidfd: &AsyncFd<std::os::fd::OwnedFd>) -> std::io::Result<i32> {
    loop {
        let mut ready = pidfd.readable().await?;
        match sandbox::pidfd_try_wait(pidfd.get_ref().as_raw_fd())? {
            Some(status) => return Ok(status),
            None => ready.clear_ready(),
        }
    }
}
