//! The HTTP floor: how fast this machine answers a trivial request through (a) hyper alone,
//! (b) axum through Mortar's server, (c) the same behind Mortar's middleware stack. Used to
//! read the per-request cost of each layer (bench/RESULTS.md); not part of the server.
//!
//! `cargo run --release -p mortar-core --example http_floor -- hyper|axum|stack PORT`,
//! then e.g. `wrk -t2 -c64 -d5s http://127.0.0.1:PORT/x`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::any;
use http::StatusCode;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mortar_core::auth::{Auth, KeyStore};
use mortar_core::clock::SystemClock;
use mortar_core::storage::{Storage, StorageConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "hyper".into());
    let port: u16 = args.next().map_or(18799, |p| p.parse().expect("a port"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listeners = {
        let _in_runtime = rt.enter();
        mortar_core::http::Listeners::bind(addr, threads).expect("bind")
    };
    match mode.as_str() {
        "hyper" => bare_hyper(listeners),
        "axum" | "stack" => {
            let app = Router::new().route("/x", any(|| async { StatusCode::NO_CONTENT }));
            let app = if mode == "stack" {
                let dir = std::env::temp_dir().join(format!("http-floor-{}", std::process::id()));
                let storage = rt
                    .block_on(Storage::connect(&StorageConfig {
                        data_dir: dir,
                        database_url: None,
                        database_schema: None,
                        redis_url: None,
                        redis_prefix: "mortar:".into(),
                    }))
                    .expect("storage");
                let keys = KeyStore::new(storage.durable.clone(), Arc::new(SystemClock));
                mortar_core::http::finish(app, 1 << 20, Arc::new(Auth::new(None, keys)))
            } else {
                app
            };
            let cfg = mortar_core::config::HttpConfig::default();
            rt.block_on(mortar_core::http::serve(
                listeners,
                app,
                &cfg,
                std::future::pending(),
            ))
            .expect("serve");
        }
        other => panic!("unknown mode {other}: hyper, axum or stack"),
    }
}

/// hyper's HTTP/1 connection on one single-threaded runtime per listener, nothing else.
fn bare_hyper(listeners: mortar_core::http::Listeners) {
    let handles: Vec<_> = listeners
        .into_sockets()
        .into_iter()
        .map(|socket| {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(socket).expect("listener");
                    loop {
                        let (stream, _) = listener.accept().await.expect("accept");
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(|_req| async {
                                let mut res = http::Response::new(Empty::<Bytes>::new());
                                *res.status_mut() = StatusCode::NO_CONTENT;
                                Ok::<_, Infallible>(res)
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                });
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}
