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

use anyhow::Context as _;

/// Runs the server until SIGINT/SIGTERM, then drains and flushes.
pub async fn run(config: config::Config) -> anyhow::Result<()> {
    let otlp = mortar_core::telemetry::init(&config.log)?;
    mortar_core::metrics::install();
    let mut app = app::build(&config).await?;
    let listeners = mortar_core::http::Listeners::bind(config.listen, config.http.event_loops())
        .with_context(|| {
            format!(
                "cannot listen on {} (key `listen`, flag --listen, env MORTAR_LISTEN)",
                config.listen
            )
        })?;
    let addr = listeners.local_addr();
    // The blocks' own listeners (the cache's RESP port), bound before anything is served.
    let (stop_extra, extra_stopped) = tokio::sync::watch::channel(false);
    let mut extra = Vec::new();
    for l in std::mem::take(&mut app.listeners) {
        let bound = mortar_core::http::Listeners::bind(l.addr, l.loops).with_context(|| {
            format!(
                "cannot listen on {} ({}; \"off\" turns it off)",
                l.addr,
                mortar_core::block::key_sources(l.key, l.flag)
            )
        })?;
        extra.push(tokio::spawn((l.serve)(bound, extra_stopped.clone())));
    }
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
    let stopping = app.node.storage.stopping.clone();
    let signalled = async move {
        shutdown_signal().await;
        // Waiting clients are answered at once, so draining waits only for work in flight.
        stopping.begin();
    };
    mortar_core::http::serve(listeners, app.router, &config.http, signalled).await?;
    let _ = stop_extra.send(true);
    for task in extra {
        let _ = task.await;
    }
    for stop in app.stops {
        stop().await;
    }
    tracing::info!("draining done; flushing storage");
    app.node.storage.close().await;
    mortar_core::telemetry::shutdown();
    tracing::info!("stopped");
    Ok(())
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
