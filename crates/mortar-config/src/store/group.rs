//! Group commit of change sets on PostgreSQL. Writers serialize on the `config_meta` row lock,
//! held to the commit's WAL flush, so one transaction per write caps a cluster at one flush per
//! revision. Instead the writes of a node that queue while its transaction is in flight go
//! together in its next one: one lock, each change set read, decided and written in turn (each
//! its own revision, seeing those before it), one COMMIT for all. An idle node writes at once,
//! as before. Nothing is answered before the commit; a failed transaction fails every write in
//! it (none is acknowledged), a refused one (CAS, validation) writes nothing and refuses alone.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use mortar_core::storage::group::Group;
use sqlx::PgPool;
use tokio::sync::oneshot;

use super::{State, Write, WriteError, WriteSet, pg_write, state_pg};

/// The most change sets in one transaction.
const MAX_GROUP: usize = 256;

/// A change set's answer.
pub(super) type Outcome<E> = Result<(i64, Vec<Write>), WriteError<E>>;

/// A change set waiting for its group's transaction.
trait Pending: Send {
    /// Reads, decides and writes inside the group's transaction; `head` is the revision before
    /// it. Returns the revision after it (`head` when refused).
    fn apply<'a>(
        &'a mut self,
        tx: &'a mut sqlx::PgConnection,
        head: i64,
    ) -> BoxFuture<'a, Result<i64, sqlx::Error>>;
    /// The transaction committed: answers.
    fn committed(self: Box<Self>);
    /// It did not: answers with why.
    fn failed(self: Box<Self>, why: &sqlx::Error);
}

struct Item<E, F> {
    set: WriteSet,
    decide: Option<F>,
    decided: Option<Result<(i64, Vec<Write>), E>>,
    reply: oneshot::Sender<Outcome<E>>,
}

impl<E, F> Pending for Item<E, F>
where
    E: Send + 'static,
    F: FnOnce(&State) -> Result<Vec<Write>, E> + Send + 'static,
{
    fn apply<'a>(
        &'a mut self,
        tx: &'a mut sqlx::PgConnection,
        head: i64,
    ) -> BoxFuture<'a, Result<i64, sqlx::Error>> {
        Box::pin(async move {
            let state = state_pg(tx, head, &self.set).await?;
            let Some(decide) = self.decide.take() else {
                return Ok(head);
            };
            match decide(&state) {
                Err(e) => {
                    self.decided = Some(Err(e));
                    Ok(head)
                }
                Ok(writes) => {
                    let revision = pg_write(tx, &self.set, &writes).await?;
                    self.decided = Some(Ok((revision, writes)));
                    Ok(revision)
                }
            }
        })
    }

    fn committed(self: Box<Self>) {
        let out = match self.decided {
            Some(Ok(done)) => Ok(done),
            Some(Err(e)) => Err(WriteError::Refused(e)),
            None => Err(WriteError::Store(sqlx::Error::Protocol(
                "the change set was not applied".into(),
            ))),
        };
        let _ = self.reply.send(out);
    }

    fn failed(self: Box<Self>, why: &sqlx::Error) {
        let _ = self.reply.send(Err(WriteError::Store(copy(why))));
    }
}

/// `e` for each write of a failed group, keeping what matters to the caller: whether the
/// database was unreachable (a 503 naming it, and the gate trips) or failed otherwise.
fn copy(e: &sqlx::Error) -> sqlx::Error {
    if mortar_core::storage::gate::is_connection_error(e) {
        sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            e.to_string(),
        ))
    } else {
        sqlx::Error::Protocol(e.to_string())
    }
}

/// The queue of one node's change sets (`mortar_core::storage::group`), in transactions of at
/// most [`MAX_GROUP`].
#[derive(Debug, Clone)]
pub(super) struct WriteGroup {
    queue: Arc<Group<Box<dyn Pending>>>,
}

impl Default for WriteGroup {
    fn default() -> Self {
        Self {
            queue: Arc::new(Group::new(MAX_GROUP)),
        }
    }
}

impl WriteGroup {
    /// Writes one change set with whatever else is queued; committed when this returns.
    pub(super) async fn write<E, F>(&self, pool: &PgPool, set: WriteSet, decide: F) -> Outcome<E>
    where
        E: Send + 'static,
        F: FnOnce(&State) -> Result<Vec<Write>, E> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let item = Item {
            set,
            decide: Some(decide),
            decided: None,
            reply,
        };
        let pool = pool.clone();
        self.queue
            .push(Box::new(item), move |batch| commit(pool.clone(), batch));
        answer.await.unwrap_or_else(|_| {
            Err(WriteError::Store(sqlx::Error::Protocol(
                "the write's transaction ended unexpectedly".into(),
            )))
        })
    }
}

/// One transaction for `batch`: the revision lock, each change set in turn, COMMIT; then the
/// answers.
async fn commit(pool: PgPool, mut batch: Vec<Box<dyn Pending>>) {
    let done = async {
        let mut tx = pool.begin().await?;
        let mut head: i64 =
            sqlx::query_scalar("SELECT revision FROM config_meta WHERE id = 1 FOR UPDATE")
                .fetch_one(&mut *tx)
                .await?;
        for item in &mut batch {
            head = item.apply(&mut tx, head).await?;
        }
        tx.commit().await
    }
    .await;
    match done {
        Ok(()) => batch.into_iter().for_each(Pending::committed),
        Err(e) => {
            for item in batch {
                item.failed(&e);
            }
        }
    }
}
