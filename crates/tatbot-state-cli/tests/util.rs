//! Helpers for running the built binary against test-kit servers.

use std::process::{Command, Output};

use tatbot_state_testkit::RedisServer;

/// The built `tatbot-state` binary with a clean environment: no REDIS_* variables, no conf dir
/// or env file from the machine, so only what a test passes counts.
pub fn bin() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tatbot-state"));
    for var in [
        "REDIS_HOST",
        "REDIS_PORT",
        "REDIS_PASSWORD",
        "REDIS_USERNAME",
        "REDIS_URL",
        "REDIS_SENTINELS",
        "REDIS_MASTER_NAME",
        "REDIS_SENTINEL_PASSWORD",
        "TATBOT_CONF_DIR",
        "TATBOT_ENV_FILE",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    // An empty working dir keeps ./src/conf of the repository out of the resolution.
    command
        .current_dir(std::env::temp_dir())
        .env("HOME", std::env::temp_dir());
    command
}

/// `bin()` pointed at `server` with `-h`/`-p` (and `-a` when it has a password).
pub fn bin_for(server: &RedisServer) -> Command {
    let mut command = bin();
    command.args(["-h", server.host(), "-p", &server.port().to_string()]);
    if let Some(password) = server.password() {
        command.args(["-a", password]);
    }
    command
}

/// Runs `command` with `args` and returns its output.
pub fn run(mut command: Command, args: &[&str]) -> Output {
    command.args(args).output().expect("the test binary runs")
}

/// Stdout as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

// Helpers for the read and simulate tests.

use std::io::{BufRead as _, BufReader, Read};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a spawned command may take to do what a test waits for.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A port on 127.0.0.1 with nothing listening (bound once to pick it, then released).
pub fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("a bound listener has an address").port()
}

/// Stdout parsed as one JSON document.
pub fn json(output: &Output) -> serde_json::Value {
    let text = stdout(output);
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("stdout is not JSON ({err}): {text}"))
}

/// Every non-empty line of `text` parsed as JSON.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("line is not JSON ({err}): {line}")))
        .collect()
}

/// Asserts the exit code, showing both streams when it differs.
#[track_caller]
pub fn assert_code(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
}

/// Runs `simulate --hz 0` as `node` on `server` and returns the session id it printed first.
pub fn simulate(server: &RedisServer, node: &str, strokes: u32, stroke_length: u32) -> String {
    let (strokes, stroke_length) = (strokes.to_string(), stroke_length.to_string());
    let args = [
        "--node-id",
        node,
        "simulate",
        "--hz",
        "0",
        "--strokes",
        &strokes,
        "--stroke-length",
        &stroke_length,
    ];
    let output = run(bin_for(server), &args);
    assert_code(&output, 0);
    stdout(&output)
        .lines()
        .next()
        .expect("simulate prints the session id first")
        .to_owned()
}

/// Lines read from a pipe on a thread of their own, so a test can wait for one with a deadline.
pub struct Lines {
    rx: mpsc::Receiver<String>,
}

impl Lines {
    /// Starts reading `pipe` line by line.
    pub fn new(pipe: impl Read + Send + 'static) -> Lines {
        // Unbounded, but it holds only what one short-lived test command prints.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx }
    }

    /// The next line, waiting at most [`DEADLINE`]; panics if none comes.
    #[track_caller]
    pub fn next(&self) -> String {
        self.rx
            .recv_timeout(DEADLINE)
            .expect("the command printed another line in time")
    }

    /// Skips lines until one contains `needle`, and returns it.
    #[track_caller]
    pub fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(err) => panic!("no line containing {needle:?} within {DEADLINE:?}: {err}"),
            }
        }
    }

    /// Every line until the pipe closes (call after the process exited).
    pub fn rest(&self) -> Vec<String> {
        self.rx.iter().collect()
    }
}

/// A spawned command with its output read on threads; killed on drop if still running.
pub struct Running {
    child: Child,
    /// Its stdout.
    pub stdout: Lines,
    /// Its stderr.
    pub stderr: Lines,
}

impl Running {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited.
    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().expect("try_wait works").is_some()
    }

    /// Waits for it to exit within [`DEADLINE`] (polling, since std has no wait with timeout).
    #[track_caller]
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait works") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the command did not exit within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `command` with `args`, stdin closed and both output streams piped.
pub fn spawn(mut command: Command, args: &[&str]) -> Running {
    let mut child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the test binary starts");
    let stdout = Lines::new(child.stdout.take().expect("stdout is piped"));
    let stderr = Lines::new(child.stderr.take().expect("stderr is piped"));
    Running { child, stdout, stderr }
}

/// Polls `condition` every 10 ms until it holds, panicking after [`DEADLINE`].
#[track_caller]
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// Helpers for the server, doctor and demo tests.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// Whether `pid` is a live process; a zombie (exited, not reaped yet) counts as gone.
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| !matches!(state, "Z" | "X")),
        Err(_) => false,
    }
}

/// Live processes whose working directory or command line refers to `dir`.
pub fn processes_in(dir: &Path) -> Vec<u32> {
    let dir_text = dir.display().to_string();
    let entries = std::fs::read_dir("/proc").expect("/proc is readable");
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id() && is_alive(*pid))
        .filter(|pid| {
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cwd.starts_with(dir) || String::from_utf8_lossy(&cmdline).contains(&dir_text)
        })
        .collect()
}

/// A base dir for `server start` and a free port; on drop (also when a test fails) it runs
/// `server stop` and then SIGKILLs whatever the pid file still names, so no server outlives
/// the test.
pub struct ServerDir {
    dir: TempDir,
    /// The port the server is started on.
    pub port: u16,
}

impl ServerDir {
    /// A fresh temp dir and a free port.
    pub fn new() -> ServerDir {
        let dir = tempfile::Builder::new()
            .prefix("tatbot-server-test-")
            .tempdir()
            .expect("a temp dir");
        ServerDir { dir, port: dead_port() }
    }

    /// The base dir.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `server ACTION --dir DIR -p PORT` plus `extra`, run to completion.
    pub fn server(&self, action: &str, extra: &[&str]) -> Output {
        let port = self.port.to_string();
        let dir = self.path().display().to_string();
        let mut args = vec!["-p", &port, "server", action, "--dir", &dir];
        args.extend_from_slice(extra);
        run(bin(), &args)
    }

    /// The pid in the server's pid file, if any.
    pub fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.pidfile()).ok()?;
        text.trim().parse().ok()
    }

    /// The pid file path.
    pub fn pidfile(&self) -> PathBuf {
        self.path().join("redis.pid")
    }
}

impl Drop for ServerDir {
    fn drop(&mut self) {
        let Some(pid) = self.pid().filter(|pid| is_alive(*pid)) else {
            return;
        };
        // A password-protected test server refuses this; the SIGKILL below still applies.
        let _ = self.server("stop", &[]);
        if is_alive(pid)
            && let Ok(raw) = i32::try_from(pid)
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// A test-kit server with the roles of `config/redis/users.acl`, whose passwords are
/// `admin-pw`, `robot-pw` and `viewer-pw`; the ACL file lives in `dir`.
pub fn role_server(dir: &Path) -> RedisServer {
    let acl = dir.join("users.acl");
    let template = include_str!("../../../config/redis/users.acl");
    std::fs::write(
        &acl,
        template
            .replace("CHANGE-ME-admin", "admin-pw")
            .replace("CHANGE-ME-robot", "robot-pw")
            .replace("CHANGE-ME-viewer", "viewer-pw"),
    )
    .expect("write the ACL file");
    RedisServer::builder().acl_file(&acl).start()
}

/// `tatbot-state ARGS` in a pseudo-terminal of 100 x 40 (util-linux `script`), with `bin()`'s
/// clean environment and everything it draws collected; killed on drop.
pub struct Screen {
    child: Child,
    drawn: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    /// What the terminal's keyboard types; kept open, since `script` ends the session when
    /// its stdin closes.
    keys: std::process::ChildStdin,
}

impl Screen {
    /// Starts `tatbot-state` with `args` (a shell word list) in the terminal.
    pub fn start(args: &str) -> Screen {
        let exe = env!("CARGO_BIN_EXE_tatbot-state");
        let command = bin();
        let mut script = Command::new("script");
        for (name, value) in command.get_envs() {
            match value {
                Some(value) => script.env(name, value),
                None => script.env_remove(name),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            script.current_dir(dir);
        }
        script
            .env("TERM", "xterm")
            .args([
                "-qfec",
                &format!("stty cols 100 rows 40; exec {exe} {args}"),
                "/dev/null",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = script.spawn().expect("util-linux `script` runs (apt install bsdutils)");
        let keys = child.stdin.take().expect("stdin is piped");
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let drawn = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = drawn.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        Screen { child, drawn, keys }
    }

    /// Everything drawn so far, as text (escape sequences included).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.drawn.lock().unwrap()).into_owned()
    }

    /// Waits until `text` has been drawn.
    #[track_caller]
    pub fn wait_for(&self, text: &str) {
        wait_until(&format!("the screen shows {text:?}"), || self.text().contains(text));
    }

    /// Types `keys` on the terminal (`"\x03"` is Ctrl-C).
    pub fn type_keys(&mut self, keys: &str) {
        use std::io::Write as _;
        self.keys.write_all(keys.as_bytes()).expect("typing on the terminal");
        self.keys.flush().expect("typing on the terminal");
    }

    /// Waits for the command (and `script`) to exit within [`DEADLINE`]; its exit status.
    #[track_caller]
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait works") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the command did not exit within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether it has exited.
    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().expect("try_wait works").is_some()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The manager config for `cluster`'s master, found through its Sentinels, as node `node`
/// (the robot's side of the failover tests).
pub fn sentinel_config(cluster: &tatbot_state_testkit::SentinelCluster, node: &str) -> tatbot_state::ManagerConfig {
    use tatbot_state::{Endpoint, ManagerConfig, NodeId};
    let primary = &cluster.servers()[0];
    let mut config = ManagerConfig::new(
        Endpoint::new(primary.host(), primary.port()),
        NodeId::new(node).expect("a valid node id"),
    );
    config.sentinel = Some(tatbot_state::sentinel::SentinelTarget {
        sentinels: cluster
            .sentinels()
            .iter()
            .map(|sentinel| Endpoint::new(sentinel.host(), sentinel.port()))
            .collect(),
        master_name: cluster.master_name().to_owned(),
    });
    config
}
