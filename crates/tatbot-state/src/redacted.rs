//! [`Redacted`]: how every secret (a Redis password, an HTTP token) shows in `Debug` output.
//!
//! Configuration structs derive or write `Debug` so they can be logged and compared in tests;
//! their secrets must never reach a log. Each such `Debug` wraps the secret field in
//! [`Redacted`], which shows whether a secret is set and nothing of its value, so there is one
//! rule for every secret instead of a `map(|_| "<redacted>")` per struct.

use std::fmt;

/// What a secret shows in `Debug` output.
pub const REDACTED: &str = "<redacted>";

/// A `Debug` view of an optional secret: `Some("<redacted>")` when set, `None` when not.
///
/// ```
/// use tatbot_state::Redacted;
///
/// let password = Some("hunter2".to_owned());
/// assert_eq!(format!("{:?}", Redacted(&password)), r#"Some("<redacted>")"#);
/// assert_eq!(format!("{:?}", Redacted(&None::<String>)), "None");
/// ```
#[derive(Clone, Copy)]
pub struct Redacted<'a, T>(pub &'a Option<T>);

impl<T> fmt::Debug for Redacted<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0.as_ref().map(|_| REDACTED), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The secret's text appears in no form of `Debug` output, plain or pretty.
    #[test]
    fn never_shows_the_value() {
        let secret = Some("s3cr3t-value".to_owned());
        for shown in [format!("{:?}", Redacted(&secret)), format!("{:#?}", Redacted(&secret))] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(shown.contains(REDACTED), "{shown}");
        }
    }
}
