//! The text helpers every read command shares: [`table`], [`shown`], [`format_age`],
//! [`format_ago`] and [`age_secs`].
//!
//! Every text view passes stored text through [`shown`] (or [`table`], which does it per cell),
//! so control characters any writer stored are escaped and long values cut before they reach a
//! terminal.

use tatbot_state::Timestamp;
use tatbot_state::model::MAX_FUTURE_SKEW;

pub use tatbot_state::text::{shown, table};

/// Seconds from `then` to now (negative when `then` is in the future, as with clock skew).
pub fn age_secs(then: Timestamp) -> f64 {
    (Timestamp::now().unix_millis() - then.unix_millis()) as f64 / 1000.0
}

/// A short human age: `4.2s`, `12m`, `3h`, `2d`; `invalid` for a time more than
/// [`MAX_FUTURE_SKEW`] in the future (a small negative age is clock skew and shown as it is).
pub fn format_age(secs: f64) -> String {
    match secs {
        s if s < -MAX_FUTURE_SKEW.as_secs_f64() => "invalid".to_owned(),
        s if s < 60.0 => format!("{s:.1}s"),
        s if s < 3600.0 => format!("{}m", (s / 60.0).floor()),
        s if s < 86_400.0 => format!("{}h", (s / 3600.0).floor()),
        s => format!("{}d", (s / 86_400.0).floor()),
    }
}

/// How long ago `then` was, as `4.2s ago`, or `invalid: in the future` (see [`format_age`]).
pub fn format_ago(then: Timestamp) -> String {
    match format_age(age_secs(then)) {
        age if age == "invalid" => "invalid: in the future".to_owned(),
        age => format!("{age} ago"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Columns line up, and a short row's last cell neither pads nor widens its column.
    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["hog".to_owned(), "yes".to_owned(), "1.0s".to_owned()],
            vec!["broken".to_owned(), "a long error message".to_owned()],
        ];
        let text = table(&["NODE", "ONLINE", "AGE"], &rows);
        assert_eq!(
            text,
            "NODE    ONLINE  AGE\nhog     yes     1.0s\nbroken  a long error message\n"
        );
    }

    /// Ages pick the largest whole unit past a minute.
    #[test]
    fn ages_are_short() {
        assert_eq!(format_age(4.24), "4.2s");
        assert_eq!(format_age(125.0), "2m");
        assert_eq!(format_age(7300.0), "2h");
        assert_eq!(format_age(200_000.0), "2d");
        assert_eq!(format_age(-2.0), "-2.0s");
        assert_eq!(format_age(-251_605_787_626.3), "invalid");
    }
}
