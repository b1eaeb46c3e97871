//! The accept loop both listeners share, built so that clients holding connections cannot
//! take fcsup down: a cap on open connections (at the cap fcsup stops accepting, so the
//! kernel's backlog holds newcomers instead of fcsup spinning), accept errors such as EMFILE
//! backed off exponentially and logged once per burst, and per connection hyper's header-read
//! timeout plus an idle timeout that closes a connection with no request in flight.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::{Door, FrontDoor};
use crate::supervisor::Supervisor;

/// How long a connection that is closing may take to write out what is left of its answers
/// once none is in flight (a client that does not read must not hold it open).
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Closes a connection at once when notified: the function's timeout cut its streamed answer.
#[derive(Debug, Clone)]
pub struct CloseConnection(pub Arc<tokio::sync::Notify>);

/// First pause after a failed accept; doubled per further failure up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A listening socket.
pub(super) trait Acceptor: Send + Sync + 'static {
    /// A connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Accepts one connection, with the peer's address where it has one.
    fn accept_one(&self) -> impl Future<Output = std::io::Result<(Self::Io, Option<IpAddr>)>> + Send;
}

impl Acceptor for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_one(&self) -> std::io::Result<(Self::Io, Option<IpAddr>)> {
        let (s, peer) = self.accept().await?;
        let _ = s.set_nodelay(true);
        Ok((s, Some(peer.ip().to_canonical())))
    }
}

impl Acceptor for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_one(&self) -> std::io::Result<(Self::Io, Option<IpAddr>)> {
        Ok((self.accept().await?.0, None))
    }
}

/// Accept failures in a row: the first is logged, the recovery too, nothing in between.
#[derive(Default)]
struct Backoff {
    failures: u64,
    delay: Duration,
}

impl Backoff {
    fn failed(&mut self, door: Door, e: &std::io::Error) -> Duration {
        if self.failures == 0 {
            tracing::warn!("{door}: accept failed ({e}); backing off (up to {BACKOFF_MAX:?}) until it works again");
        }
        self.failures += 1;
        self.delay = if self.failures == 1 { BACKOFF_MIN } else { (self.delay * 2).min(BACKOFF_MAX) };
        self.delay
    }

    fn succeeded(&mut self, door: Door) {
        if self.failures > 0 {
            tracing::info!("{door}: accepting again after {} failed accept(s)", self.failures);
            *self = Backoff::default();
        }
    }
}

/// Serves `listener` until `stop` flips to true (or its sender goes away).
pub(super) async fn run<A: Acceptor>(listener: A, sup: Arc<Supervisor>, fd: Arc<FrontDoor>, door: Door, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(fd.limits.max_connections.max(1)));
    let mut backoff = Backoff::default();
    let mut cap_logged: Option<Instant> = None;
    // Warns once when the name cannot be a header value.
    let _ = super::health::node_header(&sup.node_name);
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => {
                // Logged at most once a minute: a client keeping fcsup at the cap must not
                // also fill its log.
                if cap_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    cap_logged = Some(Instant::now());
                    tracing::warn!("{door}: {} connections open (--max-connections); new ones wait until one closes", fd.limits.max_connections);
                }
                tokio::select! {
                    s = slots.clone().acquire_owned() => s.expect("never closed"),
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        };
        let accepted = tokio::select! {
            r = listener.accept_one() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (io, peer) = match accepted {
            Ok(accepted) => {
                backoff.succeeded(door);
                accepted
            }
            Err(e) => {
                // EMFILE and the like leave the connection in the backlog: retrying at once
                // would spin.
                let pause = backoff.failed(door, &e);
                drop(slot);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => continue,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        };
        tokio::spawn(connection(io, peer, slot, sup.clone(), fd.clone(), door, stop.clone()));
    }
}

/// When a connection last had no request in flight, and how many it has.
struct Activity {
    served: AtomicBool,
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

/// Marks one request in flight until dropped (also when the client hangs up mid-request); a
/// streamed answer keeps it until its end.
pub(super) struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: &Arc<Activity>) -> InFlight {
        a.served.store(true, Ordering::SeqCst);
        a.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.idle_since.lock().expect("activity") = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Resolves once the connection has had no request in flight for `idle`, or for `first` when
/// it has not sent a request yet (hyper's header-read timer starts only with the first byte, so
/// a silent connection is bounded here).
async fn idle_for(a: &Activity, idle: Duration, first: Duration) {
    loop {
        let idle = if a.served.load(Ordering::SeqCst) { idle } else { idle.min(first) };
        let wait = if a.in_flight.load(Ordering::SeqCst) > 0 {
            idle
        } else {
            let since = a.idle_since.lock().expect("activity").elapsed();
            match idle.checked_sub(since) {
                Some(left) if !left.is_zero() => left,
                _ => return,
            }
        };
        tokio::time::sleep(wait).await;
    }
}

async fn connection<Io>(
    io: Io,
    peer: Option<IpAddr>,
    _slot: OwnedSemaphorePermit,
    sup: Arc<Supervisor>,
    fd: Arc<FrontDoor>,
    door: Door,
    mut stop: watch::Receiver<bool>,
) where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity { served: AtomicBool::new(false), in_flight: AtomicUsize::new(0), idle_since: Mutex::new(Instant::now()) });
    let close = Arc::new(tokio::sync::Notify::new());
    // Built once per connection, cloned (a reference count) per response.
    let node = HeaderValue::from_str(&sup.node_name).ok();
    let svc = {
        let (activity, fd, close) = (activity.clone(), fd.clone(), close.clone());
        hyper::service::service_fn(move |mut req: Request<Incoming>| {
            if let Some(ip) = peer {
                req.extensions_mut().insert(super::client::Peer(ip));
            }
            req.extensions_mut().insert(CloseConnection(close.clone()));
            let (sup, fd, guard, node) = (sup.clone(), fd.clone(), InFlight::new(&activity), node.clone());
            async move {
                let front = super::health::from_front(req.headers());
                let mut resp = super::handle(&sup, &fd, door, req).await;
                super::health::finish(&mut resp, node.as_ref(), front, &sup.health);
                // A streamed answer is in flight until its end (the idle timer must not close
                // the connection under it).
                match resp.body_mut() {
                    super::invoke::Body::Stream(s) => s.keep_until_over(Box::new(guard)),
                    super::invoke::Body::Full(_) => drop(guard),
                }
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let limits = &fd.limits;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.read_buffer())
        .max_headers(limits.max_headers);
    // With upgrades: a WebSocket on an HTTP trigger takes the connection over after its 101.
    let conn = builder.serve_connection(TokioIo::new(io), svc).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = idle_for(&activity, limits.idle_timeout, limits.header_read_timeout) => {}
        _ = stop.wait_for(|s| *s) => {}
        // Dropping the connection closes the socket.
        () = close.notified() => return,
    }
    // An idle connection closes at once; one with a request in flight finishes it first (each
    // is bounded by its function's timeout), then what is left to write gets CLOSE_GRACE.
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.as_mut() => {}
        () = close.notified() => {}
        () = idle_for(&activity, CLOSE_GRACE, CLOSE_GRACE) => {}
    }
}
