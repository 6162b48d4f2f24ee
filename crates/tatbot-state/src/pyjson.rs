//! JSON text in the shape Python's `json.dumps` produces with its defaults.
//!
//! The Python nodes publish events with `", "` and `": "` separators and non-ASCII escaped as
//! `\uXXXX`. Readers accept any JSON, so this is not needed for correctness; we match it so that
//! an event published by a Rust node is byte-for-byte what a Python node would have sent, which
//! keeps `redis-cli psubscribe` output and golden tests identical across the fleet.

use std::io;

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter, Serializer};

/// A `serde_json` formatter with Python's default separators and `ensure_ascii`.
struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()> {
        if fragment.is_ascii() {
            return writer.write_all(fragment.as_bytes());
        }
        let mut units = [0u16; 2];
        for ch in fragment.chars() {
            if ch.is_ascii() {
                writer.write_all(&[ch as u8])?;
                continue;
            }
            for unit in ch.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
        }
        Ok(())
    }

    fn write_char_escape<W: ?Sized + io::Write>(&mut self, writer: &mut W, escape: CharEscape) -> io::Result<()> {
        // Python writes control characters as lowercase \u00XX, like serde_json, except that
        // it has short forms only for \n \r \t \b \f, which serde_json shares.
        let text: &[u8] = match escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(byte) => return write!(writer, "\\u{byte:04x}"),
            // `CharEscape` is non-exhaustive in some serde_json versions; nothing else exists today.
            #[allow(unreachable_patterns)]
            _ => return Err(io::Error::other("unknown JSON escape")),
        };
        writer.write_all(text)
    }
}

/// Serializes `value` the way Python's `json.dumps(value)` would.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    let mut out = Vec::with_capacity(256);
    value.serialize(&mut Serializer::with_formatter(&mut out, PythonFormatter))?;
    // The formatter writes only ASCII, and serde_json writes valid UTF-8 for everything else.
    Ok(String::from_utf8(out).unwrap_or_default())
}

/// `text` as a JSON string literal.
pub(crate) fn json_string(text: &str) -> String {
    // Serializing a `str` cannot fail; the fallback only keeps this total.
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    /// Separators and escapes match `json.dumps` defaults.
    #[test]
    fn matches_json_dumps() {
        let value = json!({"type": "x", "n": 1, "list": [1, 2], "s": "ünï ✓ \"q\" \n 😀"});
        assert_eq!(
            super::to_string(&value).unwrap(),
            r#"{"type": "x", "n": 1, "list": [1, 2], "s": "\u00fcn\u00ef \u2713 \"q\" \n \ud83d\ude00"}"#
        );
    }
}
