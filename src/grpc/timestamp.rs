//! `google.protobuf.Timestamp` ⇄ the UTC microseconds the domain and the database use.

use prost_types::Timestamp;

use crate::domain::FieldViolation;

pub fn to_proto(micros: i64) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1_000).unwrap_or_default(),
    }
}

/// Microseconds of a timestamp a caller sent; sub-microsecond digits are dropped.
pub fn from_proto(field: &str, timestamp: &Timestamp) -> Result<i64, FieldViolation> {
    let invalid = || {
        FieldViolation::new(
            field,
            "is not a valid timestamp: seconds from 0001-01-01 to 9999-12-31, nanos from 0 to 999999999",
        )
    };
    // 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, the range the Timestamp type allows.
    if !(-62_135_596_800..=253_402_300_799).contains(&timestamp.seconds)
        || !(0..1_000_000_000).contains(&timestamp.nanos)
    {
        return Err(invalid());
    }
    Ok(timestamp.seconds * 1_000_000 + i64::from(timestamp.nanos / 1_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_out_of_range() {
        let micros = 1_700_000_000_123_456;
        assert_eq!(from_proto("t", &to_proto(micros)).unwrap(), micros);
        assert_eq!(from_proto("t", &to_proto(-1)).unwrap(), -1);
        let bad = Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert_eq!(
            from_proto("effective_time", &bad).unwrap_err().field,
            "effective_time"
        );
    }
}
