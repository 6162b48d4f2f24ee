//! Plain-text rendering shared by the CLI and the MCP server's text resources.
//!
//! Everything these views print may come from any writer on the LAN, so text goes through
//! [`shown`] before it reaches a terminal: control characters (`ESC`, `CR`, C1 codes, ...) are
//! escaped, so a stored `\x1b[2J` or OSC title cannot clear the screen or retitle the window,
//! and each value is cut at [`MAX_SHOWN_CHARS`] so one huge value cannot flood the view.
//! [`table`] does this for every cell.

use std::borrow::Cow;
use std::fmt::Write as _;

/// The most characters of one value a text view shows; longer values end in `…`.
pub const MAX_SHOWN_CHARS: usize = 256;

/// `text` as a text view shows it: control characters escaped as `\x1b`, `\r`, `\n`, `\t`
/// or `\u{9b}`, and cut after [`MAX_SHOWN_CHARS`] characters with `…`.
pub fn shown(text: &str) -> Cow<'_, str> {
    let plain = text.len() <= MAX_SHOWN_CHARS && !text.chars().any(needs_escape);
    if plain {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().min(MAX_SHOWN_CHARS * 4));
    for (char_idx, c) in text.chars().enumerate() {
        if char_idx == MAX_SHOWN_CHARS {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Control characters (C0, DEL, C1) and the bidirectional overrides that reorder a line.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A percentage as `12.5%`, or `invalid` when it is not a number from 0 to 100.
pub fn percent(value: f64) -> String {
    if crate::model::is_percent(value) {
        format!("{value:.1}%")
    } else {
        "invalid".to_owned()
    }
}

/// A 0-based index out of `total` as the 1-based `3/10`, or `invalid (-4/-3)` when the index
/// is outside `0..total`.
pub fn position(idx: i64, total: i64) -> String {
    if (0..total).contains(&idx) {
        format!("{}/{total}", idx + 1)
    } else {
        format!("invalid ({idx}/{total})")
    }
}

/// Joint values (radians) as `[0.10, -1.57, 0.00]`, `-` when unknown; a value that is not
/// finite is shown as `invalid`, and more than [`MAX_SHOWN_JOINTS`] values end in `…`.
pub fn joints(values: Option<&[f64]>) -> String {
    let Some(values) = values else {
        return "-".to_owned();
    };
    let mut shown: Vec<String> = values
        .iter()
        .take(MAX_SHOWN_JOINTS)
        .map(|value| {
            if value.is_finite() && value.abs() < 1e6 {
                format!("{value:.2}")
            } else {
                "invalid".to_owned()
            }
        })
        .collect();
    if values.len() > MAX_SHOWN_JOINTS {
        shown.push("…".to_owned());
    }
    format!("[{}]", shown.join(", "))
}

/// The most joint values [`joints`] shows; a hostile writer may store millions.
pub const MAX_SHOWN_JOINTS: usize = 16;

/// Renders rows under headers in left-aligned columns separated by two spaces; every cell goes
/// through [`shown`].
///
/// A row may be shorter than the headers; its last cell then runs on without padding and does
/// not widen its column, which is how a row carries an error message in place of its figures.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<Cow<'_, str>>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| shown(cell)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|header| header.chars().count()).collect();
    for row in &rows {
        // The last cell of a row is never padded, so it does not count towards the width.
        for (cell_idx, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
            if let Some(width) = widths.get_mut(cell_idx) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let header_row: Vec<Cow<'_, str>> = headers.iter().map(|header| Cow::Borrowed(*header)).collect();
    let mut text = String::new();
    for row in std::iter::once(&header_row).chain(&rows) {
        let mut line = String::new();
        for (cell_idx, cell) in row.iter().enumerate() {
            if cell_idx + 1 == row.len() {
                line.push_str(cell);
            } else {
                let width = widths.get(cell_idx).copied().unwrap_or(0);
                let padding = width.saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', padding + 2));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Escape sequences, carriage returns and C1 codes come out as visible text.
    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(shown("plain text"), "plain text");
        assert_eq!(shown("\x1b[2Jx\ry\n"), "\\x1b[2Jx\\ry\\n");
        assert_eq!(shown("\x1b]0;title\x07"), "\\x1b]0;title\\x07");
        assert_eq!(shown("a\u{9b}b\u{202e}c"), "a\\u{9b}b\\u{202e}c");
        let table = table(&["A", "B"], &[vec!["\x1b[31m".to_owned(), "\r".to_owned()]]);
        assert!(!table.contains('\x1b') && !table.contains('\r'), "{table:?}");
    }

    /// Long values are cut, so a view stays bounded.
    #[test]
    fn long_values_are_cut() {
        let cut = shown(&"x".repeat(10_000)).into_owned();
        assert_eq!(cut.chars().count(), MAX_SHOWN_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

    /// Figures outside their domain are shown as invalid.
    #[test]
    fn figures_outside_their_domain() {
        assert_eq!(percent(12.34), "12.3%");
        assert_eq!(percent(1e308), "invalid");
        assert_eq!(percent(f64::NAN), "invalid");
        assert_eq!(position(2, 3), "3/3");
        assert_eq!(position(10, 3), "invalid (10/3)");
        assert_eq!(position(-4, -3), "invalid (-4/-3)");
        assert_eq!(position(0, 0), "invalid (0/0)");
        assert_eq!(joints(None), "-");
        assert_eq!(joints(Some(&[0.1, -1.571, f64::NAN])), "[0.10, -1.57, invalid]");
        assert!(joints(Some(&[0.0; 1000])).ends_with(", …]"));
    }
}
