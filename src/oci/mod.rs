//! OCI runtime plumbing that GPU (and other device) instances need: CDI specs resolved into
//! container edits ([`cdi`]), OCI hooks run with runc's inputs and timing ([`hooks`]), the
//! per-instance bundle directory those hooks read ([`bundle`]), and the NVIDIA legacy
//! `nvidia-container-runtime-hook` entry ([`nvidia`]).
//!
//! Nothing here starts an instance: the sandbox calls these at the points runc would (see
//! [`hooks::HookPhase`]). System roots (CDI directories, `PATH`, the bundle directory) are
//! parameters so tests use temporary ones.

pub mod bundle;
pub mod cdi;
pub mod grant;
pub mod hooks;
pub mod instance_hooks;
pub mod nvidia;
