//! In-process fixtures for a block's tests: a node's storage (embedded in a fresh directory, or
//! on the test PostgreSQL) with migrations applied, and one request through a router.

use std::ops::Deref;
use std::path::Path;

use axum::Router;
use axum::body::Body;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use mortar_core::storage::{Migrations, Storage, StorageConfig, core_migrations};
use serde_json::Value;
use tower::ServiceExt;

/// A node's storage and the directory it lives in (removed on drop).
pub struct TestStorage {
    pub storage: Storage,
    pub dir: tempfile::TempDir,
}

impl Deref for TestStorage {
    type Target = Storage;

    fn deref(&self) -> &Storage {
        &self.storage
    }
}

/// Embedded storage (SQLite) in a fresh directory, with the core's and `migrations` applied.
pub async fn embedded(migrations: &[Migrations]) -> TestStorage {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let storage = storage_at(dir.path(), None, migrations).await;
    TestStorage { storage, dir }
}

/// Storage with its data directory at `dir`: embedded, or on `database_url` (PostgreSQL), with
/// the core's and `migrations` applied.
pub async fn storage_at(
    dir: &Path,
    database_url: Option<String>,
    migrations: &[Migrations],
) -> Storage {
    let storage = Storage::connect(&StorageConfig {
        data_dir: dir.into(),
        database_url,
        database_schema: None,
        redis_url: None,
        redis_prefix: "mortar:".into(),
    })
    .await
    .expect("storage opens");
    storage
        .migrate(&core_migrations())
        .await
        .expect("core migrations");
    for m in migrations {
        storage.migrate(m).await.expect("block migrations");
    }
    storage
}

/// A response, its body parsed as JSON (`Null` when it is not JSON; `text` has it as sent).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// A header as text (`""` when missing).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends one request through `router` (no listener): `body`, when given, as JSON.
pub async fn oneshot(router: &Router, method: &str, uri: &str, body: Option<&Value>) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    let body = match body {
        Some(v) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    send(router, req.body(body).expect("a valid request")).await
}

/// Sends a request built by the caller through `router`.
pub async fn send(router: &Router, req: Request<Body>) -> Reply {
    let res = router
        .clone()
        .oneshot(req)
        .await
        .expect("routers are infallible");
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res
        .into_body()
        .collect()
        .await
        .expect("a complete body")
        .to_bytes();
    Reply {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}
