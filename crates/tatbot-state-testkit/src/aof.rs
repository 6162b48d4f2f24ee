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
//! only looks, cuts only a file that ends early (what Redis itself would cut), and refuses
//! anything else, leaving the file as it was.
//!
//! A crash can also leave the last write's tail as zeros rather than missing (seen after a
//! `kill -9` whose file then ended on a page boundary): the checker calls that damage, not a
//! cut. It is a cut when only zeros follow the last byte the checker accepted, or when dropping
//! the zeros at the end leaves a file that merely ends early; then it is cut like one. Zeros
//! carry no write, so dropping them first and putting them back when the file turns out
//! damaged after all leaves it as it was.

use std::fmt;
use std::fs::File;
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::conf::{AOF_DIR_NAME, AOF_FILE_NAME};

/// The AOF manifest under a data dir, as the testkit's and the project's `redis.conf` name it.
pub fn manifest(data: &Path) -> PathBuf {
    data.join(AOF_DIR_NAME).join(format!("{AOF_FILE_NAME}.manifest"))
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
    /// The AOF's last file could not be read or resized while looking at zeros at its end.
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The AOF ends inside a write, but `redis-check-aof --fix` did not cut it.
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
                "the AOF in {} is damaged before its end, not cut by a crash, and Redis will not load it: keep a copy of the directory, then look at it with `redis-check-aof {}` (its `--fix` drops everything after the damage); it said: {said}",
                data.display(),
                manifest(data).display()
            ),
            RepairError::File { path, source } => write!(
                f,
                "cannot look at the zeros at the end of {} after a possible crash (check its permissions and the disk): {source}",
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
/// `redis_server`, and when it ends inside a write, cuts it back with `--fix` (answering its
/// question); says whether it cut. A last write whose tail a crash left as zeros is cut the
/// same way (see the module doc). Blocks while the checker runs (milliseconds for a test's
/// AOF).
///
/// # Errors
///
/// The checker could not run ([`RepairError::Checker`]), or the AOF is damaged before its end
/// ([`RepairError::Damaged`]: that is for a person to look at, a cut there would drop every
/// write after the damage, and Redis refuses to load it anyway), or `--fix` did not cut a file
/// that ends early ([`RepairError::NotCut`]), or the zeros at the end of the last file could
/// not be looked at or put back ([`RepairError::File`]).
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
    if ends_early(&checked) {
        return cut(&checker, &manifest, data).map(|said| Repair::Cut { said });
    }
    let damaged = || RepairError::Damaged {
        data: data.to_owned(),
        said: checked.clone(),
    };
    let Some(zeros) = ZeroTail::find(data, &checked)? else {
        return Err(damaged());
    };
    zeros.drop_them()?;
    let dropped = format!(
        "dropped the {} zero bytes that end {} (the checker had said: {checked})",
        zeros.len - zeros.from,
        zeros.path.display()
    );
    let repaired = match check(&checker, &manifest, false) {
        Ok(said) if !said.contains("--fix option") => Ok(Repair::Cut { said: dropped }),
        Ok(said) if ends_early(&said) => cut(&checker, &manifest, data).map(|said| Repair::Cut {
            said: format!("{dropped}; then {said}"),
        }),
        Ok(_) => Err(damaged()),
        Err(err) => Err(err),
    };
    if repaired.is_err() {
        zeros.put_back()?;
    }
    repaired
}

/// Cuts an AOF that ends early with `--fix`, checks that it did, and answers what it said.
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

/// Zeros at the end of the AOF file the checker stopped in, all after the last byte it accepted.
#[derive(Debug)]
struct ZeroTail {
    /// The file.
    path: PathBuf,
    /// Where the zeros start: after the last other byte, and never before the last byte the
    /// checker accepted.
    from: u64,
    /// The file's length.
    len: u64,
}

impl ZeroTail {
    /// The zeros at the end of the file that `checked` (the checker's report) says is damaged,
    /// when there are any after the last byte it accepted.
    fn find(data: &Path, checked: &str) -> Result<Option<ZeroTail>, RepairError> {
        // The checker reports each file it read, the damaged one last:
        // "AOF analyzed: filename=appendonly.aof.1.incr.aof, size=106, ok_up_to=23, ...".
        const REPORT: &str = "AOF analyzed: ";
        let Some(report) = checked.rfind(REPORT).map(|at| &checked[at + REPORT.len()..]) else {
            return Ok(None);
        };
        let field = |name: &str| {
            report
                .split(", ")
                .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
                .map(|value| value.split_whitespace().next().unwrap_or(value))
        };
        let (Some(name), Some(ok_up_to)) = (field("filename"), field("ok_up_to").and_then(|n| n.parse::<u64>().ok()))
        else {
            return Ok(None);
        };
        if Path::new(name).file_name() != Some(name.as_ref()) {
            return Ok(None);
        }
        let path = data.join(AOF_DIR_NAME).join(name);
        let failed = |source: io::Error| RepairError::File {
            path: path.clone(),
            source,
        };
        let mut file = File::open(&path).map_err(failed)?;
        let len = file.metadata().map_err(failed)?.len();
        let from = zeros_from(&mut file, len, ok_up_to).map_err(failed)?;
        Ok((from < len).then_some(ZeroTail { path, from, len }))
    }

    /// Drops the zeros.
    fn drop_them(&self) -> Result<(), RepairError> {
        self.resize(self.from)
    }

    /// Puts the zeros back: the file is as it was.
    fn put_back(&self) -> Result<(), RepairError> {
        self.resize(self.len)
    }

    fn resize(&self, len: u64) -> Result<(), RepairError> {
        File::options()
            .write(true)
            .open(&self.path)
            .and_then(|file| file.set_len(len))
            .map_err(|source| RepairError::File {
                path: self.path.clone(),
                source,
            })
    }
}

/// Where the zeros at the end of `file` (of length `len`) start, looking back no further than
/// `floor`: `len` when it does not end with a zero.
fn zeros_from(file: &mut File, len: u64, floor: u64) -> io::Result<u64> {
    const CHUNK: usize = 64 * 1024;
    let mut chunk = vec![0; CHUNK];
    let mut end = len;
    while end > floor {
        let start = end.saturating_sub(chunk.len() as u64).max(floor);
        let part = &mut chunk[..usize::try_from(end - start).unwrap_or(usize::MAX).min(CHUNK)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(part)?;
        if let Some(last) = part.iter().rposition(|&byte| byte != 0) {
            return Ok(start + last as u64 + 1);
        }
        end = start;
    }
    Ok(floor.min(len))
}

/// Whether the checker's report says the file ends early (the EOF cut that Redis's own
/// `aof-load-truncated` handles), rather than damage before its end.
fn ends_early(checked: &str) -> bool {
    ["Reached EOF", "Unexpected EOF"]
        .iter()
        .any(|eof| checked.contains(eof))
        || checked
            .split("Expected to read ")
            .nth(1)
            .is_some_and(|rest| rest.contains(" bytes, got "))
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
