//! Wiring: connects storage, runs every block's migrations, builds every router and the
//! OpenAPI document. This is the composition root; blocks are added here and nowhere else.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use mortar_core::auth::{Auth, KeyStore};
use mortar_core::block::{BoxFuture, Ctx, Listener};
use mortar_core::clock::{Clock, SystemClock};
use mortar_core::idempotency::Idempotency;
use mortar_core::storage::gate::Gate;
use mortar_core::storage::{Storage, core_migrations};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::config::Config;
use crate::system;

/// What every system route can see about this node.
#[derive(Debug)]
pub struct Node {
    pub storage: Storage,
    pub started: Instant,
    pub started_at_ms: u64,
    pub openapi: OnceLock<String>,
}

/// A built application: the router to serve, the node behind it, its blocks' services, the
/// listeners they open besides the HTTP API and what they do at shutdown.
pub struct App {
    pub router: Router,
    pub node: Arc<Node>,
    pub blocks: crate::blocks::Services,
    pub listeners: Vec<Listener>,
    pub stops: Vec<Box<dyn FnOnce() -> BoxFuture + Send>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("node", &self.node)
            .field("blocks", &self.blocks)
            .finish_non_exhaustive()
    }
}

/// The document's description: what holds for every operation.
const API_DESCRIPTION: &str = "Building blocks for backend systems: one server, many blocks.

Every error is an RFC 9457 problem (`application/problem+json`). `/v1` and `/debug` routes need \
`Authorization: Bearer <token>` when an admin token is configured. Any request may carry \
`Mortar-Deadline: <milliseconds>` (0 to 86400000): the server answers 504 once it passes, and 400 \
for a malformed value. Integer fields take JSON integers (`2`, not `2.0`).";

#[derive(OpenApi)]
#[openapi(
    info(title = "Mortar", description = API_DESCRIPTION),
    components(schemas(mortar_core::Problem, mortar_core::FieldError)),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            mortar_core::problem::openapi::BEARER,
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Answers a block's routes with 503 at once while `gate` (the dependency every route of the
/// block needs) is known to be down, instead of letting each request wait out pool and
/// command timeouts. Blocks that degrade on their own (the rate limiter's failure modes, the
/// cache's near-cache) are not wrapped.
fn fail_fast(router: OpenApiRouter, gate: Option<Arc<Gate>>) -> OpenApiRouter {
    let Some(gate) = gate else { return router };
    router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let down = gate.check();
            async move {
                match down {
                    Ok(()) => next.run(req).await,
                    Err(d) => {
                        // Answered before the body is read: the connection cannot be reused
                        // (its unread body would be taken for the next request), so say so.
                        let mut res = axum::response::IntoResponse::into_response(
                            mortar_core::Problem::from(d),
                        );
                        res.headers_mut().insert(
                            axum::http::header::CONNECTION,
                            axum::http::HeaderValue::from_static("close"),
                        );
                        res
                    }
                }
            }
        },
    ))
}

/// Connects to the configured backends, migrates, and builds the application.
pub async fn build(config: &Config) -> anyhow::Result<App> {
    let storage = Storage::connect(&config.storage()).await?;
    // Streams' keep-alives stay well inside the idle timeout that closes quiet connections.
    storage.hub.set_keepalive(std::time::Duration::from_millis(
        (config.http.idle_timeout_ms / 3).min(15_000),
    ));
    storage.migrate(&core_migrations()).await?;
    for migrations in crate::blocks::migrations() {
        storage.migrate(&migrations).await?;
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let keys = KeyStore::new(storage.durable.clone(), clock.clone())
        .with_gate(storage.durable_gate.clone());
    let auth = Arc::new(Auth::new(config.auth.admin_token.clone(), keys.clone()));
    let idempotency = Idempotency::new(
        storage.durable.clone(),
        clock.clone(),
        config.http.idempotency_ttl_ms,
    );
    let mut ctx = Ctx::new(
        &storage,
        clock.clone(),
        config.auth.admin_token.as_deref(),
        config.redis_url.as_deref(),
    );
    let (blocks, serving) = crate::blocks::start(&mut ctx, config).await?;
    drop(ctx);
    let node = Arc::new(Node {
        storage,
        started: Instant::now(),
        started_at_ms: clock.now_ms(),
        openapi: OnceLock::new(),
    });

    let mut router = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(system::router(node.clone()))
        .merge(mortar_core::auth::api::router(keys));
    let (mut listeners, mut stops) = (Vec::new(), Vec::new());
    for s in serving {
        let routes = match s.idempotent {
            [] => s.router,
            routes => idempotency.on(s.router, routes),
        };
        router = router.merge(fail_fast(routes, s.needs));
        listeners.extend(s.listeners);
        stops.extend(s.stop);
    }
    let (router, mut openapi) = router.split_for_parts();
    mortar_core::VERSION.clone_into(&mut openapi.info.version);
    mortar_core::problem::openapi::complete(&mut openapi);
    let json = openapi.to_pretty_json().unwrap_or_else(|_| "{}".into());
    let _ = node.openapi.set(json);

    let router = mortar_core::http::finish(router, config.http.max_body_bytes, auth);
    Ok(App {
        router,
        node,
        blocks,
        listeners,
        stops,
    })
}
