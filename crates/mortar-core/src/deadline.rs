//! Request deadlines that flow through everything a request calls.
//!
//! In process, the deadline lives in the task context ([`scope`], [`current`], [`remaining`]);
//! across HTTP it travels as `Mortar-Deadline: <remaining milliseconds>`. The server's observe
//! middleware reads the header, runs the handler inside the deadline and answers 504 when it
//! passes; outgoing calls use [`inject`] so downstream servers inherit what is left. Nested
//! scopes only ever shorten the deadline.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::time::Instant;

use crate::problem::Problem;

/// The header carrying the remaining milliseconds.
pub static HEADER: HeaderName = HeaderName::from_static("mortar-deadline");

/// Longest deadline a caller may ask for (one day): larger values are a client bug.
pub const MAX_MS: u64 = 86_400_000;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// The deadline of the current task, if any.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// Time left before the current deadline (zero when passed), if any.
pub fn remaining() -> Option<Duration> {
    current().map(|d| d.saturating_duration_since(Instant::now()))
}

/// Runs `fut` with `deadline` (or the current one, whichever is sooner).
pub async fn scope<F: Future>(deadline: Option<Instant>, fut: F) -> F::Output {
    let effective = match (current(), deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    match effective {
        Some(d) => DEADLINE.scope(d, fut).await,
        None => fut.await,
    }
}

/// Reads `Mortar-Deadline` (remaining ms). A malformed value is the caller's error (400).
pub fn from_headers(headers: &HeaderMap) -> Result<Option<Instant>, Problem> {
    let Some(v) = headers.get(&HEADER) else {
        return Ok(None);
    };
    let ms = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|ms| *ms <= MAX_MS)
        .ok_or_else(|| {
            Problem::bad_request(format!(
                "Mortar-Deadline must be the remaining milliseconds, 0 to {MAX_MS}"
            ))
        })?;
    Ok(Some(Instant::now() + Duration::from_millis(ms)))
}

/// Sets `Mortar-Deadline` on an outgoing request to what is left of the current deadline.
pub fn inject(headers: &mut HeaderMap) {
    if let Some(left) = remaining() {
        headers.insert(HEADER.clone(), HeaderValue::from(left.as_millis() as u64));
    }
}

/// The 504 answer when a request's deadline passes.
pub fn exceeded() -> Problem {
    Problem::new(
        StatusCode::GATEWAY_TIMEOUT,
        "deadline-exceeded",
        "deadline exceeded",
        "the request's Mortar-Deadline passed before it finished",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn nested_scopes_only_shorten() {
        assert!(current().is_none());
        let outer = Instant::now() + Duration::from_millis(100);
        scope(Some(outer), async {
            assert_eq!(current(), Some(outer));
            scope(Some(outer + Duration::from_secs(5)), async {
                assert_eq!(current(), Some(outer), "a longer inner deadline is ignored");
            })
            .await;
            let inner = Instant::now() + Duration::from_millis(10);
            scope(Some(inner), async { assert_eq!(current(), Some(inner)) }).await;
            tokio::time::advance(Duration::from_millis(40)).await;
            assert_eq!(remaining(), Some(Duration::from_millis(60)));
            let mut h = HeaderMap::new();
            inject(&mut h);
            assert_eq!(h[&HEADER], "60");
        })
        .await;
    }

    #[tokio::test]
    async fn header_parsing() {
        let mut h = HeaderMap::new();
        assert!(from_headers(&h).unwrap().is_none());
        h.insert(HEADER.clone(), HeaderValue::from_static("250"));
        assert!(from_headers(&h).unwrap().is_some());
        for bad in ["-1", "soon", "99999999999"] {
            h.insert(HEADER.clone(), HeaderValue::from_static(bad));
            assert_eq!(from_headers(&h).unwrap_err().status, 400, "{bad}");
        }
    }
}
