//! Wire timestamps.
//!
//! The Python nodes write naive UTC ISO-8601 with exactly six fraction digits, and leave the
//! fraction out when the microseconds are zero (`2026-11-25T17:15:37`); that is what
//! `datetime.isoformat()` does. We write exactly that. We read leniently: naive (taken as UTC),
//! `Z`, or any offset, with or without a fraction of any length.

use std::fmt;

use chrono::{DateTime, Datelike as _, NaiveDateTime, SubsecRound, Timelike as _, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A UTC instant with microsecond precision, in the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// The current time, truncated to microseconds as Python's `datetime` would hold it.
    pub fn now() -> Timestamp {
        Timestamp::from_datetime(Utc::now())
    }

    /// Wraps a `chrono` instant, truncating it to microseconds.
    pub fn from_datetime(datetime: DateTime<Utc>) -> Timestamp {
        Timestamp(datetime.trunc_subsecs(6))
    }

    /// The instant as a `chrono` value.
    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.0
    }

    /// The instant `ms` milliseconds after the Unix epoch; the epoch itself for a value
    /// `chrono` cannot represent.
    pub fn from_unix_millis(ms: i64) -> Timestamp {
        Timestamp::from_datetime(DateTime::from_timestamp_millis(ms).unwrap_or_default())
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(&self) -> i64 {
        self.0.timestamp_millis()
    }

    /// Parses any of the accepted forms.
    ///
    /// # Errors
    ///
    /// A message naming the input when it is none of: naive ISO-8601 (UTC), `Z`, or an offset.
    pub fn parse(text: &str) -> Result<Timestamp, String> {
        if let Ok(datetime) = DateTime::parse_from_rfc3339(text) {
            return Ok(Timestamp::from_datetime(datetime.with_timezone(&Utc)));
        }
        // Python's isoformat() with an offset but also with a space separator, and naive forms.
        for format in ["%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%:z"] {
            if let Ok(datetime) = DateTime::parse_from_str(text, format) {
                return Ok(Timestamp::from_datetime(datetime.with_timezone(&Utc)));
            }
        }
        for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
            if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
                return Ok(Timestamp::from_datetime(naive.and_utc()));
            }
        }
        Err(format!("{text:?} is not an ISO-8601 timestamp"))
    }
}

impl fmt::Display for Timestamp {
    /// `%Y-%m-%dT%H:%M:%S`, then `.%6f` unless the microseconds are zero; written field by
    /// field because `chrono`'s `format` parses its pattern on every call, and the producer's
    /// writer formats three timestamps per update.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (date, time) = (self.0.date_naive(), self.0.time());
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            date.year(),
            date.month(),
            date.day(),
            time.hour(),
            time.minute(),
            time.second()
        )?;
        // A leap second shows as 60 s in `chrono`'s fraction; the wire has no leap seconds.
        let micros = self.0.timestamp_subsec_micros() % 1_000_000;
        if micros == 0 { Ok(()) } else { write!(f, ".{micros:06}") }
    }
}

/// In a JSON Schema (the recordings' channels), a timestamp is a date-time string.
#[cfg(feature = "record")]
impl schemars::JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }

    fn json_schema(_generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "date-time",
            "description": "UTC ISO-8601; naive means UTC"
        })
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writing matches Python's isoformat, with and without microseconds.
    #[test]
    fn writes_python_isoformat() {
        let ts = Timestamp::parse("2026-11-25T17:15:37.792132").unwrap();
        assert_eq!(ts.to_string(), "2026-11-25T17:15:37.792132");
        let ts = Timestamp::parse("2026-11-25T17:15:37").unwrap();
        assert_eq!(ts.to_string(), "2026-11-25T17:15:37");
        let ts = Timestamp::parse("2026-11-25T17:15:37.000100").unwrap();
        assert_eq!(ts.to_string(), "2026-11-25T17:15:37.000100");
    }

    /// The hand-written format is `chrono`'s `%Y-%m-%dT%H:%M:%S` and `%.6f`, for instants
    /// across the years 1 to 9999 and every kind of fraction.
    #[test]
    fn writes_what_chrono_formats() {
        let mut micros: i64 = -62_135_596_800_000_000; // 0001-01-01T00:00:00
        let end: i64 = 253_402_300_799_999_999; // 9999-12-31T23:59:59.999999
        let step = (end - micros) / 100_003;
        while micros < end {
            let datetime = DateTime::from_timestamp_micros(micros).unwrap();
            let naive = datetime.naive_utc();
            let expected = if datetime.timestamp_subsec_micros() == 0 {
                naive.format("%Y-%m-%dT%H:%M:%S").to_string()
            } else {
                naive.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
            };
            assert_eq!(Timestamp::from_datetime(datetime).to_string(), expected);
            micros += step + (micros.rem_euclid(7) - 3) * 1_000_001;
        }
    }

    /// Reading accepts naive, Z, offsets and any fraction length, and rejects garbage.
    #[test]
    fn reads_leniently() {
        let expected = Timestamp::parse("2026-11-25T17:15:37.5").unwrap();
        for text in [
            "2026-11-25T17:15:37.500000",
            "2026-11-25T17:15:37.5Z",
            "2026-11-25T17:15:37.5+00:00",
            "2026-11-25T18:15:37.5+01:00",
            "2026-11-25 17:15:37.5",
        ] {
            assert_eq!(Timestamp::parse(text).unwrap(), expected, "{text}");
        }
        assert_eq!(
            Timestamp::parse("2026-11-25T17:15:37.1234567").unwrap().to_string(),
            "2026-11-25T17:15:37.123456"
        );
        assert!(Timestamp::parse("yesterday").unwrap_err().contains("yesterday"));
    }
}
