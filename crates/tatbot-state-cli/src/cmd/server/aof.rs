//! Repairing an AOF that a crash cut in the middle of a write, before Redis loads it.
//!
//! The rule is the testkit's ([`tatbot_state_testkit::aof`], which explains it), so the tests'
//! restarts and the managed servers cut and refuse the same files: a file that ends inside a
//! script's `MULTI`/`EXEC` block is cut before the `MULTI`, damage before the end is refused and
//! left for a person. Every start of a managed server on an existing data dir (`server start`,
//! the private servers of `demo`, `replay` and `bench`) runs it first.

use std::path::Path;

use anyhow::Context as _;
pub use tatbot_state_testkit::aof::Repair;

/// Checks the AOF under `data` (when there is one) with the `redis-check-aof` of
/// `redis_server`, and when it ends inside a write, cuts it back; says whether it cut.
///
/// # Errors
///
/// The checker could not run, or the AOF is damaged before its end: that is for a person to
/// look at (a cut there would drop every write after the damage), and Redis refuses to load it
/// anyway; or `--fix` did not cut a file a crash cut; or the file the checker stopped in could
/// not be read. Each is one line with what to do.
pub async fn repair(redis_server: &Path, data: &Path) -> anyhow::Result<Repair> {
    let (redis_server, data) = (redis_server.to_owned(), data.to_owned());
    // The checker is a child process that the testkit waits for.
    let repaired = tokio::task::spawn_blocking(move || tatbot_state_testkit::aof::repair(&redis_server, &data))
        .await
        .context("bug: the AOF check panicked")?;
    Ok(repaired?)
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
