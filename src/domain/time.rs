//! Times as the database keeps them: UTC microseconds since the Unix epoch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A time as stored (earlier times clamp to the epoch, later ones to `i64::MAX`).
pub fn to_micros(time: SystemTime) -> i64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

/// A stored time back as a `SystemTime` (negative values clamp to the epoch).
pub fn from_micros(micros: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_microsecond_precision_and_clamps() {
        let time = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(from_micros(to_micros(time)), time);
        assert_eq!(to_micros(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(from_micros(-5), UNIX_EPOCH);
    }
}
