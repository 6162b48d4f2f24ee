//! Repairing an AOF that a crash cut in the middle of a write, before Redis loads it: the one
//! rule that the testkit's restarts and the CLI's managed servers (`server start`, the private
//! servers of `demo`, `replay` and `bench`) both follow.
//!
//! Redis 7.0 repairs a cut AOF itself (`aof-load-truncated yes`), but only back to the last
//! whole command. When that lies inside the `MULTI`/`EXEC` block of one script's writes (every
//! write of ours is a script), the block stays open: what Redis appends after the restart joins
//! it on the next load ("MULTI calls can not be nested"), and a half-applied script plus its
//! replay are applied together, so one update is written twice and another lost (fixed upstream
//! in valkey, pull request 4342). `redis-check-aof --fix` cuts before the `MULTI` instead; the
//! producers then replay what was cut.
//!
//! But `--fix` cuts at the first damage wherever it is, and everything after damage in the
//! middle of the file (a flipped byte) is data a person may still rescue. So [`repair`] first
//! only looks, and cuts only what looks like a crash's cut (`cut_short`): a crash cuts only
//! the file Redis appends to (the manifest's last incremental file), and only its last write,
//! so after the last byte the checker accepted there may be at most the start of one `MULTI`
//! block and one command cut short, or one command cut short. Anything else is refused and the
//! file left as it was. A value's length made larger by damage also reads like a file that
//! ends early, but the value then swallows the writes after it, and `--fix` would drop them
//! all. Damage within the last write itself cannot be told from a cut, and is cut like one: that
//! write is lost unless its producer replays it (ours do, after a restart).
//!
//! The checker's own words do not tell a cut from damage: for a file cut right after a line's
//! `$` or its digits (a `kill -9` between two pages of a write) it says "Expected \r\n, got:
//! 0000", showing its line buffer's end, not the file's bytes. So the bytes after the last one
//! it accepted are read and judged here.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::conf::{AOF_DIR_NAME, AOF_FILE_NAME};

/// The AOF manifest under a data dir, as the testkit's and the project's `redis.conf` name it.
pub fn manifest(data: &Path) -> PathBuf {
    data.join(AOF_DIR_NAME).join(format!("{AOF_FILE_NAME}.manifest"))
}

/// The file Redis appends to under the data dir `data`: the manifest's last incremental file;
/// none when the manifest lists none (or names it with a path).
///
/// # Errors
///
/// The manifest cannot be read.
pub fn appended(data: &Path) -> io::Result<Option<PathBuf>> {
    let name = fs::read_to_string(manifest(data))?
        .lines()
        .filter(|line| line.ends_with(" type i"))
        .filter_map(|line| line.split(' ').nth(1).map(str::to_owned))
        .next_back();
    Ok(name
        .filter(|name| Path::new(name).file_name() == Some(name.as_ref()))
        .map(|name| data.join(AOF_DIR_NAME).join(name)))
}

/// What a repair did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// No AOF yet, or it ends with a whole write: nothing to do.
    Intact,
    /// The AOF ended inside a write; it was cut back to the last whole one.
    Cut {
        /// What `redis-check-aof` said, on one line.
        said: String,
    },
}

/// Why an AOF was not repaired. Each message is one line that says what to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum RepairError {
    /// `redis-check-aof` could not be run.
    Checker {
        /// The checker that was tried.
        checker: PathBuf,
        /// Why it did not run.
        source: io::Error,
    },
    /// The AOF is damaged before its end: not cut, left as it was.
    Damaged {
        /// The data dir.
        data: PathBuf,
        /// What `redis-check-aof` said, on one line.
        said: String,
    },
    /// The AOF file the checker stopped in could not be read.
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// A crash cut the AOF inside a write, but `redis-check-aof --fix` did not cut it.
    NotCut {
        /// The data dir.
        data: PathBuf,
        /// What `redis-check-aof --fix` said, on one line.
        said: String,
    },
}

impl fmt::Display for RepairError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepairError::Checker { checker, source } => write!(
                f,
                "cannot run {} to check the AOF after a possible crash (it comes with redis-server; install redis-tools): {source}",
                checker.display()
            ),
            RepairError::Damaged { data, said } => write!(
                f,
                "the AOF in {} is damaged before its end, not cut by a crash, so it was not cut and Redis not started on it: keep a copy of the directory, then look at it with `redis-check-aof {}` (its `--fix` drops everything after the damage); it said: {said}",
                data.display(),
                manifest(data).display()
            ),
            RepairError::File { path, source } => write!(
                f,
                "cannot read the end of {} to tell a crash's cut from damage (check its permissions and the disk): {source}",
                path.display()
            ),
            RepairError::NotCut { data, said } => write!(
                f,
                "the AOF in {} ends inside a write but `redis-check-aof --fix` did not cut it; it said: {said}",
                data.display()
            ),
        }
    }
}

impl std::error::Error for RepairError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RepairError::Checker { source, .. } | RepairError::File { source, .. } => Some(source),
            RepairError::Damaged { .. } | RepairError::NotCut { .. } => None,
        }
    }
}

/// The `redis-check-aof` that belongs to `redis_server`: the one beside it (Debian ships both,
/// the checker a link to the server), else the first on `PATH`.
pub fn checker(redis_server: &Path) -> PathBuf {
    redis_server
        .parent()
        .map(|dir| dir.join("redis-check-aof"))
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("redis-check-aof"))
}

/// Checks the AOF under the data dir `data` (when there is one) with the checker of
/// `redis_server`, and when a crash cut it inside a write (see the module doc), cuts it back
/// with `--fix` (answering its question); says whether it cut. Blocks while the checker runs
/// (milliseconds for a test's AOF).
///
/// # Errors
///
/// The checker could not run ([`RepairError::Checker`]), or the AOF is damaged before its end
/// ([`RepairError::Damaged`]: that is for a person to look at, a cut there would drop every
/// write after the damage, and Redis refuses to load it anyway), or `--fix` did not cut a file
/// that a crash cut ([`RepairError::NotCut`]), or the file the checker stopped in could not be
/// read ([`RepairError::File`]).
pub fn repair(redis_server: &Path, data: &Path) -> Result<Repair, RepairError> {
    let manifest = manifest(data);
    if !manifest.exists() {
        return Ok(Repair::Intact);
    }
    let checker = checker(redis_server);
    let checked = check(&checker, &manifest, false)?;
    if !checked.contains("--fix option") {
        return Ok(Repair::Intact);
    }
    let damaged = |why: &str| RepairError::Damaged {
        data: data.to_owned(),
        said: format!("{checked} (not a crash's cut: {why})"),
    };
    let stop = Stop::find(data, &checked).map_err(|why| damaged(&why))?;
    stop.cut_short()?.map_err(|why| damaged(&why))?;
    cut(&checker, &manifest, data).map(|said| Repair::Cut { said })
}

/// Cuts an AOF with `--fix`, checks that it did, and answers what it said.
fn cut(checker: &Path, manifest: &Path, data: &Path) -> Result<String, RepairError> {
    let said = check(checker, manifest, true)?;
    if !said.contains("Successfully truncated") {
        return Err(RepairError::NotCut {
            data: data.to_owned(),
            said,
        });
    }
    Ok(said)
}

/// The longest end of a file, after the last byte the checker accepted, that is looked at as
/// one write cut short; a longer one is left for a person.
const MAX_CUT: u64 = 64 * 1024 * 1024;

/// Where the checker stopped: the file Redis appends to (anything else is refused), and the
/// last byte it accepted there.
#[derive(Debug)]
struct Stop {
    /// The file.
    path: PathBuf,
    /// The length of the file up to the end of the last write the checker accepted whole.
    ok_up_to: u64,
    /// The file's length.
    len: u64,
}

impl Stop {
    /// The file that `checked` (the checker's report) says it stopped in, when it is the one
    /// Redis appends to (the manifest's last incremental file); else why not, for a person.
    fn find(data: &Path, checked: &str) -> Result<Stop, String> {
        // The checker reports each file it read, the damaged one last:
        // "AOF analyzed: filename=appendonly.aof.1.incr.aof, size=106, ok_up_to=23, ...".
        const REPORT: &str = "AOF analyzed: ";
        let report = checked
            .rfind(REPORT)
            .map(|at| &checked[at + REPORT.len()..])
            .ok_or("the checker named no file")?;
        let field = |name: &str| {
            report
                .split(", ")
                .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
                .map(|value| value.split_whitespace().next().unwrap_or(value))
        };
        let (Some(name), Some(ok_up_to)) = (field("filename"), field("ok_up_to").and_then(|n| n.parse::<u64>().ok()))
        else {
            return Err("the checker's report names no file and position".to_owned());
        };
        let path = data.join(AOF_DIR_NAME).join(name);
        if appended(data).map_err(|err| format!("cannot read the manifest: {err}"))? != Some(path.clone()) {
            return Err(format!(
                "it stopped in {name}, not in the file Redis appends to, which a crash cannot cut"
            ));
        }
        let len = fs::metadata(&path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?
            .len();
        if ok_up_to > len {
            return Err(format!("the checker accepted {ok_up_to} bytes of {len}"));
        }
        Ok(Stop { path, ok_up_to, len })
    }

    fn failed(&self, source: io::Error) -> RepairError {
        RepairError::File {
            path: self.path.clone(),
            source,
        }
    }

    /// Whether the bytes after the last one the checker accepted are the start of one write
    /// cut short (see [`cut_short`]); the error is why not.
    fn cut_short(&self) -> Result<Result<(), String>, RepairError> {
        let after = self.len - self.ok_up_to;
        if after > MAX_CUT {
            return Ok(Err(format!(
                "{after} bytes follow the last whole write, more than one write cut short"
            )));
        }
        let mut tail = vec![0; usize::try_from(after).unwrap_or(usize::MAX)];
        let mut file = File::open(&self.path).map_err(|err| self.failed(err))?;
        file.seek(SeekFrom::Start(self.ok_up_to))
            .and_then(|_| file.read_exact(&mut tail))
            .map_err(|err| self.failed(err))?;
        // What the file ends with goes into the refusal: a log is often all a person gets.
        let end = &tail[tail.len().saturating_sub(64)..];
        Ok(cut_short(&tail).map_err(|why| format!("{why}; the file ends with \"{}\"", end.escape_ascii())))
    }
}

/// Whether `tail`, what follows the last byte the checker accepted, is what a crash leaves when
/// it cuts Redis's last write: the start of a `MULTI` block (`MULTI` and whole commands) and at
/// most one command cut short, that holds no other command's start; or one command cut short.
/// Anything else means the checker read past damage: a length made larger swallows the writes
/// after it, which a cut would drop. Whole commands outside a `MULTI` would have been accepted.
/// The error is why not.
fn cut_short(tail: &[u8]) -> Result<(), String> {
    if tail.is_empty() {
        return Err("the file ends with a whole write".to_owned());
    }
    let mut at = 0;
    let mut whole = 0;
    while at < tail.len() {
        match parse_command(&tail[at..]) {
            Parsed::Whole { len, name } => {
                let multi = name.eq_ignore_ascii_case(b"MULTI");
                if whole == 0 && !multi {
                    return Err("a whole command outside MULTI follows the last whole write".to_owned());
                }
                if whole > 0 && (multi || name.eq_ignore_ascii_case(b"EXEC")) {
                    return Err("a whole MULTI block follows the last whole write".to_owned());
                }
                whole += 1;
                at += len;
            }
            Parsed::Short { value } => {
                // The value the cut falls in holds no other command's start: a length made
                // larger swallows what follows it.
                return if value.is_some_and(|value| starts_command(&tail[at + value..])) {
                    Err("the command cut short holds the start of another one".to_owned())
                } else {
                    Ok(())
                };
            }
            Parsed::Bad => return Err("what follows the last whole write is not RESP".to_owned()),
        }
    }
    Ok(())
}

/// Whether `bytes` hold a command's start after a line end: `\r\n*<digits>\r\n$`.
fn starts_command(bytes: &[u8]) -> bool {
    bytes.windows(3).enumerate().any(|(at, w)| {
        w == b"\r\n*" && {
            let rest = &bytes[at + 3..];
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            digits > 0 && rest[digits..].starts_with(b"\r\n$")
        }
    })
}

/// One RESP command (an array of bulk strings) at the start of some bytes.
enum Parsed<'a> {
    /// Whole: its length and its first element.
    Whole { len: usize, name: &'a [u8] },
    /// The bytes end inside it: inside the value that starts at `value`, or inside a line.
    Short { value: Option<usize> },
    /// Not a command.
    Bad,
}

/// A line `<prefix><digits>\r\n` of RESP.
enum Line {
    /// Its number, and where the line ends.
    Number(usize, usize),
    /// The bytes end inside it.
    Short,
    /// Not such a line.
    Bad,
}

/// The line with `prefix` at `at` in `bytes`.
fn line(bytes: &[u8], at: usize, prefix: u8) -> Line {
    let Some((&first, rest)) = bytes.get(at..).unwrap_or_default().split_first() else {
        return Line::Short;
    };
    if first != prefix {
        return Line::Bad;
    }
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let after = &rest[digits..];
    if after.len() < 2 && b"\r\n".starts_with(after) {
        return Line::Short;
    }
    if !after.starts_with(b"\r\n") || digits == 0 || digits > 18 {
        return Line::Bad;
    }
    match std::str::from_utf8(&rest[..digits]).ok().and_then(|n| n.parse().ok()) {
        Some(n) => Line::Number(n, at + 1 + digits + 2),
        None => Line::Bad,
    }
}

/// The command at the start of `bytes`.
fn parse_command(bytes: &[u8]) -> Parsed<'_> {
    let (count, mut at) = match line(bytes, 0, b'*') {
        Line::Number(0, _) | Line::Bad => return Parsed::Bad,
        Line::Short => return Parsed::Short { value: None },
        Line::Number(count, at) => (count, at),
    };
    let mut name: &[u8] = &[];
    for index in 0..count {
        let (len, start) = match line(bytes, at, b'$') {
            Line::Bad => return Parsed::Bad,
            Line::Short => return Parsed::Short { value: None },
            Line::Number(len, start) => (len, start),
        };
        let Some(end) = start.checked_add(len).filter(|end| end.checked_add(2).is_some()) else {
            return Parsed::Bad;
        };
        if bytes.len() < end + 2 {
            // The bytes end inside the value or its line end.
            let partial = bytes.get(end..).unwrap_or_default();
            return if b"\r\n".starts_with(partial) {
                Parsed::Short { value: Some(start) }
            } else {
                Parsed::Bad
            };
        }
        if &bytes[end..end + 2] != b"\r\n" {
            return Parsed::Bad;
        }
        if index == 0 {
            name = &bytes[start..end];
        }
        at = end + 2;
    }
    Parsed::Whole { len: at, name }
}

/// Runs the checker on `manifest`, with `--fix` (answering its question) or without, and
/// answers what it said on one line.
fn check(checker: &Path, manifest: &Path, fix: bool) -> Result<String, RepairError> {
    let failed = |source: io::Error| RepairError::Checker {
        checker: checker.to_owned(),
        source,
    };
    let mut command = Command::new(checker);
    if fix {
        command.arg("--fix");
    }
    let mut child = command
        .arg(manifest)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(failed)?;
    // With `--fix` it asks before it cuts; a closed pipe only means it did not ask.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(if fix { b"y\n" } else { b"n\n" });
    }
    let output = child.wait_with_output().map_err(failed)?;
    let said = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    Ok(said.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::cut_short;

    #[test]
    fn a_write_cut_short_is_told_from_damage() {
        let cut: [&[u8]; 8] = [
            b"*",
            b"*3\r\n$",
            b"*3\r\n$3\r\nSET\r\n$2",
            b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$2\r\nk2\r\n$1\r\n1\r\n*1\r\n$4\r\nEX",
            b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$2\r\nk2\r\n$1\r\n1\r\n",
            b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$5\r\nk\r\n",
            b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$2\r\nk2\r",
            // A whole value that reads like a command's start is not one.
            b"*7\r\n$4\r\nXADD\r\n$1\r\ns\r\n$3\r\n1-1\r\n$1\r\nf\r\n$2\r\n*5\r\n$1\r\ng\r\n$2\r\nv",
        ];
        for tail in cut {
            assert_eq!(cut_short(tail), Ok(()), "{}", String::from_utf8_lossy(tail));
        }
        let damaged: [(&[u8], &str); 8] = [
            (b"", "ends with a whole write"),
            (b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$2\r\nk2\0\0", "not RESP"),
            (
                b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$200\r\nk1\r\n*1\r\n$4\r\nEXEC\r\n*1",
                "start of another",
            ),
            (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*1", "outside MULTI"),
            (
                b"*1\r\n$5\r\nMULTI\r\n*1\r\n$4\r\nexec\r\n*1\r\n$5\r\nMULTI",
                "whole MULTI block",
            ),
            (b"*1\r\n$5\r\nMULTI\r\n*1\r\n$5\r\nMULTI\r\n", "whole MULTI block"),
            (b"@@", "not RESP"),
            (b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$2\r\nk2@@", "not RESP"),
        ];
        for (tail, why) in damaged {
            let said = cut_short(tail).expect_err(&String::from_utf8_lossy(tail));
            assert!(said.contains(why), "{said}");
        }
    }
}
