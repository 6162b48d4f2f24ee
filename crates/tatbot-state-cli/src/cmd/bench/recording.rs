//! Section 7 of the benchmark: record and replay throughput (issue #17).
//!
//! A bench session gets `count` history entries (pipelined `XADD`s, like a robot's writes);
//! the library's [`Recorder`] then records it into an MCAP file held in memory ([`McapSink`]
//! on a `Vec`), which is read back ([`read_recording`]) and replayed into the same server with
//! the id prefix `bench.` at a rate that makes every message due at once, so both figures are
//! throughput. Each step is timed in wall time and in this process's CPU time
//! (`getrusage`), and, on the bench's private server, in `redis-server`'s CPU time (from
//! `/proc`), so a loaded machine shows as the gap between wall time and the sum of the two.
//! Everything the section wrote is deleted at the end.

use std::io::Cursor;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::resource::{UsageWho, getrusage};
use redis::aio::MultiplexedConnection;
use tatbot_state::record::replay::{ReplayOptions, read_recording, replay};
use tatbot_state::record::{McapSink, Recorder, Selection};
use tatbot_state::{CancellationToken, Endpoint, SessionId, StateManager, keys};

use crate::cmd::server::link;

/// History entries per seeding pipeline.
const SEED_BATCH: usize = 1_000;
/// The prefix of the replayed ids.
const REPLAY_PREFIX: &str = "bench.";
/// A rate at which every message of a recording is due at once.
const AS_FAST_AS_POSSIBLE: f64 = 1e12;
/// The longest one seeding or clean-up command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// One record and one replay of the same session.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Messages recorded (and replayed).
    pub messages: u64,
    /// Record: Redis to MCAP bytes.
    pub record: Timing,
    /// Replay: MCAP bytes to Redis, decoding included.
    pub replay: Timing,
    /// Bytes of the MCAP file.
    pub file_bytes: usize,
}

/// Wall and CPU time of one step.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Elapsed time.
    pub wall: Duration,
    /// User and system time of this process over the same span.
    pub cpu: Duration,
    /// User and system time of the private `redis-server` over the same span, when known.
    pub server_cpu: Option<Duration>,
}

impl Timing {
    /// Messages per second of wall time.
    pub fn per_s(&self, messages: u64) -> f64 {
        messages as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Messages per second of this process's CPU time.
    pub fn per_cpu_s(&self, messages: u64) -> f64 {
        messages as f64 / self.cpu.as_secs_f64().max(1e-9)
    }
}

/// This process's user plus system time.
pub(crate) fn cpu_time() -> anyhow::Result<Duration> {
    let usage = getrusage(UsageWho::RUSAGE_SELF).context("getrusage")?;
    let micros = |time: nix::sys::time::TimeVal| {
        Duration::from_secs(u64::try_from(time.tv_sec()).unwrap_or(0))
            + Duration::from_micros(u64::try_from(time.tv_usec()).unwrap_or(0))
    };
    Ok(micros(usage.user_time()) + micros(usage.system_time()))
}

/// User and system time of process `pid` from `/proc/PID/stat` (clock ticks of 10 ms, the
/// usual `CLK_TCK` of 100), or `None` where it cannot be read.
fn process_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name in parentheses may hold spaces; the fields after it are space-separated, and
    // utime and stime are the 12th and 13th of them.
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((user + system) * 10))
}

/// Times `work` in wall and CPU time, and in the CPU time of `server` (a pid) when given.
async fn timed<T>(server: Option<u32>, work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<(T, Timing)> {
    let server_before = server.and_then(process_cpu_time);
    let cpu_before = cpu_time()?;
    let started = Instant::now();
    let value = work.await?;
    let wall = started.elapsed();
    let cpu = cpu_time()?.saturating_sub(cpu_before);
    let server_cpu = match (server.and_then(process_cpu_time), server_before) {
        (Some(after), Some(before)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    Ok((value, Timing { wall, cpu, server_cpu }))
}

/// Seeds a session of `count` history entries, records it, replays it, and deletes both.
///
/// # Errors
///
/// A Redis failure, or a recording that does not hold every entry.
pub async fn measure(
    endpoint: &Endpoint,
    server: Option<u32>,
    manager: &StateManager,
    count: usize,
    shutdown: &CancellationToken,
) -> anyhow::Result<Run> {
    let mut connection = link::connect(endpoint, COMMAND_TIMEOUT)
        .await
        .map_err(|err| link::to_error(&err, endpoint, "connecting to seed history"))?;
    let session = SessionId::new(format!("bench_record_{}", std::process::id())).context("bug: bench session id")?;
    let replayed = SessionId::new(format!("{REPLAY_PREFIX}{session}")).context("bug: replayed session id")?;
    let outcome = run(&mut connection, manager, server, &session, count, shutdown).await;
    for session in [&session, &replayed] {
        manager
            .clear_session_data(session)
            .await
            .with_context(|| format!("removing the bench session {session}"))?;
    }
    redis::cmd("ZREM")
        .arg(keys::SESSION_INDEX)
        .arg(replayed.as_str())
        .query_async::<()>(&mut connection)
        .await
        .context("removing the replayed session from the index")?;
    outcome
}

async fn run(
    connection: &mut MultiplexedConnection,
    manager: &StateManager,
    server: Option<u32>,
    session: &SessionId,
    count: usize,
    shutdown: &CancellationToken,
) -> anyhow::Result<Run> {
    seed(connection, session, count).await?;

    let (bytes, record) = timed(server, async {
        let mut recorder = Recorder::new(manager, Selection::Sessions(vec![session.clone()])).await?;
        let mut sink = McapSink::new(Cursor::new(Vec::new()))?;
        recorder.backlog_with(|message| sink.write(&message)).await?;
        Ok(sink.finish()?.into_inner())
    })
    .await
    .context("recording")?;

    let (written, replay_timing) = timed(server, async {
        let recording = read_recording(&bytes)?;
        let options = ReplayOptions {
            rate: AS_FAST_AS_POSSIBLE,
            id_prefix: REPLAY_PREFIX.to_owned(),
            params: false,
        };
        let stats = replay(manager, &recording, &options, shutdown, |_| {}).await?;
        Ok(stats.written)
    })
    .await
    .context("replaying")?;
    anyhow::ensure!(
        written == count as u64,
        "the replay wrote {written} messages of the {count} seeded"
    );
    Ok(Run {
        messages: written,
        record,
        replay: replay_timing,
        file_bytes: bytes.len(),
    })
}

/// `count` history entries on `session`, in pipelines of [`SEED_BATCH`].
async fn seed(connection: &mut MultiplexedConnection, session: &SessionId, count: usize) -> anyhow::Result<()> {
    let key = keys::history(session);
    let mut index = 0;
    while index < count {
        let mut pipe = redis::pipe();
        for i in index..(index + SEED_BATCH).min(count) {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("stroke_idx")
                .arg(i / 1000)
                .arg("pose_idx")
                .arg(i % 1000)
                .arg("description_l")
                .arg("left arm: outline of the koi, upper fin")
                .arg("description_r")
                .arg("right arm: shading, second pass")
                .arg("node_id")
                .arg("bench")
                .ignore();
        }
        pipe.query_async::<()>(connection)
            .await
            .context("seeding history entries")?;
        index += SEED_BATCH;
    }
    Ok(())
}
