//! Enqueueing: `JobsService::enqueue` (handing new jobs to waiting leases in the same
//! transaction) and `enqueue_in_tx`, the transactional outbox on PostgreSQL.

use std::collections::HashSet;

use mortar_core::FieldError;

use super::lease::deliver;
use super::telemetry::{ENQUEUED, per_kind};
use super::{Enqueued, JobsConfig, JobsService, NewJob, prepare};
use crate::error::JobsError;
use crate::store::LeaseAsk;

/// Enqueues `job` inside the caller's PostgreSQL transaction (the transactional outbox): it
/// exists only if that transaction commits, and workers on every node are woken when it does.
/// Validation is the same as `POST /v1/jobs` (payload limit: the default, 1 MiB). Mortar's
/// tables are found in the schema `mortar` (the default `database.schema`), else on the
/// transaction's own search path (an install that keeps them in `public`); another
/// `database.schema` is [`enqueue_in_tx_at`]'s.
pub async fn enqueue_in_tx(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    job: &NewJob,
) -> Result<Enqueued, JobsError> {
    enqueue_in_tx_at(tx, "mortar", job).await
}

/// [`enqueue_in_tx`] for mortar's tables in `schema` (`database.schema`). The transaction's
/// search path is the caller's again when this returns.
pub async fn enqueue_in_tx_at(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    schema: &str,
    job: &NewJob,
) -> Result<Enqueued, JobsError> {
    let now = mortar_core::clock::unix_time().as_millis() as u64;
    let row = prepare(job, "", JobsConfig::default().max_payload_bytes, now)
        .map_err(JobsError::Invalid)?;
    let conn: &mut sqlx::PgConnection = tx;
    let mut out = async {
        let saved: String = sqlx::query_scalar(
            "SELECT o.old FROM (SELECT current_setting('search_path') AS old) AS o, \
             LATERAL (SELECT set_config('search_path', quote_ident($1) || ', ' || o.old, true)) \
             AS s",
        )
        .bind(schema)
        .fetch_one(&mut *conn)
        .await?;
        let out = crate::store::insert_pg(conn, vec![row], now as i64).await?;
        sqlx::query("SELECT pg_notify('mortar_jobs', ''), set_config('search_path', $1, true)")
            .bind(&saved)
            .execute(&mut *conn)
            .await?;
        Ok::<_, sqlx::Error>(out)
    }
    .await
    .map_err(|e| {
        tracing::error!(error = %e, block = "jobs", dependency = "postgres", "durable store call failed");
        JobsError::Unavailable("postgres".into())
    })?;
    let (job, duplicate) = out.remove(0);
    Ok(Enqueued { job, duplicate })
}

impl JobsService {
    /// Enqueues jobs atomically (all or none); durable when this returns. A job whose unique
    /// key is held comes back as the holder with `duplicate: true`.
    pub async fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>, JobsError> {
        if jobs.is_empty() || jobs.len() > 10_000 {
            return Err(JobsError::Invalid(vec![FieldError::new(
                "jobs",
                "give 1 to 10000 jobs",
            )]));
        }
        let now = self.clock.now_ms();
        let mut rows = Vec::with_capacity(jobs.len());
        let mut errors = Vec::new();
        for (i, j) in jobs.iter().enumerate() {
            let at = if jobs.len() == 1 {
                String::new()
            } else {
                format!("jobs[{i}]")
            };
            match prepare(j, &at, self.cfg.max_payload_bytes, now) {
                Ok(row) => rows.push(row),
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(JobsError::Invalid(errors));
        }
        let (asks, replies): (Vec<LeaseAsk>, Vec<_>) = self
            .take_waiting(&rows)
            .into_iter()
            .map(|w| (w.ask, w.reply))
            .unzip();
        let out = if replies.is_empty() {
            let out = self
                .store
                .insert(rows, now, asks)
                .await
                .map_err(self.db())?
                .0;
            if out.iter().any(|(j, dup)| !dup && j.state == "available") {
                self.announce();
            }
            out
        } else {
            // A task of its own, so that jobs leased for waiting leases are answered (or given
            // back) even if this request is dropped after the commit. On failure the replies
            // are dropped: those leases look again.
            let store = self.store.clone();
            let (out, unserved) = tokio::spawn(async move {
                let (out, leased) = store.insert(rows, now, asks).await?;
                let handed: HashSet<&str> =
                    leased.iter().flatten().map(|j| j.id.as_str()).collect();
                let unserved = out.iter().any(|(j, dup)| {
                    !dup && j.state == "available" && !handed.contains(j.id.as_str())
                });
                let released = deliver(&store, replies, leased, now).await;
                Ok::<_, sqlx::Error>((out, unserved || released))
            })
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "jobs: enqueue task failed");
                JobsError::Unavailable(self.store.durable().name().into())
            })?
            .map_err(self.db())?;
            // Jobs handed to waiting leases need no wake-up: other leases, here or on other
            // nodes, have nothing to find. Any job left waiting does.
            if unserved {
                self.announce();
            }
            out
        };
        for (j, _) in &out {
            if j.state == "scheduled" {
                self.note_due(j.run_at_ms);
            }
        }
        // A job handed to a waiting lease went in running: it is published as started there.
        let created = out.iter().filter(|(_, dup)| !dup).map(|(j, _)| j);
        self.publish(
            now,
            created.map(|j| (j, crate::events::enqueued_state(&j.state))),
        );
        per_kind(
            &out,
            |(j, _)| (&j.queue, &j.kind),
            |q, k, group| {
                let created = group.iter().filter(|(_, dup)| !dup).count() as u64;
                if created > 0 {
                    metrics::counter!(ENQUEUED, "queue" => q.to_owned(), "kind" => k.to_owned())
                        .increment(created);
                }
            },
        );
        Ok(out
            .into_iter()
            .map(|(job, duplicate)| Enqueued { job, duplicate })
            .collect())
    }
}
