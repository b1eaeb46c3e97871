//! An instance's PID 1 once it has left the supervisor's memory: forwards signals to the
//! function and reaps until it exits (see `fcsup::sandbox::instance_init`). Started only by
//! fcsup's instances, as `fcsup-init instance-init PID`; a separate small program so that
//! leaving costs each cold start as little as possible.

fn main() {
    let pid = std::env::args().nth(2).and_then(|p| p.parse().ok()).unwrap_or(0);
    fcsup::sandbox::instance_init(pid)
}
