//! Push delivery to a real HTTP target: signed requests, retries on failure, completion on 2xx,
//! dead after max_attempts, through a circuit breaker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use mortar_core::clock::SystemClock;
use mortar_jobs::service::QueueSettings;
use mortar_jobs::{JobsConfig, JobsService, NewJob};
use mortar_resilience::{Breaker, BreakerConfig};
use mortar_testkit::fixture;

#[derive(Default)]
struct Seen {
    requests: Vec<(String, String, String, String)>, // job id, attempt, signature, body
}

async fn wait_for_state(svc: &JobsService, id: &str, state: &str) -> mortar_jobs::store::Job {
    for _ in 0..200 {
        let (j, _) = svc.get(id).await.unwrap();
        if j.state == state {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "job {id} never reached {state}: {:?}",
        svc.get(id).await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_pushed_signed_retried_and_completed() {
    // The target: fails the first delivery of each job with 503 + Retry-After: 0, then 200.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = axum::Router::new().route(
        "/hook",
        post({
            let seen = seen.clone();
            move |headers: http::HeaderMap, body: String| {
                let seen = seen.clone();
                async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default()
                    };
                    let attempt = h("mortar-attempt");
                    seen.lock().unwrap().requests.push((
                        h("mortar-job-id"),
                        attempt.clone(),
                        h("mortar-signature"),
                        body,
                    ));
                    if attempt == "1" {
                        (
                            http::StatusCode::SERVICE_UNAVAILABLE,
                            [("retry-after", "0")],
                            "busy".to_owned(),
                        )
                    } else {
                        (
                            http::StatusCode::OK,
                            [("content-type", "application/json")],
                            r#"{"sent":true}"#.to_owned(),
                        )
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let storage = fixture::embedded(&[mortar_jobs::service::migrations()]).await;
    let cfg = JobsConfig {
        poll_ms: 20,
        ..JobsConfig::default()
    };
    let svc = JobsService::start(&storage, &cfg, Arc::new(SystemClock));
    let breakers: Arc<Mutex<Vec<Arc<Breaker>>>> = Arc::default();
    svc.attach_push({
        let breakers = breakers.clone();
        move |name| {
            let b = Breaker::new(name, BreakerConfig::default());
            breakers.lock().unwrap().push(b.clone());
            b
        }
    });
    svc.put_queue(
        "hooks",
        &QueueSettings {
            target_url: Some(target.clone()),
            secret: Some("s3cret".into()),
            ..QueueSettings::default()
        },
    )
    .await
    .unwrap();
    let id = svc
        .enqueue(&[NewJob::new(
            "hooks",
            "order.paid",
            serde_json::json!({"order": 7}),
        )])
        .await
        .unwrap()
        .remove(0)
        .job
        .id;
    let done = wait_for_state(&svc, &id, "completed").await;
    assert_eq!(
        done.attempt, 2,
        "503 was a failed attempt, retried at once (Retry-After: 0)"
    );
    assert_eq!(done.result.as_deref(), Some(r#"{"sent":true}"#));
    let (_, errors) = svc.get(&id).await.unwrap();
    assert!(
        errors[0].error.contains("503") && errors[0].error.contains("busy"),
        "{errors:?}"
    );
    let requests = std::mem::take(&mut seen.lock().unwrap().requests);
    assert_eq!(requests.len(), 2);
    for (job_id, _, sig, body) in &requests {
        assert_eq!(job_id, &id);
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            (&v["kind"], &v["payload"]["order"]),
            (&serde_json::json!("order.paid"), &serde_json::json!(7))
        );
        let t: u64 = sig
            .split(',')
            .next()
            .unwrap()
            .trim_start_matches("t=")
            .parse()
            .unwrap();
        assert_eq!(
            sig,
            &mortar_jobs::push::signature("s3cret", t, body),
            "the signature verifies"
        );
    }

    // An unreachable target: failed attempts, then dead, each error naming the target.
    svc.put_queue(
        "dead-end",
        &QueueSettings {
            target_url: Some("http://127.0.0.1:9/x".into()),
            ..QueueSettings::default()
        },
    )
    .await
    .unwrap();
    let mut j = NewJob::new("dead-end", "k", serde_json::json!({}));
    j.max_attempts = 2;
    j.backoff = serde_json::from_value(serde_json::json!({"base_ms": 1, "max_ms": 1})).unwrap();
    let id = svc.enqueue(&[j]).await.unwrap().remove(0).job.id;
    let dead = wait_for_state(&svc, &id, "dead").await;
    assert_eq!(dead.attempt, 2);
    let (_, errors) = svc.get(&id).await.unwrap();
    assert!(
        errors.iter().all(|e| e.error.contains("127.0.0.1:9")),
        "{errors:?}"
    );
    // A paused queue is not pushed.
    svc.set_paused("hooks", true).await.unwrap();
    let id = svc
        .enqueue(&[NewJob::new("hooks", "k", serde_json::json!({}))])
        .await
        .unwrap()
        .remove(0)
        .job
        .id;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(svc.get(&id).await.unwrap().0.state, "available");
    assert!(seen.lock().unwrap().requests.is_empty());
    svc.set_paused("hooks", false).await.unwrap();
    wait_for_state(&svc, &id, "completed").await;
}
