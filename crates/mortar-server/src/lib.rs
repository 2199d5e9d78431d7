//! The `mortar` binary's library half: configuration, wiring (the composition root, the only
//! place that knows every block), the system routes and the CLI commands. `main.rs` only
//! parses arguments and dispatches here, so tests can build the exact app the binary serves.

#[macro_use]
mod registry;
pub mod app;
pub mod blocks;
pub mod cli;
pub mod config;
pub mod system;
mod waiting;

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;

/// Runs the server until SIGINT/SIGTERM, then drains and flushes.
pub async fn run(config: config::Config) -> anyhow::Result<()> {
    let otlp = mortar_core::telemetry::init(&config.log)?;
    mortar_core::metrics::install();
    let listeners = mortar_core::http::Listeners::bind(config.listen, config.http.event_loops())
        .with_context(|| {
            format!(
                "cannot listen on {} (key `listen`, flag --listen, env MORTAR_LISTEN)",
                config.listen
            )
        })?;
    let addr = listeners.local_addr();
    // The blocks' own listeners (the cache's RESP port), opened when the app is built.
    let (stop_extra, extra_stopped) = tokio::sync::watch::channel(false);
    let extra = Arc::new(Mutex::new(Vec::new()));
    let activate = {
        let extra = extra.clone();
        move |app: &mut app::App| -> anyhow::Result<()> {
            for l in std::mem::take(&mut app.listeners) {
                let bound =
                    mortar_core::http::Listeners::bind(l.addr, l.loops).with_context(|| {
                        format!(
                            "cannot listen on {} ({}; \"off\" turns it off)",
                            l.addr,
                            mortar_core::block::key_sources(l.key, l.flag)
                        )
                    })?;
                let task = tokio::spawn((l.serve)(bound, extra_stopped.clone()));
                extra
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(task);
            }
            Ok(())
        }
    };
    let slot = waiting::Slot::default();
    let (router, builder) = match app::build(&config).await {
        Ok(mut app) => {
            activate(&mut app)?;
            log_listening(&app, addr, &config, otlp);
            let router = app.router.clone();
            slot.put(app);
            (router, None)
        }
        Err(e) if waiting::is_unreachable_database(&e) => {
            tracing::warn!(
                addr = %addr,
                waiting_for = "postgres",
                error = %format!("{e:#}"),
                detail = "the database does not answer: every route but /healthz answers 503 \
                          until it does; connecting in the background",
                "listening"
            );
            let router = slot.router(format!("{e:#}"));
            (
                router,
                Some(slot.build_in_background(config.clone(), activate)),
            )
        }
        Err(e) => return Err(e),
    };
    let signalled = {
        let slot = slot.clone();
        async move {
            shutdown_signal().await;
            // Waiting clients are answered at once, so draining waits only for work in flight.
            slot.begin_stopping();
        }
    };
    mortar_core::http::serve(listeners, router, &config.http, signalled).await?;
    if let Some(builder) = builder {
        builder.abort();
    }
    let _ = stop_extra.send(true);
    let tasks = std::mem::take(&mut *extra.lock().unwrap_or_else(PoisonError::into_inner));
    for task in tasks {
        let _ = task.await;
    }
    if let Some(app) = slot.take() {
        for stop in app.stops {
            stop().await;
        }
        tracing::info!("draining done; flushing storage");
        app.node.storage.close().await;
    }
    mortar_core::telemetry::shutdown();
    tracing::info!("stopped");
    Ok(())
}

fn log_listening(app: &app::App, addr: std::net::SocketAddr, config: &config::Config, otlp: bool) {
    let backends: Vec<String> = app
        .node
        .storage
        .backends()
        .iter()
        .map(|b| format!("{}={}", b.name, b.location))
        .collect();
    tracing::info!(
        addr = %addr,
        mode = app.node.storage.mode.as_str(),
        backends = %backends.join(" "),
        auth = config.auth.admin_token.is_some(),
        otlp,
        version = mortar_core::VERSION,
        "listening"
    );
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(
        signal = which,
        "shutting down: no new connections, finishing in-flight requests"
    );
}
