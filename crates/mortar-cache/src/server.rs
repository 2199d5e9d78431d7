//! The RESP listener: single-threaded event loops (`cache.resp_threads`; by default one per CPU
//! but one) on `SO_REUSEPORT` sockets like the HTTP server's, pipelining (every complete
//! command in a read is answered in one write), protocol errors answered and the connection
//! closed, as Redis does.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use mortar_core::http::Listeners;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

use crate::busy_poll;
use crate::commands::Session;
use crate::resp::{Reply, parse_command};
use crate::service::CacheService;

/// Serves RESP on `listeners` until `shutdown` turns true.
/// `busy_poll`: how long a busy loop keeps polling after its last request ([`crate::busy_poll`];
/// zero: never).
pub async fn serve(
    listeners: Listeners,
    svc: Arc<CacheService>,
    busy_poll: Duration,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let busy_poll = (!busy_poll.is_zero()).then_some(busy_poll);
    let mut done = Vec::new();
    for (i, socket) in listeners.into_sockets().into_iter().enumerate() {
        let (tx, rx) = oneshot::channel();
        let (svc, stop) = (svc.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name(format!("mortar-resp-{i}"))
            .spawn(move || {
                let mut rt = tokio::runtime::Builder::new_current_thread();
                rt.enable_all();
                if busy_poll.is_some() {
                    busy_poll::install();
                    rt.on_thread_park(busy_poll::before_park)
                        .on_thread_unpark(busy_poll::after_unpark);
                }
                let r = rt
                    .build()
                    .and_then(|rt| rt.block_on(event_loop(socket, svc, busy_poll, stop)));
                let _ = tx.send(r);
            })?;
        done.push(rx);
    }
    for rx in done {
        if let Ok(Err(e)) = rx.await {
            tracing::error!(error = %e, "resp event loop failed");
        }
    }
    Ok(())
}

async fn event_loop(
    socket: std::net::TcpListener,
    svc: Arc<CacheService>,
    busy_poll: Option<Duration>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let listener = TcpListener::from_std(socket)?;
    let spinner = busy_poll.map(|spin| {
        let svc = svc.clone();
        tokio::spawn(busy_poll::spinner(spin, move |idle| {
            svc.busy_poll_us
                .fetch_add(idle.as_micros() as u64, Ordering::Relaxed);
        }))
    });
    // Cluster mode: this loop's Redis commands go on a connection of its own.
    let _redis_conns = mortar_core::storage::event_loop_scope();
    // The connections. At shutdown they are dropped wherever they wait, so that a read does
    // not have to watch the shutdown signal too (one more future polled per request). A client
    // then sees its connection close, as when a server stops: a command waiting on cluster
    // Redis at that moment is answered by nobody, like any command in flight on a lost
    // connection.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "resp accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        while connections.try_join_next().is_some() {}
        if svc.clients.load(Ordering::Relaxed) >= svc.max_clients {
            // Redis's answer; a fresh socket's send buffer takes it without waiting.
            let _ = stream.try_write(b"-ERR max number of clients reached\r\n");
            tracing::warn!(
                max = svc.max_clients,
                "resp connection refused: cache.max_clients reached"
            );
            continue;
        }
        let _ = stream.set_nodelay(true);
        let svc = svc.clone();
        connections.spawn(async move {
            let _client = Client::count(&svc.clients);
            if let Err(e) = connection(stream, &svc).await {
                tracing::debug!(error = %e, "resp connection ended");
            }
        });
    }
    connections.shutdown().await;
    if let Some(spinner) = spinner {
        spinner.abort();
    }
    Ok(())
}

/// One connected client in `INFO clients`, for as long as it lives (an aborted task too).
struct Client<'a>(&'a AtomicU64);

impl<'a> Client<'a> {
    fn count(clients: &'a AtomicU64) -> Self {
        clients.fetch_add(1, Ordering::Relaxed);
        Self(clients)
    }
}

impl Drop for Client<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(mut stream: TcpStream, svc: &CacheService) -> io::Result<()> {
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut wbuf = BytesMut::with_capacity(16 * 1024);
    let mut session = Session {
        proto: 2,
        id: svc.next_client_id(),
        ..Session::default()
    };
    loop {
        if rbuf.capacity() - rbuf.len() < 4096 {
            rbuf.reserve(16 * 1024);
        }
        let n = read_some(&stream, &mut rbuf).await?;
        if n == 0 {
            return Ok(());
        }
        busy_poll::activity();
        // Counted once per read, not per command: one shared counter written by every loop
        // per pipelined command would bounce its cache line between the cores.
        let mut commands = 0;
        loop {
            match parse_command(&mut rbuf, svc.limits_for(&session)) {
                Ok(Some(args)) => {
                    if args.is_empty() {
                        continue;
                    }
                    commands += 1;
                    svc.run(&mut session, &args)
                        .await
                        .encode(&mut wbuf, session.proto);
                    if session.quit {
                        stream.write_all(&wbuf).await?;
                        return Ok(());
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    Reply::err(format!("ERR {e}")).encode(&mut wbuf, session.proto);
                    stream.write_all(&wbuf).await?;
                    return Ok(());
                }
            }
        }
        svc.commands.fetch_add(commands, Ordering::Relaxed);
        if !wbuf.is_empty() {
            // Let the loop's other ready connections run their commands first, then write:
            // replies leave in a burst, as from Redis's event loop, so a client serving many
            // connections wakes once for many replies instead of once for each.
            tokio::task::yield_now().await;
            stream.write_all(&wbuf).await?;
            busy_poll::activity();
            wbuf.clear();
        }
    }
}

/// Reads what the socket holds into `buf`'s spare room (0: the peer closed). A read that leaves
/// room unfilled has drained the socket, so its readiness is cleared at once: the next read
/// waits for epoll to report new data instead of first costing a `read` that returns EAGAIN.
/// Redis's event loop reads once per readable event the same way; on small request/reply
/// traffic this saves a third of the connection's syscalls. (Tokio keeps readiness that
/// arrives meanwhile: it clears only the readiness the read saw.)
async fn read_some(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        let room = buf.capacity() - buf.len();
        let mut short = None;
        let r = stream.try_io(Interest::READABLE, || {
            let n = stream.try_read_buf(buf)?;
            if n > 0 && n < room {
                short = Some(n);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match r {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            Err(_) => {
                if let Some(n) = short {
                    return Ok(n);
                }
            }
        }
    }
}
