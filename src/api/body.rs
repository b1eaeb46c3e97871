//! Reading an invocation's body without trusting the client: the size is checked against
//! `Content-Length` before a byte is read and again as each chunk arrives (a chunked body
//! cannot grow past FC's limit in memory), and every byte first takes its place in the front
//! door's global body budget, so many large bodies at once get 429 instead of exhausting
//! fcsup's memory. The body is kept whole (not streamed to the instance) because a request
//! may be sent again: after a failed Initializer, or as an Async retry.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use tokio::sync::OwnedSemaphorePermit;

use super::FrontDoor;

/// Why a body was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    /// Over the limit for this kind of invocation.
    #[error("request body is larger than {limit} bytes, the limit for {kind} invocations")]
    TooLarge {
        /// The limit.
        limit: usize,
        /// Sync or Async.
        kind: &'static str,
    },
    /// The global budget is used up by other requests' bodies.
    #[error("fcsup holds {0} bytes of request bodies already (--max-body-memory); retry later")]
    Busy(usize),
    /// The client stopped sending.
    #[error("the request body sent nothing for {0:?}")]
    Stalled(Duration),
    /// The connection failed.
    #[error("cannot read the request body: {0}")]
    Read(#[from] hyper::Error),
}

/// Reads the whole body, at most `limit` bytes; the permit holds its bytes in the budget.
pub(super) async fn read(
    mut body: Incoming,
    limit: usize,
    kind: &'static str,
    fd: &FrontDoor,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), BodyError> {
    let too_large = || BodyError::TooLarge { limit, kind };
    let declared = body.size_hint().exact();
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut reserved = 0usize;
    let declared = usize::try_from(declared.unwrap_or(0)).unwrap_or(usize::MAX);
    if declared > 0 {
        reserve(fd, &mut held, &mut reserved, declared)?;
    }
    let mut buf = BytesMut::with_capacity(declared);
    let stall = fd.limits.idle_timeout;
    loop {
        let frame = match tokio::time::timeout(stall, body.frame()).await {
            Err(_) => return Err(BodyError::Stalled(stall)),
            Ok(None) => break,
            Ok(Some(f)) => f?,
        };
        let Ok(data) = frame.into_data() else { continue };
        let len = buf.len() + data.len();
        if len > limit {
            return Err(too_large());
        }
        if len > reserved {
            let more = len - reserved;
            reserve(fd, &mut held, &mut reserved, more)?;
        }
        buf.extend_from_slice(&data);
    }
    Ok((buf.freeze(), held))
}

/// Takes `n` more bytes from the budget into `held`.
fn reserve(fd: &FrontDoor, held: &mut Option<OwnedSemaphorePermit>, reserved: &mut usize, n: usize) -> Result<(), BodyError> {
    let busy = || BodyError::Busy(fd.limits.body_memory);
    let n32 = u32::try_from(n).map_err(|_| busy())?;
    let p = fd.body_budget.clone().try_acquire_many_owned(n32).map_err(|_| busy())?;
    match held {
        Some(h) => h.merge(p),
        None => *held = Some(p),
    }
    *reserved += n;
    Ok(())
}
