//! A private `redis-server` child process for commands that bring their own server (`demo`,
//! `bench`, `replay --private`); it lives beside `output.rs` rather than under `server` because
//! no one subcommand owns it. It renders its config with `server`'s template and probes with
//! `server`'s helpers.
//!
//! [`PrivateServer::start`] renders the project's config ([`conf::TEMPLATE`], AOF on) into a
//! fresh temporary directory with a free loopback port, starts `redis-server` on it as a child
//! in its own process group (so a Ctrl-C in the terminal reaches only our process, which then
//! stops the server in order), and returns once the server answers `PING` with the child's own
//! pid. [`PrivateServer::crash_and_restart`] kills it with SIGKILL and starts it again on the
//! same port and data (`demo --chaos`). [`PrivateServer::stop`] shuts it down gracefully, reaps it and removes the directory.
//! The child is also `kill_on_drop`, so even an early error return cannot leave a server
//! behind; only a SIGKILL of our own process can.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tatbot_state::Endpoint;
use tempfile::TempDir;
use tokio::time::Instant;

use crate::cmd::server::conf::{self, ConfSpec, Layout};
use crate::cmd::server::{self, Probe, process};

/// How long the private server gets to come up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the private server gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Fresh ports tried when another process takes the free port first.
const PORT_ATTEMPTS: usize = 5;

/// A `redis-server` child process on a free loopback port with a temporary directory.
pub struct PrivateServer {
    /// The server process. `kill_on_drop` makes an early return kill it; `stop` shuts it
    /// down gracefully and reaps it.
    child: tokio::process::Child,
    pid: u32,
    port: u16,
    /// Holds the config, data and log; removed by `stop`, or on drop after the child is
    /// killed (fields drop in declaration order).
    dir: TempDir,
}

impl PrivateServer {
    /// Starts the server in a new temporary directory named `{prefix}XXXXXX` and waits until
    /// it answers `PING` with its own pid.
    ///
    /// # Errors
    ///
    /// `redis-server` is not installed, the temp dir is not writable, or the server did not
    /// come up within [`STARTUP_TIMEOUT`] (the message carries the end of its log).
    pub async fn start(prefix: &str) -> anyhow::Result<PrivateServer> {
        let binary = process::redis_server_binary()?;
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("creating a temporary directory for the private redis-server: is the temp dir writable?")?;
        let layout = Layout {
            base: dir.path().to_owned(),
        };
        std::fs::create_dir_all(layout.data()).with_context(|| format!("creating {}", layout.data().display()))?;
        let mut last_failure = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let text = conf::render(&ConfSpec {
                extra_bind: &[],
                port,
                daemonize: false,
                layout: &layout,
                password: None,
                acl_file: None,
            })?;
            std::fs::write(layout.conf(), text).with_context(|| format!("writing {}", layout.conf().display()))?;
            let (mut child, pid) = spawn(&binary, &layout)?;
            match wait_ready(&mut child, pid, port, &layout).await? {
                None => return Ok(PrivateServer { child, pid, port, dir }),
                Some(failure) => last_failure = failure,
            }
            // Another process took the port between `free_port` and the bind: try a new one.
            if !last_failure.contains("Address already in use") {
                break;
            }
        }
        anyhow::bail!("the private redis-server did not start: {last_failure}")
    }

    /// Kills the server with SIGKILL (no shutdown, no final AOF flush: a crash), reaps it and
    /// starts it again on the same port with the same config and data directory, so it loads
    /// what its AOF kept. Returns the new pid once it answers `PING`.
    ///
    /// # Errors
    ///
    /// The signal could not be sent, or the server did not come back within
    /// [`STARTUP_TIMEOUT`] (the message carries the end of its log).
    pub async fn crash_and_restart(&mut self) -> anyhow::Result<u32> {
        self.signal(Signal::SIGKILL)?;
        self.child.wait().await.context("reaping the killed redis-server")?;
        let layout = Layout {
            base: self.dir.path().to_owned(),
        };
        let binary = process::redis_server_binary()?;
        // The kill may have cut the AOF inside a script's MULTI block (see `aof`).
        server::aof::repair_logged(&binary, &layout.data()).await?;
        let (mut child, pid) = spawn(&binary, &layout)?;
        if let Some(failure) = wait_ready(&mut child, pid, self.port, &layout).await? {
            anyhow::bail!(
                "the private redis-server did not come back on port {}: {failure}",
                self.port
            );
        }
        self.child = child;
        self.pid = pid;
        Ok(pid)
    }

    /// Where it listens: loopback, no credentials.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new("127.0.0.1", self.port)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its temporary directory (config, data, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Freezes the server with SIGSTOP: connections stay open and nothing is answered, as on
    /// a host that hangs. [`PrivateServer::resume`] undoes it; [`PrivateServer::stop`] works
    /// on a frozen server too (SIGKILL after the SIGTERM deadline).
    ///
    /// # Errors
    ///
    /// The signal could not be sent.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// Lets a server frozen by [`PrivateServer::pause`] run again; harmless on a running one.
    ///
    /// # Errors
    ///
    /// The signal could not be sent.
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGCONT)
    }

    fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        // The child is not reaped before `stop`, so its pid cannot have been reused.
        let raw = i32::try_from(self.pid).with_context(|| format!("bug: pid {} does not fit an i32", self.pid))?;
        signal::kill(Pid::from_raw(raw), signal)
            .with_context(|| format!("sending {signal} to the private redis-server (pid {})", self.pid))
    }

    /// SIGCONT (in case it is paused), SIGTERM (Redis flushes and exits), a bounded wait,
    /// SIGKILL if needed; then removes the directory.
    ///
    /// # Errors
    ///
    /// The server could not be killed, or the directory not removed (the message names it).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        // ESRCH only means it already exited.
        let _ = self.signal(Signal::SIGCONT);
        let _ = self.signal(Signal::SIGTERM);
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await.is_err() {
            tracing::warn!(pid = self.pid, "the private redis-server ignored SIGTERM; killing it");
            self.child.kill().await.context("killing the private redis-server")?;
        }
        let path = self.dir.path().display().to_string();
        self.dir
            .close()
            .with_context(|| format!("removing {path}: remove it by hand"))
    }
}

/// Starts `redis-server` on the config in `layout`, stderr to `redis.stderr` there, in its own
/// process group (a Ctrl-C in the terminal must reach only our process, which then stops the
/// server after the clients that use it).
fn spawn(binary: &Path, layout: &Layout) -> anyhow::Result<(tokio::process::Child, u32)> {
    let stderr_path = layout.base.join("redis.stderr");
    let stderr = std::fs::File::create(&stderr_path).with_context(|| format!("creating {}", stderr_path.display()))?;
    let child = tokio::process::Command::new(binary)
        .arg(layout.conf())
        .current_dir(&layout.base)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child
        .id()
        .context("bug: the redis-server child has no pid right after spawning")?;
    Ok((child, pid))
}

/// Waits until the server on `port` answers `PING` with `pid`: `None` then, or why it exited.
///
/// # Errors
///
/// It neither answered nor exited within [`STARTUP_TIMEOUT`].
async fn wait_ready(
    child: &mut tokio::process::Child,
    pid: u32,
    port: u16,
    layout: &Layout,
) -> anyhow::Result<Option<String>> {
    let endpoint = Endpoint::new("127.0.0.1", port);
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().context("watching the redis-server child")? {
            return Ok(Some(format!(
                "exited with {status}: {}",
                process::log_tail(&layout.log(), 3)
            )));
        }
        if let Probe::Redis { pid: Some(answering) } = server::probe(&endpoint).await
            && answering == pid
        {
            return Ok(None);
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the private redis-server did not answer PING within {} s: {}",
                STARTUP_TIMEOUT.as_secs(),
                process::log_tail(&layout.log(), 3)
            );
        }
        tokio::time::sleep(process::POLL_INTERVAL).await;
    }
}

/// A currently free loopback port (bound to port 0, then released).
///
/// # Errors
///
/// No loopback port could be bound.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free loopback port")?;
    Ok(listener.local_addr().context("finding a free loopback port")?.port())
}
