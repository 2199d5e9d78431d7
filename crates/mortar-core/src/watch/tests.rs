//! The watch rules: resume, reset instead of a gap, bounded rings, the typed bus.

use super::*;

fn hub(keep: usize) -> Arc<Hub> {
    Hub::new(keep, Stopping::default())
}

fn revisions(w: &mut Watcher) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(item) = w.try_next() {
        out.push(match item {
            Item::Change(c) => format!("{}:{}", c.revision, c.data),
            Item::Reset { cursor } => format!("reset@{}", cursor.revision),
        });
    }
    out
}

#[test]
fn cursors_round_trip_and_reject_garbage() {
    for s in ["17", "1700000000000-42"] {
        assert_eq!(s.parse::<Cursor>().unwrap().to_string(), s);
    }
    for bad in ["", "x", "1-", "-1", "1-2-3", "1.5"] {
        assert!(bad.parse::<Cursor>().is_err(), "{bad}");
    }
}

#[test]
fn a_watcher_sees_every_change_after_it_started_in_order() {
    let h = hub(16);
    let mut w = h.watch("t", false, None);
    for i in 1..=3 {
        h.publish("t", "e", "s", &i);
    }
    assert_eq!(revisions(&mut w), ["1:1", "2:2", "3:3"]);
    assert_eq!(w.cursor().to_string(), format!("{}-3", h.epoch()));
}

#[test]
fn resuming_from_a_kept_cursor_misses_nothing() {
    let h = hub(16);
    let first = h.watch("t", false, None);
    for i in 1..=5 {
        h.publish("t", "e", "s", &i);
    }
    let from = Cursor {
        epoch: Some(h.epoch()),
        revision: 2,
    };
    let mut w = h.watch("t", false, Some(from));
    assert_eq!(revisions(&mut w), ["3:3", "4:4", "5:5"]);
    drop(first);
}

#[test]
fn a_compacted_cursor_another_epoch_or_a_future_revision_resets() {
    let h = hub(4);
    let _keep_watching = h.watch("t", false, None);
    for i in 1..=10 {
        h.publish("t", "e", "s", &i);
    }
    let at = |epoch, revision| Some(Cursor { epoch, revision });
    let mut last = 10;
    for from in [
        at(Some(h.epoch()), 2),
        at(Some(1), 9),
        at(None, 9),
        at(Some(h.epoch()), 99),
    ] {
        let mut w = h.watch("t", false, from);
        assert_eq!(revisions(&mut w), [format!("reset@{last}")], "{from:?}");
        last += 1;
        h.publish("t", "e", "s", &last);
        assert_eq!(revisions(&mut w), [format!("{last}:{last}")]);
    }
}

#[test]
fn a_watcher_that_falls_behind_the_ring_gets_a_reset_not_a_gap() {
    let h = hub(4);
    let mut w = h.watch("t", false, None);
    for i in 1..=10 {
        h.publish("t", "e", "s", &i);
    }
    assert_eq!(revisions(&mut w), ["reset@10"]);
    h.publish("t", "e", "s", &11);
    assert_eq!(revisions(&mut w), ["11:11"]);
}

#[test]
fn changes_published_while_nobody_watched_make_a_resuming_watcher_reset() {
    let h = hub(16);
    let w = h.watch("t", false, None);
    h.publish("t", "e", "s", &1);
    drop(w);
    h.topics.lock().unwrap()["t"]
        .left_ms
        .store(0, Ordering::Relaxed); // as if LINGER passed
    assert!(!h.wants("t"));
    h.publish("t", "e", "s", &2); // not kept: nobody watches
    h.publish("t", "e", "s", &3);
    let from = Cursor {
        epoch: Some(h.epoch()),
        revision: 1,
    };
    let mut w = h.watch("t", false, Some(from));
    assert_eq!(revisions(&mut w), ["reset@1"]);
    h.publish("t", "e", "s", &4);
    assert_eq!(revisions(&mut w), ["2:4"]);
}

#[test]
fn durable_topics_take_the_stores_revisions_and_ignore_duplicates() {
    let h = hub(16);
    let mut w = h.watch("cfg", true, None);
    h.publish_at("cfg", 40, "put", "a", "1".into());
    h.publish_at("cfg", 40, "put", "a", "1".into()); // the same change, over the wire
    h.publish_at("cfg", 39, "put", "a", "0".into()); // older: already covered
    h.publish_at("cfg", 42, "put", "b", "2".into());
    assert_eq!(revisions(&mut w), ["40:1", "42:2"]);
    assert_eq!(w.cursor().to_string(), "42");
    // A cursor from before this node's first change is not known here: reset.
    let mut early = h.watch("cfg", true, Some("12".parse().unwrap()));
    assert_eq!(revisions(&mut early), ["reset@42"]);
    let mut exact = h.watch("cfg", true, Some("40".parse().unwrap()));
    assert_eq!(revisions(&mut exact), ["42:2"]);
}

#[test]
fn a_gap_reaches_every_watcher_even_one_past_an_earlier_gap() {
    let h = hub(16);
    let mut w = h.watch("t", false, None);
    h.publish("t", "e", "s", &1);
    h.gap_everywhere();
    assert_eq!(revisions(&mut w), ["1:1", "reset@1"]);
    h.gap_everywhere();
    assert_eq!(revisions(&mut w), ["reset@1"]);
}

#[test]
fn wants_is_false_without_watchers_and_dropping_unsubscribes() {
    let h = hub(16);
    assert!(!h.wants("t"));
    let w = h.watch("t", false, None);
    assert!(h.wants("t"));
    drop(w);
    assert!(h.wants("t"), "a topic lingers after its last watcher left");
    h.topics.lock().unwrap()["t"]
        .left_ms
        .store(0, Ordering::Relaxed);
    assert!(!h.wants("t"));
}

#[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
struct Fired {
    schedule: String,
    at: u64,
}

impl Event for Fired {
    const TOPIC: &'static str = "test.fired";
    fn event(&self) -> &'static str {
        "fired"
    }
    fn subject(&self) -> &str {
        &self.schedule
    }
}

#[tokio::test]
async fn the_typed_bus_delivers_events_and_waits_for_them() {
    let h = hub(16);
    let mut sub = h.subscribe::<Fired>();
    let publisher = {
        let h = h.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            h.emit(&Fired {
                schedule: "nightly".into(),
                at: 7,
            });
        })
    };
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap();
    assert_eq!(
        got.unwrap(),
        Fired {
            schedule: "nightly".into(),
            at: 7
        }
    );
    publisher.await.unwrap();
    let stopping = Stopping::default();
    let mut w = h.watch(Fired::TOPIC, false, None);
    assert!(
        w.next_within(Duration::from_millis(20), &stopping)
            .await
            .is_none()
    );
}
