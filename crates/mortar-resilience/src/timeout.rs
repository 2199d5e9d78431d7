//! Timeouts that respect the request deadline: a call gets `min(timeout, time left)`.

use std::time::Duration;

/// The call did not finish in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {after_ms} ms{}", if *.deadline { " (request deadline)" } else { "" })]
pub struct Elapsed {
    pub after_ms: u64,
    /// The request deadline, not the call's own timeout, cut it short.
    pub deadline: bool,
}

/// The effective limit for a call with its own `timeout` under the current deadline.
pub fn effective(timeout: Option<Duration>) -> Option<(Duration, bool)> {
    match (timeout, mortar_core::deadline::remaining()) {
        (Some(t), Some(left)) if left < t => Some((left, true)),
        (Some(t), _) => Some((t, false)),
        (None, Some(left)) => Some((left, true)),
        (None, None) => None,
    }
}

/// Runs `fut` for at most `timeout`, and never past the current request deadline.
pub async fn call<T>(
    timeout: Option<Duration>,
    fut: impl Future<Output = T>,
) -> Result<T, Elapsed> {
    match effective(timeout) {
        None => Ok(fut.await),
        Some((limit, deadline)) => tokio::time::timeout(limit, fut).await.map_err(|_| Elapsed {
            after_ms: limit.as_millis() as u64,
            deadline,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_cuts_the_timeout() {
        let slow = tokio::time::sleep(Duration::from_secs(10));
        assert_eq!(
            call(Some(Duration::from_millis(100)), slow)
                .await
                .unwrap_err(),
            Elapsed {
                after_ms: 100,
                deadline: false
            }
        );
        let deadline = tokio::time::Instant::now() + Duration::from_millis(30);
        let err = mortar_core::deadline::scope(
            Some(deadline),
            call(
                Some(Duration::from_secs(1)),
                tokio::time::sleep(Duration::from_secs(5)),
            ),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err,
            Elapsed {
                after_ms: 30,
                deadline: true
            }
        );
        assert_eq!(call(None, async { 5 }).await, Ok(5));
    }
}
