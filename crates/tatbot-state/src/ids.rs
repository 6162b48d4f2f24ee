//! Validated identifiers: [`NodeId`], [`SessionId`], [`Category`], [`ParamName`], and stream
//! [`EntryId`]s.
//!
//! Identifiers end up inside Redis key names, channel names and `SCAN` patterns, so they are
//! checked where they are made: 1 to 64 characters of `[A-Za-z0-9_.-]`. That excludes `:` (our
//! key separator), glob characters (`*?[]`), whitespace and anything non-ASCII, so an id can
//! never widen a pattern or reach into another key's namespace.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The longest parameter name we accept, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// The longest identifier we accept.
pub const MAX_ID_LEN: usize = 64;

/// Checks `value` against the identifier rules; `kind` names the identifier in the error.
pub(crate) fn validate(kind: &'static str, value: &str) -> Result<()> {
    let reason = if value.is_empty() {
        "it is empty"
    } else if value.len() > MAX_ID_LEN {
        "it is longer than 64 characters"
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        "only letters, digits, '_', '.' and '-' are allowed"
    } else {
        return Ok(());
    };
    Err(Error::InvalidId {
        kind,
        value: value.to_owned(),
        reason,
    })
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `value` and wraps it.
            ///
            /// # Errors
            ///
            /// [`Error::InvalidId`] when `value` is empty, longer than 64 bytes, or contains a
            /// character outside `[A-Za-z0-9_.-]`.
            pub fn new(value: impl Into<String>) -> Result<Self> {
                let value = value.into();
                validate($kind, &value)?;
                Ok(Self(value))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(value: &str) -> Result<Self> {
                Self::new(value)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(value: String) -> Result<Self> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

id_type!(
    /// The name of a tatbot node (`hog`, `eek`, `ook`), as used in `robot:state:{node_id}`.
    NodeId,
    "node id"
);
id_type!(
    /// A stroke session id, `stroke_{node_id}_{unix_seconds}` with an optional `_{n}` suffix.
    SessionId,
    "session id"
);
id_type!(
    /// An error category, the last part of the `error:events:{category}` channel.
    Category,
    "error category"
);

/// A Redis stream entry id, `<milliseconds>-<sequence>`, ordered as Redis orders them.
///
/// Returned by writes that append to a stream ([`crate::StateManager::update_stroke_progress`]),
/// carried by history entries and cursors, and taken by reads that page through a stream
/// ([`crate::HistoryCursor::After`]), so a session id or any other string cannot be passed where
/// an entry id belongs. It prints as Redis writes it, so it goes back on the wire unchanged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "record", derive(schemars::JsonSchema))]
#[serde(try_from = "String", into = "String")]
pub struct EntryId {
    /// The milliseconds part.
    pub ms: u64,
    /// The sequence part.
    pub seq: u64,
}

impl EntryId {
    /// `0-0`: before every entry of every stream.
    pub const ZERO: EntryId = EntryId { ms: 0, seq: 0 };
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EntryId {
    type Err = Error;

    fn from_str(text: &str) -> Result<EntryId> {
        let invalid = || Error::InvalidInput(format!("{text:?} is not a stream entry id (<ms>-<seq>)"));
        let (ms, seq) = match text.split_once('-') {
            Some((ms, seq)) => (ms, seq),
            None => (text, "0"),
        };
        Ok(EntryId {
            ms: ms.parse().map_err(|_| invalid())?,
            seq: seq.parse().map_err(|_| invalid())?,
        })
    }
}

impl TryFrom<String> for EntryId {
    type Error = Error;
    fn try_from(text: String) -> Result<EntryId> {
        text.parse()
    }
}

impl From<EntryId> for String {
    fn from(id: EntryId) -> String {
        id.to_string()
    }
}

/// A validated parameter name: dotted segments of `[A-Za-z0-9_-]`, at most [`MAX_NAME_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ParamName(String);

impl ParamName {
    /// Validates `value` and wraps it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidId`] (kind "parameter name") when `value` is empty, longer than
    /// [`MAX_NAME_LEN`], has an empty segment, or a character outside `[A-Za-z0-9_-]` and the dots.
    pub fn new(value: impl Into<String>) -> Result<ParamName> {
        let value = value.into();
        let reason = if value.is_empty() {
            "it is empty"
        } else if value.len() > MAX_NAME_LEN {
            "it is longer than 128 bytes"
        } else if value.split('.').any(str::is_empty) {
            "it has an empty segment (two dots in a row, or a dot at an end)"
        } else if !value.split('.').all(is_segment) {
            "segments may hold only letters, digits, '_' and '-', with '.' between them"
        } else {
            return Ok(ParamName(value));
        };
        Err(Error::InvalidId {
            kind: "parameter name",
            value,
            reason,
        })
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when `self` lies strictly under `parent` (`arms.goal_time` under `arms`).
    pub fn is_under(&self, parent: &ParamName) -> bool {
        self.0
            .strip_prefix(parent.as_str())
            .is_some_and(|rest| rest.starts_with('.'))
    }

    /// The names strictly above this one, shortest first (`a`, `a.b` for `a.b.c`).
    pub fn ancestors(&self) -> impl Iterator<Item = &str> {
        self.0.match_indices('.').map(|(dot, _)| &self.0[..dot])
    }
}

/// True when `segment` is one non-empty segment of a name.
pub(crate) fn is_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

impl fmt::Display for ParamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ParamName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for ParamName {
    type Err = Error;
    fn from_str(value: &str) -> Result<ParamName> {
        ParamName::new(value)
    }
}

impl TryFrom<String> for ParamName {
    type Error = Error;
    fn try_from(value: String) -> Result<ParamName> {
        ParamName::new(value)
    }
}

impl From<ParamName> for String {
    fn from(name: ParamName) -> String {
        name.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Valid ids pass and every rule rejects what it names.
    #[test]
    fn validation_rules() {
        assert!(NodeId::new("hog").is_ok());
        assert!(NodeId::new("rpi-1.lan_2").is_ok());
        assert!(NodeId::new("a".repeat(64)).is_ok());
        for (bad, reason) in [
            ("", "empty"),
            ("a:b", "only letters"),
            ("*", "only letters"),
            ("n de", "only letters"),
            ("nöde", "only letters"),
            ("[x]", "only letters"),
        ] {
            let err = NodeId::new(bad).unwrap_err().to_string();
            assert!(err.contains(reason), "{bad:?} gave {err}");
            assert!(err.starts_with("invalid node id"), "{err}");
        }
        let err = SessionId::new("x".repeat(65)).unwrap_err().to_string();
        assert!(err.contains("longer than 64"), "{err}");
    }

    /// An entry id is a JSON string, written back exactly as Redis wrote it; other strings are refused.
    #[test]
    fn entry_id_serde() {
        let id: EntryId = serde_json::from_str("\"1795626937793-12\"").unwrap();
        assert_eq!(
            id,
            EntryId {
                ms: 1_795_626_937_793,
                seq: 12
            }
        );
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"1795626937793-12\"");
        assert!(serde_json::from_str::<EntryId>("\"stroke_hog_1\"").is_err());
    }

    /// Deserializing an id validates it.
    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<NodeId>("\"hog\"").is_ok());
        assert!(serde_json::from_str::<NodeId>("\"a:b\"").is_err());
    }
}
