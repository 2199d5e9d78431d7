//! Injectable time. Engines take `now` as a parameter; services read it from a [`Clock`], so
//! tests drive time by hand instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch from the system clock (zero if the clock reads before it).
///
/// The one place that reads the wall clock (clippy's `disallowed-methods` keeps
/// `SystemTime::now` out of everything else). Services take a [`Clock`] so tests can drive
/// time; this is for the few places with no `Clock` at hand (ids, bench timing, a node's epoch).
#[expect(
    clippy::disallowed_methods,
    reason = "the wall clock is read here and nowhere else"
)]
pub fn unix_time() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;

    /// True only for [`SystemClock`]: this clock is the real time, so a hot path that needs
    /// intervals rather than exact wall time may read a [`FastClock`] instead. Injected clocks
    /// (a [`ManualClock`] in tests) answer false and are read as they are.
    fn is_system(&self) -> bool {
        false
    }
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        unix_time().as_millis() as u64
    }

    fn is_system(&self) -> bool {
        true
    }
}

/// Wall time read once, at creation, then advanced by the CPU's invariant counter (quanta:
/// the TSC on x86-64, `CNTVCT_EL0` on aarch64; the OS monotonic clock where there is none).
///
/// A read costs a counter read and a multiply (≈ 9 ns on a KVM guest, against ≈ 29 ns for
/// `SystemTime::now`) and never steps back when NTP steps the wall clock. It does drift from
/// the wall clock by the counter's calibration error (parts per million), so it suits intervals
/// and windows on one node (the in-memory rate limiter), not timestamps shown to people,
/// stored, or compared with other nodes' — use [`SystemClock`] for those.
#[derive(Debug, Clone)]
pub struct FastClock {
    counter: quanta::Clock,
    /// The counter's raw value when `origin_ms` was read.
    origin: u64,
    origin_ms: u64,
}

impl Default for FastClock {
    fn default() -> Self {
        Self::new()
    }
}

impl FastClock {
    /// Anchored to [`SystemClock`] now. The first one in a process calibrates the counter
    /// against the OS clock (quanta; up to 200 ms, usually a few).
    pub fn new() -> Self {
        Self::with_counter(quanta::Clock::new(), SystemClock.now_ms())
    }

    /// Anchored at `origin_ms`, advanced by `counter` (a `quanta::Clock::mock()` in tests).
    pub fn with_counter(counter: quanta::Clock, origin_ms: u64) -> Self {
        let origin = counter.raw();
        Self {
            counter,
            origin,
            origin_ms,
        }
    }
}

impl Clock for FastClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        // `delta_as_nanos` is 0 if the counter reads below the origin (never goes back before it).
        self.origin_ms + self.counter.delta_as_nanos(self.origin, self.counter.raw()) / 1_000_000
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn at(ms: u64) -> Self {
        Self(Arc::new(AtomicU64::new(ms)))
    }

    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Formats epoch milliseconds as an RFC 3339 UTC timestamp with millisecond precision.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let (hh, mm, ss, frac) = (rem / 3600, (rem % 3600) / 60, rem % 60, ms % 1000);
    if !(0..=9999).contains(&y) {
        return format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{frac:03}Z");
    }
    // Digits written in place: `format!` and its padding cost ~10× more, and job listings and
    // leases format several timestamps per job.
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut n: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, y as u64);
    put(5, 2, u64::from(m));
    put(8, 2, u64::from(d));
    put(11, 2, hh);
    put(14, 2, mm);
    put(17, 2, ss);
    put(20, 3, frac);
    out.iter().map(|&b| char::from(b)).collect()
}

/// Parses an RFC 3339 timestamp (`2026-11-21T10:00:00Z`, `…T10:00:00.250+01:00`) into epoch
/// milliseconds; None when it is not one or is before 1970.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let (s, b) = (text, text.as_bytes());
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = s.get(from..from + len)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, mo, day, hour, min, sec) = (
        num(0, 4)?,
        num(5, 2)?,
        num(8, 2)?,
        num(11, 2)?,
        num(14, 2)?,
        num(17, 2)?,
    );
    if !(1..=12).contains(&mo)
        || day < 1
        || day > days_in_month(year, mo as u32)
        || hour > 23
        || min > 59
        || sec > 60
    {
        return None;
    }
    let mut i = 19;
    let mut ms = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let frac = s.get(start..i).filter(|f| !f.is_empty())?;
        ms = format!("{:0<3}", &frac[..frac.len().min(3)]).parse().ok()?;
    }
    let offset_min = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            (oh * 60 + om) * if *sign == b'-' { -1 } else { 1 }
        }
        _ => return None,
    };
    let days = days_from_civil(year, mo as u32, day as u32);
    let total = ((days * 86_400 + hour * 3600 + min * 60 + sec) - offset_min * 60) * 1000 + ms;
    u64::try_from(total).ok()
}

fn days_in_month(y: i64, m: u32) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Howard Hinnant's civil-to-days algorithm (the inverse of [`civil_from_days`]).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339_with_offsets_and_fractions() {
        for ms in [0u64, 951_782_400_000, 1_763_715_600_123, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms), "{}", rfc3339(ms));
        }
        assert_eq!(
            parse_rfc3339("2026-11-21T11:00:00+01:00"),
            parse_rfc3339("2026-11-21T10:00:00Z")
        );
        assert_eq!(
            parse_rfc3339("2026-11-21T09:30:00-00:30"),
            parse_rfc3339("2026-11-21T10:00:00Z")
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00.5Z"), Some(500));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00.123456Z"), Some(123));
        for bad in [
            "",
            "2026-11-21",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-21T10:00:00",
            "2026-11-21T10:00:00+1:00",
            "1969-12-31T23:59:59Z",
            "2026-11-21T10:00:00.Z",
            "2026-11-21T24:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z"),
            Some(1_709_164_800_000)
        );
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_000_000_000), "2026-11-18T11:06:40.000Z");
        // Past year 9999 the year takes more digits.
        assert_eq!(rfc3339(253_402_300_800_000), "10000-01-01T00:00:00.000Z");
        // Every field, against the general formatter, through years 1970 to 10000 in steps of
        // about 37 days that land on every hour, minute, second and millisecond in turn.
        let mut ms = 0u64;
        while ms < 253_402_300_800_000 + 86_400_000 {
            let (days, rem) = (ms / 1000 / 86_400, ms / 1000 % 86_400);
            let (y, m, d) = civil_from_days(days as i64);
            let expect = format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60,
                ms % 1000
            );
            assert_eq!(rfc3339(ms), expect);
            ms += 3_196_800_000 + 3_661_001;
        }
    }

    #[test]
    fn fast_clock_counts_from_its_anchor() {
        let (counter, mock) = quanta::Clock::mock();
        mock.increment(5_000_000_123); // the counter's origin need not be 0
        let c = FastClock::with_counter(counter, 1_800_000_000_000);
        assert_eq!(c.now_ms(), 1_800_000_000_000);
        mock.increment(999_999);
        assert_eq!(c.now_ms(), 1_800_000_000_000, "under a millisecond");
        mock.increment(1);
        assert_eq!(c.now_ms(), 1_800_000_000_001);
        mock.increment(86_400_000_000_000);
        assert_eq!(c.now_ms(), 1_800_086_400_001, "a day later");
        mock.decrement(86_400_010_000_000);
        assert_eq!(c.now_ms(), 1_800_000_000_000, "never before its anchor");
        assert!(!c.is_system());
    }

    #[test]
    fn fast_clock_tells_the_system_time_and_never_goes_back() {
        let sys = SystemClock;
        assert!(sys.is_system());
        let before = sys.now_ms();
        let c = FastClock::new();
        let after = sys.now_ms();
        let first = c.now_ms();
        assert!(
            first >= before && first <= after + 1,
            "{before} {first} {after}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (fast, system) = (c.now_ms(), sys.now_ms());
        // Whole milliseconds of a counter calibrated against the OS clock: 50 ms may read as
        // 49.9, so 49.
        assert!(
            fast + 1 >= first + 50,
            "slept 50 ms, the fast clock moved {}",
            fast - first
        );
        assert!(
            fast.abs_diff(system) <= 20,
            "fast {fast} vs system {system}"
        );
        // Monotonic on every thread, clones included, across ~100 ms of reads.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    let start = std::time::Instant::now();
                    let mut last = c.now_ms();
                    while start.elapsed() < std::time::Duration::from_millis(100) {
                        let now = c.now_ms();
                        assert!(now >= last, "went back from {last} to {now}");
                        last = now;
                    }
                    last
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap() >= fast);
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::at(5);
        assert_eq!(c.now_ms(), 5);
        c.advance(10);
        assert_eq!(c.now_ms(), 15);
    }
}
