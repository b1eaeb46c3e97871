//! The front door's limits and the optional admin token. The numbers exist so that no client,
//! local or remote, can take the supervisor down by holding connections, sending huge heads or
//! bodies, or many bodies at once; the defaults are FC's published limits where FC has one
//! (README, "Front door limits").

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// The front door's numbers (`fcsup serve` flags).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time a client has to send a whole request head (line and headers).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this long; a request body that
    /// sends nothing for this long is refused.
    pub idle_timeout: Duration,
    /// Open connections per listener; beyond it fcsup stops accepting until one closes.
    pub max_connections: usize,
    /// Request headers, counted as `name: value\r\n` (FC: 8 KB).
    pub max_header_bytes: usize,
    /// Path and query (FC: 4 KB).
    pub max_path_bytes: usize,
    /// Number of request headers.
    pub max_headers: usize,
    /// Sync invocation body (FC: 32 MB).
    pub max_sync_body: usize,
    /// Async invocation body (FC: 128 KB).
    pub max_async_body: usize,
    /// Bytes of request bodies fcsup holds at once, over all requests (Sync bodies until the
    /// request ends, Async ones until the task ends); beyond it requests get 429.
    pub body_memory: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_header_bytes: 8 * 1024,
            max_path_bytes: 4 * 1024,
            max_headers: 100,
            max_sync_body: 32 * 1024 * 1024,
            max_async_body: crate::queue::MAX_BODY,
            body_memory: 512 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// hyper's read buffer: room for a head over FC's limits (so it can be answered in FC's
    /// shape), not unbounded; a head beyond it gets hyper's 431.
    pub(super) fn read_buffer(&self) -> usize {
        ((self.max_header_bytes + self.max_path_bytes) * 2).max(16 * 1024)
    }
}

/// Why the front door cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum FrontDoorError {
    /// The token file cannot be read.
    #[error("cannot read the secret file {path}: {source}")]
    TokenIo {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Anyone on the host could read the token.
    #[error("the secret file {0} (a token or password) is world-readable; chmod o-r it")]
    TokenWorldReadable(PathBuf),
    /// Nothing in the file.
    #[error("the secret file {0} (a token or password) is empty")]
    TokenEmpty(PathBuf),
}

/// The bearer token that opens `/admin/` on the TCP listener.
pub struct AdminToken(Vec<u8>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// Reads the token from `path` (trailing newline stripped); refuses a world-readable file.
    pub fn load(path: &Path) -> Result<AdminToken, FrontDoorError> {
        Self::read_secret_bytes(path).map(AdminToken)
    }

    /// A secret in a file, as the token is read (e.g. the etcd user's password).
    pub fn read_secret(path: &Path) -> Result<String, FrontDoorError> {
        let b = Self::read_secret_bytes(path)?;
        String::from_utf8(b).map_err(|_| FrontDoorError::TokenIo { path: path.to_path_buf(), source: std::io::Error::other("not UTF-8 text") })
    }

    /// A secret file's content: the file must not be world-readable; a trailing newline is
    /// stripped, and an empty secret refused.
    fn read_secret_bytes(path: &Path) -> Result<Vec<u8>, FrontDoorError> {
        let io = |source| FrontDoorError::TokenIo { path: path.to_path_buf(), source };
        let mut file = std::fs::File::open(path).map_err(io)?;
        // The mode of the file actually opened, not of whatever the path names a moment later.
        if file.metadata().map_err(io)?.permissions().mode() & 0o004 != 0 {
            return Err(FrontDoorError::TokenWorldReadable(path.to_path_buf()));
        }
        let mut token = Vec::new();
        file.read_to_end(&mut token).map_err(io)?;
        while token.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            token.pop();
        }
        if token.is_empty() {
            return Err(FrontDoorError::TokenEmpty(path.to_path_buf()));
        }
        Ok(token)
    }

    /// Whether an `Authorization` header value carries this token (constant-time compare).
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(given) = authorization.and_then(|v| v.strip_prefix(b"Bearer ")) else { return false };
        bool::from(given.ct_eq(&self.0))
    }
}

/// What both listeners share: the limits, the token and the body budget.
#[derive(Debug)]
pub struct FrontDoor {
    /// The limits.
    pub limits: Limits,
    pub(super) admin_token: Option<AdminToken>,
    pub(super) body_budget: Arc<Semaphore>,
    /// Fronts whose `X-Forwarded-For`/`X-Forwarded-Proto` are believed (`--trusted-proxy`).
    pub(super) trusted_proxies: Vec<super::client::Cidr>,
}

impl FrontDoor {
    /// A front door with these limits; `admin_token` opens `/admin/` on TCP.
    pub fn new(limits: Limits, admin_token: Option<AdminToken>) -> Arc<FrontDoor> {
        Self::behind(limits, admin_token, Vec::new())
    }

    /// The same, behind fronts (proxies) whose client-address headers are believed.
    pub fn behind(limits: Limits, admin_token: Option<AdminToken>, trusted_proxies: Vec<super::client::Cidr>) -> Arc<FrontDoor> {
        let budget = limits.body_memory.min(Semaphore::MAX_PERMITS);
        Arc::new(FrontDoor { limits, admin_token, body_budget: Arc::new(Semaphore::new(budget)), trusted_proxies })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_rules() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "s3cret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(AdminToken::load(&p), Err(FrontDoorError::TokenWorldReadable(_))));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let t = AdminToken::load(&p).unwrap();
        assert!(t.admits(Some(b"Bearer s3cret")));
        assert!(!t.admits(Some(b"Bearer s3cret\n")));
        assert!(!t.admits(Some(b"Bearer s3cre")));
        assert!(!t.admits(Some(b"s3cret")));
        assert!(!t.admits(None));
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(AdminToken::load(&p), Err(FrontDoorError::TokenEmpty(_))));
    }
}
