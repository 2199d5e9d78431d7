//! Queues: listing them with their counts, reading one, replacing its settings, pausing and
//! resuming.

use super::validate::check_queue;
use super::{JobsService, QueueInfo, QueueSettings};
use crate::error::JobsError;
use crate::store::QueueCounts;

impl JobsService {
    /// Every queue that has settings or jobs, with counts.
    pub async fn queues(&self) -> Result<Vec<QueueInfo>, JobsError> {
        let rows = self.store.all_queue_rows().await.map_err(self.db())?;
        let counts = self
            .store
            .counts(self.clock.now_ms())
            .await
            .map_err(self.db())?;
        let mut names: Vec<String> = rows
            .iter()
            .map(|r| r.queue.clone())
            .chain(counts.iter().map(|(q, _)| q.clone()))
            .collect();
        names.sort();
        names.dedup();
        Ok(names
            .into_iter()
            .map(|q| {
                let row = rows.iter().find(|r| r.queue == q);
                QueueInfo {
                    settings: row.map(QueueSettings::of).unwrap_or_default(),
                    has_secret: row.is_some_and(|r| r.secret.is_some()),
                    counts: counts
                        .iter()
                        .find(|(c, _)| *c == q)
                        .map(|(_, c)| c.clone())
                        .unwrap_or_default(),
                    queue: q,
                }
            })
            .collect())
    }

    pub async fn queue(&self, queue: &str) -> Result<QueueInfo, JobsError> {
        check_queue(queue)?;
        Ok(self
            .queues()
            .await?
            .into_iter()
            .find(|q| q.queue == queue)
            .unwrap_or_else(|| QueueInfo {
                queue: queue.to_owned(),
                settings: QueueSettings::default(),
                has_secret: false,
                counts: QueueCounts::default(),
            }))
    }

    /// Replaces a queue's settings.
    pub async fn put_queue(&self, queue: &str, s: &QueueSettings) -> Result<QueueInfo, JobsError> {
        check_queue(queue)?;
        let errors = s.validate();
        if !errors.is_empty() {
            return Err(JobsError::Invalid(errors));
        }
        self.store
            .put_queue(&s.row(queue, self.clock.now_ms()))
            .await
            .map_err(self.db())?;
        self.settings_changed.notify_waiters();
        self.announce();
        self.queue(queue).await
    }

    /// Pauses (no leases) or resumes a queue, keeping its other settings.
    pub async fn set_paused(&self, queue: &str, paused: bool) -> Result<QueueInfo, JobsError> {
        check_queue(queue)?;
        let rows = self
            .store
            .queue_rows(&[queue.to_owned()])
            .await
            .map_err(self.db())?;
        let mut s = rows.first().map(QueueSettings::of).unwrap_or_default();
        s.paused = paused;
        self.store
            .put_queue(&s.row(queue, self.clock.now_ms()))
            .await
            .map_err(self.db())?;
        self.settings_changed.notify_waiters();
        self.announce();
        self.queue(queue).await
    }
}
