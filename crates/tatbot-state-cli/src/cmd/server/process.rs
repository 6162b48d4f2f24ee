//! Finding `redis-server`, watching its pid, and waiting for conditions with a deadline.
//!
//! A daemonized server is not our child, so its liveness is checked with signal 0; a zombie
//! (a dead process whose parent has not reaped it yet) counts as gone, because it no longer
//! serves or writes anything. Every wait polls a condition until a deadline instead of
//! sleeping a fixed time.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal;
use nix::unistd::Pid;
use tokio::time::Instant;

/// Environment variable naming the `redis-server` binary (shared with the test kit).
pub const REDIS_SERVER_ENV: &str = "TATBOT_REDIS_SERVER";

/// How often a waited-for condition is checked again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// The `redis-server` binary: `TATBOT_REDIS_SERVER`, else the first on `PATH`.
///
/// # Errors
///
/// It is not installed; the message says how to install it.
pub fn redis_server_binary() -> anyhow::Result<PathBuf> {
    if let Some(value) = std::env::var_os(REDIS_SERVER_ENV).filter(|value| !value.is_empty()) {
        let path = PathBuf::from(value);
        if is_executable(&path) {
            return Ok(path);
        }
        anyhow::bail!(
            "{REDIS_SERVER_ENV}={} is not an executable file: point it at redis-server or unset it",
            path.display()
        );
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&search)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            anyhow::anyhow!("redis-server not found on PATH: install it (sudo apt-get install -y redis-server) or set {REDIS_SERVER_ENV}")
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Who has a file under an AOF dir open, found by [`holder_of`].
#[derive(Debug, PartialEq, Eq)]
pub enum Holder {
    /// Nobody this process can see.
    Nobody,
    /// This process (and its name) has one of the files open.
    Process(u32, String),
    /// A `redis-server` whose open files this user may not look at (another user's).
    Unseen(u32),
}

/// Whether a process has one of the files of `dir` (not its subdirectories) open, compared
/// by device and inode (Linux: `/proc/PID/fd`), so that a Redis in a container, which sees
/// the file under another path, is found too. A `redis-server` whose open files this user may
/// not read is reported as [`Holder::Unseen`]; other such processes are not seen.
///
/// # Errors
///
/// The dir or `/proc` cannot be read.
pub fn holder_of(dir: &Path) -> std::io::Result<Holder> {
    use std::os::unix::fs::MetadataExt as _;
    let mut files = std::collections::HashSet::new();
    for entry in std::fs::read_dir(dir)? {
        let meta = entry?.metadata()?;
        if meta.is_file() {
            files.insert((meta.dev(), meta.ino()));
        }
    }
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        let name = std::fs::read_to_string(entry.path().join("comm"))
            .map_or_else(|_| String::new(), |comm| comm.trim().to_owned());
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            if name == "redis-server" {
                return Ok(Holder::Unseen(pid));
            }
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::metadata(fd.path()).is_ok_and(|meta| files.contains(&(meta.dev(), meta.ino()))));
        if holds {
            return Ok(Holder::Process(pid, name));
        }
    }
    Ok(Holder::Nobody)
}

/// The pid in a pid file, if the file exists and holds one.
pub fn read_pidfile(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 0)
}

/// Whether `pid` is a live (not zombie) process.
pub fn is_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else { return false };
    match signal::kill(Pid::from_raw(raw), None) {
        // EPERM: it exists but belongs to another user.
        Ok(()) | Err(Errno::EPERM) => !is_zombie(pid),
        Err(_) => false,
    }
}

/// Whether `/proc` shows `pid` as a zombie; false where there is no `/proc`.
fn is_zombie(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may hold spaces.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| matches!(state, "Z" | "X"))
}

/// The command line of `pid` as text (arguments joined by spaces), where `/proc` has it.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text = String::from_utf8_lossy(&raw).replace('\0', " ");
    Some(text.trim().to_owned())
}

/// Checks `condition` every [`POLL_INTERVAL`] until it gives `Some` or `timeout` passes.
pub async fn poll_until<T, F, Fut>(timeout: Duration, mut condition: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep_until((Instant::now() + POLL_INTERVAL).min(deadline)).await;
    }
}

/// Waits until `pid` is gone; returns whether it went within `timeout`.
pub async fn wait_for_exit(pid: u32, timeout: Duration) -> bool {
    poll_until(timeout, || async move { (!is_alive(pid)).then_some(()) })
        .await
        .is_some()
}

/// The last `lines` lines of a log file, joined with " | " for a one-line error.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return format!("(no log at {})", path.display());
    };
    let all: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process is alive; a pid far above pid_max is not.
    #[test]
    fn liveness() {
        assert!(is_alive(std::process::id()));
        assert!(!is_alive(i32::MAX as u32));
        assert!(!is_alive(u32::MAX));
    }

    /// A zombie child counts as gone before it is reaped.
    #[test]
    fn zombie_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let gone = (0..400).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            !is_alive(pid)
        });
        assert!(gone, "exited child still counted alive");
        child.wait().unwrap();
    }
}
