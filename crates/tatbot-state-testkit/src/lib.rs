//! Throwaway real `redis-server` processes for tests.
//!
//! Every [`RedisServer`] is a private `redis-server` child process listening on a free
//! loopback port, with its own temporary data directory holding the generated
//! `redis.conf`, the server log and (when persistence is on) the AOF. Nothing is shared
//! between servers, so tests can run in parallel without `FLUSHALL` or key prefixes, and
//! a test that panics still cleans up because [`Drop`] kills the process and removes the
//! directory.
//!
//! The API is synchronous and uses only the standard library plus signals, so it works the
//! same from plain `#[test]` functions and from async tests (starting a server blocks for
//! the few milliseconds Redis needs to come up).
//!
//! ```
//! use tatbot_state_testkit::RedisServer;
//!
//! let server = RedisServer::builder().persistence(true).password("s3cret").start();
//! assert_eq!(server.command(&["SET", "k", "v"]).unwrap(), "+OK\r\n");
//! assert!(server.url().starts_with("redis://:s3cret@127.0.0.1:"));
//! ```
//!
//! The `redis-server` binary is taken from [`Builder::binary`], else from the
//! `TATBOT_REDIS_SERVER` environment variable, else from `PATH`. Redis 7 or newer is
//! expected, because the generated config uses directives that older versions reject.

pub mod aof;
mod conf;
mod proxy;
mod resp;
mod sentinel;

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::conf::{AOF_DIR_NAME, AOF_FILE_NAME, ConfSpec};
use crate::resp::Conn;

pub use crate::proxy::ReplyProxy;
pub use crate::sentinel::{ClusterBuilder, SentinelCluster};

/// The environment variable that overrides which `redis-server` binary is started.
pub const REDIS_SERVER_ENV: &str = "TATBOT_REDIS_SERVER";

/// The loopback address every server binds to.
const HOST: &str = "127.0.0.1";

/// How long a freshly spawned server gets to answer `PING` before startup is declared failed.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a condition (server answering, process exited, AOF written) is re-checked.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Connect/read/write timeout of a single readiness probe; short so that a probe against a
/// half-started server fails fast and the loop can look at the process again.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// How many fresh ports `try_start` tries when Redis loses the race for a port.
const PORT_ATTEMPTS: usize = 5;

/// How long `restart` keeps retrying when the old port is briefly held by someone else.
const REBIND_TIMEOUT: Duration = Duration::from_secs(10);

/// The read/write timeout of [`RedisServer::command`].
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `stop` waits after each escalation step (SHUTDOWN, then SIGTERM).
const STOP_STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// How many trailing log lines go into a startup error message.
const LOG_TAIL_LINES: usize = 20;

/// The line Redis logs once it has bound its port and loaded its data.
const READY_LOG_LINE: &str = "Ready to accept connections";

/// Configures a [`RedisServer`] before starting it; obtain one with [`RedisServer::builder`].
#[derive(Debug, Clone, Default)]
pub struct Builder {
    binary: Option<PathBuf>,
    persistence: bool,
    password: Option<String>,
    acl_file: Option<PathBuf>,
    extra: Vec<(String, String)>,
    sentinel: bool,
}

impl Builder {
    /// Turns the append-only file on (`appendonly yes`, `appendfsync everysec`) or off.
    ///
    /// Off is the default: `save ""` and `appendonly no`, so nothing is written to disk.
    /// RDB snapshots stay disabled either way.
    #[must_use]
    pub fn persistence(mut self, on: bool) -> Self {
        self.persistence = on;
        self
    }

    /// Requires clients to authenticate with `pw` (`requirepass`).
    ///
    /// [`RedisServer::command`] and the readiness check authenticate automatically, and
    /// [`RedisServer::url`] embeds the (percent-encoded) password.
    #[must_use]
    pub fn password(mut self, pw: &str) -> Self {
        self.password = Some(pw.to_owned());
        self
    }

    /// Loads users from an ACL file (`aclfile`).
    ///
    /// The file is copied into the server's temporary directory when the server starts,
    /// so `ACL SAVE` never touches the original. If the file disables the default user and
    /// no [`password`](Self::password) is set, a `-NOAUTH` reply to the readiness `PING`
    /// counts as "up".
    #[must_use]
    pub fn acl_file(mut self, path: &Path) -> Self {
        self.acl_file = Some(path.to_owned());
        self
    }

    /// Appends an arbitrary `redis.conf` directive, written verbatim as `key value`.
    ///
    /// Extra directives come after all generated ones, so they override them. The value is
    /// not quoted, which allows multi-argument values such as `config("save", "900 1")`;
    /// quote it yourself if it must be a single argument containing spaces. A key that is
    /// not a single word, or a value containing a newline, makes startup fail with
    /// `InvalidInput`.
    #[must_use]
    pub fn config(mut self, key: &str, value: &str) -> Self {
        self.extra.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Starts the process as a Sentinel (`redis-server CONF --sentinel`) instead of a data
    /// server; its `sentinel ...` directives come from [`config`](Self::config).
    ///
    /// [`SentinelCluster`] uses this; a sentinel rewrites its own config file as it learns the
    /// topology, which is why the file lives in the server's private directory.
    #[must_use]
    pub fn sentinel(mut self, on: bool) -> Self {
        self.sentinel = on;
        self
    }

    /// Uses this `redis-server` binary instead of `TATBOT_REDIS_SERVER` or `PATH`.
    ///
    /// A bare name without a `/` is looked up on `PATH`. This exists mainly so tests can
    /// exercise the "binary not found" path without mutating the process environment,
    /// which would race with other tests running in parallel.
    #[must_use]
    pub fn binary(mut self, path: &Path) -> Self {
        self.binary = Some(path.to_owned());
        self
    }

    /// Starts the server and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// Panics with the error from [`try_start`](Self::try_start) if the server cannot be
    /// started; that is the right outcome for a test whose fixture is broken.
    pub fn start(self) -> RedisServer {
        match self.try_start() {
            Ok(server) => server,
            Err(e) => panic!("tatbot-state-testkit: failed to start redis-server: {e}"),
        }
    }

    /// Starts the server and waits until it answers `PING`, returning any failure.
    ///
    /// A free port is picked by binding an ephemeral loopback port and releasing it; if
    /// another process grabs that port before Redis binds it, a new port is tried (a
    /// bounded number of times). The error message of an early exit or of a timeout
    /// includes the tail of the Redis log (and of its stderr, where config errors go).
    pub fn try_start(self) -> io::Result<RedisServer> {
        for (key, value) in &self.extra {
            conf::validate_directive(key, value)?;
        }
        let binary = resolve_binary(self.binary.as_deref())?;
        let dir = tempfile::Builder::new()
            .prefix("tatbot-redis-")
            .tempdir()
            .map_err(|e| with_context(e, "cannot create a temporary directory"))?;
        let acl_file = match &self.acl_file {
            Some(src) => {
                let dst = dir.path().join("users.acl");
                fs::copy(src, &dst).map_err(|e| with_context(e, &format!("cannot copy ACL file {}", src.display())))?;
                Some(dst)
            }
            None => None,
        };
        let conf_path = dir.path().join("redis.conf");
        let mut server = RedisServer {
            child: Mutex::new(None),
            // Replaced by a real port before every launch attempt below.
            port: 0,
            password: self.password.clone(),
            noauth_is_up: acl_file.is_some() && self.password.is_none(),
            binary,
            conf_path,
            sentinel: self.sentinel,
            dir,
        };
        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port()?;
            let text = conf::render(&ConfSpec {
                port: server.port,
                dir: server.dir.path(),
                log_path: &server.log_path(),
                persistence: self.persistence,
                password: self.password.as_deref(),
                acl_file: acl_file.as_deref(),
                extra: &self.extra,
            });
            fs::write(&server.conf_path, text)
                .map_err(|e| with_context(e, &format!("cannot write {}", server.conf_path.display())))?;
            match server.launch() {
                Ok(child) => {
                    *server.child_mut() = Some(child);
                    return Ok(server);
                }
                // Another process took the port after free_port() released it and before
                // Redis bound it; a new port is picked on the next iteration.
                Err(LaunchError::AddrInUse(log)) => last_log = log,
                // Dropping `server` here removes the directory; there is no process.
                Err(LaunchError::Other(e)) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "redis-server could not bind a free loopback port in {PORT_ATTEMPTS} attempts; \
                 last log lines:\n{last_log}"
            ),
        ))
    }
}

/// A private `redis-server` process on a loopback port with its own temporary directory.
///
/// Dropping it kills the process (SIGKILL), reaps it, and removes the directory.
pub struct RedisServer {
    /// The running process; `None` after [`kill`](Self::kill) or [`stop`](Self::stop).
    /// Behind a mutex so `&self` methods such as [`is_running`](Self::is_running) can reap
    /// an exited child, while the server stays `Sync` for sharing across test threads.
    child: Mutex<Option<Child>>,
    port: u16,
    password: Option<String>,
    /// True when an ACL file is in use without a password, so `-NOAUTH` means "up".
    noauth_is_up: bool,
    binary: PathBuf,
    conf_path: PathBuf,
    /// Started with `--sentinel`.
    sentinel: bool,
    /// Declared last so that it is dropped (and the directory removed) only after
    /// `Drop::drop` has killed the process that writes into it.
    dir: TempDir,
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The password is left out on purpose: Debug output ends up in test logs.
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("pid", &self.pid())
            .field("dir", &self.dir.path())
            .field("binary", &self.binary)
            .finish_non_exhaustive()
    }
}

/// Why one launch attempt failed.
enum LaunchError {
    /// Redis could not bind its port; carries the tail of this attempt's log.
    AddrInUse(String),
    /// Anything else; not worth retrying.
    Other(io::Error),
}

/// What one readiness probe saw.
enum Probe {
    /// A Redis server answered; `pid` is its `process_id` when `INFO` was allowed.
    Up { pid: Option<u32> },
    /// Not ready (yet); the text says why, for the timeout message.
    NotYet(String),
}

impl RedisServer {
    /// Starts a server with the default configuration (no persistence, no password).
    ///
    /// # Panics
    ///
    /// Panics with a descriptive message if the server cannot be started.
    pub fn start() -> RedisServer {
        Builder::default().start()
    }

    /// Returns a [`Builder`] for a server with a non-default configuration.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The host the server listens on, always `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The TCP port the server listens on; it stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's socket address (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// A connection URL: `redis://127.0.0.1:PORT/`, or `redis://:PASSWORD@127.0.0.1:PORT/`
    /// with the password percent-encoded when one is set.
    pub fn url(&self) -> String {
        match &self.password {
            Some(pw) => format!("redis://:{}@{HOST}:{}/", conf::percent_encode(pw), self.port),
            None => format!("redis://{HOST}:{}/", self.port),
        }
    }

    /// The password set with [`Builder::password`], if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The server's temporary directory, holding `redis.conf`, `redis.log` and the AOF.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The path of the server log file inside [`dir`](Self::dir).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The process id while the server process is alive, `None` once it has stopped.
    pub fn pid(&self) -> Option<u32> {
        let mut child = self.lock_child();
        live(&mut child).map(|c| c.id())
    }

    /// Whether the server process is alive (a paused server counts as running).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Kills the process with SIGKILL and reaps it, simulating a crash.
    ///
    /// The directory (and any AOF in it) is kept, so [`restart`](Self::restart) can recover
    /// from it. Does nothing if the server is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child_mut().take() {
            // Both calls can only fail if the child was already reaped, which means there
            // is nothing left to kill or wait for.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Shuts the server down gracefully and waits for the process to exit.
    ///
    /// Sends `SHUTDOWN`, which flushes and fsyncs the AOF; if Redis refuses it or does not
    /// exit within a bounded time, escalates to SIGTERM (also a graceful shutdown in
    /// Redis) and finally to SIGKILL. A paused server is resumed first so that it can act
    /// on the shutdown. The directory is kept. Does nothing if the server is not running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child_mut().take() else {
            return;
        };
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        send_signal(&child, Signal::SIGCONT);
        // Redis closes the connection instead of replying when SHUTDOWN succeeds, so an
        // end-of-stream is the success case here; an error reply (for example -NOAUTH
        // with an ACL file and no password) or a timeout means "escalate".
        let accepted = match self.command_with_timeout(&["SHUTDOWN"], STOP_STEP_TIMEOUT) {
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ),
        };
        if accepted && wait_for_exit(&mut child, STOP_STEP_TIMEOUT) {
            return;
        }
        send_signal(&child, Signal::SIGTERM);
        if wait_for_exit(&mut child, STOP_STEP_TIMEOUT) {
            return;
        }
        // As in `kill`, failure here only means the child is already gone and reaped.
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Restarts the server on the same directory, port and configuration, and waits until
    /// it answers `PING`; if it is running it is killed first (crash + recovery).
    ///
    /// # Panics
    ///
    /// Panics with the error from [`try_restart`](Self::try_restart) on failure.
    pub fn restart(&mut self) {
        if let Err(e) = self.try_restart() {
            panic!("tatbot-state-testkit: failed to restart redis-server: {e}");
        }
    }

    /// Like [`restart`](Self::restart), but returns failures instead of panicking.
    ///
    /// If the port is briefly held by another process, binding is retried for a bounded
    /// time. Before the start, an AOF that the crash cut inside a write is cut back to the
    /// last whole one ([`aof::repair`]); an AOF damaged before its end is an `InvalidData`
    /// error, and the file is left as it was.
    pub fn try_restart(&mut self) -> io::Result<()> {
        self.kill();
        self.repair_aof()?;
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            match self.launch() {
                Ok(child) => {
                    *self.child_mut() = Some(child);
                    return Ok(());
                }
                Err(LaunchError::AddrInUse(log)) => {
                    if Instant::now() >= deadline {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!(
                                "port {} stayed in use for {} s; last log lines:\n{log}",
                                self.port,
                                REBIND_TIMEOUT.as_secs()
                            ),
                        ));
                    }
                    thread::sleep(POLL_INTERVAL);
                }
                Err(LaunchError::Other(e)) => return Err(e),
            }
        }
    }

    /// Freezes the server process with SIGSTOP: connections are still accepted by the
    /// kernel, but nothing is answered until [`resume`](Self::resume).
    ///
    /// Does nothing if the server is not running.
    pub fn pause(&self) {
        if let Some(child) = live(&mut self.lock_child()) {
            send_signal(child, Signal::SIGSTOP);
        }
    }

    /// Resumes a process frozen by [`pause`](Self::pause) with SIGCONT.
    ///
    /// Does nothing if the server is not running.
    pub fn resume(&self) {
        if let Some(child) = live(&mut self.lock_child()) {
            send_signal(child, Signal::SIGCONT);
        }
    }

    /// Sends one command over a fresh connection and returns the raw RESP reply, e.g.
    /// `"+PONG\r\n"` or `"$1\r\nv\r\n"`.
    ///
    /// Authenticates first when a password is set (a rejected `AUTH` is returned as a
    /// `PermissionDenied` error). Error replies from the command itself are returned as
    /// `Ok("-ERR ...\r\n")`, because checking them is what tests usually want. The
    /// connection uses a 10 s read/write timeout; see
    /// [`command_with_timeout`](Self::command_with_timeout) for a different one.
    pub fn command(&self, args: &[&str]) -> io::Result<String> {
        self.command_with_timeout(args, COMMAND_TIMEOUT)
    }

    /// Like [`command`](Self::command), with `timeout` applied to the connect and to every
    /// read and write; a reply that does not arrive in time is a `WouldBlock`/`TimedOut`
    /// error.
    pub fn command_with_timeout(&self, args: &[&str], timeout: Duration) -> io::Result<String> {
        let mut conn = Conn::open(self.addr(), timeout)?;
        if let Some(pw) = &self.password {
            let reply = conn.call(&["AUTH", pw])?;
            if reply.starts_with('-') {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("AUTH failed: {}", reply.trim_end()),
                ));
            }
        }
        conn.call(args)
    }

    /// Waits up to `timeout` until some AOF file in [`dir`](Self::dir) contains `needle`,
    /// returning whether it did.
    ///
    /// With `appendfsync everysec` a write reaches the AOF shortly after it is
    /// acknowledged, so a crash-recovery test calls this before [`kill`](Self::kill) to
    /// know what the restarted server must have. Both the Redis 7 multi-part layout
    /// (`appendonlydir/`) and a single `appendonly.aof` are searched.
    pub fn wait_for_aof(&self, needle: &[u8], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.aof_contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Whether any AOF file currently on disk contains `needle`.
    fn aof_contains(&self, needle: &[u8]) -> bool {
        let mut files = vec![self.dir.path().join(AOF_FILE_NAME)];
        if let Ok(entries) = fs::read_dir(self.dir.path().join(AOF_DIR_NAME)) {
            files.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
        }
        files
            .iter()
            .any(|path| fs::read(path).is_ok_and(|data| data.windows(needle.len().max(1)).any(|w| w == needle)))
    }

    /// Repairs an AOF that a crash cut in the middle of a write, by the rule of [`aof::repair`]:
    /// a file that a crash cut is cut before the unfinished script's `MULTI`; damage before the
    /// end is refused and the file left as it was.
    fn repair_aof(&self) -> io::Result<()> {
        match aof::repair(&self.binary, self.dir.path()) {
            Ok(_) => Ok(()),
            Err(err @ aof::RepairError::Damaged { .. }) => {
                Err(io::Error::new(io::ErrorKind::InvalidData, err.to_string()))
            }
            Err(err) => Err(io::Error::other(err.to_string())),
        }
    }

    /// Spawns `redis-server` on the current config and waits until it answers.
    fn launch(&self) -> Result<Child, LaunchError> {
        let log_path = self.log_path();
        let stderr_path = self.dir.path().join("redis.stderr");
        // Only what this attempt writes matters for diagnosing it, and the log (like the
        // stderr file) is appended to across restarts, so remember where this run starts.
        let log_offset = file_len(&log_path);
        let stderr_offset = file_len(&stderr_path);
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .map_err(|e| LaunchError::Other(with_context(e, &format!("cannot open {}", stderr_path.display()))))?;
        // Redis writes config-file errors to stderr before it opens its log file, so
        // stderr goes to a file next to the log instead of being discarded.
        let mut command = Command::new(&self.binary);
        command.arg(&self.conf_path);
        if self.sentinel {
            command.arg("--sentinel");
        }
        let mut child = command
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| LaunchError::Other(with_context(e, &format!("cannot spawn {}", self.binary.display()))))?;
        let diagnostics = || {
            let mut text = tail(&log_path, log_offset);
            let err = tail(&stderr_path, stderr_offset);
            if !err.trim().is_empty() {
                text.push_str("\nstderr:\n");
                text.push_str(&err);
            }
            text
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut last_probe: String;
        loop {
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    let text = diagnostics();
                    if text.contains("Address already in use") || text.contains("Failed listening on port") {
                        return Err(LaunchError::AddrInUse(text));
                    }
                    return Err(LaunchError::Other(io::Error::other(format!(
                        "redis-server exited during startup ({status}); last log lines:\n{text}"
                    ))));
                }
                Err(e) => {
                    kill_and_reap(&mut child);
                    return Err(LaunchError::Other(with_context(
                        e,
                        "cannot query the redis-server process",
                    )));
                }
            }
            match self.probe() {
                Probe::Up { pid: Some(pid) } if pid == child.id() => return Ok(child),
                Probe::Up { pid: Some(pid) } => {
                    // Another server owns the port; ours will fail to bind and exit, which
                    // the next iteration turns into a retry.
                    last_probe = format!("port answered by another process (pid {pid})");
                }
                Probe::Up { pid: None } => {
                    // INFO was refused, so confirm ownership through our own log instead.
                    if tail_from(&log_path, log_offset).contains(READY_LOG_LINE) {
                        return Ok(child);
                    }
                    last_probe = "answered, but our log does not say ready yet".to_owned();
                }
                Probe::NotYet(why) => last_probe = why,
            }
            if Instant::now() >= deadline {
                kill_and_reap(&mut child);
                return Err(LaunchError::Other(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "redis-server on port {} did not answer PING within {} s \
                         (last probe: {last_probe}); last log lines:\n{}",
                        self.port,
                        STARTUP_TIMEOUT.as_secs(),
                        diagnostics()
                    ),
                )));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Connects once, sends `[AUTH] PING INFO server` pipelined, and classifies the answer.
    ///
    /// `INFO server` reports the `process_id` of whoever answered, which tells our server
    /// apart from an unrelated one that won the race for the port.
    fn probe(&self) -> Probe {
        let run = || -> io::Result<Probe> {
            let mut conn = Conn::open(self.addr(), PROBE_TIMEOUT)?;
            let ping: &[&str] = &["PING"];
            let info: &[&str] = &["INFO", "server"];
            match &self.password {
                Some(pw) => {
                    conn.send(&[&["AUTH", pw], ping, info])?;
                    let auth = conn.read()?;
                    if auth.starts_with('-') && !auth.starts_with("-LOADING") {
                        return Ok(Probe::NotYet(format!("AUTH: {}", auth.trim_end())));
                    }
                }
                None => conn.send(&[ping, info])?,
            }
            let pong = conn.read()?;
            let info = conn.read()?;
            let up = pong == "+PONG\r\n" || (self.noauth_is_up && pong.starts_with("-NOAUTH"));
            if !up {
                return Ok(Probe::NotYet(format!("PING: {}", pong.trim_end())));
            }
            let pid = info
                .lines()
                .find_map(|l| l.strip_prefix("process_id:"))
                .and_then(|p| p.trim().parse().ok());
            Ok(Probe::Up { pid })
        };
        run().unwrap_or_else(|e| Probe::NotYet(e.to_string()))
    }

    /// Locks the child slot; a poisoned lock only means a panic elsewhere while holding
    /// it, and the `Option<Child>` inside is still consistent, so the poison is ignored.
    fn lock_child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The child slot without locking, for `&mut self` methods (poison ignored as above).
    fn child_mut(&mut self) -> &mut Option<Child> {
        self.child.get_mut().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Kill and reap the process here; the `dir` field is dropped right after this
        // body runs, which removes the directory once nothing writes into it any more.
        self.kill();
    }
}

/// The child if it is still alive; an exited child is reaped and the slot cleared, which
/// also makes sure we never signal a pid that might have been reused.
fn live<'a>(slot: &'a mut MutexGuard<'_, Option<Child>>) -> Option<&'a mut Child> {
    let alive = matches!(slot.as_mut().map(Child::try_wait), Some(Ok(None)));
    if !alive {
        **slot = None;
    }
    slot.as_mut()
}

/// Sends `sig` to the child; an unreaped child cannot have its pid reused, so this never
/// hits another process.
fn send_signal(child: &Child, sig: Signal) {
    // pid_t is an i32 on Linux and std hands it out as u32, so the conversion cannot
    // fail for a real child; the guard only exists to avoid an unchecked cast.
    let Ok(raw) = i32::try_from(child.id()) else {
        return;
    };
    // The only possible error is ESRCH for a child that has just exited, in which case
    // there is nothing left to signal.
    let _ = signal::kill(Pid::from_raw(raw), sig);
}

/// Polls until the child exits or `timeout` passes; returns whether it exited (and was reaped).
fn wait_for_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) => {}
            // try_wait only fails if the child was already reaped, i.e. it has exited.
            Err(_) => return true,
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// SIGKILLs and reaps a child so that a failed launch leaves no process behind.
fn kill_and_reap(child: &mut Child) {
    // Failure only means the child is already gone, which is the goal anyway.
    let _ = child.kill();
    let _ = child.wait();
}

/// Picks a currently free loopback port by binding port 0 and releasing it.
fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| with_context(e, "cannot bind an ephemeral loopback port"))?;
    Ok(listener.local_addr()?.port())
}

/// Finds the `redis-server` binary: explicit path, then `TATBOT_REDIS_SERVER`, then `PATH`.
fn resolve_binary(explicit: Option<&Path>) -> io::Result<PathBuf> {
    if let Some(path) = explicit {
        return find_executable(path)
            .ok_or_else(|| not_found(&format!("{} (set with Builder::binary)", path.display())));
    }
    if let Some(value) = std::env::var_os(REDIS_SERVER_ENV).filter(|v| !v.is_empty()) {
        let path = Path::new(&value);
        return find_executable(path)
            .ok_or_else(|| not_found(&format!("{} (from {REDIS_SERVER_ENV})", path.display())));
    }
    find_executable(Path::new("redis-server")).ok_or_else(|| not_found("redis-server on PATH"))
}

/// Resolves `path` to an executable file; a bare name is searched for on `PATH`.
fn find_executable(path: &Path) -> Option<PathBuf> {
    let is_bare_name = path.components().count() == 1 && !path.as_os_str().is_empty();
    if !is_bare_name || path.is_absolute() {
        return is_executable(path).then(|| path.to_owned());
    }
    let search = std::env::var_os("PATH")?;
    std::env::split_paths(&search)
        .map(|dir| dir.join(path))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a regular file with at least one execute bit set.
fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The "binary not found" error, with the install hint first so it is what people read.
fn not_found(looked_for: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "redis-server not found: install it with `sudo apt-get install -y redis-server` \
             (or set {REDIS_SERVER_ENV}); looked for {looked_for}"
        ),
    )
}

/// Prefixes an I/O error with what was being attempted, keeping its kind.
fn with_context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The current length of a file, or 0 if it does not exist yet.
fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Everything written to `path` since byte `offset` (lossily decoded).
fn tail_from(path: &Path, offset: u64) -> String {
    let data = fs::read(path).unwrap_or_default();
    // If the file shrank (it never should), show all of it rather than nothing.
    let start = usize::try_from(offset).unwrap_or(0);
    let start = if start <= data.len() { start } else { 0 };
    String::from_utf8_lossy(&data[start..]).into_owned()
}

/// The last [`LOG_TAIL_LINES`] lines written to `path` since byte `offset`.
fn tail(path: &Path, offset: u64) -> String {
    let text = tail_from(path, offset);
    if text.trim().is_empty() {
        return format!("({} is empty or missing)", display_name(path));
    }
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[start..].join("\n")
}

/// The file name of `path` for messages, falling back to the whole path.
fn display_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n: &OsStr| n.to_string_lossy().into_owned(),
    )
}
