//! A job's states and uniqueness modes, as the store keeps them and the API speaks them.

/// A job's state.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting for its `run_at`.
    Scheduled,
    /// Ready to be leased.
    Available,
    /// Leased by a worker until its lease deadline.
    Running,
    /// Failed; waiting for its next attempt.
    Retryable,
    Completed,
    /// Failed for good (attempts exhausted or not retryable): the dead-letter queue.
    Dead,
    Cancelled,
}

impl State {
    pub const ALL: [State; 7] = [
        State::Scheduled,
        State::Available,
        State::Running,
        State::Retryable,
        State::Completed,
        State::Dead,
        State::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Scheduled => "scheduled",
            State::Available => "available",
            State::Running => "running",
            State::Retryable => "retryable",
            State::Completed => "completed",
            State::Dead => "dead",
            State::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// How long a job with a `unique_key` blocks another with the same key in its queue.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum UniqueWhile {
    /// Until it starts (scheduled, available; a retry after a failure does not block again).
    Queued,
    /// Until it finishes: completed, dead or cancelled (queued, running and retryable block).
    #[default]
    Active,
    /// For `unique_for_ms` after it was enqueued, whatever its state.
    ForMs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
    }
}
