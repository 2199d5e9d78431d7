//! Cluster backend: leases, waiters and fencing counters in PostgreSQL — the safe choice.
//!
//! Every change to one name runs in a transaction holding
//! `pg_advisory_xact_lock(hashtextextended(name, 0))`: the rows are loaded into the pure
//! [`crate::engine::Lock`], the engine decides, the difference is written back, and the fencing
//! counter is bumped in the same transaction. Time is the database's clock, so nodes with
//! skewed clocks agree. A grant is durable when the call returns; a PostgreSQL restart loses
//! nothing that was acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::future::{BoxFuture, FutureExt};
use sqlx::postgres::PgPool;
use sqlx::{Postgres, Transaction};

use super::{AcquireArgs, Acquired, LockInfo, LockStore, StoreError, db_err};
use crate::engine::{Holder, Lock, Refusal, Waiter};

/// The database's clock in epoch milliseconds, as an SQL expression.
macro_rules! now {
    () => {
        "(SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint)"
    };
}

#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// This node's id in `lock_nodes` (its waiters carry it).
    node: String,
    node_lease_ms: u64,
    /// When this store last renewed its node's row (ms on `started`'s clock; 0: never).
    renewed_ms: Arc<AtomicU64>,
    started: std::time::Instant,
}

/// Whether waiter row `w`'s node is alive at `$2` (rows without a node always are).
macro_rules! node_alive {
    () => {
        "(w.node IS NULL OR EXISTS (SELECT 1 FROM lock_nodes n \
         WHERE n.node = w.node AND n.expires_at_ms > $2))"
    };
}

type HolderRow = (String, String, i64, i32, i64, i64);
type WaiterRow = (String, String, i32, i64);

impl PostgresStore {
    pub fn new(pool: PgPool) -> Self {
        Self::with_node_lease(pool, crate::config::LockConfig::default().node_lease_ms)
    }

    /// A store whose node renews a liveness lease of `node_lease_ms` (see [`LockStore::heartbeat`]).
    pub fn with_node_lease(pool: PgPool, node_lease_ms: u64) -> Self {
        Self {
            pool,
            node: mortar_core::ids::new_id(),
            node_lease_ms,
            renewed_ms: Arc::default(),
            started: std::time::Instant::now(),
        }
    }

    /// Opens a transaction serialised on `name`, with expired rows gone; returns it, the lock
    /// as the engine sees it, and the database's time.
    async fn load(
        &self,
        name: &str,
    ) -> Result<(Transaction<'static, Postgres>, Lock, u64), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let now: i64 = sqlx::query_scalar(concat!("SELECT ", now!()))
            .fetch_one(&mut *tx)
            .await?;
        let expired =
            sqlx::query("DELETE FROM lock_holders WHERE name = $1 AND expires_at_ms <= $2")
                .bind(name)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if expired > 0 {
            metrics::counter!(crate::service::EXPIRIES).increment(expired);
        }
        sqlx::query(concat!(
            "DELETE FROM lock_waiters w WHERE name = $1 AND (until_ms <= $2 OR NOT ",
            node_alive!(),
            ")"
        ))
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let lock = Self::live(&mut tx, name, now).await?;
        Ok((tx, lock, now as u64))
    }

    /// The lock as of a moment, without taking it: what a waiter's poll reads first, so a
    /// busy lock costs one read instead of a turn in the serialised transaction (which the
    /// hand-off needs). Stale at worst, and then the next poll sees more.
    async fn snapshot(&self, name: &str) -> Result<(Lock, u64), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let now: i64 = sqlx::query_scalar(concat!("SELECT ", now!()))
            .fetch_one(&mut *conn)
            .await?;
        let lock = Self::live(&mut conn, name, now).await?;
        Ok((lock, now as u64))
    }

    /// The holders and waiters of `name` still live at `now`.
    async fn live(
        conn: &mut sqlx::PgConnection,
        name: &str,
        now: i64,
    ) -> Result<Lock, sqlx::Error> {
        let holders: Vec<HolderRow> = sqlx::query_as(
            "SELECT lease_id, owner, token, permits, acquired_at_ms, expires_at_ms FROM lock_holders \
             WHERE name = $1 AND expires_at_ms > $2 ORDER BY token",
        )
        .bind(name)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
        let waiters: Vec<WaiterRow> = sqlx::query_as(concat!(
            "SELECT ticket, owner, permits, until_ms FROM lock_waiters w \
             WHERE name = $1 AND until_ms > $2 AND ",
            node_alive!(),
            " ORDER BY seq"
        ))
        .bind(name)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
        let permits = holders
            .first()
            .map(|h| h.3)
            .or_else(|| waiters.first().map(|w| w.2))
            .unwrap_or(0);
        Ok(Lock {
            permits: permits as u32,
            holders: holders
                .into_iter()
                .map(|(lease_id, owner, token, _, acquired, expires)| Holder {
                    lease_id,
                    owner,
                    token: token as u64,
                    acquired_at_ms: acquired as u64,
                    expires_at_ms: expires as u64,
                })
                .collect(),
            waiters: waiters
                .into_iter()
                .map(|(ticket, owner, _, until)| Waiter {
                    ticket,
                    owner,
                    until_ms: until as u64,
                })
                .collect(),
        })
    }

    /// Whether an enqueue should renew the node's row itself: never renewed, or not within a
    /// third of the lease (the heartbeat's period). Otherwise the row is fresh, and concurrent
    /// enqueues of one node do not queue on its row lock.
    fn renewal_due(&self) -> bool {
        let renewed = self.renewed_ms.load(Ordering::Relaxed);
        renewed == 0 || self.now_ms().saturating_sub(renewed) > self.node_lease_ms / 3
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// Extends this node's liveness lease by `node_lease_ms` from the database's now.
    async fn renew_node(&self, conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
        let at = self.now_ms();
        sqlx::query(concat!(
            "INSERT INTO lock_nodes (node, expires_at_ms) VALUES ($1, ",
            now!(),
            " + $2) ON CONFLICT (node) DO UPDATE SET expires_at_ms = EXCLUDED.expires_at_ms"
        ))
        .bind(&self.node)
        .bind(self.node_lease_ms as i64)
        .execute(conn)
        .await?;
        self.renewed_ms.fetch_max(at, Ordering::Relaxed);
        Ok(())
    }

    async fn try_acquire(&self, a: AcquireArgs<'_>) -> Result<Acquired, sqlx::Error> {
        // A busy lock is answered from a read (waiters' polls, newcomers behind a line); only
        // a likely grant queues for the serialised transaction, which decides again.
        let (mut seen, now) = self.snapshot(a.name).await?;
        if seen.may_grant(now, a.permits, a.ticket) == Err(Refusal::Busy) {
            return Ok(Acquired::Busy(LockInfo::of(a.name, &seen, now)));
        }
        let (mut tx, mut lock, now) = self.load(a.name).await?;
        match lock.may_grant(now, a.permits, a.ticket) {
            Err(Refusal::Busy) => {
                tx.commit().await?;
                return Ok(Acquired::Busy(LockInfo::of(a.name, &lock, now)));
            }
            Err(Refusal::PermitsMismatch { existing }) => {
                tx.commit().await?;
                return Ok(Acquired::PermitsMismatch { existing });
            }
            Ok(()) => {}
        }
        let token: i64 = sqlx::query_scalar(
            "INSERT INTO lock_fencing (name, token) VALUES ($1, 1) \
             ON CONFLICT (name) DO UPDATE SET token = lock_fencing.token + 1 RETURNING token",
        )
        .bind(a.name)
        .fetch_one(&mut *tx)
        .await?;
        let holder = Holder {
            lease_id: mortar_core::ids::new_id(),
            owner: a.owner.to_owned(),
            token: token as u64,
            acquired_at_ms: now,
            expires_at_ms: now + a.ttl_ms,
        };
        sqlx::query(
            "INSERT INTO lock_holders (lease_id, name, owner, token, permits, acquired_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&holder.lease_id)
        .bind(a.name)
        .bind(a.owner)
        .bind(token)
        .bind(a.permits as i32)
        .bind(now as i64)
        .bind(holder.expires_at_ms as i64)
        .execute(&mut *tx)
        .await?;
        if let Some(t) = a.ticket {
            sqlx::query("DELETE FROM lock_waiters WHERE ticket = $1")
                .bind(t)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Acquired::Granted(holder))
    }
}

impl LockStore for PostgresStore {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn acquire<'a>(&'a self, a: AcquireArgs<'a>) -> BoxFuture<'a, Result<Acquired, StoreError>> {
        async move { self.try_acquire(a).await.map_err(db_err("postgres")) }.boxed()
    }

    fn enqueue<'a>(
        &'a self,
        name: &'a str,
        waiter: Waiter,
        permits: u32,
        wait_ms: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            // One statement, as before node leases: the node's row goes in with its first
            // waiter (and whenever the heartbeat is late), in the same statement, so the line
            // never sees a waiter of a node it does not know yet.
            let with_node = self.renewal_due();
            let at = self.now_ms();
            let sql = if with_node {
                concat!(
                    "WITH node AS (INSERT INTO lock_nodes (node, expires_at_ms) VALUES ($6, ",
                    now!(),
                    " + $7) ON CONFLICT (node) DO UPDATE SET expires_at_ms = EXCLUDED.expires_at_ms) \
                     INSERT INTO lock_waiters (ticket, name, owner, permits, until_ms, node) VALUES ($1, $2, $3, $4, ",
                    now!(),
                    " + $5, $6)"
                )
            } else {
                concat!(
                    "INSERT INTO lock_waiters (ticket, name, owner, permits, until_ms, node) VALUES ($1, $2, $3, $4, ",
                    now!(),
                    " + $5, $6)"
                )
            };
            let mut q = sqlx::query(sql)
                .bind(&waiter.ticket)
                .bind(name)
                .bind(&waiter.owner)
                .bind(permits as i32)
                .bind(wait_ms as i64)
                .bind(&self.node);
            if with_node {
                q = q.bind(self.node_lease_ms as i64);
            }
            q.execute(&self.pool).await.map_err(db_err("postgres"))?;
            if with_node {
                self.renewed_ms.fetch_max(at, Ordering::Relaxed);
            }
            Ok(())
        }
        .boxed()
    }

    fn dequeue<'a>(
        &'a self,
        _name: &'a str,
        ticket: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            sqlx::query("DELETE FROM lock_waiters WHERE ticket = $1")
                .bind(ticket)
                .execute(&self.pool)
                .await
                .map(drop)
                .map_err(db_err("postgres"))
        }
        .boxed()
    }

    fn renew<'a>(
        &'a self,
        name: &'a str,
        lease_id: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Holder>, StoreError>> {
        async move {
            let row: Option<(String, i64, i64, i64)> = sqlx::query_as(concat!(
                "UPDATE lock_holders SET expires_at_ms = ",
                now!(),
                " + $3 WHERE lease_id = $1 AND name = $2 AND expires_at_ms > ",
                now!(),
                " RETURNING owner, token, acquired_at_ms, expires_at_ms"
            ))
            .bind(lease_id)
            .bind(name)
            .bind(ttl_ms as i64)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err("postgres"))?;
            Ok(row.map(|(owner, token, acquired, expires)| Holder {
                lease_id: lease_id.to_owned(),
                owner,
                token: token as u64,
                acquired_at_ms: acquired as u64,
                expires_at_ms: expires as u64,
            }))
        }
        .boxed()
    }

    fn release<'a>(
        &'a self,
        name: &'a str,
        lease_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let done = sqlx::query(concat!(
                "DELETE FROM lock_holders WHERE lease_id = $1 AND name = $2 AND expires_at_ms > ",
                now!()
            ))
            .bind(lease_id)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db_err("postgres"))?;
            Ok(done.rows_affected() == 1)
        }
        .boxed()
    }

    fn force_release<'a>(
        &'a self,
        name: &'a str,
        lease_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Holder>, StoreError>> {
        async move {
            // One statement, like `release`: a grant decides under the name's advisory lock on
            // the rows it reads, and a deleted row is just a freed permit to it.
            let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(concat!(
                "DELETE FROM lock_holders WHERE name = $1 AND ($2::text IS NULL OR lease_id = $2) \
                 AND expires_at_ms > ",
                now!(),
                " RETURNING lease_id, owner, token, acquired_at_ms, expires_at_ms"
            ))
            .bind(name)
            .bind(lease_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("postgres"))?;
            let mut evicted: Vec<Holder> = rows
                .into_iter()
                .map(|(lease_id, owner, token, acquired, expires)| Holder {
                    lease_id,
                    owner,
                    token: token as u64,
                    acquired_at_ms: acquired as u64,
                    expires_at_ms: expires as u64,
                })
                .collect();
            evicted.sort_by_key(|h| h.token);
            Ok(evicted)
        }
        .boxed()
    }

    fn inspect<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<LockInfo>, StoreError>> {
        async move {
            let (tx, lock, now) = self.load(name).await.map_err(db_err("postgres"))?;
            tx.commit().await.map_err(db_err("postgres"))?;
            Ok((!lock.is_idle()).then(|| LockInfo::of(name, &lock, now)))
        }
        .boxed()
    }

    fn heartbeat(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let mut conn = self.pool.acquire().await.map_err(db_err("postgres"))?;
            self.renew_node(&mut conn)
                .await
                .map_err(db_err("postgres"))?;
            // Rows of nodes gone for an hour: nobody's waiters point at them any more.
            sqlx::query(concat!(
                "DELETE FROM lock_nodes WHERE expires_at_ms < ",
                now!(),
                " - 3600000"
            ))
            .execute(&mut *conn)
            .await
            .map(drop)
            .map_err(db_err("postgres"))
        }
        .boxed()
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<LockInfo>, StoreError>> {
        async move {
            let names: Vec<String> = sqlx::query_scalar(concat!(
                "SELECT DISTINCT name FROM lock_holders WHERE starts_with(name, $1) AND name > $2 AND expires_at_ms > ",
                now!(),
                " ORDER BY name LIMIT $3"
            ))
            .bind(prefix)
            .bind(after)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("postgres"))?;
            let mut out = Vec::with_capacity(names.len());
            for n in names {
                if let Some(i) = self.inspect(&n).await? {
                    out.push(i);
                }
            }
            Ok(out)
        }
        .boxed()
    }
}
