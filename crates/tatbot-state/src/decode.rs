//! The one decode layer for what others stored: hash fields, JSON documents and stream entries.
//!
//! Shared data is hostile: any member of the LAN can write any key, with any type, size or
//! content. Every read path (the manager's reads and listings, the follow API, parameters and
//! their audit log, session history) decodes through here, so they all follow the same rules:
//!
//! - A value over [`MAX_DOCUMENT_BYTES`] is refused before it is parsed, on every path.
//! - A key of the wrong type (`WRONGTYPE`) or a field that is not text is that entry's error,
//!   never a failure of the connection or of the whole listing.
//! - Every error names the key (and the entry), and is [`Error::Corrupt`] or [`Error::Decode`]:
//!   bad stored data is never reported as bad usage.
//! - Values quoted in an error are cut to [`PREVIEW_CHARS`], so a message stays one short line.

use redis::Value as RedisValue;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::ids::EntryId;
use crate::model::{HistoryEntry, MAX_DOCUMENT_BYTES};

/// How much of a bad value an error message quotes, in characters.
pub(crate) const PREVIEW_CHARS: usize = 40;

/// Refuses a value of `len` bytes stored at `key` when it is over [`MAX_DOCUMENT_BYTES`].
pub(crate) fn check_size(key: &str, what: &str, len: usize) -> Result<()> {
    if len > MAX_DOCUMENT_BYTES {
        return Err(too_large(key, what, len));
    }
    Ok(())
}

/// The error of `what` at `key` being `len` bytes, over the size bound.
pub(crate) fn too_large(key: &str, what: &str, len: usize) -> Error {
    Error::Corrupt {
        key: key.to_owned(),
        detail: format!("{what} is {len} bytes; the limit is {MAX_DOCUMENT_BYTES}"),
    }
}

/// Decodes the JSON document `raw` stored at `key`, within the size bound.
pub(crate) fn document<T: DeserializeOwned>(key: &str, what: &'static str, raw: &str) -> Result<T> {
    check_size(key, what, raw.len())?;
    serde_json::from_str(raw).map_err(|source| Error::Decode {
        key: key.to_owned(),
        what,
        source,
    })
}

/// The text of hash field `field` of `key` from one reply of a pipeline run with
/// `ignore_errors` (so a server error is that command's reply): `None` when the field or the
/// key does not exist, an error when the key has the wrong type, the value is not a string, is
/// over the size bound or is not UTF-8.
pub(crate) fn field_text(key: &str, field: &str, reply: redis::RedisResult<RedisValue>) -> Option<Result<String>> {
    let corrupt = |detail: String| {
        Some(Err(Error::Corrupt {
            key: key.to_owned(),
            detail,
        }))
    };
    match reply {
        Ok(RedisValue::Nil) => None,
        Ok(RedisValue::BulkString(bytes)) => {
            if let Err(err) = check_size(key, &format!("field {field}"), bytes.len()) {
                return Some(Err(err));
            }
            match String::from_utf8(bytes) {
                Ok(text) => Some(Ok(text)),
                Err(_) => corrupt(format!("field {field} is not UTF-8")),
            }
        }
        Ok(RedisValue::SimpleString(text)) => Some(Ok(text)),
        Ok(other) => corrupt(format!("field {field} is not a string but {}", kind(&other))),
        Err(err) if err.code() == Some("WRONGTYPE") => corrupt("the key is not a hash".to_owned()),
        Err(err) => corrupt(preview(&err.to_string())),
    }
}

/// Whether `err` is Redis refusing a command on a key of another type: the key's problem, not
/// the connection's.
pub(crate) fn is_wrong_type(err: &redis::RedisError) -> bool {
    err.code() == Some("WRONGTYPE")
}

/// A history stream entry from its id and a lookup of its fields as text, with errors naming
/// the stream, the entry and the field. Every field is held to the size bound.
pub(crate) fn history_entry(key: &str, id: &str, field: impl Fn(&str) -> Option<String>) -> Result<HistoryEntry> {
    let corrupt = |detail: String| Error::Corrupt {
        key: key.to_owned(),
        detail: format!("entry {id}: {detail}"),
    };
    let text = |name: &str| -> Result<String> {
        let value = field(name).ok_or_else(|| corrupt(format!("missing or non-text field {name:?}")))?;
        if value.len() > MAX_DOCUMENT_BYTES {
            return Err(corrupt(format!(
                "field {name:?} is {} bytes; the limit is {MAX_DOCUMENT_BYTES}",
                value.len()
            )));
        }
        Ok(value)
    };
    let number = |name: &str| -> Result<i64> {
        let raw = text(name)?;
        raw.parse()
            .map_err(|_| corrupt(format!("field {name:?} is {:?}, not an integer", preview(&raw))))
    };
    let entry_id = id
        .parse::<EntryId>()
        .map_err(|_| corrupt("the entry id is not <ms>-<seq>".to_owned()))?;
    Ok(HistoryEntry {
        stroke_idx: number("stroke_idx")?,
        pose_idx: number("pose_idx")?,
        description_l: text("description_l")?,
        description_r: text("description_r")?,
        node_id: text("node_id")?,
        id: entry_id,
    })
}

/// `text` cut to [`PREVIEW_CHARS`] characters, with `…` when cut.
pub(crate) fn preview(text: &str) -> String {
    match text.char_indices().nth(PREVIEW_CHARS) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

/// A short name for the kind of a reply, for messages.
fn kind(value: &RedisValue) -> &'static str {
    match value {
        RedisValue::Int(_) => "an integer",
        RedisValue::Array(_) | RedisValue::Set(_) => "an array",
        RedisValue::Map(_) => "a map",
        RedisValue::Double(_) => "a number",
        RedisValue::Boolean(_) => "a boolean",
        _ => "another type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values over the bound are refused before parsing, naming the key and the bound.
    #[test]
    fn documents_over_the_bound_are_corrupt() {
        let huge = format!("\"{}\"", "x".repeat(MAX_DOCUMENT_BYTES));
        let err = document::<String>("k", "thing", &huge).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with("k: stored value is corrupt (thing is"),
            "{err}"
        );
        let reply = Ok(RedisValue::BulkString(huge.into_bytes()));
        let err = field_text("k", "f", reply).unwrap().unwrap_err().to_string();
        assert!(err.contains("the limit is"), "{err}");
    }

    /// A missing field is `None`; other types and invalid UTF-8 are that entry's error.
    #[test]
    fn field_text_cases() {
        assert!(field_text("k", "f", Ok(RedisValue::Nil)).is_none());
        let text = field_text("k", "f", Ok(RedisValue::BulkString(b"ok".to_vec())));
        assert_eq!(text.unwrap().unwrap(), "ok");
        let err = field_text("k", "f", Ok(RedisValue::Int(3))).unwrap().unwrap_err();
        assert!(err.to_string().contains("not a string but an integer"), "{err}");
        let err = field_text("k", "f", Ok(RedisValue::BulkString(vec![0xff])))
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }

    /// A bad history value is quoted short, whatever its length.
    #[test]
    fn history_errors_quote_short() {
        let long = "9".repeat(100) + "x";
        let err = history_entry("s", "1-0", |name| {
            Some(if name == "stroke_idx" {
                long.clone()
            } else {
                "0".to_owned()
            })
        })
        .unwrap_err()
        .to_string();
        assert!(err.len() < 200, "{err}");
        assert!(err.contains("entry 1-0: field \"stroke_idx\""), "{err}");
    }
}
