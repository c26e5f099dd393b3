//! Kernel time to Unix time.
//!
//! Kernel events carry `bpf_ktime_get_ns()`, i.e. `CLOCK_MONOTONIC` nanoseconds (no time spent
//! suspended, not affected by clock steps); spans need Unix-epoch nanoseconds. A [`Clock`] holds
//! the difference between the two clocks, sampled once. It does not follow later steps of the
//! wall clock (NTP corrections, a manual change): build a new one now and then if that matters.

use std::time::{SystemTime, UNIX_EPOCH};

/// Converts `CLOCK_MONOTONIC` nanoseconds into Unix-epoch nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// Unix time minus monotonic time, in nanoseconds.
    offset_ns: i64,
}

impl Clock {
    /// Samples the system's wall clock and `CLOCK_MONOTONIC` now.
    ///
    /// The wall clock is read on both sides of the monotonic read, three times, and the tightest
    /// sample is kept, so the offset is off by at most a few microseconds.
    pub fn now_from_system() -> Clock {
        let mut best: Option<(i128, i128)> = None;
        for _ in 0..3 {
            let before = unix_now_ns();
            let mono = monotonic_now_ns();
            let after = unix_now_ns();
            let width = after - before;
            let offset = (before + after) / 2 - mono;
            if best.is_none_or(|(w, _)| width < w) {
                best = Some((width, offset));
            }
        }
        let offset = best.map_or(0, |(_, o)| o);
        Clock {
            offset_ns: i64::try_from(offset).unwrap_or(0),
        }
    }

    /// A clock with a known offset (Unix time minus monotonic time), e.g. for tests.
    pub fn from_offset_ns(offset_ns: i64) -> Clock {
        Clock { offset_ns }
    }

    /// Unix time minus monotonic time, in nanoseconds.
    pub fn offset_ns(&self) -> i64 {
        self.offset_ns
    }

    /// The Unix-epoch time of a `CLOCK_MONOTONIC` instant (saturating at 0 and `u64::MAX`).
    pub fn to_unix(&self, mono_ns: u64) -> u64 {
        let t = i128::from(mono_ns) + i128::from(self.offset_ns);
        u64::try_from(t.max(0)).unwrap_or(u64::MAX)
    }
}

/// Unix time in nanoseconds (0 before 1970).
fn unix_now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(0))
}

/// `CLOCK_MONOTONIC` in nanoseconds, the clock of `bpf_ktime_get_ns()`.
///
/// The standard library's `Instant` reads the same clock but does not expose its value, hence
/// the one `unsafe` call outside `bpf/`.
pub fn monotonic_now_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable `timespec` for the duration of the call, and
    // CLOCK_MONOTONIC is a clock id every Linux kernel supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_with_an_offset() {
        let clock = Clock::from_offset_ns(1_700_000_000_000_000_000);
        assert_eq!(clock.to_unix(5), 1_700_000_000_000_000_005);
        assert_eq!(Clock::from_offset_ns(-10).to_unix(3), 0);
        assert_eq!(Clock::from_offset_ns(10).to_unix(u64::MAX), u64::MAX);
    }

    #[test]
    fn system_clock_matches_the_wall_clock() {
        let clock = Clock::now_from_system();
        let mono = u64::try_from(monotonic_now_ns()).expect("monotonic time is positive");
        let unix = unix_now_ns();
        let converted = i128::from(clock.to_unix(mono));
        // Within 50 ms of the wall clock (the test may be descheduled between reads).
        assert!(
            (converted - unix).abs() < 50_000_000,
            "off by {} ns",
            converted - unix
        );
        assert!(clock.offset_ns() > 0);
    }
}
