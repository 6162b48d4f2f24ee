//! Baselines measured on the same server in the same run: `redis-benchmark` (when installed),
//! a plain blocking client ([`PlainClient`]), and the capture, with `MONITOR`, of the exact
//! command an awaited update sends, so that both can run the very same work.
//!
//! `redis-benchmark` is a child process with a deadline and `kill_on_drop`; its CSV output
//! (`--csv --precision 3`) gives requests per second and latency percentiles in milliseconds,
//! printed to the microsecond but taken from 8 us buckets (see [`PlainClient`]). It takes the
//! password only as `-a`, so with a password it briefly shows on its command line, as it would
//! if an operator ran it by hand.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tatbot_state::Endpoint;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

use crate::cmd::server::link;

/// The longest one `redis-benchmark` run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Connect and reply deadline of the plain client's commands.
const PLAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Connect and reply deadline of the `MONITOR` connection.
const MONITOR_TIMEOUT: Duration = Duration::from_secs(5);
/// Most `MONITOR` lines read while looking for the command.
const MONITOR_MAX_LINES: usize = 10_000;

/// One `redis-benchmark` result.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Requests per second.
    pub rps: f64,
    /// Median latency of a request (with `-P n`, of a pipeline of n), microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
}

/// `redis-benchmark` aimed at one server.
pub struct RedisBenchmark {
    binary: PathBuf,
    endpoint: Endpoint,
}

impl RedisBenchmark {
    /// `redis-benchmark` from `PATH`, or `None` when it is not installed.
    pub fn find(endpoint: &Endpoint) -> Option<RedisBenchmark> {
        let search = std::env::var_os("PATH").unwrap_or_default();
        let binary = std::env::split_paths(&search)
            .map(|dir| dir.join("redis-benchmark"))
            .find(|candidate| candidate.is_file())?;
        Some(RedisBenchmark {
            binary,
            endpoint: endpoint.clone(),
        })
    }

    /// Runs `command` `requests` times on one connection, `pipeline` deep.
    ///
    /// # Errors
    ///
    /// It failed, printed no result, or took longer than [`RUN_TIMEOUT`].
    pub async fn run(&self, pipeline: u32, requests: u64, command: &[String]) -> anyhow::Result<Run> {
        let mut process = tokio::process::Command::new(&self.binary);
        process
            .args(["-h", &self.endpoint.host, "-p", &self.endpoint.port.to_string()])
            .args(["-c", "1", "-P", &pipeline.to_string(), "-n", &requests.to_string()])
            .args(["--csv", "--precision", "3"]);
        if let Some(password) = &self.endpoint.password {
            process.args(["-a", password]);
            if let Some(username) = &self.endpoint.username {
                process.args(["--user", username]);
            }
        }
        let output = process.args(command).stdin(Stdio::null()).kill_on_drop(true).output();
        let name = command.first().map_or("", String::as_str);
        let output = tokio::time::timeout(RUN_TIMEOUT, output)
            .await
            .with_context(|| format!("redis-benchmark {name} took longer than {} s", RUN_TIMEOUT.as_secs()))?
            .with_context(|| format!("running {}", self.binary.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let parsed = stdout.lines().rev().find_map(parse_csv_line);
        match parsed {
            Some(run) if output.status.success() => Ok(run),
            _ => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                let last = stderr
                    .lines()
                    .chain(stdout.lines())
                    .rev()
                    .find(|line| !line.trim().is_empty());
                anyhow::bail!(
                    "redis-benchmark {name} failed ({}): {}",
                    output.status,
                    last.unwrap_or("no output")
                )
            }
        }
    }
}

/// A plain blocking client repeating one command (`redis`'s synchronous connection, the
/// command packed once), each call timed from before its write to its whole answer.
/// `redis-benchmark` reports latencies from a histogram whose buckets below 16 ms are 8 us
/// wide, and a percentile as its bucket's upper edge: a median of 80 us says "73 to 80 us", too
/// coarse for a 1.1x target. This client does the same work timed to the nanosecond, and can
/// take its turn between the calls it is compared with.
pub struct PlainClient {
    connection: redis::Connection,
    packed: Vec<u8>,
    endpoint: Endpoint,
    name: String,
}

impl PlainClient {
    /// Connects to `endpoint` with its credentials, to repeat `command`.
    ///
    /// # Errors
    ///
    /// Redis could not be reached or refused the credentials within [`PLAIN_TIMEOUT`].
    pub async fn connect(endpoint: &Endpoint, command: &[String]) -> anyhow::Result<PlainClient> {
        let fail = |err: redis::RedisError| link::to_error(&err, endpoint, "connecting the plain client");
        let info = plain_connection_info(endpoint).map_err(fail)?;
        let connection = tokio::task::spawn_blocking(move || open_plain(info))
            .await
            .context("bug: the plain client's connect panicked")?
            .map_err(fail)?;
        let name = command.first().cloned().unwrap_or_default();
        let packed = PlainClient::pack(command);
        Ok(PlainClient {
            connection,
            packed,
            endpoint: endpoint.clone(),
            name,
        })
    }

    /// Sends the command once and waits for its answer, blocking the thread (call it in
    /// `tokio::task::block_in_place`): how long that took.
    ///
    /// # Errors
    ///
    /// An error reply, a broken connection, or no answer within [`PLAIN_TIMEOUT`].
    pub fn time_one(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.send(None)?;
        Ok(started.elapsed())
    }

    /// `command` (name first) as the client writes it, for [`PlainClient::send`].
    pub fn pack(command: &[String]) -> Vec<u8> {
        let name = command.first().map_or("", String::as_str);
        redis::cmd(name)
            .arg(command.get(1..).unwrap_or_default())
            .get_packed_command()
    }

    /// Sends `packed` ([`PlainClient::pack`]; `None`: the client's own command) once and
    /// waits for its answer, blocking the thread like [`PlainClient::time_one`]. An error
    /// names the client's own command: give `packed` the same command with other arguments.
    ///
    /// # Errors
    ///
    /// An error reply, a broken connection, or no answer within [`PLAIN_TIMEOUT`].
    pub fn send(&mut self, packed: Option<&[u8]>) -> anyhow::Result<()> {
        let packed = packed.unwrap_or(&self.packed);
        let answer = redis::ConnectionLike::req_packed_command(&mut self.connection, packed);
        self.checked(answer)
    }

    /// Writes `packed` ([`PlainClient::pack`]) without waiting for its answer, as a producer's
    /// writer does not: a sender timed to where its message arrives elsewhere should not be
    /// woken by its own answer meanwhile. Read the answer with [`PlainClient::answer`] before the
    /// next command.
    ///
    /// # Errors
    ///
    /// A broken connection, or the write not done within [`PLAIN_TIMEOUT`].
    pub fn write(&mut self, packed: &[u8]) -> anyhow::Result<()> {
        let written = self.connection.send_packed_command(packed);
        self.checked(written.map(|()| redis::Value::Okay))
    }

    /// Waits for the answer to the last [`PlainClient::write`].
    ///
    /// # Errors
    ///
    /// An error reply, a broken connection, or no answer within [`PLAIN_TIMEOUT`].
    pub fn answer(&mut self) -> anyhow::Result<()> {
        let answer = self.connection.recv_response();
        self.checked(answer)
    }

    /// `answer`, or an error naming the client's command and the server's words.
    fn checked(&self, answer: redis::RedisResult<redis::Value>) -> anyhow::Result<()> {
        answer
            .and_then(redis::Value::extract_error)
            .map_err(|err| link::to_error(&err, &self.endpoint, &format!("{} from the plain client", self.name)))?;
        Ok(())
    }
}

/// `endpoint` with its credentials, for a plain connection: `TCP_NODELAY`, as our own
/// connections have.
fn plain_connection_info(endpoint: &Endpoint) -> Result<redis::ConnectionInfo, redis::RedisError> {
    Ok(link::connection_info(endpoint, true)?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)))
}

/// A blocking connection whose every step has [`PLAIN_TIMEOUT`] as its deadline.
fn open_plain(info: redis::ConnectionInfo) -> Result<redis::Connection, redis::RedisError> {
    let connection = redis::Client::open(info)?.get_connection_with_timeout(PLAIN_TIMEOUT)?;
    connection.set_read_timeout(Some(PLAIN_TIMEOUT))?;
    connection.set_write_timeout(Some(PLAIN_TIMEOUT))?;
    Ok(connection)
}

/// How often the plain subscriber's thread looks up from its socket to see whether its
/// handle was dropped (a failed round, an interrupted bench).
const SUBSCRIBER_POLL: Duration = Duration::from_millis(50);

/// A plain blocking subscriber's thread ([`plain_subscriber`]); dropping the handle stops the
/// thread within [`SUBSCRIBER_POLL`].
pub struct PlainSubscription<T> {
    task: tokio::task::JoinHandle<anyhow::Result<T>>,
    stop: Arc<AtomicBool>,
}

impl<T> PlainSubscription<T> {
    /// Waits for the thread to end (its handler said it is done, or the deadline passed) and
    /// gives back its state.
    ///
    /// # Errors
    ///
    /// The connection broke, or the handler panicked.
    pub async fn finish(mut self) -> anyhow::Result<T> {
        (&mut self.task)
            .await
            .map_err(|err| anyhow::anyhow!("bug: the plain subscriber panicked: {err}"))?
    }
}

impl<T> Drop for PlainSubscription<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A plain blocking subscriber to `channel`: `redis`'s synchronous connection in subscribe mode,
/// read on a thread of its own that hands each message's payload to `on_message` as soon as it
/// is read, until `on_message` says it is done or `deadline` passes; the thread gives back
/// `state`. Nothing stands between the socket and the code that looks at a message, where
/// `redis`'s async `PubSub` reads on a driver task and hands each message over a channel: a
/// baseline should not pay a hand-off that our subscriptions do not make.
///
/// # Errors
///
/// Connecting or `SUBSCRIBE` failed (no thread is left running then); the thread ends with an
/// error when the connection breaks.
pub async fn plain_subscriber<T: Send + 'static>(
    endpoint: &Endpoint,
    channel: &str,
    deadline: Instant,
    mut state: T,
    mut on_message: impl FnMut(&mut T, &[u8]) -> bool + Send + 'static,
) -> anyhow::Result<PlainSubscription<T>> {
    let fail = |endpoint: &Endpoint, err: redis::RedisError, doing: &str| link::to_error(&err, endpoint, doing);
    let info = plain_connection_info(endpoint).map_err(|err| fail(endpoint, err, "connecting the plain subscriber"))?;
    let (endpoint, channel) = (endpoint.clone(), channel.to_owned());
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let (ready, subscribed) = tokio::sync::oneshot::channel();
    let task = tokio::task::spawn_blocking(move || {
        let opened = open_plain(info).map_err(|err| fail(&endpoint, err, "connecting the plain subscriber"));
        let mut connection = match opened {
            Ok(connection) => connection,
            Err(err) => {
                let _ = ready.send(Err(err));
                return Ok(state);
            }
        };
        let mut pubsub = connection.as_pubsub();
        if let Err(err) = pubsub.subscribe(&channel) {
            let _ = ready.send(Err(fail(&endpoint, err, "SUBSCRIBE")));
            return Ok(state);
        }
        let _ = ready.send(Ok(()));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || stopped.load(Ordering::Relaxed) {
                return Ok(state);
            }
            // A timeout in the middle of a message keeps its first part: the parser resumes.
            pubsub
                .set_read_timeout(Some(left.min(SUBSCRIBER_POLL)))
                .map_err(|err| fail(&endpoint, err, "setting the plain subscriber's deadline"))?;
            match pubsub.get_message() {
                Ok(message) => {
                    if on_message(&mut state, message.get_payload_bytes()) {
                        return Ok(state);
                    }
                }
                Err(err) if err.is_timeout() => {}
                Err(err) => return Err(fail(&endpoint, err, "reading the plain subscriber")),
            }
        }
    });
    let subscription = PlainSubscription { task, stop };
    match subscribed.await {
        Ok(Ok(())) => Ok(subscription),
        Ok(Err(err)) => Err(err),
        Err(_) => match subscription.finish().await {
            Err(err) => Err(err),
            Ok(_) => anyhow::bail!("bug: the plain subscriber ended before subscribing"),
        },
    }
}

/// A CSV result line: `"test","rps","avg","min","p50","p95","p99","max"`, latencies in ms.
/// The test name may hold commas and unescaped quotes (it is the command line), so the
/// numbers are taken from the right.
fn parse_csv_line(line: &str) -> Option<Run> {
    let fields: Vec<&str> = line.rsplitn(8, ',').collect();
    if fields.len() < 8 {
        return None;
    }
    let number = |index: usize| fields[index].trim_matches('"').parse::<f64>().ok();
    // Right to left: max, p99, p95, p50, min, avg, rps, test.
    Some(Run {
        rps: number(6)?,
        p50_us: number(3)? * 1000.0,
        p99_us: number(1)? * 1000.0,
    })
}

/// One `INFO` section's fields, on a connection of its own.
///
/// # Errors
///
/// Redis could not be reached, or refused `INFO`.
async fn info(endpoint: &Endpoint, section: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut connection = link::connect(endpoint, MONITOR_TIMEOUT)
        .await
        .map_err(|err| link::to_error(&err, endpoint, &format!("connecting for INFO {section}")))?;
    link::info(&mut connection, &[section], MONITOR_TIMEOUT)
        .await
        .map_err(|err| link::to_error(&err, endpoint, &format!("INFO {section}")))
}

/// Calls and total server time of one command so far, from `INFO commandstats`; zeros when
/// the command has not run yet.
///
/// # Errors
///
/// Redis could not be reached, or refused `INFO`.
pub async fn command_time(endpoint: &Endpoint, command: &str) -> anyhow::Result<(u64, u64)> {
    let info = info(endpoint, "commandstats").await?;
    let Some(stats) = info.get(&format!("cmdstat_{command}")) else {
        return Ok((0, 0));
    };
    // calls=12,usec=345,usec_per_call=28.75,rejected_calls=0,failed_calls=0
    let field = |name: &str| {
        stats
            .split(',')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("calls"), field("usec")))
}

/// Whether the server keeps an append-only file (`INFO persistence`, `aof_enabled`). An update
/// then pays Redis's write of it before its answer and its published message go out; a `PING`
/// or a plain `PUBLISH` does not (docs/PERFORMANCE.md).
///
/// # Errors
///
/// Redis could not be reached, refused `INFO`, or its answer has no `aof_enabled`.
pub async fn aof_enabled(endpoint: &Endpoint) -> anyhow::Result<bool> {
    let info = info(endpoint, "persistence").await?;
    match info.get("aof_enabled").map(String::as_str) {
        Some("1") => Ok(true),
        Some("0") => Ok(false),
        other => anyhow::bail!("INFO persistence gave aof_enabled {other:?}, not 0 or 1"),
    }
}

/// Runs `work` and gives, with its output, Redis's own time per `EVALSHA` during it
/// (`INFO commandstats`); `None` when no `EVALSHA` ran or the stats could not be read. On a
/// given server other clients' calls mix in.
pub async fn evalsha_time<T>(endpoint: &Endpoint, work: impl Future<Output = T>) -> (T, Option<f64>) {
    let before = command_time(endpoint, "evalsha").await;
    let output = work.await;
    let after = command_time(endpoint, "evalsha").await;
    let per_call = match (before, after) {
        (Ok((calls_before, usec_before)), Ok((calls, usec))) if calls > calls_before => {
            Some(usec.saturating_sub(usec_before) as f64 / (calls - calls_before) as f64)
        }
        _ => None,
    };
    (output, per_call)
}

/// Watches the server with `MONITOR` while `trigger` runs, and returns the arguments of the
/// first command a client (not a script) sent that has an argument containing `needle`.
///
/// # Errors
///
/// `MONITOR` was refused (an ACL user without it), the trigger failed, or no such command
/// was seen within [`MONITOR_TIMEOUT`].
pub async fn capture_command(
    endpoint: &Endpoint,
    needle: &str,
    trigger: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<Vec<String>> {
    let address = (endpoint.host.as_str(), endpoint.port);
    let stream = tokio::time::timeout(MONITOR_TIMEOUT, TcpStream::connect(address))
        .await
        .context("connecting for MONITOR timed out")?
        .context("connecting for MONITOR")?;
    let mut stream = BufReader::new(stream);
    if let Some(password) = &endpoint.password {
        let mut auth = vec!["AUTH"];
        auth.extend(endpoint.username.as_deref());
        auth.push(password);
        expect_ok(&mut stream, &auth).await.context("AUTH for MONITOR")?;
    }
    expect_ok(&mut stream, &["MONITOR"]).await.context("MONITOR")?;
    let watch = async {
        let mut line = String::new();
        for _ in 0..MONITOR_MAX_LINES {
            line.clear();
            if stream.read_line(&mut line).await.context("reading MONITOR")? == 0 {
                break;
            }
            // Commands a script runs are shown as coming from "lua".
            if line.contains(needle)
                && !line.contains(" lua]")
                && let Some(args) = parse_monitor_line(&line)
            {
                return Ok(args);
            }
        }
        anyhow::bail!("MONITOR showed no command naming {needle}")
    };
    let (triggered, watched) = tokio::time::timeout(MONITOR_TIMEOUT, async { tokio::join!(trigger, watch) })
        .await
        .context("MONITOR saw nothing in time")?;
    triggered?;
    watched
}

/// Sends one command and expects `+OK`.
async fn expect_ok(stream: &mut BufReader<TcpStream>, args: &[&str]) -> anyhow::Result<()> {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    let mut line = String::new();
    let exchange = async {
        stream.get_mut().write_all(request.as_bytes()).await?;
        stream.read_line(&mut line).await
    };
    tokio::time::timeout(MONITOR_TIMEOUT, exchange)
        .await
        .context("no answer in time")??;
    if line.starts_with("+OK") {
        return Ok(());
    }
    anyhow::bail!("{}", line.trim_start_matches(['-', '+']).trim())
}

/// The quoted arguments of a `MONITOR` line (`+1700000000.123456 [0 127.0.0.1:5000] "SET"
/// "k" "v\x00"`), unescaped as Redis escaped them (`sdscatrepr`).
fn parse_monitor_line(line: &str) -> Option<Vec<String>> {
    let (_, rest) = line.split_once("] ")?;
    let mut args = Vec::new();
    let mut bytes = rest.trim_end().bytes();
    loop {
        match bytes.next() {
            None => break,
            Some(b' ') => continue,
            Some(b'"') => {}
            Some(_) => return None,
        }
        let mut arg = Vec::new();
        loop {
            match bytes.next()? {
                b'"' => break,
                b'\\' => match bytes.next()? {
                    b'n' => arg.push(b'\n'),
                    b'r' => arg.push(b'\r'),
                    b't' => arg.push(b'\t'),
                    b'a' => arg.push(0x07),
                    b'b' => arg.push(0x08),
                    b'x' => {
                        let high = char::from(bytes.next()?).to_digit(16)?;
                        let low = char::from(bytes.next()?).to_digit(16)?;
                        // Two hex digits are at most 255.
                        arg.push((high * 16 + low) as u8);
                    }
                    other => arg.push(other),
                },
                other => arg.push(other),
            }
        }
        args.push(String::from_utf8_lossy(&arg).into_owned());
    }
    (!args.is_empty()).then_some(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(words: &[&str]) -> Vec<String> {
        words.iter().map(|word| (*word).to_owned()).collect()
    }

    /// The plain client authenticates, sends its command once per call (the server counts
    /// each), and times each call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plain_client_runs_its_command_once_per_call() {
        let server = tatbot_state_testkit::RedisServer::builder().password("s3cret").start();
        let endpoint = Endpoint::new(server.host(), server.port()).with_password("s3cret");
        let mut plain = PlainClient::connect(&endpoint, &owned(&["INCR", "bench:plain"]))
            .await
            .unwrap();
        for _ in 0..3 {
            plain.time_one().unwrap();
        }
        // The raw RESP answer: a bulk string of one byte.
        assert_eq!(server.command(&["GET", "bench:plain"]).unwrap().trim(), "$1\r\n3");
    }

    /// An error answer fails the call, naming the command and the server's words; a wrong
    /// password fails the connect.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plain_client_reports_refusals() {
        let server = tatbot_state_testkit::RedisServer::builder().password("s3cret").start();
        let endpoint = Endpoint::new(server.host(), server.port()).with_password("s3cret");
        server.command(&["SET", "bench:text", "x"]).unwrap();
        let mut plain = PlainClient::connect(&endpoint, &owned(&["INCR", "bench:text"]))
            .await
            .unwrap();
        let err = format!("{:#}", plain.time_one().unwrap_err());
        assert!(err.contains("INCR from the plain client"), "{err}");
        assert!(err.contains("not an integer"), "{err}");

        let wrong = Endpoint::new(server.host(), server.port()).with_password("not-the-pass-4f9e");
        let err = match PlainClient::connect(&wrong, &owned(&["PING"])).await {
            Ok(_) => panic!("a wrong password was accepted"),
            Err(err) => format!("{err:#}"),
        };
        assert!(err.contains("connecting the plain client"), "{err}");
        assert!(!err.contains("not-the-pass-4f9e"), "the password leaked: {err}");
    }

    /// A written command's answer is read by `answer`, error replies included, and names the
    /// command.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_written_command_is_answered_later() {
        let server = tatbot_state_testkit::RedisServer::start();
        let endpoint = Endpoint::new(server.host(), server.port());
        server.command(&["SET", "bench:text", "x"]).unwrap();
        let mut plain = PlainClient::connect(&endpoint, &owned(&["INCR", "bench:count"]))
            .await
            .unwrap();
        plain
            .write(&PlainClient::pack(&owned(&["INCR", "bench:count"])))
            .unwrap();
        plain.answer().unwrap();
        plain
            .write(&PlainClient::pack(&owned(&["INCR", "bench:text"])))
            .unwrap();
        let err = format!("{:#}", plain.answer().unwrap_err());
        assert!(err.contains("INCR from the plain client"), "{err}");
        assert!(err.contains("not an integer"), "{err}");
        assert_eq!(server.command(&["GET", "bench:count"]).unwrap().trim(), "$1\r\n1");
    }

    /// The plain subscriber is subscribed when it is returned, hands over every message in
    /// order on its thread until told it is done, and gives back its state; a deadline ends it
    /// with what it has, and so does dropping its handle; a wrong password fails it before it
    /// starts, without showing it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plain_subscriber_hands_over_messages_until_done() {
        let server = tatbot_state_testkit::RedisServer::builder().password("s3cret").start();
        let endpoint = Endpoint::new(server.host(), server.port()).with_password("s3cret");
        let deadline = Instant::now() + Duration::from_secs(60);
        let collect = |seen: &mut Vec<String>, payload: &[u8]| {
            seen.push(String::from_utf8_lossy(payload).into_owned());
            seen.len() == 3
        };
        let task = plain_subscriber(&endpoint, "bench:plain", deadline, Vec::new(), collect)
            .await
            .unwrap();
        for message in ["one", "two", "three"] {
            // Answered with the number of subscribers that got it: the subscription is live.
            let answer = server.command(&["PUBLISH", "bench:plain", message]).unwrap();
            assert_eq!(answer.trim(), ":1", "{message}");
        }
        // Done after the third, long before its deadline.
        let seen = tokio::time::timeout(Duration::from_secs(20), task.finish()).await;
        assert_eq!(seen.expect("it stops when done").unwrap(), ["one", "two", "three"]);

        let soon = Instant::now() + Duration::from_secs(1);
        let never_done = |seen: &mut usize, _: &[u8]| {
            *seen += 1;
            false
        };
        let task = plain_subscriber(&endpoint, "bench:plain", soon, 0, never_done)
            .await
            .unwrap();
        server.command(&["PUBLISH", "bench:plain", "only"]).unwrap();
        assert_eq!(task.finish().await.unwrap(), 1);

        // Dropped long before its deadline: its thread ends and leaves the channel.
        let task = plain_subscriber(&endpoint, "bench:plain", deadline, (), |(), _| false)
            .await
            .unwrap();
        drop(task);
        let mut listeners = String::new();
        for _ in 0..200 {
            listeners = server.command(&["PUBSUB", "NUMSUB", "bench:plain"]).unwrap();
            if listeners.ends_with(":0\r\n") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(listeners.ends_with(":0\r\n"), "still subscribed: {listeners:?}");

        let wrong = Endpoint::new(server.host(), server.port()).with_password("not-the-pass-4f9e");
        let err = match plain_subscriber(&wrong, "bench:plain", deadline, (), |(), _| true).await {
            Ok(_) => panic!("a wrong password was accepted"),
            Err(err) => format!("{err:#}"),
        };
        assert!(err.contains("connecting the plain subscriber"), "{err}");
        assert!(!err.contains("not-the-pass-4f9e"), "the password leaked: {err}");
    }

    /// A CSV line whose test name holds commas and quotes still gives its numbers.
    #[test]
    fn csv_from_the_right() {
        let line = r#""EVAL redis.call('HSET',KEYS[1]) 1 h {"x": "y,z"}","88888.89","0.356","0.096","0.111","0.311","8.007","9.471""#;
        let run = parse_csv_line(line).unwrap();
        assert_eq!(run.rps, 88888.89);
        assert!((run.p50_us - 111.0).abs() < 1e-9);
        assert!((run.p99_us - 8007.0).abs() < 1e-9);
        assert!(parse_csv_line(r#""test","rps","avg_latency_ms""#).is_none());
    }

    /// MONITOR's escapes come back as the bytes that were sent.
    #[test]
    fn monitor_unescapes() {
        let line = "+1700000000.123456 [0 127.0.0.1:5000] \"EVALSHA\" \"ab\" \"\" \"{\\\"a\\\":\\\"x y\\\"}\" \"\\xc3\\xa9\\n\"\r\n";
        assert_eq!(
            parse_monitor_line(line).unwrap(),
            ["EVALSHA", "ab", "", r#"{"a":"x y"}"#, "é\n"]
        );
        assert_eq!(parse_monitor_line("+OK\r\n"), None);
    }
}
