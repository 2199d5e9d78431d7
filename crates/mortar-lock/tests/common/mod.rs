//! The lock router over embedded storage, for the HTTP tests.

use std::sync::Arc;

use axum::Router;
use http::StatusCode;
use mortar_core::clock::SystemClock;
use mortar_lock::{LockConfig, LockService};
use mortar_testkit::fixture::{self, TestStorage};
use serde_json::Value;

pub struct App {
    pub router: Router,
    _storage: TestStorage,
}

pub async fn app() -> App {
    let storage = fixture::embedded(&[mortar_lock::service::migrations()]).await;
    let cfg = LockConfig {
        max_ttl_ms: 3_600_000,
        ..LockConfig::default()
    };
    let svc = LockService::start(&storage, &cfg, Arc::new(SystemClock)).unwrap();
    let (router, _) = utoipa_axum::router::OpenApiRouter::new()
        .merge(mortar_lock::api::router(svc))
        .split_for_parts();
    App {
        router,
        _storage: storage,
    }
}

impl App {
    pub async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let r = fixture::oneshot(&self.router, method, uri, body.as_ref()).await;
        (r.status, r.body)
    }

    pub async fn acquire(&self, name: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", &format!("/v1/locks/{name}/acquire"), Some(body))
            .await
    }
}
