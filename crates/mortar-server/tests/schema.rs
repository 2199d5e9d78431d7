//! `database.schema`: where mortar keeps its tables in a PostgreSQL database it may share with
//! an application — its own schema for new installs, `public` for installs that are there.

use mortar_core::storage::{Storage, StorageConfig, core_migrations};

async fn open(url: &str, schema: Option<&str>) -> (Storage, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::connect(&StorageConfig {
        data_dir: dir.path().into(),
        database_url: Some(url.to_owned()),
        database_schema: schema.map(Into::into),
        redis_url: None,
        redis_prefix: "mortar:".into(),
    })
    .await
    .unwrap();
    storage.migrate(&core_migrations()).await.unwrap();
    for migrations in mortar_server::blocks::migrations() {
        storage.migrate(&migrations).await.unwrap();
    }
    (storage, dir)
}

async fn exists(url: &str, table: &str) -> bool {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(&pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_new_install_keeps_everything_in_the_mortar_schema() {
    let Some(svc) = mortar_testkit::services("schema mortar") else {
        return;
    };
    let db = svc.create_database().await.unwrap();
    // The application's own sqlx migrations table is no sign of an earlier mortar.
    let app = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query("CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY)")
        .execute(&app)
        .await
        .unwrap();
    let (storage, _dir) = open(&db.url, None).await;
    assert!(storage.backends()[0].location.ends_with("(schema mortar)"));
    for table in [
        "mortar._sqlx_migrations",
        "mortar.core_api_keys",
        "mortar.jobs_jobs",
    ] {
        assert!(exists(&db.url, table).await, "{table}");
    }
    assert!(!exists(&db.url, "public.core_api_keys").await);
    storage.close().await;
}

#[tokio::test]
async fn an_install_with_its_tables_in_public_keeps_them_there() {
    let Some(svc) = mortar_testkit::services("schema public") else {
        return;
    };
    let db = svc.create_database().await.unwrap();
    // As a version before `database.schema` left it.
    let (storage, _dir) = open(&db.url, Some("public")).await;
    storage.close().await;
    let (storage, _dir) = open(&db.url, None).await;
    assert!(storage.backends()[0].location.ends_with("(schema public)"));
    assert!(!exists(&db.url, "mortar._sqlx_migrations").await);
    storage.close().await;
}

#[tokio::test]
async fn a_configured_schema_is_created_and_used_by_every_node() {
    let Some(svc) = mortar_testkit::services("schema configured") else {
        return;
    };
    let db = svc.create_database().await.unwrap();
    // Nodes starting together race to create it.
    let (a, b) = tokio::join!(
        open(&db.url, Some("billing_mortar")),
        open(&db.url, Some("billing_mortar"))
    );
    assert!(exists(&db.url, "billing_mortar.core_api_keys").await);
    assert!(!exists(&db.url, "mortar.core_api_keys").await);
    a.0.close().await;
    b.0.close().await;
}
