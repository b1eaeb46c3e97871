//! What can go wrong with an instance, typed; the messages are FC's where FC has one (they
//! reach users as `errorMessage`). Mapping them to FC's error types and statuses is
//! done once, elsewhere, for every caller.

use std::sync::Arc;

use super::conn::ConnError;
use super::lifecycle::Refused;
use crate::cgroup::CgroupError;
use crate::sandbox::SandboxError;

/// Why an instance could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The cgroup could not be made.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The process could not be started.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// Its devices (`fcsup.devices`, `gpuConfig`) could not be granted.
    #[error("cannot grant the function's devices: {0}")]
    Devices(#[from] crate::oci::grant::GrantError),
    /// The process exited before listening.
    #[error("Function instance exited unexpectedly(code {code}, message:{message}) with start command '{command}'")]
    Exited {
        /// Exit status.
        code: i32,
        /// strerror-like text.
        message: String,
        /// The start command.
        command: String,
    },
    /// Nothing listened in time.
    #[error("Function instance health check failed on port {port} in {secs} seconds")]
    NotListening {
        /// Port.
        port: u16,
        /// Deadline.
        secs: u64,
    },
    /// The Initializer failed.
    #[error(transparent)]
    Initializer(Arc<InitError>),
    /// A built-in runtime cannot run here (its interpreter or program is missing).
    #[error("{0}")]
    Runtime(String),
    /// The built-in runtime could not load the function (its agent posted `init/error`).
    #[error("Function failed to load: {}", describe(.0))]
    AgentInit(crate::runtime_api::AgentError),
    /// The first HTTP health check did not pass.
    #[error("Function instance health check failed on port {port}: {detail}")]
    HealthCheck {
        /// Port.
        port: u16,
        /// The last probe's failure.
        detail: ProbeError,
    },
}

/// How one HTTP health probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The configured path is not a valid request target.
    #[error("GET {path}: not a valid path")]
    Invalid {
        /// Probed path.
        path: String,
    },
    /// It answered with a status outside 200..400.
    #[error("GET {path} answered HTTP {status}")]
    Status {
        /// Probed path.
        path: String,
        /// Its status.
        status: u16,
    },
    /// No answer.
    #[error("GET {path}: {source}")]
    Conn {
        /// Probed path.
        path: String,
        /// Why.
        source: ConnError,
    },
    /// No answer in time.
    #[error("GET {path} did not answer within {secs} s")]
    Timeout {
        /// Probed path.
        path: String,
        /// The probe's timeout.
        secs: u64,
    },
}

/// A lifecycle hook's call failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// No answer within the hook's timeout.
    #[error("{hook} hook timed out after {secs} seconds")]
    Timeout {
        /// The hook's log marker (`Initialize`, `PreFreeze`, `PreStop`).
        hook: &'static str,
        /// Its timeout.
        secs: u64,
    },
    /// The call failed.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// The built-in runtime's hook raised (or returned) an error.
    #[error("{}", describe(.0))]
    Raised(crate::runtime_api::AgentError),
    /// The built-in runtime's process exited during the hook.
    #[error("the runtime exited during the hook")]
    Exited,
    /// The built-in runtime could not take the call.
    #[error(transparent)]
    Runtime(crate::runtime_api::CallError),
}

/// `errorType: errorMessage` of an agent's error (or the message alone).
fn describe(e: &crate::runtime_api::AgentError) -> String {
    match &e.error_type {
        Some(t) => format!("{t}: {}", e.error_message),
        None => e.error_message.clone(),
    }
}

/// Why the Initializer failed (README, Behaviour decisions).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// It answered with a failing status.
    #[error("Initializer failed: the instance answered POST /initialize with HTTP {0}")]
    Status(u16),
    /// It did not answer.
    #[error("Initializer failed: {0}")]
    Hook(#[from] HookError),
    /// The execute-instruction Initializer could not run, exited with a failure, or ran past
    /// its timeout (killed).
    #[error("Initializer command {command:?} failed: {why}")]
    Command {
        /// The command.
        command: String,
        /// What happened.
        why: String,
    },
}

impl InitError {
    /// A 400 or 404 (or a built-in runtime's error) keeps the instance for a retry on the next request (README, Behaviour decisions);
    /// anything else ends it.
    pub fn retryable(&self) -> bool {
        // A built-in runtime's Initializer that raised is retried too (the runtime stays up).
        matches!(self, InitError::Status(400 | 404) | InitError::Hook(HookError::Raised(_)))
    }
}

/// A failure of fcsup itself while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Internal {
    /// The cgroup could not be thawed.
    #[error("thaw failed: {0}")]
    Thaw(#[source] CgroupError),
    /// The request could not be built from the client's.
    #[error("the request could not be passed on: {0}")]
    Build(#[from] hyper::http::Error),
    /// The request could not be sent, and the instance did not die.
    #[error("request to the function failed: {0}")]
    Request(#[source] ConnError),
    /// A built-in runtime's API could not carry the call.
    #[error("the runtime API failed the call: {0}")]
    Runtime(#[source] crate::runtime_api::CallError),
    /// The task that ran the request ended abnormally.
    #[error("the request's task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Running the request panicked (a bug in fcsup).
    #[error("the request's dispatch panicked: {0}")]
    Panic(String),
}

/// No instance may start for a request (FC's 429 `ResourceExhausted`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Exhausted {
    /// The function's `maxInstances` are busy.
    #[error("Reserve resource exceeded limit: function {function} has {live} of its maxInstances {max} instances busy")]
    Function {
        /// The function.
        function: String,
        /// Its instances.
        live: usize,
        /// Its cap.
        max: usize,
    },
    /// The supervisor runs its maximum.
    #[error("Reserve resource exceeded limit: the supervisor runs its maximum of {max} instances")]
    Supervisor {
        /// The cap.
        max: usize,
    },
}

/// Why a request failed on an instance.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// Start or Initializer failed: HTTP 200 + `x-fc-error-type: InitializationError`.
    #[error(transparent)]
    Initialization(Arc<StartError>),
    /// Ran past the function's timeout.
    #[error("Function time out after {0} seconds")]
    Timeout(u64),
    /// The process died mid-request.
    #[error("Process exited unexpectedly before completing request (duration: {duration_ms}ms, maxMemoryUsage: {max_memory_mb:.2}MB)")]
    Crashed {
        /// Time from request start.
        duration_ms: u64,
        /// Peak memory.
        max_memory_mb: f64,
    },
    /// The process was killed by the kernel's OOM killer at the function's memory limit.
    #[error("Function instance ran out of memory: the kernel killed it at its memory limit of {limit_mb} MB (memorySize) before completing the request (duration: {duration_ms}ms, maxMemoryUsage: {max_memory_mb:.2}MB)")]
    OutOfMemory {
        /// The function's memorySize.
        limit_mb: u64,
        /// Time from request start.
        duration_ms: u64,
        /// Peak memory.
        max_memory_mb: f64,
    },
    /// A custom container without web server mode exited with a status other than 0.
    #[error("Process exited with status {status} (duration: {duration_ms}ms, maxMemoryUsage: {max_memory_mb:.2}MB)")]
    Failed {
        /// As a shell shows it: the exit code, or 128 + the signal.
        status: i32,
        /// Time from the instance's start.
        duration_ms: u64,
        /// Peak memory.
        max_memory_mb: f64,
    },
    /// The request cannot be carried to the function (FC's 400 `InvalidArgument`).
    #[error("{0}")]
    Unsendable(String),
    /// The function answered with a body over FC's limit.
    #[error("The function's response body is larger than {limit_mb} MB, the limit for a synchronous invocation")]
    ResponseTooLarge {
        /// The limit.
        limit_mb: usize,
    },
    /// The client closed its connection (FC's 499); the instance is replaced when it serves
    /// one request at a time and has no health check (README, Behaviour decisions).
    #[error("Invocation canceled by client")]
    Canceled,
    /// A GPU-hibernated instance could not get its GPU memory back; it is replaced.
    #[error("the instance's GPU state could not be restored ({0}); the instance is replaced, retry")]
    GpuRestore(String),
    /// The instance is gone (stopped between dispatch and send).
    #[error("the instance was stopped before the request could run; retry")]
    Gone,
    /// Too many instances.
    #[error(transparent)]
    Throttled(#[from] Exhausted),
    /// An internal failure of fcsup.
    #[error(transparent)]
    Internal(#[from] Internal),
}

impl From<StartError> for InvokeError {
    fn from(e: StartError) -> Self {
        InvokeError::Initialization(Arc::new(e))
    }
}

impl From<Refused> for InvokeError {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Gone => InvokeError::Gone,
            Refused::StartFailed(e) => InvokeError::Initialization(e),
            Refused::InitFailed(e) => StartError::Initializer(e).into(),
        }
    }
}
