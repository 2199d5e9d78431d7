//! The HTTP server: HTTP/1.1 and HTTP/2 (prior knowledge) over hyper, with the hygiene a
//! public-facing server needs and axum's `serve` lacks.
//!
//! * one event loop per thread (`http.threads`, default one per CPU), each a single-threaded
//!   tokio runtime with its own `SO_REUSEPORT` listener on the same address: the kernel spreads
//!   connections, and a request never hops threads (no work-stealing wake-ups — the way nginx
//!   workers run). Handlers still reach shared state (pools, Redis) owned by the main runtime;
//! * header-read timeout: a client that does not finish a request's headers in time is cut off
//!   (the slowloris defence);
//! * idle timeout: a connection with no bytes moving for a whole idle period is closed
//!   gracefully (any in-flight response is finished first; precision is one to two periods);
//! * connection limit: past `max_connections` (over all threads), new clients wait unserved
//!   (each loop holds at most one accepted connection waiting; the rest stay in the backlog);
//! * graceful shutdown: when `shutdown` resolves, stop accepting, let in-flight requests finish
//!   for up to `shutdown_grace_ms`, then return.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::HttpConfig;
use crate::metrics::HTTP_CONNECTIONS;

/// Listening sockets, one per event-loop thread, all on one address (`SO_REUSEPORT`).
#[derive(Debug)]
pub struct Listeners {
    sockets: Vec<std::net::TcpListener>,
    addr: SocketAddr,
}

impl Listeners {
    /// Binds `threads` sockets on `addr` (port 0: the first picks a port, the rest share it).
    pub fn bind(addr: SocketAddr, threads: usize) -> io::Result<Self> {
        // SO_REUSEPORT would let a second server started by mistake share the port silently.
        // A plain probe bind fails if anyone listens there; then we take it for real.
        if addr.port() != 0 {
            let probe = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            probe.set_reuseaddr(true)?;
            probe.bind(addr)?;
            drop(probe.listen(1)?);
        }
        let mut sockets = Vec::with_capacity(threads.max(1));
        let mut bound = addr;
        for _ in 0..threads.max(1) {
            let socket = if bound.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            socket.bind(bound)?;
            let listener = socket.listen(4096)?;
            bound = listener.local_addr()?;
            sockets.push(listener.into_std()?);
        }
        Ok(Self {
            sockets,
            addr: bound,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The sockets, for servers of other protocols (the cache's RESP listener).
    pub fn into_sockets(self) -> Vec<std::net::TcpListener> {
        self.sockets
    }
}

/// Serves `app` on every listener until `shutdown` resolves, then drains (see the module docs).
pub async fn serve(
    listeners: Listeners,
    app: Router,
    cfg: &HttpConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(cfg.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut done = Vec::new();
    for (i, socket) in listeners.sockets.into_iter().enumerate() {
        let (tx, rx) = oneshot::channel();
        let (app, cfg, permits, stop) =
            (app.clone(), cfg.clone(), permits.clone(), stop_rx.clone());
        std::thread::Builder::new()
            .name(format!("mortar-http-{i}"))
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| rt.block_on(event_loop(socket, app, &cfg, permits, stop)));
                let _ = tx.send(result);
            })?;
        done.push(rx);
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    for rx in done {
        if let Ok(Err(e)) = rx.await {
            tracing::error!(error = %e, "http event loop failed");
        }
    }
    Ok(())
}

/// One thread's accept loop and its connections.
async fn event_loop(
    socket: std::net::TcpListener,
    app: Router,
    cfg: &HttpConfig,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let listener = TcpListener::from_std(socket)?;
    let _redis_conns = crate::storage::event_loop_scope();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(cfg.header_read_timeout_ms))
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let idle = Duration::from_millis(cfg.idle_timeout_ms);
    let tracker = TaskTracker::new();
    let stopped = async |stop: &mut watch::Receiver<bool>| {
        let _ = stop.wait_for(|s| *s).await;
    };

    loop {
        // Accept first, then wait for a slot: with one loop per thread, a loop holding a slot
        // while its own listener is quiet would starve the others. So each loop keeps at most
        // one accepted-but-waiting connection; the rest stay in the kernel's backlog.
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
            () = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let active = Arc::new(AtomicBool::new(true));
        let io = TokioIo::new(Tracked {
            inner: stream,
            active: active.clone(),
        });
        let svc = app
            .clone()
            .map_request(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
        let svc = TowerToHyperService::new(svc);
        let builder = builder.clone();
        let mut stop = stop.clone();
        tracker.spawn(async move {
            let _permit = permit;
            metrics::gauge!(HTTP_CONNECTIONS).increment(1.0);
            let conn = builder.serve_connection_with_upgrades(io, svc);
            tokio::pin!(conn);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + idle, idle);
            let mut draining = false;
            loop {
                tokio::select! {
                    res = conn.as_mut() => {
                        if let Err(e) = res {
                            tracing::debug!(error = %e, %peer, "connection ended with an error");
                        }
                        break;
                    }
                    _ = stop.wait_for(|s| *s), if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = tick.tick(), if !draining => {
                        if !active.swap(false, Ordering::Relaxed) {
                            draining = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
            metrics::gauge!(HTTP_CONNECTIONS).decrement(1.0);
        });
    }

    drop(listener);
    tracker.close();
    let grace = Duration::from_millis(cfg.shutdown_grace_ms);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            connections = tracker.len(),
            "shutdown grace period over; closing remaining connections"
        );
    }
    Ok(())
}

/// A TCP stream that flags any byte moving in either direction (for the idle timeout).
struct Tracked {
    inner: TcpStream,
    active: Arc<AtomicBool>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.active.store(true, Ordering::Relaxed);
        }
        res
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            this.active.store(true, Ordering::Relaxed);
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            this.active.store(true, Ordering::Relaxed);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
