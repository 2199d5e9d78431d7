//! Starting while the database does not answer. A cluster node whose PostgreSQL is unreachable
//! at start does not exit: it listens at once, answers `/healthz` (the process is alive),
//! `/readyz` and every other route with a 503 problem naming `postgres` (and `Retry-After`),
//! and keeps building the application in the background — connect, migrate, start the blocks —
//! with backoff (250 ms doubling to 5 s). When that succeeds the real application takes over
//! on the same listener, the blocks' own listeners (the RESP port) open, and the node is ready
//! without a restart. Errors that waiting cannot cure (a refused password, a bad URL, a failed
//! migration) still stop start-up at once.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use mortar_core::Problem;
use mortar_core::storage::StorageError;
use tower::ServiceExt as _;

use crate::app::App;
use crate::config::Config;

/// Whether `build` failed only because the database did not answer.
pub fn is_unreachable_database(e: &anyhow::Error) -> bool {
    e.downcast_ref::<StorageError>()
        .is_some_and(StorageError::is_unreachable)
}

/// The application once it is built; until then, 503s.
#[derive(Clone, Default)]
pub struct Slot {
    router: Arc<OnceLock<Router>>,
    app: Arc<Mutex<Option<App>>>,
}

impl Slot {
    /// The router to serve: the application's once built, the waiting answers until then.
    pub fn router(&self, why: String) -> Router {
        let slot = self.router.clone();
        let why: Arc<str> = why.into();
        Router::new().fallback(move |req: Request| {
            let (slot, why) = (slot.clone(), why.clone());
            async move {
                match slot.get() {
                    Some(app) => app.clone().oneshot(req).await.into_response(),
                    None => waiting(&req, &why),
                }
            }
        })
    }

    /// Builds the application in the background until the database answers; `activate` opens
    /// its own listeners before it takes over.
    pub fn build_in_background(
        &self,
        config: Config,
        activate: impl Fn(&mut App) -> anyhow::Result<()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let slot = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(250);
            let mut attempts = 0u32;
            loop {
                tokio::time::sleep(backoff).await;
                attempts += 1;
                match crate::app::build(&config).await {
                    Ok(mut app) => {
                        if let Err(e) = activate(&mut app) {
                            tracing::error!(error = %format!("{e:#}"), "the database answers, but a block's listener cannot open");
                        }
                        let _ = slot.router.set(app.router.clone());
                        tracing::info!(
                            attempts,
                            "the database answers: migrated, every block started, ready"
                        );
                        slot.put(app);
                        return;
                    }
                    Err(e) => {
                        let level_warn = attempts.is_power_of_two() || !is_unreachable_database(&e);
                        if level_warn {
                            tracing::warn!(attempts, error = %format!("{e:#}"), "still waiting for the database");
                        } else {
                            tracing::debug!(attempts, error = %format!("{e:#}"), "still waiting for the database");
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        })
    }

    /// Holds an application built in the foreground (for draining at shutdown).
    pub fn put(&self, app: App) {
        *self
            .app
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(app);
    }

    /// The application, if it was built (for draining at shutdown).
    pub fn take(&self) -> Option<App> {
        self.app
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Begins the built application's shutdown (waiting clients are answered at once).
    pub fn begin_stopping(&self) {
        if let Some(app) = self
            .app
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            app.node.storage.stopping.begin();
        }
    }
}

fn waiting(req: &Request, why: &str) -> Response {
    if req.uri().path() == "/healthz" {
        return axum::Json(crate::system::Health { status: "ok" }).into_response();
    }
    Problem::unavailable(
        "postgres",
        format!(
            "this node started while its database did not answer ({why}); it connects, migrates \
             and starts serving by itself as soon as it does"
        ),
    )
    .into_response()
}
