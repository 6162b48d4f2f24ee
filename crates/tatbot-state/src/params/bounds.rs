//! Bounds checked before the YAML parser sees a text: its size, its nesting depth and its tags.
//!
//! The parser under `serde_yaml_ng` (libyaml) takes time quadratic in the nesting depth of flow
//! collections: for every token it walks the whole stack of open levels, so `[[[[...` of 40,000
//! levels took 3.2 s in a release build and 200 KB took 48 s (issue #14 point 13). It also
//! drops tags it does not know: `!!binary aGk=` reads as the string `aGk=` and
//! `!!python/object:os.system x` as `x`. So before parsing, one linear pass over the text
//! refuses a text over [`MAX_LOAD_BYTES`], nesting deeper than [`MAX_NESTING`] and any tag but
//! the core schema's, each with its line number.
//!
//! The pass is a small lexer, not a YAML parser. Where it cannot tell, it errs towards counting
//! *more* nesting, never less: a bracket in a plain scalar may be counted, but a quoted scalar
//! is only entered where YAML starts one (the first character of a node), so text hidden from
//! the count is text the parser also reads as a string. Block nesting (by indentation) is
//! counted as well, for a clear message; the parser is linear there and its own recursion limit
//! would stop it.

use std::fmt::Write as _;

/// Largest YAML text a parameter load reads (4 MiB): room for the largest single parameter
/// (a list of [`crate::params::MAX_LIST_LEN`] strings of [`crate::params::MAX_STRING_LEN`]
/// bytes) and a config tree around it; a load is one atomic write, not bulk data.
pub const MAX_LOAD_BYTES: usize = 4 << 20;

/// Deepest nesting of maps and lists a parameter load accepts: a dump nests one map per name
/// segment, and the longest name ([`crate::params::MAX_NAME_LEN`] bytes) has at most 64
/// segments, with a list as its value.
pub const MAX_NESTING: usize = 72;

/// Core-schema tags `serde_yaml_ng` applies; any other tag would be dropped silently.
const KNOWN_TAGS: [&str; 7] = ["str", "int", "float", "bool", "null", "seq", "map"];

/// Checks `text` against the bounds, in one pass, before it is parsed.
///
/// # Errors
///
/// One line naming the bound broken, with the line number for depth and tags, and a hint.
pub(crate) fn check(text: &str) -> Result<(), String> {
    if text.len() > MAX_LOAD_BYTES {
        return Err(format!(
            "the YAML text is {} bytes, over the limit of {MAX_LOAD_BYTES} bytes (4 MiB); split it into smaller files",
            text.len()
        ));
    }
    let mut scanner = Scanner::default();
    for (line_idx, line) in text.split('\n').enumerate() {
        scanner
            .line(line.as_bytes())
            .map_err(|problem| format!("line {}: {problem}", line_idx + 1))?;
    }
    Ok(())
}

/// What the pass carries from one line to the next.
#[derive(Default)]
struct Scanner {
    /// Open flow collections (`[` and `{`).
    flow: usize,
    /// The quote character of a quoted scalar that continues on the next line.
    quote: Option<u8>,
    /// Inside a block scalar (`|`, `>`): lines indented deeper than this are its text.
    block_scalar: Option<usize>,
    /// Columns of the open block collections, innermost last.
    indents: Vec<usize>,
}

impl Scanner {
    fn line(&mut self, line: &[u8]) -> Result<(), String> {
        let indent = line.iter().take_while(|byte| **byte == b' ').count();
        let blank = line[indent..].iter().all(|byte| matches!(byte, b' ' | b'\t' | b'\r'));
        if let Some(threshold) = self.block_scalar {
            if blank || indent > threshold {
                return Ok(());
            }
            self.block_scalar = None;
        }
        let mut start = indent;
        if self.quote.is_none() && self.flow == 0 {
            if blank || line[indent] == b'#' {
                return Ok(());
            }
            if indent == 0 && line[0] == b'%' {
                if line.starts_with(b"%TAG") {
                    return Err("%TAG directives are not supported; write the tags !!str, !!int, ... out".to_owned());
                }
                return Ok(());
            }
            let marker = indent == 0
                && (line.starts_with(b"---") || line.starts_with(b"..."))
                && line.get(3).is_none_or(|byte| is_space(*byte));
            if marker {
                self.indents.clear();
                start = 3;
            } else {
                while self.indents.last().is_some_and(|top| *top > indent) {
                    self.indents.pop();
                }
                if self.indents.last() != Some(&indent) {
                    self.indents.push(indent);
                }
            }
        }
        self.check_depth()?;
        self.tokens(line, start)
    }

    /// Scans one line's characters from `start`: quotes, flow brackets, block indicators,
    /// tags and comments.
    fn tokens(&mut self, line: &[u8], start: usize) -> Result<(), String> {
        // Whether the next character starts a node: only there can a quote, a tag, a block
        // scalar or (outside flow collections) a bracket begin.
        let mut node_start = true;
        let mut after_quote = false;
        let mut idx = start;
        while idx < line.len() {
            let byte = line[idx];
            if let Some(quote) = self.quote {
                match byte {
                    b'\\' if quote == b'"' => idx += 1,
                    b'\'' if quote == b'\'' && line.get(idx + 1) == Some(&b'\'') => idx += 1,
                    _ if byte == quote => {
                        self.quote = None;
                        node_start = false;
                        after_quote = true;
                    }
                    _ => {}
                }
                idx += 1;
                continue;
            }
            let next_is_space = line.get(idx + 1).is_none_or(|next| is_space(*next));
            match byte {
                b' ' | b'\t' | b'\r' => {}
                b'#' if idx == 0 || is_space(line[idx - 1]) => return Ok(()),
                b'"' | b'\'' if node_start => self.quote = Some(byte),
                // Outside flow collections a bracket after a letter is part of a plain scalar
                // (`x[0]`); anywhere else it is counted, even where YAML would read text.
                b'[' | b'{' if node_start || after_quote || self.flow > 0 || idx == 0 || is_space(line[idx - 1]) => {
                    self.flow += 1;
                    self.check_depth()?;
                    node_start = true;
                }
                b']' | b'}' if self.flow > 0 => {
                    self.flow -= 1;
                    node_start = false;
                }
                b',' if self.flow > 0 => node_start = true,
                b'-' | b'?' if node_start && next_is_space && self.flow == 0 => {
                    // A block sequence entry or complex key: a node nests at the next token.
                    let next = line[idx + 1..].iter().take_while(|byte| is_space(**byte)).count();
                    self.indents.push(idx + 1 + next);
                    self.check_depth()?;
                }
                b':' if next_is_space || after_quote => node_start = true,
                b'|' | b'>' if node_start && self.flow == 0 => {
                    // A block scalar header: its text is every following line indented deeper
                    // than the collection it sits in. A level pushed for a `- ` before it was
                    // a guess; the node is this scalar, not a collection.
                    if self.indents.last() == Some(&idx) {
                        self.indents.pop();
                    }
                    self.block_scalar = Some(self.indents.last().copied().unwrap_or(0));
                    return Ok(());
                }
                b'!' if node_start => {
                    let end = token_end(line, idx, self.flow > 0);
                    check_tag(&line[idx..end])?;
                    idx = end;
                    continue;
                }
                b'&' if node_start => {
                    idx = token_end(line, idx, self.flow > 0);
                    continue;
                }
                _ => node_start = false,
            }
            if !matches!(byte, b' ' | b'\t' | b'\r') {
                after_quote = false;
            }
            idx += 1;
        }
        Ok(())
    }

    fn check_depth(&self) -> Result<(), String> {
        let depth = self.flow + self.indents.len();
        if depth > MAX_NESTING {
            return Err(format!(
                "maps and lists nest deeper than {MAX_NESTING} levels; a parameter file needs one level per name segment"
            ));
        }
        Ok(())
    }
}

fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r')
}

/// Where the tag or anchor starting at `start` ends: at a space, or a flow indicator inside a
/// flow collection; a verbatim tag (`!<...>`) ends at its `>`.
fn token_end(line: &[u8], start: usize, in_flow: bool) -> usize {
    if line.get(start + 1) == Some(&b'<') {
        return line[start..]
            .iter()
            .position(|byte| *byte == b'>')
            .map_or(line.len(), |end| start + end + 1);
    }
    line[start..]
        .iter()
        .position(|byte| is_space(*byte) || (in_flow && matches!(byte, b',' | b'[' | b']' | b'{' | b'}')))
        .map_or(line.len(), |end| start + end)
}

/// Accepts the core-schema tags (`!!str`, or verbatim `!<tag:yaml.org,2002:str>`); refuses
/// every other one, naming it.
fn check_tag(tag: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(tag);
    let core = text.strip_prefix("!!").or_else(|| {
        text.strip_prefix("!<tag:yaml.org,2002:")
            .and_then(|rest| rest.strip_suffix('>'))
    });
    if core.is_some_and(|name| KNOWN_TAGS.contains(&name)) {
        return Ok(());
    }
    let mut known = String::new();
    for (tag_idx, name) in KNOWN_TAGS.iter().enumerate() {
        let _ = write!(known, "{}!!{name}", if tag_idx == 0 { "" } else { ", " });
    }
    let shown: String = text.chars().take(64).flat_map(char::escape_debug).collect();
    Err(format!(
        "unknown YAML tag {shown} (only {known} are understood); remove the tag and write the value as plain YAML"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hydra configs, dumps, quoted brackets, block scalars and core tags pass.
    #[test]
    fn ordinary_files_pass() {
        let texts = [
            "# @package _global_\ndefaults:\n  - base\na:\n  b: [1, [2, 3]]\n  c: {d: 1}\n",
            "a: \"[[[[\"\nb: '{{{{ it''s'\nc: x[0]\n",
            "a: |\n  text ' with [[[ and \"\n  more\nb: >-\n  folded\n",
            "- a: |\n    x\n  b: 1\n- |\n  y\n",
            "a: !!str 3\nb: !!int \"4\"\nc: !<tag:yaml.org,2002:float> 1\nd: &anchor [1]\ne: *anchor\n",
            "%YAML 1.2\n---\na: 1\n...\n",
            "a: \"multi\n  line [[[[\n  done\"\nb: 1\n",
            "{\"a\":\"b\", \"c\": [1,2]}\n",
        ];
        for text in texts {
            assert_eq!(check(text), Ok(()), "{text}");
        }
        let deep_dump: String = (0..64)
            .map(|level| format!("{}s{level}:\n", "  ".repeat(level)))
            .collect();
        let deep_dump = format!("{deep_dump}{}- x\n", "  ".repeat(64));
        assert_eq!(check(&deep_dump), Ok(()));
    }

    /// Deep flow and block nesting, however written, is refused with its line number.
    #[test]
    fn deep_nesting_is_refused() {
        let deep = "[".repeat(MAX_NESTING + 1);
        let texts = [
            format!("a: 1\nb: {deep}"),
            format!("a: 'x' {deep}"),
            format!("a: {{b: {}", "{c: ".repeat(MAX_NESTING)),
            format!("a: b\nc: {}", "- ".repeat(MAX_NESTING + 1)),
            (0..=MAX_NESTING)
                .map(|level| format!("{}k:\n", " ".repeat(level)))
                .collect::<String>(),
            // A quote inside a plain scalar starts no quoted scalar, so nothing is hidden.
            format!("a: x 'y\nb: {deep}"),
            format!("[a:'x, {deep}"),
        ];
        for text in &texts {
            let err = check(text).unwrap_err();
            assert!(
                err.starts_with("line ") && err.contains("deeper than 72"),
                "{text:.40}: {err}"
            );
        }
        assert!(check(&format!("a: 1\nb: {deep}")).unwrap_err().starts_with("line 2:"));
    }

    /// Tags outside the core schema, and `%TAG`, are refused with the line and the tag.
    #[test]
    fn unknown_tags_are_refused() {
        for (text, tag) in [
            ("a: 1\nb: !!binary aGk=\n", "!!binary"),
            ("a: !!python/object:os.system x\n", "!!python/object:os.system"),
            ("a: [1, !custom 2]\n", "!custom"),
            ("a: ! 1\n", "!"),
            ("!!set a: 1\n", "!!set"),
            ("a: !<tag:example.com:x> 1\n", "!<tag:example.com:x>"),
        ] {
            let err = check(text).unwrap_err();
            assert!(err.contains(&format!("unknown YAML tag {tag} ")), "{text}: {err}");
            assert!(err.starts_with(&format!("line {}:", text.lines().count())), "{err}");
        }
        assert!(
            check("%TAG !! tag:example.com:\n---\na: 1\n")
                .unwrap_err()
                .contains("%TAG")
        );
        assert_eq!(check("a: \"!!binary\"\nb: hi!\n"), Ok(()));
    }

    /// A text over the size bound is refused before any scanning.
    #[test]
    fn oversized_text_is_refused() {
        let err = check(&"a".repeat(MAX_LOAD_BYTES + 1)).unwrap_err();
        assert!(err.contains("over the limit of 4194304 bytes"), "{err}");
    }
}
