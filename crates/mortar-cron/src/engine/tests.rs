//! The engine's rules pinned: expressions, day fields, DST in three zones, misfires, jitter.
use super::*;

fn ms(rfc: &str) -> u64 {
    DateTime::parse_from_rfc3339(rfc)
        .unwrap()
        .timestamp_millis() as u64
}

fn iso(ms: u64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms as i64)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn fires(expr: &str, zone: &str, after: &str, n: usize) -> Vec<String> {
    let t = Timing::new(CronExpr::parse(expr).unwrap(), parse_zone(zone).unwrap());
    t.fires_between(ms(after), u64::MAX, n)
        .into_iter()
        .map(iso)
        .collect()
}

#[test]
fn both_day_fields_restricted_fire_when_either_matches() {
    // Friday 2026-03-06, the 13th (a Friday), Friday the 20th: every 13th and every Friday.
    assert_eq!(
        fires("0 9 13 * FRI", "UTC", "2026-03-01T00:00:00Z", 4),
        [
            "2026-03-06T09:00:00Z",
            "2026-03-13T09:00:00Z",
            "2026-03-20T09:00:00Z",
            "2026-03-27T09:00:00Z"
        ]
    );
    assert_eq!(
        fires("0 9 2 * MON", "UTC", "2026-03-01T00:00:00Z", 3),
        [
            "2026-03-02T09:00:00Z",
            "2026-03-09T09:00:00Z",
            "2026-03-16T09:00:00Z"
        ]
    );
}

#[test]
fn l_w_and_hash_beside_a_restricted_other_day_field_are_refused() {
    for (expr, field) in [
        ("0 6 15W * MON-FRI", "day_of_month"),
        ("0 6 L * 1", "day_of_month"),
        ("0 0 6 1-7 * FRI#2", "day_of_week"),
        ("0 6 1 * 5L", "day_of_week"),
    ] {
        let e = CronExpr::parse(expr).unwrap_err();
        assert_eq!(e.field, Some(field), "{expr}: {e:?}");
        assert!(e.message.contains("refused"), "{expr}: {}", e.message);
    }
    // Alone, each keeps its meaning.
    for ok in [
        "0 6 15W * *",
        "0 6 L * ?",
        "0 6 * * FRI#2",
        "0 6 * * 5L",
        "0 0 * * WED",
    ] {
        CronExpr::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
    }
}

#[test]
fn new_york_spring_forward_fixed_time_fires_once_after_the_gap() {
    // 2026-03-08 02:00 EST → 03:00 EDT; 02:30 does not exist that day.
    assert_eq!(
        fires("30 2 * * *", "America/New_York", "2026-03-07T00:00:00Z", 3),
        [
            "2026-03-07T07:30:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-09T06:30:00Z"
        ]
    );
}

#[test]
fn new_york_fall_back_fixed_time_fires_once_at_the_first_occurrence() {
    // 2026-11-01 02:00 EDT → 01:00 EST; 01:30 happens twice (05:30Z and 06:30Z).
    assert_eq!(
        fires("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", 3),
        [
            "2026-11-01T05:30:00Z",
            "2026-11-02T06:30:00Z",
            "2026-11-03T06:30:00Z"
        ]
    );
    // Asked from inside the repeated hour, after the first 01:30: not again that day.
    assert_eq!(
        fires("30 1 * * *", "America/New_York", "2026-11-01T06:10:00Z", 1),
        ["2026-11-02T06:30:00Z"]
    );
}

#[test]
fn new_york_intervals_follow_real_elapsed_time() {
    assert_eq!(
        fires(
            "*/30 * * * *",
            "America/New_York",
            "2026-11-01T04:45:00Z",
            5
        ),
        [
            "2026-11-01T05:00:00Z",
            "2026-11-01T05:30:00Z",
            "2026-11-01T06:00:00Z",
            "2026-11-01T06:30:00Z",
            "2026-11-01T07:00:00Z"
        ],
        "both passes of the repeated hour, 30 real minutes apart"
    );
    assert_eq!(
        fires(
            "*/30 * * * *",
            "America/New_York",
            "2026-03-08T06:00:00Z",
            3
        ),
        [
            "2026-03-08T06:30:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-08T07:30:00Z"
        ],
        "01:30 EST then 03:00 EDT: 30 real minutes"
    );
    assert!(CronExpr::parse("*/15 * * * *").unwrap().is_interval());
    assert!(CronExpr::parse("0 * * * *").unwrap().is_interval());
    assert!(!CronExpr::parse("30 2 * * *").unwrap().is_interval());
    assert!(!CronExpr::parse("@daily").unwrap().is_interval());
}

#[test]
fn london_transitions() {
    // 2026-03-29 01:00 GMT → 02:00 BST; 2026-10-25 02:00 BST → 01:00 GMT.
    assert_eq!(
        fires("30 1 * * *", "Europe/London", "2026-03-28T00:00:00Z", 3),
        [
            "2026-03-28T01:30:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-30T00:30:00Z"
        ]
    );
    assert_eq!(
        fires("30 1 * * *", "Europe/London", "2026-10-24T12:00:00Z", 2),
        ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
    );
    assert_eq!(
        fires("0 */30 * * * *", "Europe/London", "2026-10-25T00:15:00Z", 4),
        [
            "2026-10-25T00:30:00Z",
            "2026-10-25T01:00:00Z",
            "2026-10-25T01:30:00Z",
            "2026-10-25T02:00:00Z"
        ],
        "01:30 BST, 01:00 GMT, 01:30 GMT, 02:00 GMT"
    );
}

#[test]
fn lord_howe_thirty_minute_shift() {
    // Spring 2026-10-04 02:00 +10:30 → 02:30 +11; autumn 2026-04-05 02:00 +11 → 01:30 +10:30.
    assert_eq!(
        fires(
            "15 2 * * *",
            "Australia/Lord_Howe",
            "2026-10-02T00:00:00Z",
            3
        ),
        [
            "2026-10-02T15:45:00Z",
            "2026-10-03T15:30:00Z",
            "2026-10-04T15:15:00Z"
        ],
        "02:15 does not exist on 4 October: fires at 02:30 +11"
    );
    assert_eq!(
        fires(
            "45 1 * * *",
            "Australia/Lord_Howe",
            "2026-04-04T00:00:00Z",
            2
        ),
        ["2026-04-04T14:45:00Z", "2026-04-05T15:15:00Z"],
        "01:45 twice on 5 April: once, at the first"
    );
    assert_eq!(
        fires(
            "*/15 * * * *",
            "Australia/Lord_Howe",
            "2026-04-04T14:20:00Z",
            5
        ),
        [
            "2026-04-04T14:30:00Z",
            "2026-04-04T14:45:00Z",
            "2026-04-04T15:00:00Z",
            "2026-04-04T15:15:00Z",
            "2026-04-04T15:30:00Z"
        ]
    );
    assert_eq!(
        fires(
            "*/15 * * * *",
            "Australia/Lord_Howe",
            "2026-10-03T15:10:00Z",
            2
        ),
        ["2026-10-03T15:15:00Z", "2026-10-03T15:30:00Z"],
        "01:45 +10:30 then 02:30 +11: 15 real minutes"
    );
}

#[test]
fn leap_days_and_l_w_hash() {
    assert_eq!(
        fires("0 12 29 2 *", "UTC", "2025-03-01T00:00:00Z", 2),
        ["2028-02-29T12:00:00Z", "2032-02-29T12:00:00Z"]
    );
    assert_eq!(
        fires("0 0 L 2 *", "UTC", "2027-01-01T00:00:00Z", 2),
        ["2027-02-28T00:00:00Z", "2028-02-29T00:00:00Z"]
    );
    // 15 August 2026 is a Saturday: the nearest weekday is Friday the 14th.
    assert_eq!(
        fires("0 9 15W 8 *", "UTC", "2026-01-01T00:00:00Z", 1),
        ["2026-08-14T09:00:00Z"]
    );
    // Second Monday of March 2026 is the 9th; last Friday of January 2026 the 30th.
    assert_eq!(
        fires("0 0 * 3 MON#2", "UTC", "2026-01-01T00:00:00Z", 1),
        ["2026-03-09T00:00:00Z"]
    );
    assert_eq!(
        fires("0 0 * JAN 5L", "UTC", "2026-01-01T00:00:00Z", 1),
        ["2026-01-30T00:00:00Z"]
    );
    assert_eq!(
        fires("@hourly", "UTC", "2026-01-01T00:30:00Z", 2),
        ["2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z"]
    );
    assert_eq!(
        fires("*/20 * * * * *", "UTC", "2026-01-01T00:00:00Z", 3),
        [
            "2026-01-01T00:00:20Z",
            "2026-01-01T00:00:40Z",
            "2026-01-01T00:01:00Z"
        ]
    );
    assert_eq!(
        fires("0 8-10/2,17 * * mon-fri", "UTC", "2026-01-02T09:00:00Z", 3),
        [
            "2026-01-02T10:00:00Z",
            "2026-01-02T17:00:00Z",
            "2026-01-05T08:00:00Z"
        ]
    );
}

#[test]
fn start_and_end_bound_the_fires() {
    let mut t = Timing::new(CronExpr::parse("0 * * * *").unwrap(), Tz::UTC);
    t.start_at_ms = Some(ms("2026-01-01T05:00:00Z"));
    t.end_at_ms = Some(ms("2026-01-01T07:00:00Z"));
    let all: Vec<String> = t
        .fires_between(0, u64::MAX, 10)
        .into_iter()
        .map(iso)
        .collect();
    assert_eq!(
        all,
        [
            "2026-01-01T05:00:00Z",
            "2026-01-01T06:00:00Z",
            "2026-01-01T07:00:00Z"
        ],
        "both bounds inclusive"
    );
    assert_eq!(t.next_after(ms("2026-01-01T07:00:00Z")), None);
    // Sub-second `after`: the next whole second that matches.
    let secs = Timing::new(CronExpr::parse("* * * * * *").unwrap(), Tz::UTC);
    assert_eq!(secs.next_after(10_500), Some(11_000));
    assert_eq!(secs.next_after(10_000), Some(11_000));
}

#[test]
fn bad_expressions_name_the_field_and_column() {
    let e = CronExpr::parse("0 25 * * *").unwrap_err();
    assert_eq!((e.field, e.column), (Some("hour"), 3), "{e}");
    let e = CronExpr::parse("*/5 * * 13 *").unwrap_err();
    assert_eq!((e.field, e.column), (Some("month"), 9), "{e}");
    let e = CronExpr::parse("0 0 * * * FOO").unwrap_err();
    assert_eq!((e.field, e.column), (Some("day_of_week"), 11), "{e}");
    let e = CronExpr::parse("61 * * * * *").unwrap_err();
    assert_eq!(e.field, Some("second"), "{e}");
    let e = CronExpr::parse("* * *").unwrap_err();
    assert_eq!(e.field, None);
    assert!(e.message.contains("3 fields"), "{e}");
    assert!(CronExpr::parse("0 0 1 1 * 2030").is_err(), "no year field");
    assert!(CronExpr::parse("@fortnightly").is_err());
    assert!(CronExpr::parse("").is_err());
    assert!(CronExpr::parse("0 0 32 * *").is_err());
    assert!(parse_zone("Mars/Olympus_Mons").is_err());
    assert!(parse_zone("Europe/London").is_ok());
}

fn every_minute() -> Timing {
    Timing::new(CronExpr::parse("* * * * *").unwrap(), Tz::UTC)
}

const LIMITS: PlanLimits = PlanLimits {
    misfire_threshold_ms: 5_000,
    max_fires: 1000,
};
const MIN: u64 = 60_000;

#[test]
fn on_time_ticks_fire_whatever_the_policy() {
    for m in Misfire::ALL {
        let p = plan(&every_minute(), 10 * MIN, 10 * MIN + 40, *m, 0, LIMITS);
        assert_eq!(
            p,
            Plan {
                fires: vec![10 * MIN],
                missed: 0,
                next: Some(11 * MIN)
            }
        );
    }
}

#[test]
fn misfire_policies_after_five_minutes_down() {
    // Down from 10:00 to 15:00 + 2 s; fires at 10..=14 were missed, 15 is on time.
    let now = 15 * MIN + 2_000;
    let t = every_minute();
    let skip = plan(&t, 10 * MIN, now, Misfire::Skip, 60 * MIN, LIMITS);
    assert_eq!(
        (skip.fires, skip.missed, skip.next),
        (vec![15 * MIN], 5, Some(16 * MIN))
    );
    let once = plan(&t, 10 * MIN, now, Misfire::FireOnce, 60 * MIN, LIMITS);
    assert_eq!(
        (once.fires, once.missed),
        (vec![14 * MIN, 15 * MIN], 4),
        "the latest missed fire, then the on-time one"
    );
    let all = plan(&t, 10 * MIN, now, Misfire::FireAll, 60 * MIN, LIMITS);
    assert_eq!(all.fires, (10..=15).map(|m| m * MIN).collect::<Vec<_>>());
    assert_eq!(all.missed, 0);
    // A 2.5 minute catch-up window keeps only fires at most 2.5 minutes old.
    let windowed = plan(&t, 10 * MIN, now, Misfire::FireAll, 150_000, LIMITS);
    assert_eq!(windowed.fires, vec![13 * MIN, 14 * MIN, 15 * MIN]);
    assert_eq!(windowed.missed, 3);
    let once_out = plan(
        &t,
        10 * MIN,
        now + 60 * MIN,
        Misfire::FireOnce,
        1_000,
        LIMITS,
    );
    assert_eq!(
        once_out.fires,
        vec![75 * MIN],
        "nothing missed is within the window; the on-time fire still fires"
    );
    assert_eq!(once_out.missed, 65);
}

#[test]
fn a_plan_is_bounded_and_resumes_where_it_stopped() {
    let limits = PlanLimits {
        misfire_threshold_ms: 5_000,
        max_fires: 3,
    };
    let p = plan(
        &every_minute(),
        0,
        10 * MIN,
        Misfire::FireAll,
        u64::MAX,
        limits,
    );
    assert_eq!(p.fires, vec![0, MIN, 2 * MIN]);
    assert_eq!(p.next, Some(3 * MIN));
    // A week of per-second fires missed: bounded work, next is in the future.
    let secs = Timing::new(CronExpr::parse("* * * * * *").unwrap(), Tz::UTC);
    let week = 7 * 24 * 60 * MIN;
    let p = plan(&secs, 0, week, Misfire::Skip, 60_000, LIMITS);
    assert!(p.next.unwrap() > week);
    assert!(p.fires.len() <= 6, "{:?}", p.fires);
}

#[test]
fn jitter_is_stable_and_bounded() {
    assert_eq!(jitter_ms("a", 1, 0), 0);
    let j = jitter_ms("sched", 1_000, 500);
    assert!(j < 500);
    assert_eq!(j, jitter_ms("sched", 1_000, 500));
    let spread: std::collections::HashSet<u64> =
        (0..50).map(|i| jitter_ms("s", i * 1000, 1000)).collect();
    assert!(spread.len() > 25, "spread out: {}", spread.len());
}

#[test]
fn policies_round_trip() {
    for m in Misfire::ALL {
        assert_eq!(Misfire::parse(m.as_str()), Some(*m));
    }
    for o in Overlap::ALL {
        assert_eq!(Overlap::parse(o.as_str()), Some(*o));
    }
}
