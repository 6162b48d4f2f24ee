//! Repairing an AOF that a crash cut in the middle of a write, before Redis loads it.
//!
//! Redis 7.0 repairs a cut AOF itself (`aof-load-truncated yes`), but only back to the last
//! whole command. When that lies inside the `MULTI`/`EXEC` block of one script's writes (every
//! write of ours is a script), the block stays open: what Redis appends after the restart joins
//! it on the next load ("MULTI calls can not be nested"), and a half-applied script plus its
//! replay are applied together, so one update is written twice and another lost (fixed upstream
//! in valkey, pull request 4342). `redis-check-aof --fix` cuts before the `MULTI` instead; the
//! producers then replay what was cut. So every start of a managed server on an existing data
//! dir (`server start`, the private servers of `demo`, `replay` and `bench`) runs it first.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context as _;
use tokio::io::AsyncWriteExt as _;

/// The AOF manifest under a data dir, as `config/redis/redis.conf` names it.
pub fn manifest(data: &Path) -> PathBuf {
    data.join("appendonlydir").join("appendonly.aof.manifest")
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

/// Checks the AOF under `data` (when there is one) with `redis-check-aof`, and when it ends
/// inside a write, cuts it back with `--fix` (answering its question); says whether it cut. `redis_server` finds the checker: the one beside
/// it (Debian ships both, the checker a link to the server), else the first on `PATH`.
///
/// # Errors
///
/// The checker could not run, or the AOF is damaged before its end: that is for a person to
/// look at (a cut there would drop every write after the damage), and Redis refuses to load it
/// anyway.
pub async fn repair(redis_server: &Path, data: &Path) -> anyhow::Result<Repair> {
    let manifest = manifest(data);
    if !manifest.exists() {
        return Ok(Repair::Intact);
    }
    let checker = redis_server
        .parent()
        .map(|dir| dir.join("redis-check-aof"))
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("redis-check-aof"));
    // First only look: `--fix` cuts at the first damage wherever it is, and everything after
    // damage in the middle of the file (a flipped byte) is data a person may still rescue.
    let checked = check(&checker, &manifest, false).await?;
    if !checked.contains("--fix option") {
        return Ok(Repair::Intact);
    }
    // Only what Redis itself would cut (`aof-load-truncated`: a file that ends early) is cut
    // here, before its `MULTI` instead of inside it.
    let ends_early = ["Reached EOF", "Unexpected EOF"]
        .iter()
        .any(|eof| checked.contains(eof))
        || checked
            .split("Expected to read ")
            .nth(1)
            .is_some_and(|rest| rest.contains(" bytes, got "));
    if !ends_early {
        anyhow::bail!(
            "the AOF in {} is damaged before its end, not cut by a crash, and Redis will not load it: keep a copy of the directory, then look at it with `redis-check-aof {}` (its `--fix` drops everything after the damage); it said: {checked}",
            data.display(),
            manifest.display()
        );
    }
    let said = check(&checker, &manifest, true).await?;
    if !said.contains("Successfully truncated") {
        anyhow::bail!(
            "the AOF in {} ends inside a write but `redis-check-aof --fix` did not cut it; it said: {said}",
            data.display()
        );
    }
    Ok(Repair::Cut { said })
}

/// Runs the checker on `manifest`, with `--fix` (answering its question) or without, and
/// answers what it said on one line.
async fn check(checker: &Path, manifest: &Path, fix: bool) -> anyhow::Result<String> {
    let mut command = tokio::process::Command::new(checker);
    if fix {
        command.arg("--fix");
    }
    let mut child = command
        .arg(manifest)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "cannot run {} to check the AOF after a possible crash (it comes with redis-server; install redis-tools)",
                checker.display()
            )
        })?;
    // With `--fix` it asks before it cuts; a closed pipe only means it did not ask.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(if fix { b"y\n" } else { b"n\n" }).await;
    }
    let output = child.wait_with_output().await.context("waiting for redis-check-aof")?;
    let said = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    Ok(said.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// [`repair`], with a cut logged as a warning naming the dir.
///
/// # Errors
///
/// As [`repair`].
pub async fn repair_logged(redis_server: &Path, data: &Path) -> anyhow::Result<()> {
    if let Repair::Cut { said } = repair(redis_server, data).await? {
        tracing::warn!(
            dir = %data.display(),
            "the AOF ended inside a write (a crash); cut it back to the last whole write before starting: {said}"
        );
    }
    Ok(())
}
