//! The shared PostgreSQL and Redis that cluster tests run against.

use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::Connection;

/// Connection strings of the test services.
#[derive(Debug, Clone)]
pub struct Services {
    pub database_url: String,
    pub redis_url: String,
}

/// The test services, or `None` (after printing that `test` skipped) when they are not
/// configured. With `CI=true` a missing variable panics: CI never skips silently.
pub fn services(test: &str) -> Option<Services> {
    let db = std::env::var("MORTAR_TEST_DATABASE_URL")
        .ok()
        .filter(|s| !s.is_empty());
    let redis = std::env::var("MORTAR_TEST_REDIS_URL")
        .ok()
        .filter(|s| !s.is_empty());
    match (db, redis) {
        (Some(database_url), Some(redis_url)) => Some(Services {
            database_url,
            redis_url,
        }),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "{test}: MORTAR_TEST_DATABASE_URL and MORTAR_TEST_REDIS_URL must be set when CI=true \
                 (scripts/test sets them)"
            );
            eprintln!(
                "SKIPPED {test}: set MORTAR_TEST_DATABASE_URL and MORTAR_TEST_REDIS_URL to run it"
            );
            None
        }
    }
}

/// Only Redis (`MORTAR_TEST_REDIS_URL`), with the same skip/CI rules as [`services`].
pub fn redis_url(test: &str) -> Option<String> {
    match std::env::var("MORTAR_TEST_REDIS_URL")
        .ok()
        .filter(|s| !s.is_empty())
    {
        Some(url) => Some(url),
        None => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "{test}: MORTAR_TEST_REDIS_URL must be set when CI=true (scripts/test sets it)"
            );
            eprintln!("SKIPPED {test}: set MORTAR_TEST_REDIS_URL to run it");
            None
        }
    }
}

impl Services {
    /// Creates a fresh, uniquely named database; it is dropped when the handle is.
    pub async fn create_database(&self) -> Result<TestDatabase> {
        let name = format!(
            "mortar_test_{}",
            ulid::Ulid::new().to_string().to_ascii_lowercase()
        );
        let mut conn = sqlx::PgConnection::connect(&self.database_url)
            .await
            .with_context(|| {
                format!(
                    "PostgreSQL at MORTAR_TEST_DATABASE_URL ({}) is unreachable",
                    self.database_url
                )
            })?;
        // The name is ours (a ULID), not user input.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(TestDatabase {
            url: with_database(&self.database_url, &name),
            admin_url: self.database_url.clone(),
            name,
        })
    }

    /// A Redis connection, for assertions on keys.
    pub async fn redis(&self) -> Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }
}

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDatabase {
    pub url: String,
    pub name: String,
    admin_url: String,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs outside async context; use a private runtime on its own thread.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                tokio::time::timeout(
                    Duration::from_secs(10),
                    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn),
                )
                .await
                .ok()?
                .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

/// Replaces the database name in a PostgreSQL URL.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let prefix_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[prefix_end..].find('/') {
        Some(i) => &base[..prefix_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_database_name() {
        assert_eq!(
            super::with_database("postgres://u@h:5432/test", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            super::with_database("postgres://u@h/test?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(
            super::with_database("postgres://u@h", "x"),
            "postgres://u@h/x"
        );
    }
}
