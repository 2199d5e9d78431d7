//! The same cron behaviour on SQLite (embedded) and PostgreSQL (cluster), on injected time:
//! exactly-once fires, misfire and overlap policies, the sweeper, operations, bad input,
//! batch claims of thousands of runs racing each other, and several nodes ticking the same
//! database at once.

use std::collections::HashSet;
use std::sync::Arc;

use mortar_core::clock::ManualClock;
use mortar_core::storage::Storage;
use mortar_core::with_pool;
use mortar_cron::error::CronError;
use mortar_cron::store::{CronStore, Decision, Run, Schedule};
use mortar_cron::{CronConfig, CronService, ScheduleSpec};
use mortar_jobs::{JobsConfig, JobsService};
use mortar_testkit::fixture;
use serde_json::json;

/// 2027-01-01T00:00:00Z, a whole minute.
const T0: u64 = 1_798_761_600_000;
const MIN: u64 = 60_000;

struct Node {
    cron: Arc<CronService>,
    jobs: Arc<JobsService>,
}

struct Env {
    clock: ManualClock,
    storage: Storage,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn new(database_url: Option<String>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let migrations = [
            mortar_jobs::service::migrations(),
            mortar_cron::service::migrations(),
        ];
        let storage = fixture::storage_at(dir.path(), database_url, &migrations).await;
        Self {
            clock: ManualClock::at(T0),
            storage,
            _dir: dir,
        }
    }

    /// One more node on the same database and clock.
    fn node(&self) -> Node {
        let jobs = JobsService::start(
            &self.storage,
            &JobsConfig::default(),
            Arc::new(self.clock.clone()),
        );
        let cron = CronService::new(
            &self.storage,
            jobs.clone(),
            &CronConfig::default(),
            Arc::new(self.clock.clone()),
        );
        Node { cron, jobs }
    }

    async fn count(&self, sql: &str) -> i64 {
        with_pool!(&self.storage.durable, pool => sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(pool).await.unwrap())
    }
}

fn spec(name: &str, expr: &str, extra: &serde_json::Value) -> ScheduleSpec {
    let mut v = json!({"name": name, "expr": expr, "job": {"queue": format!("q-{name}"), "kind": "tick", "payload": {"s": name}}});
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    serde_json::from_value(v).unwrap()
}

async fn enqueued(n: &Node, name: &str) -> Vec<(u64, String, String)> {
    let mut out: Vec<(u64, String, String)> = n
        .cron
        .runs(name, None, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                (r.run.fire_at_ms as u64 - T0) / 1000,
                r.run.kind.clone(),
                r.run.status.clone(),
            )
        })
        .collect();
    out.reverse();
    out
}

async fn fires_once_per_time_and_history_shows_the_job(env: &Env, n: &Node) {
    let s = n
        .cron
        .create(&spec("every-minute", "* * * * *", &json!({})))
        .await
        .unwrap();
    assert_eq!(s.next_fire_at_ms, Some((T0 + MIN) as i64));
    assert_eq!(n.cron.tick().await.unwrap(), 0, "nothing due yet");
    env.clock.set(T0 + MIN + 30);
    assert_eq!(n.cron.tick().await.unwrap(), 1);
    assert_eq!(
        n.cron.tick().await.unwrap(),
        0,
        "a fire time is claimed once"
    );
    let runs = n.cron.runs("every-minute", None, 10).await.unwrap();
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(
        (
            run.run.fire_at_ms as u64,
            run.run.kind.as_str(),
            run.run.status.as_str()
        ),
        (T0 + MIN, "scheduled", "enqueued")
    );
    assert_eq!(run.job_state.as_deref(), Some("available"));
    let (job, _) = n
        .jobs
        .get(run.run.job_id.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(
        job.unique_key.as_deref(),
        Some(format!("cron:{}:{}", s.id, T0 + MIN).as_str())
    );
    assert_eq!(job.queue, "q-every-minute");
    let shown = n.cron.get("every-minute").await.unwrap();
    assert_eq!(shown.last_fire_at_ms, Some((T0 + MIN) as i64));
    assert_eq!(shown.next_fire_at_ms, Some((T0 + 2 * MIN) as i64));
    n.cron.delete("every-minute").await.unwrap();
}

async fn misfire_policies_after_five_minutes_down(env: &Env, n: &Node) {
    env.clock.set(T0);
    for (name, policy, window) in [
        ("mf-skip", "skip", 3_600_000),
        ("mf-once", "fire_once", 3_600_000),
        ("mf-all", "fire_all", 3_600_000),
        ("mf-window", "fire_all", 150_000),
    ] {
        n.cron
            .create(&spec(
                name,
                "* * * * *",
                &json!({"misfire": policy, "catchup_window_ms": window}),
            ))
            .await
            .unwrap();
    }
    // Every node down from T0 until 5 minutes and 2 seconds after the first fire time.
    env.clock.set(T0 + 6 * MIN + 2_000);
    n.cron.tick().await.unwrap();
    let sched = |m: u64| (m * 60, "scheduled".to_owned(), "enqueued".to_owned());
    let late = |m: u64| (m * 60, "catchup".to_owned(), "enqueued".to_owned());
    assert_eq!(
        enqueued(n, "mf-skip").await,
        [sched(6)],
        "missed ones dropped"
    );
    assert_eq!(
        enqueued(n, "mf-once").await,
        [late(5), sched(6)],
        "the latest missed one, once"
    );
    assert_eq!(
        enqueued(n, "mf-all").await,
        [late(1), late(2), late(3), late(4), late(5), sched(6)]
    );
    assert_eq!(
        enqueued(n, "mf-window").await,
        [late(4), late(5), sched(6)],
        "only what the 2.5 minute catch-up window holds"
    );
    for name in ["mf-skip", "mf-once", "mf-all", "mf-window"] {
        let s = n.cron.get(name).await.unwrap();
        assert_eq!(s.next_fire_at_ms, Some((T0 + 7 * MIN) as i64));
        n.cron.delete(name).await.unwrap();
    }
}

async fn finish_job(n: &Node, queue: &str) {
    let leased = n.jobs.lease(&[queue.to_owned()], 10, 0, "w").await.unwrap();
    assert!(!leased.is_empty(), "a job to finish on {queue}");
    for j in leased {
        n.jobs
            .complete(&j.id, j.lease_id.as_deref().unwrap(), None)
            .await
            .unwrap();
    }
}

async fn overlap_policies_with_slow_jobs(env: &Env, n: &Node) {
    env.clock.set(T0);
    for (name, policy) in [
        ("ov-allow", "allow"),
        ("ov-skip", "skip"),
        ("ov-buffer", "buffer_one"),
    ] {
        n.cron
            .create(&spec(name, "* * * * *", &json!({"overlap": policy})))
            .await
            .unwrap();
    }
    // Minute 1 enqueues; its job is still unfinished at minutes 2 and 3.
    for m in 1..=3 {
        env.clock.set(T0 + m * MIN + 100);
        n.cron.tick().await.unwrap();
    }
    let e = |m: u64, status: &str| (m * 60, "scheduled".to_owned(), status.to_owned());
    assert_eq!(
        enqueued(n, "ov-allow").await,
        [e(1, "enqueued"), e(2, "enqueued"), e(3, "enqueued")]
    );
    assert_eq!(
        enqueued(n, "ov-skip").await,
        [e(1, "enqueued"), e(2, "skipped"), e(3, "skipped")]
    );
    assert_eq!(
        enqueued(n, "ov-buffer").await,
        [e(1, "enqueued"), e(2, "buffered"), e(3, "skipped")],
        "one fire waits; later ones are skipped"
    );
    // The slow job finishes: the buffered fire is enqueued by the next tick's sweep.
    finish_job(n, "q-ov-buffer").await;
    finish_job(n, "q-ov-skip").await;
    env.clock.set(T0 + 3 * MIN + 1_500);
    n.cron.tick().await.unwrap();
    assert_eq!(
        enqueued(n, "ov-buffer").await,
        [e(1, "enqueued"), e(2, "enqueued"), e(3, "skipped")]
    );
    env.clock.set(T0 + 4 * MIN + 100);
    n.cron.tick().await.unwrap();
    assert_eq!(
        enqueued(n, "ov-skip").await,
        [
            e(1, "enqueued"),
            e(2, "skipped"),
            e(3, "skipped"),
            e(4, "enqueued")
        ],
        "the previous job finished: fires again"
    );
    assert_eq!(
        enqueued(n, "ov-buffer").await.last(),
        Some(&e(4, "buffered")),
        "minute 2's job is unfinished"
    );
    for name in ["ov-allow", "ov-skip", "ov-buffer"] {
        n.cron.delete(name).await.unwrap();
    }
}

async fn a_run_left_claimed_by_a_dead_node_is_enqueued_once(env: &Env, one: &Node, two: &Node) {
    env.clock.set(T0);
    let sched = one
        .cron
        .create(&spec("orphan", "0 0 * * *", &json!({})))
        .await
        .unwrap();
    // A node claimed this fire and died before enqueueing it.
    let store = CronStore::new(env.storage.durable.clone());
    let claimed = store
        .claim(&sched.id, &[(T0 - MIN, "scheduled")], "dead-node", T0)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        one.cron.sweep(T0 + 1_000).await.unwrap(),
        0,
        "not stale yet"
    );
    // Two nodes sweep at once: one job between them.
    let later = T0 + CronConfig::default().sweep_after_ms + 1;
    let (r1, r2) = tokio::join!(one.cron.sweep(later), two.cron.sweep(later));
    assert!(r1.unwrap() + r2.unwrap() >= 1);
    let runs = one.cron.runs("orphan", None, 10).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].run.status, "enqueued");
    let key = format!("cron:{}:{}", sched.id, T0 - MIN);
    let jobs = env
        .count(&format!(
            "SELECT COUNT(*) FROM jobs_jobs WHERE unique_key = '{key}'"
        ))
        .await;
    assert_eq!(
        jobs, 1,
        "the unique key made the second enqueue the same job"
    );
    assert_eq!(one.cron.sweep(later + 10_000).await.unwrap(), 0, "settled");
    one.cron.delete("orphan").await.unwrap();
}

async fn trigger_backfill_pause_resume_update(env: &Env, n: &Node) {
    env.clock.set(T0);
    let s = n
        .cron
        .create(&spec(
            "ops",
            "0 * * * *",
            &json!({"timezone": "Europe/London"}),
        ))
        .await
        .unwrap();
    let run = n.cron.trigger("ops").await.unwrap();
    assert_eq!(
        (run.kind.as_str(), run.status.as_str()),
        ("manual", "enqueued")
    );
    assert_eq!(run.fire_at_ms as u64, T0);
    let again = n.cron.trigger(&s.id).await.unwrap();
    assert_ne!(
        again.fire_at_ms, run.fire_at_ms,
        "by id too; a distinct run"
    );
    // The schedule's latest run, of any kind: the second manual one.
    let last = n.cron.last_runs(std::slice::from_ref(&s)).await.unwrap();
    assert_eq!(
        last.iter()
            .map(|r| (r.kind.as_str(), r.fire_at_ms))
            .collect::<Vec<_>>(),
        [("manual", again.fire_at_ms)]
    );

    // Hourly fires between 3 and 6 hours ago: 3 of them (exclusive from, inclusive to).
    let hour = 3_600_000;
    let from = mortar_core::clock::rfc3339(T0 - 6 * hour);
    let to = mortar_core::clock::rfc3339(T0 - 3 * hour);
    let done = n.cron.backfill("ops", &from, &to).await.unwrap();
    assert_eq!((done.runs.len(), done.already), (3, 0));
    assert!(
        done.runs
            .iter()
            .all(|r| r.kind == "backfill" && r.status == "enqueued")
    );
    let wider = mortar_core::clock::rfc3339(T0 - 2 * hour);
    let done = n.cron.backfill("ops", &from, &wider).await.unwrap();
    assert_eq!(
        (done.runs.len(), done.already),
        (1, 3),
        "claimed times are not fired twice"
    );
    let e = n.cron.backfill("ops", &to, &from).await.unwrap_err();
    assert!(
        matches!(e, CronError::Rejected(ref f) if f[0].field == "to"),
        "{e:?}"
    );
    let future = mortar_core::clock::rfc3339(T0 + hour);
    assert!(matches!(
        n.cron.backfill("ops", &from, &future).await,
        Err(CronError::Rejected(_))
    ));
    assert!(matches!(
        n.cron.backfill("ops", "yesterday", &to).await,
        Err(CronError::Invalid(_))
    ));

    let paused = n.cron.set_enabled("ops", false).await.unwrap();
    assert!(!paused.enabled);
    env.clock.set(T0 + 2 * hour + 10);
    n.cron.tick().await.unwrap();
    let scheduled = |runs: &[mortar_cron::service::RunInfo]| {
        runs.iter().filter(|r| r.run.kind == "scheduled").count()
    };
    assert_eq!(
        scheduled(&n.cron.runs("ops", None, 100).await.unwrap()),
        0,
        "paused"
    );
    let resumed = n.cron.set_enabled("ops", true).await.unwrap();
    assert_eq!(
        resumed.next_fire_at_ms,
        Some((T0 + 3 * hour) as i64),
        "the paused stretch is not caught up"
    );

    // Update: every 30 minutes from the next fire on.
    let updated = n
        .cron
        .replace(
            "ops",
            &spec("ops", "*/30 * * * *", &json!({"timezone": "Europe/London"})),
        )
        .await
        .unwrap();
    assert_eq!(updated.expr, "*/30 * * * *");
    assert_eq!(
        updated.next_fire_at_ms,
        Some((T0 + 2 * hour + 30 * MIN) as i64)
    );
    assert!(updated.version > s.version);
    let e = n
        .cron
        .replace("ops", &spec("renamed", "* * * * *", &json!({})))
        .await
        .unwrap_err();
    assert!(matches!(e, CronError::Rejected(_)), "{e:?}");
    n.cron.delete("ops").await.unwrap();
    assert!(matches!(
        n.cron.get("ops").await,
        Err(CronError::NotFound(_))
    ));
    assert!(matches!(
        n.cron.trigger("ops").await,
        Err(CronError::NotFound(_))
    ));
}

fn fields(e: CronError) -> (u16, Vec<String>) {
    match e {
        CronError::Invalid(f) => (400, f.into_iter().map(|f| f.field).collect()),
        CronError::Rejected(f) => (422, f.into_iter().map(|f| f.field).collect()),
        other => panic!("not a validation error: {other:?}"),
    }
}

async fn bad_input(env: &Env, n: &Node) {
    env.clock.set(T0);
    let cases: Vec<(serde_json::Value, u16, &str)> = vec![
        (json!({"name": "b", "expr": "0 25 * * *"}), 400, "expr"),
        (json!({"name": "b", "expr": "* * *"}), 400, "expr"),
        (
            json!({"name": "b", "expr": "* * * * *", "timezone": "Mars/Base"}),
            400,
            "timezone",
        ),
        (
            json!({"name": "b", "expr": "* * * * *", "overlap": "sometimes"}),
            400,
            "overlap",
        ),
        (
            json!({"name": "b", "expr": "* * * * *", "misfire": "retry"}),
            400,
            "misfire",
        ),
        (
            json!({"name": "b", "expr": "* * * * *", "start_at": "soon"}),
            400,
            "start_at",
        ),
        (json!({"name": "", "expr": "* * * * *"}), 400, "name"),
        (
            json!({"name": "b", "expr": "* * * * *", "start_at": "2027-02-01T00:00:00Z", "end_at": "2027-01-15T00:00:00Z"}),
            422,
            "end_at",
        ),
        (
            json!({"name": "b", "expr": "* * * * *", "end_at": "2026-01-01T00:00:00Z"}),
            422,
            "end_at",
        ),
        (
            json!({"name": "b", "expr": "* * * * *", "catchup_window_ms": 999_999_999_999u64}),
            422,
            "catchup_window_ms",
        ),
        (
            json!({"name": "b", "expr": "* * * * *", "jitter_ms": 86_400_000}),
            422,
            "jitter_ms",
        ),
        (json!({"name": "b", "expr": "0 0 30 2 *"}), 422, "expr"),
    ];
    for (body, status, field) in cases {
        let mut v = body.clone();
        v["job"] = json!({"queue": "q", "kind": "k"});
        let spec: ScheduleSpec = serde_json::from_value(v).unwrap();
        let e = n.cron.create(&spec).await.unwrap_err();
        let (got, fields) = fields(e);
        assert_eq!((got, fields[0].as_str()), (status, field), "{body}");
    }
    for (job, status, field) in [
        (json!({"kind": "k"}), 400, "job"),
        (json!({"queue": "q", "kind": "k", "colour": 1}), 400, "job"),
        (
            json!({"queue": "q", "kind": "k", "unique_key": "x"}),
            422,
            "job.unique_key",
        ),
        (
            json!({"queue": "q", "kind": "k", "max_attempts": 0}),
            422,
            "job.max_attempts",
        ),
        (json!({"queue": "no spaces", "kind": "k"}), 422, "job.queue"),
    ] {
        let spec: ScheduleSpec =
            serde_json::from_value(json!({"name": "b", "expr": "* * * * *", "job": job})).unwrap();
        let (got, fields) = fields(n.cron.create(&spec).await.unwrap_err());
        assert_eq!((got, fields[0].as_str()), (status, field), "{job}");
    }
    n.cron
        .create(&spec("dup", "* * * * *", &json!({})))
        .await
        .unwrap();
    assert!(matches!(
        n.cron.create(&spec("dup", "* * * * *", &json!({}))).await,
        Err(CronError::Conflict(_))
    ));
    n.cron.delete("dup").await.unwrap();
    let (s, f) = fields(n.cron.preview("*/5 * * 13 *", "UTC", None, 5).unwrap_err());
    assert_eq!((s, f[0].as_str()), (400, "expr"));
    let times = n
        .cron
        .preview(
            "30 2 * * *",
            "America/New_York",
            Some("2026-03-07T00:00:00Z"),
            2,
        )
        .unwrap();
    assert_eq!(
        times
            .iter()
            .map(|t| mortar_core::clock::rfc3339(*t))
            .collect::<Vec<_>>(),
        ["2026-03-07T07:30:00.000Z", "2026-03-08T07:00:00.000Z"]
    );
}

/// The `(schedule, fire time)` of each run, asserting there is no repeat.
fn keys(runs: &[Run]) -> HashSet<(String, i64)> {
    let keys: HashSet<_> = runs
        .iter()
        .map(|r| (r.schedule_id.clone(), r.fire_at_ms))
        .collect();
    assert_eq!(keys.len(), runs.len(), "a run returned twice");
    keys
}

/// Two claimers take the same due runs at once, thousands per batch: each run goes to exactly
/// one of them, and together they take every run.
async fn batch_claims_race_exactly_once(env: &Env, n: &Node) {
    env.clock.set(T0);
    let mut ids = HashSet::new();
    for i in 0..40 {
        let s = n
            .cron
            .create(&spec(&format!("bulk-{i:02}"), "* * * * * *", &json!({})))
            .await
            .unwrap();
        ids.insert(s.id);
    }
    let a = CronStore::new(env.storage.durable.clone());
    let b = CronStore::new(env.storage.durable.clone());

    // Ticks: every schedule is 100 fires behind, 4 000 runs; each claimer takes up to 25
    // schedules (2 500 runs) per batch.
    let now = T0 + 100_000;
    let decide = move |s: &Schedule| Decision {
        fires: (s.next_fire_at_ms.unwrap() as u64..=now)
            .step_by(1000)
            .map(|t| (t, "catchup"))
            .collect(),
        next_fire_at_ms: Some(now + 1000),
    };
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    loop {
        let (ra, rb) = tokio::join!(
            a.claim_due(now, 25, "a", decide),
            b.claim_due(now, 25, "b", decide)
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        if ra.is_empty() && rb.is_empty() {
            break;
        }
        for (claimed, got) in [(ra, &mut got_a), (rb, &mut got_b)] {
            for c in claimed {
                assert_eq!(c.schedule.next_fire_at_ms, Some((now + 1000) as i64));
                assert_eq!(c.schedule.last_fire_at_ms, Some(now as i64));
                got.extend(c.runs);
            }
        }
    }
    let (ka, kb) = (keys(&got_a), keys(&got_b));
    assert!(ka.is_disjoint(&kb), "a run claimed by both");
    let all: HashSet<_> = ka.union(&kb).cloned().collect();
    let expected: HashSet<_> = ids
        .iter()
        .flat_map(|id| (1..=100).map(move |i| (id.clone(), (T0 + i * 1000) as i64)))
        .collect();
    assert_eq!(all, expected, "every due run claimed");
    assert_eq!(
        env.count("SELECT COUNT(*) FROM cron_runs WHERE node = 'a'")
            .await,
        got_a.len() as i64
    );
    for id in &ids {
        let s = n.cron.get(id).await.unwrap();
        assert_eq!(s.next_fire_at_ms, Some((now + 1000) as i64), "advanced");
    }

    // Trigger/backfill claims of overlapping fire times of one schedule: 3 000 each, 1 500
    // in common.
    let id = ids.iter().next().unwrap();
    let times = |from: u64, to: u64| -> Vec<(u64, &'static str)> {
        (from..to).map(|i| (T0 - i * 1000, "backfill")).collect()
    };
    let (fa, fb) = (times(0, 3000), times(1500, 4500));
    let (ra, rb) = tokio::join!(a.claim(id, &fa, "a", now), b.claim(id, &fb, "b", now));
    let (ka, kb) = (keys(&ra.unwrap()), keys(&rb.unwrap()));
    assert!(ka.is_disjoint(&kb), "a fire time claimed by both");
    let all: HashSet<_> = ka.union(&kb).map(|k| k.1 as u64).collect();
    let asked: HashSet<_> = fa.iter().chain(&fb).map(|f| f.0).collect();
    assert_eq!((all.len(), &all), (4500, &asked));
    assert!(
        a.claim(id, &fb, "a", now).await.unwrap().is_empty(),
        "claimed once"
    );

    for id in &ids {
        n.cron.delete(id).await.unwrap();
    }
    assert_eq!(env.count("SELECT COUNT(*) FROM cron_runs").await, 0);
}

async fn suite(env: &Env) {
    let one = env.node();
    let two = env.node();
    fires_once_per_time_and_history_shows_the_job(env, &one).await;
    misfire_policies_after_five_minutes_down(env, &one).await;
    overlap_policies_with_slow_jobs(env, &one).await;
    a_run_left_claimed_by_a_dead_node_is_enqueued_once(env, &one, &two).await;
    trigger_backfill_pause_resume_update(env, &one).await;
    bad_input(env, &one).await;
    batch_claims_race_exactly_once(env, &one).await;
}

#[tokio::test]
async fn sqlite() {
    let env = Env::new(None).await;
    suite(&env).await;
}

#[tokio::test]
async fn postgres() {
    let Some(services) = mortar_testkit::services("cron postgres conformance") else {
        return;
    };
    let db = services.create_database().await.unwrap();
    let env = Env::new(Some(db.url.clone())).await;
    suite(&env).await;
    env.storage.close().await;
}

/// Three nodes tick the same database at the same instants: every (schedule, second) is
/// claimed and enqueued exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_fire_each_time_once_on_postgres() {
    let Some(services) = mortar_testkit::services("cron postgres concurrency") else {
        return;
    };
    let db = services.create_database().await.unwrap();
    let env = Env::new(Some(db.url.clone())).await;
    let nodes: Vec<Node> = (0..3).map(|_| env.node()).collect();
    for i in 0..40 {
        nodes[0]
            .cron
            .create(&spec(
                &format!("s{i:02}"),
                "* * * * * *",
                &json!({"misfire": "fire_all"}),
            ))
            .await
            .unwrap();
    }
    let seconds = 30u64;
    for s in 1..=seconds {
        env.clock.set(T0 + s * 1000 + 5);
        let ticks: Vec<_> = nodes
            .iter()
            .map(|n| {
                let c = n.cron.clone();
                tokio::spawn(async move { c.tick().await.unwrap() })
            })
            .collect();
        let mut claimed = 0;
        for t in ticks {
            claimed += t.await.unwrap();
        }
        assert_eq!(
            claimed, 40,
            "second {s}: each schedule's fire claimed by exactly one node"
        );
    }
    let runs = env.count("SELECT COUNT(*) FROM cron_runs").await;
    let jobs = env
        .count("SELECT COUNT(*) FROM jobs_jobs WHERE unique_key LIKE 'cron:%'")
        .await;
    let distinct = env
        .count("SELECT COUNT(DISTINCT unique_key) FROM jobs_jobs WHERE unique_key LIKE 'cron:%'")
        .await;
    let expected = 40 * seconds as i64;
    assert_eq!((runs, jobs, distinct), (expected, expected, expected));
    env.storage.close().await;
}
