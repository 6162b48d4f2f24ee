//! Sections 1 to 4 of the benchmark: awaited updates against `PING`, producer throughput, the
//! time a producer call takes with Redis up, paused and down, and producer-to-subscriber
//! latency through pub/sub and through the follow API.
//!
//! Every loop runs a fixed number of times and every wait has a deadline, so a server that
//! stops answering makes a section fail with a one-line error instead of hanging the bench.
//! Updates carry their index `i` as stroke `i / 1000`, pose `i % 1000`, which is how a
//! receiver tells which update it got.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tatbot_state::follow::{ChangeKind, FollowConfig, FollowItem, Scope};
use tatbot_state::model::Event;
use tatbot_state::{
    CancellationToken, Endpoint, ManagerConfig, Producer, ProducerConfig, ProgressUpdate, SessionId, SessionPlan,
    StateManager, Wake, WakeStats, keys,
};
use tokio::time::MissedTickBehavior;

use crate::cmd::bench::Plan;
use crate::cmd::bench::baseline::{self, PlainClient};
use crate::cmd::bench::recording;
use crate::cmd::bench::stats::Samples;
use crate::cmd::server::link;
use crate::private_server::PrivateServer;

/// Poses per stroke in a bench session: update `i` is stroke `i / POSES`, pose `i % POSES`.
const POSES: usize = 1000;
/// Strokes in a bench session; with [`POSES`] this bounds the updates one session can label.
const STROKES: usize = 1000;
/// The longest a flush may take before a section fails (Redis gone or far too slow).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);
/// Producer calls are made in bursts of this many per [`CALL_TICK`] (10 kHz), faster than any
/// robot loop, so that the writer is busy while the calls are timed.
const CALLS_PER_TICK: usize = 10;
/// The tick of the producer-call and end-to-end loops; 1 ms is also the rate of section 4.
const CALL_TICK: Duration = Duration::from_millis(1);
/// How long a receiver waits for the first item of a follower or for stragglers.
const RECEIVE_GRACE: Duration = Duration::from_secs(10);
/// The polling interval of the producers measured with [`Wake::Poll`].
pub const POLL_INTERVAL: Duration = Duration::from_micros(100);

/// The awaited path (section 1): one acknowledged update at a time, against the manager's
/// `PING` (its shared connection) and the same command from a plain client, interleaved so all
/// see the same noise.
pub struct Awaited {
    /// `PING` round trips through the manager's shared connection.
    pub ping: Samples,
    /// Awaited progress updates.
    pub update: Samples,
    /// The same through a manager with `reply_spin` zero.
    pub update_waiting: Samples,
    /// The update's command from a plain blocking client ([`PlainClient`]).
    pub plain: Samples,
    /// Awaited progress updates back to back after the interleaved ones, with nothing in
    /// between, as `redis-benchmark -c 1 -P 1` sends its commands in the run that follows.
    pub alone: Samples,
    /// Why the plain client stopped, if it failed.
    pub plain_failed: Option<String>,
}

/// Producer call times (section 3) in the three conditions.
pub struct Calls {
    /// Redis up and answering, the default wake ([`Wake::Anticipate`]).
    pub up: Samples,
    /// How the default wake's writer was woken while `up` was timed.
    pub up_wakes: WakeStats,
    /// The same with [`Wake::Immediate`]: every call that finds the writer parked wakes it.
    pub up_immediate: Samples,
    /// This process's CPU time while `up`, `up_immediate` and `up_polled` were timed, as a
    /// share of one core: what each wake policy costs.
    pub cpu_share_up: f64,
    /// See `cpu_share_up`.
    pub cpu_share_immediate: f64,
    /// See `cpu_share_up`.
    pub cpu_share_polled: f64,
    /// The same with [`Wake::Poll`] every [`POLL_INTERVAL`].
    pub up_polled: Samples,
    /// Redis frozen by SIGSTOP; `None` when the server is not ours to freeze.
    pub paused: Option<Samples>,
    /// Nothing listening on the port.
    pub down: Samples,
}

/// Producer-to-subscriber latencies (section 4) of one path.
#[derive(Debug, Default)]
pub struct EndToEnd {
    /// One latency per update received.
    pub samples: Samples,
    /// Updates sent but not received before the deadline.
    pub missed: usize,
}

impl EndToEnd {
    /// Adds another round of the same path.
    pub fn extend(&mut self, round: EndToEnd) {
        self.samples.extend(round.samples);
        self.missed += round.missed;
    }
}

/// The progress update that carries index `index`.
fn indexed_update(index: usize) -> ProgressUpdate {
    // Both parts are below 1000 (the caller keeps `index` under STROKES * POSES).
    ProgressUpdate::new(((index / POSES) % STROKES) as u32, (index % POSES) as u32)
}

/// The index an update carries, from its stroke and pose.
fn update_index(stroke_idx: i64, pose_idx: i64) -> Option<usize> {
    let stroke = usize::try_from(stroke_idx).ok()?;
    let pose = usize::try_from(pose_idx).ok()?;
    (pose < POSES).then_some(stroke * POSES + pose)
}

/// Starts a bench session (scene `bench`) and returns its id.
///
/// # Errors
///
/// Redis failed.
pub async fn start_session(manager: &StateManager) -> anyhow::Result<SessionId> {
    let plan = SessionPlan {
        total_strokes: STROKES as u32,
        stroke_length: POSES as u32,
        scene: "bench".to_owned(),
    };
    manager
        .start_stroke_session(&plan)
        .await
        .context("starting a bench session")
}

impl Awaited {
    /// Room for `count` samples of each kind.
    pub fn with_capacity(count: usize) -> Awaited {
        Awaited {
            ping: Samples::with_capacity(count),
            update: Samples::with_capacity(count),
            update_waiting: Samples::with_capacity(count),
            plain: Samples::with_capacity(count),
            alone: Samples::with_capacity(count),
            plain_failed: None,
        }
    }
}

/// One round of section 1: `count` awaited updates and `count` `PING`s, alternating, after
/// `warmup` of each, added to `into`; with `plain`, the same command from the plain client
/// takes its turn too, so that both see the machine's same moments. A plain client that fails
/// is dropped, and its error kept in `into.plain_failed`. Then `count` awaited updates back to
/// back (`into.alone`), the conditions of the `redis-benchmark` run that follows the round.
///
/// # Errors
///
/// Redis failed or refused an update.
pub async fn awaited(
    manager: &StateManager,
    session: &SessionId,
    warmup: usize,
    count: usize,
    plain: &mut Option<PlainClient>,
    into: &mut Awaited,
) -> anyhow::Result<()> {
    let waiting = StateManager::connect(ManagerConfig {
        reply_spin: Duration::ZERO,
        ..manager.config().clone()
    })
    .await
    .context("connecting a manager that waits for its answers")?;
    // A session of its own: each manager's fast path expects the document it stored last.
    let waiting_session = start_session(&waiting).await?;
    let timed = async |manager: &StateManager, session: &SessionId, index: usize| {
        let started = Instant::now();
        manager
            .update_stroke_progress(session, &indexed_update(index))
            .await
            .context("awaited progress update")?;
        anyhow::Ok(started.elapsed())
    };
    for index in 0..warmup + count {
        let ping = manager.ping().await.context("PING")?;
        let took = timed(manager, session, index).await?;
        let took_waiting = timed(&waiting, &waiting_session, index).await?;
        // A failing baseline ends the baseline, not the section.
        let took_plain = match plain
            .as_mut()
            .map(|plain| tokio::task::block_in_place(|| plain.time_one()))
        {
            Some(Ok(took)) => Some(took),
            Some(Err(err)) => {
                *plain = None;
                into.plain_failed = Some(format!("{err:#}"));
                None
            }
            None => None,
        };
        if index >= warmup {
            into.ping.push(ping);
            into.update.push(took);
            into.update_waiting.push(took_waiting);
            if let Some(took) = took_plain {
                into.plain.push(took);
            }
        }
    }
    let _ = waiting.clear_session_data(&waiting_session).await;
    for index in warmup + count..warmup + 2 * count {
        into.alone.push(timed(manager, session, index).await?);
    }
    Ok(())
}

/// Section 2: one run of `count` updates queued at once through a fresh producer, counted
/// from the first call to the flush that acknowledges the last; updates per second.
///
/// # Errors
///
/// Redis failed, the flush timed out, or the producer dropped or rejected updates (the rate
/// would then not count what it claims).
pub async fn throughput(
    manager: &StateManager,
    session: &SessionId,
    count: usize,
    shutdown: &CancellationToken,
) -> anyhow::Result<f64> {
    let producer = warm_producer(manager, session, Wake::Immediate, shutdown).await?;
    let updates: Vec<ProgressUpdate> = (0..count).map(indexed_update).collect();
    let started = Instant::now();
    for update in &updates {
        producer.update_stroke_progress(session, update)?;
    }
    producer
        .flush(FLUSH_TIMEOUT)
        .await
        .context("waiting for the producer to write the throughput run")?;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let stats = producer.stats();
    producer.close(FLUSH_TIMEOUT).await.context("closing the producer")?;
    if stats.dropped > 0 || stats.rejected > 0 {
        anyhow::bail!(
            "the producer dropped {} and Redis rejected {} of the throughput updates: see `tatbot-state status`",
            stats.dropped,
            stats.rejected
        );
    }
    Ok(rate)
}

/// The command an awaited progress update of `session` sends, exactly as Redis received it
/// (seen with `MONITOR`), for `redis-benchmark` and the plain client to repeat.
///
/// # Errors
///
/// `MONITOR` is not allowed, or the update failed.
pub async fn capture_update(
    endpoint: &Endpoint,
    manager: &StateManager,
    session: &SessionId,
) -> anyhow::Result<Vec<String>> {
    let update = async {
        manager.update_stroke_progress(session, &indexed_update(0)).await?;
        Ok(())
    };
    let mut command = baseline::capture_command(endpoint, session.as_str(), update).await?;
    repeatable(&mut command);
    Ok(command)
}

/// Makes a captured fast-path update (`ARGV[8]`, the document expected, and `ARGV[9]`, the
/// document stored) expect what it stores, so that every repeat takes the fast path as the
/// producer's updates do, instead of finding a changed document and merging in the script.
fn repeatable(command: &mut [String]) {
    if let (Some(stored), Some(expected)) = (argv_index(command, 9), argv_index(command, 8))
        && let Some(document) = command.get(stored).cloned()
        && let Some(expected) = command.get_mut(expected)
    {
        *expected = document;
    }
}

/// Where `ARGV[n]` (from 1) of a captured `EVALSHA sha numkeys key... arg...` is in it, when
/// its key count reads as a number.
fn argv_index(command: &[String], n: usize) -> Option<usize> {
    let keys = command.get(2)?.parse::<usize>().ok()?;
    keys.checked_add(2 + n)
}

/// The reference work of the issue as one `EVAL`: `HSET` of the stored progress document,
/// `XADD` of a history entry and `PUBLISH` of a progress event, on `session`'s own keys, without
/// the merge our update script does.
///
/// # Errors
///
/// The session has no progress document, or Redis failed.
pub async fn reference_command(manager: &StateManager, session: &SessionId) -> anyhow::Result<Vec<String>> {
    const SCRIPT: &str = "redis.call('HSET', KEYS[1], 'progress', ARGV[1]) \
        redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'stroke_idx', ARGV[3], 'pose_idx', ARGV[4], \
        'description_l', '', 'description_r', '', 'node_id', ARGV[5]) \
        return redis.call('PUBLISH', ARGV[6], ARGV[7])";
    let progress = manager
        .get_stroke_progress(session)
        .await
        .context("reading the bench session")?
        .with_context(|| format!("the bench session {session} is gone"))?;
    let document = serde_json::to_string(&progress).context("encoding the bench session")?;
    let event = serde_json::json!({
        "type": "progress_update", "session_id": session.as_str(), "node_id": progress.node_id,
        "stroke_idx": progress.stroke_idx, "pose_idx": progress.pose_idx,
        "total_strokes": progress.total_strokes, "stroke_length": progress.stroke_length,
        "description_l": "", "description_r": "", "timestamp": progress.timestamp,
    });
    Ok(vec![
        "EVAL".to_owned(),
        SCRIPT.to_owned(),
        "2".to_owned(),
        keys::progress(session),
        keys::history(session),
        document,
        manager.config().history_maxlen.to_string(),
        progress.stroke_idx.to_string(),
        progress.pose_idx.to_string(),
        progress.node_id.clone(),
        keys::PROGRESS_EVENTS.to_owned(),
        event.to_string(),
    ])
}

/// A producer whose writer is connected and has its scripts loaded.
async fn warm_producer(
    manager: &StateManager,
    session: &SessionId,
    wake: Wake,
    shutdown: &CancellationToken,
) -> anyhow::Result<Producer> {
    let config = ProducerConfig {
        wake,
        ..ProducerConfig::default()
    };
    let producer = manager.producer(config, shutdown.child_token());
    producer.update_stroke_progress(session, &indexed_update(0))?;
    producer
        .flush(FLUSH_TIMEOUT)
        .await
        .context("waiting for the producer's first write")?;
    Ok(producer)
}

/// Times `count` producer calls, [`CALLS_PER_TICK`] per [`CALL_TICK`], from a control loop.
async fn time_calls(producer: &Producer, session: &SessionId, count: usize) -> anyhow::Result<Samples> {
    let (producer, session) = (producer.clone(), session.clone());
    control_loop(count.div_ceil(CALLS_PER_TICK), move |tick, samples: &mut Samples| {
        for index in tick * CALLS_PER_TICK..((tick + 1) * CALLS_PER_TICK).min(count) {
            let update = indexed_update(index);
            let started = Instant::now();
            producer.update_stroke_progress(&session, &update)?;
            samples.push(started.elapsed());
        }
        Ok(())
    })
    .await
}

/// Runs `work` and says what share of one core this process used meanwhile.
async fn with_cpu_share<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<(T, f64)> {
    let (cpu, wall) = (recording::cpu_time()?, Instant::now());
    let done = work.await?;
    let used = recording::cpu_time()?.saturating_sub(cpu);
    Ok((done, used.as_secs_f64() / wall.elapsed().as_secs_f64().max(1e-9)))
}

/// Runs `tick` `ticks` times, one per [`CALL_TICK`], on a thread of its own, as a robot's
/// control loop calls the producer: each tick at its own deadline, the time to it slept.
/// (Tokio's interval, ticking on its 1 ms timer wheel, made the ticks 1 to 2 ms apart at
/// random, which no control loop does.)
async fn control_loop<T: Default + Send + 'static>(
    ticks: usize,
    mut tick: impl FnMut(usize, &mut T) -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(move || {
        let mut state = T::default();
        let mut deadline = Instant::now();
        for index in 0..ticks {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            deadline += CALL_TICK;
            tick(index, &mut state)?;
        }
        Ok(state)
    })
    .await
    .context("bug: the control loop panicked")?
}

/// Section 3: producer call times with Redis up, frozen (SIGSTOP of `freeze`, when the
/// server is ours) and down (a lazy manager on `dead_port`, where nothing listens).
///
/// # Errors
///
/// Redis failed while up, or did not catch up within [`FLUSH_TIMEOUT`] after the pause.
pub async fn producer_calls(
    manager: &StateManager,
    session: &SessionId,
    plan: &Plan,
    freeze: Option<&PrivateServer>,
    dead_port: u16,
    shutdown: &CancellationToken,
) -> anyhow::Result<Calls> {
    let polled = warm_producer(manager, session, Wake::Poll(POLL_INTERVAL), shutdown).await?;
    let (up_polled, cpu_share_polled) = with_cpu_share(time_calls(&polled, session, plan.calls)).await?;
    polled
        .close(FLUSH_TIMEOUT)
        .await
        .context("closing the polled producer")?;

    let immediate = warm_producer(manager, session, Wake::Immediate, shutdown).await?;
    let (up_immediate, cpu_share_immediate) = with_cpu_share(time_calls(&immediate, session, plan.calls)).await?;
    immediate
        .close(FLUSH_TIMEOUT)
        .await
        .context("closing the producer woken by calls")?;

    let producer = warm_producer(manager, session, Wake::default(), shutdown).await?;
    let (up, cpu_share_up) = with_cpu_share(time_calls(&producer, session, plan.calls)).await?;
    let up_wakes = producer.wake_stats();
    producer
        .flush(FLUSH_TIMEOUT)
        .await
        .context("flushing after the calls")?;

    let paused = match freeze {
        Some(server) => {
            server.pause()?;
            let timed = time_calls(&producer, session, plan.calls).await;
            server.resume()?;
            let samples = timed?;
            producer
                .flush(FLUSH_TIMEOUT)
                .await
                .context("waiting for the producer to catch up after the pause")?;
            Some(samples)
        }
        None => None,
    };
    producer.close(FLUSH_TIMEOUT).await.context("closing the producer")?;

    let dead = Endpoint::new("127.0.0.1", dead_port);
    let config = ManagerConfig::new(dead, manager.node_id().clone());
    let lazy = StateManager::connect_lazy(config).context("making a manager for a port with nothing listening")?;
    let stop = shutdown.child_token();
    let orphan = lazy.producer(ProducerConfig::default(), stop.clone());
    let down = time_calls(&orphan, session, plan.calls).await;
    // Nothing will ever be written: stop the writer without waiting for a flush.
    stop.cancel();
    Ok(Calls {
        up,
        up_wakes,
        up_immediate,
        cpu_share_up,
        cpu_share_immediate,
        cpu_share_polled,
        up_polled,
        paused,
        down: down?,
    })
}

/// Which path section 4 measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// `PSUBSCRIBE stroke:events:progress` through [`StateManager::subscribe`].
    PubSub,
    /// [`StateManager::follow_with`] on the session.
    Follow,
}

/// One round of section 4: `count` updates at 1 kHz through a producer, each timed from the call to its
/// arrival at a subscriber of `path` in this process.
///
/// # Errors
///
/// Redis failed, or the follower sent no snapshot within [`RECEIVE_GRACE`].
pub async fn end_to_end(
    manager: &StateManager,
    count: usize,
    path: Path,
    wake: Wake,
    shutdown: &CancellationToken,
) -> anyhow::Result<EndToEnd> {
    let session = start_session(manager).await?;
    let producer = warm_producer(manager, &session, wake, shutdown).await?;
    let deadline = Instant::now() + RECEIVE_GRACE + CALL_TICK * u32::try_from(count).unwrap_or(u32::MAX);
    let receiver = match path {
        Path::PubSub => {
            let mut subscription = manager
                .subscribe(&[keys::PROGRESS_EVENTS])
                .await
                .context("subscribing to progress events")?;
            let wanted = session.clone();
            tokio::spawn(async move {
                let mut arrivals = Arrivals::new(count);
                while !arrivals.complete() {
                    let Ok(Some(message)) = tokio::time::timeout_at(deadline.into(), subscription.next()).await else {
                        break;
                    };
                    if let Ok(Event::ProgressUpdate(event)) = &message.event
                        && event.session_id == wanted.as_str()
                    {
                        arrivals.record(update_index(event.stroke_idx, event.pose_idx));
                    }
                }
                arrivals.times
            })
        }
        Path::Follow => {
            let config = FollowConfig::default();
            let scope = Scope::Session(session.clone());
            let mut follower = manager.follow_with(scope, None, config, shutdown);
            match tokio::time::timeout(RECEIVE_GRACE, follower.next()).await {
                Ok(Some(FollowItem::Snapshot(_))) => {}
                Ok(other) => anyhow::bail!("the follower's first item was {other:?}, not a snapshot"),
                Err(_) => anyhow::bail!(
                    "the follower sent no snapshot within {} s: is Redis overloaded?",
                    RECEIVE_GRACE.as_secs()
                ),
            }
            tokio::spawn(async move {
                let mut arrivals = Arrivals::new(count);
                while !arrivals.complete() {
                    let Ok(Some(item)) = tokio::time::timeout_at(deadline.into(), follower.next()).await else {
                        break;
                    };
                    if let FollowItem::Change(change) = item
                        && let ChangeKind::Progress { entry, .. } = change.kind
                    {
                        arrivals.record(update_index(entry.stroke_idx, entry.pose_idx));
                    }
                }
                arrivals.times
            })
        }
    };

    let (calls, on_session) = (producer.clone(), session.clone());
    let sent = control_loop(count, move |index, sent: &mut Vec<Instant>| {
        let update = indexed_update(index);
        sent.push(Instant::now());
        calls.update_stroke_progress(&on_session, &update)?;
        Ok(())
    })
    .await?;
    let received = receiver.await.context("bug: the receiving task panicked")?;
    producer.close(FLUSH_TIMEOUT).await.context("closing the producer")?;
    let _ = manager.clear_session_data(&session).await;

    Ok(latencies(&sent, &received))
}

/// Section 4's former baseline, still shown: `count` `PING`s through `manager`, one per tick of
/// tokio's interval ([`CALL_TICK`]), each timed, in the rounds of the paths: a `PING` after an
/// idle millisecond wakes Redis and this process as a delivered update does, where section 1's
/// back-to-back `PING`s find them awake and are measured minutes apart.
///
/// # Errors
///
/// Redis failed.
pub async fn paced_pings(manager: &StateManager, count: usize) -> anyhow::Result<EndToEnd> {
    let mut samples = Samples::with_capacity(count);
    let mut ticker = tokio::time::interval(CALL_TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for _ in 0..count {
        ticker.tick().await;
        samples.push(manager.ping().await.context("PING")?);
    }
    Ok(EndToEnd { samples, missed: 0 })
}

/// Section 4's baseline: `count` `PING`s from a plain blocking client ([`PlainClient`]), one
/// per [`CALL_TICK`] on a control loop as the paths' updates are sent, each timed. The manager's
/// `PING` goes through its shared connection's driver task, two hand-offs between threads that
/// a delivered update does not make, and took 1.3x to 1.8x as long at p99 when both were paced
/// by tokio's interval (docs/PERFORMANCE.md): a round trip to Redis is this one.
///
/// # Errors
///
/// Redis could not be reached or failed a `PING`.
pub async fn paced_plain_pings(endpoint: &Endpoint, count: usize) -> anyhow::Result<EndToEnd> {
    let mut plain = PlainClient::connect(endpoint, &["PING".to_owned()]).await?;
    // Untimed: a new connection's first command is not a round trip like the others.
    tokio::task::block_in_place(|| plain.time_one())?;
    // Paced like the paths it is compared with.
    let samples = control_loop(count, move |_, samples: &mut Samples| {
        samples.push(plain.time_one()?);
        Ok(())
    })
    .await?;
    Ok(EndToEnd { samples, missed: 0 })
}

/// The channel of the raw pub/sub baseline. Nothing listens to it but the bench itself.
const RAW_CHANNEL: &str = tatbot_state::keys::BENCH_CHANNEL;
/// Size of a raw baseline message, about that of a `progress_update` event.
const RAW_PAYLOAD_BYTES: usize = 300;
/// Deadline of the cleanup of section 4's same-work path.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The transport floor of section 4: `count` messages at 1 kHz, `PUBLISH`ed from a plain
/// blocking client ([`plain_sends`]) and received by a plain blocking subscriber in this
/// process ([`baseline::plain_subscriber`]), no library code on the path. Each is timed from
/// just before its `PUBLISH` to its arrival.
///
/// # Errors
///
/// Redis could not be reached or refused a command.
pub async fn raw_pubsub(endpoint: &Endpoint, count: usize) -> anyhow::Result<EndToEnd> {
    let publish = |payload: String| ["PUBLISH".to_owned(), RAW_CHANNEL.to_owned(), payload];
    let mut publisher = PlainClient::connect(endpoint, &publish(String::new())).await?;
    // Untimed, before anyone listens: a new connection's first command is not a round trip like
    // the others.
    tokio::task::block_in_place(|| publisher.send(None))?;
    let padding = "x".repeat(RAW_PAYLOAD_BYTES);
    let packed = (0..count)
        .map(|index| PlainClient::pack(&publish(format!("{index} {padding}"))))
        .collect();
    plain_round(endpoint, publisher, packed, RAW_CHANNEL, |payload| {
        let digits = payload.split(|byte| *byte == b' ').next().unwrap_or_default();
        std::str::from_utf8(digits).ok()?.parse().ok()
    })
    .await
}

/// The update command a producer's writer sends, made to carry any index: the fast-path
/// command of an awaited update captured with `MONITOR` ([`capture_update`]) on a bench session
/// of its own, given a writer revision (`ARGV[1]`, `ARGV[2]`) as a producer's writes have, so
/// that Redis does for each exactly what it does for a producer's update.
pub struct IndexedUpdate {
    session: SessionId,
    command: Vec<String>,
    /// Position of `ARGV[1]` in `command`.
    argv: usize,
    /// The event (`ARGV[12]`) before and after its `"stroke_idx": 0, "pose_idx": 0`.
    event: (String, String),
    /// The next writer revision number to send.
    next_seq: u64,
}

/// The indices in the event of the captured update (index 0), as the update script writes them.
const EVENT_INDICES: &str = "\"stroke_idx\": 0, \"pose_idx\": 0";
/// Arguments of the update script's fast path (`scripts::UPDATE_PROGRESS`).
const FAST_PATH_ARGS: usize = 15;

impl IndexedUpdate {
    /// Starts a bench session and captures its update command.
    ///
    /// # Errors
    ///
    /// Redis failed, `MONITOR` was refused, or the command seen is not the fast path's.
    pub async fn capture(endpoint: &Endpoint, manager: &StateManager) -> anyhow::Result<IndexedUpdate> {
        let session = start_session(manager).await?;
        let captured = capture_update(endpoint, manager, &session).await;
        let made = captured.and_then(|command| IndexedUpdate::from_command(session.clone(), command));
        if made.is_err() {
            let _ = manager.clear_session_data(&session).await;
        }
        made
    }

    /// `command`, an update of index 0 on `session` that took the fast path.
    fn from_command(session: SessionId, mut command: Vec<String>) -> anyhow::Result<IndexedUpdate> {
        let arg = |n: usize| {
            argv_index(&command, n)
                .and_then(|at| command.get(at))
                .map(String::as_str)
        };
        let indices = (arg(13), arg(14));
        let event = arg(12).and_then(|event| event.split_once(EVENT_INDICES));
        let checked = (event, indices, arg(1), arg(FAST_PATH_ARGS + 1), argv_index(&command, 1));
        let (Some(event), (Some("0"), Some("0")), Some(""), None, Some(argv)) = checked else {
            anyhow::bail!(
                "bug: the captured update is not the fast path's of an update of index 0 without a writer revision: {command:?}"
            );
        };
        let event = (event.0.to_owned(), event.1.to_owned());
        // Named like the bench producers' revision keys (`bench.*`: docs/PERFORMANCE.md).
        command[argv] = keys::writer_rev(&format!("bench.plain-{session}"));
        Ok(IndexedUpdate {
            session,
            command,
            argv,
            event,
            next_seq: 1,
        })
    }

    /// The command carrying update `index`, packed for [`PlainClient::send`], with the next
    /// revision number.
    fn next(&mut self, index: usize) -> Vec<u8> {
        let update = indexed_update(index);
        let (stroke, pose) = (update.stroke_idx.to_string(), update.pose_idx.to_string());
        let mut command = self.command.clone();
        let mut set = |n: usize, value: String| command[self.argv + n - 1] = value;
        set(2, self.next_seq.to_string());
        set(
            12,
            format!(
                "{}\"stroke_idx\": {stroke}, \"pose_idx\": {pose}{}",
                self.event.0, self.event.1
            ),
        );
        set(13, stroke);
        set(14, pose);
        self.next_seq += 1;
        PlainClient::pack(&command)
    }

    /// Deletes the session and the revision key.
    pub async fn clear(&self, endpoint: &Endpoint, manager: &StateManager) {
        let _ = manager.clear_session_data(&self.session).await;
        // The key also expires by itself a day after its last write.
        if let Ok(mut connection) = link::connect(endpoint, CLEANUP_TIMEOUT).await {
            let del = redis::cmd("DEL").arg(&self.command[self.argv]).clone();
            let _: Result<i64, _> = link::call(&mut connection, &del, CLEANUP_TIMEOUT).await;
        }
    }
}

/// Section 4's same-work floor: `count` updates at 1 kHz, each the very command a producer's
/// writer sends for it ([`IndexedUpdate`]), from a plain blocking client, received by a plain
/// `SUBSCRIBE` connection in this process that decodes each event. Each is timed from just
/// before its write to its arrival. What Redis does for an update (the script, the AOF write
/// before delivery) is in it; what the library adds (the writer's wake and batch, the
/// subscription) is not.
///
/// # Errors
///
/// Redis could not be reached or refused a command.
pub async fn plain_update_pubsub(
    endpoint: &Endpoint,
    update: &mut IndexedUpdate,
    count: usize,
) -> anyhow::Result<EndToEnd> {
    let mut plain = PlainClient::connect(endpoint, &update.command).await?;
    // Untimed, before anyone listens: a new connection's first command is not a round trip like
    // the others.
    let first = update.next(0);
    tokio::task::block_in_place(|| plain.send(Some(&first)))?;
    let packed = (0..count).map(|index| update.next(index)).collect();
    let wanted = update.session.to_string();
    plain_round(endpoint, plain, packed, keys::PROGRESS_EVENTS, move |payload| {
        let event = serde_json::from_slice::<serde_json::Value>(payload).ok()?;
        if event["session_id"] != wanted.as_str() {
            return None;
        }
        update_index(event["stroke_idx"].as_i64()?, event["pose_idx"].as_i64()?)
    })
    .await
}

/// One round of a plain path: a plain subscriber to `channel` ([`plain_arrivals`]), then
/// `packed` sent from `plain` ([`plain_sends`]); each message's index is told by `index_of`.
async fn plain_round(
    endpoint: &Endpoint,
    plain: PlainClient,
    packed: Vec<Vec<u8>>,
    channel: &str,
    index_of: impl Fn(&[u8]) -> Option<usize> + Send + 'static,
) -> anyhow::Result<EndToEnd> {
    let receiver = plain_arrivals(endpoint, channel, packed.len(), index_of).await?;
    let sent = plain_sends(plain, packed).await?;
    let received = receiver.finish().await?;
    Ok(latencies(&sent, &received.times))
}

/// Sends each of `packed` from `plain` on a control loop ([`control_loop`], as the producer's
/// paths are called), one per [`CALL_TICK`], and gives when each was sent: stamped just before
/// its write. A command's answer is read at the next tick, before the next write (it is there
/// by then): this floor's sender is not woken by its answer while the message travels, where a
/// producer's writer is (that is part of what the library adds).
async fn plain_sends(mut plain: PlainClient, packed: Vec<Vec<u8>>) -> anyhow::Result<Vec<Instant>> {
    // One tick more, to read the last answer.
    control_loop(packed.len() + 1, move |index, sent: &mut Vec<Instant>| {
        if index == 0 {
            // No growing between a stamp and its write.
            sent.reserve(packed.len());
        } else {
            plain.answer()?;
        }
        if let Some(packed) = packed.get(index) {
            sent.push(Instant::now());
            plain.write(packed)?;
        }
        Ok(())
    })
    .await
}

/// A plain subscriber ([`baseline::plain_subscriber`]) to `channel` that records the arrival of
/// updates `0..count`, each message's index told by `index_of`, until all arrived or
/// [`RECEIVE_GRACE`] after they should have.
async fn plain_arrivals(
    endpoint: &Endpoint,
    channel: &str,
    count: usize,
    index_of: impl Fn(&[u8]) -> Option<usize> + Send + 'static,
) -> anyhow::Result<baseline::PlainSubscription<Arrivals>> {
    let deadline = Instant::now() + RECEIVE_GRACE + CALL_TICK * u32::try_from(count).unwrap_or(u32::MAX);
    let on_message = move |arrivals: &mut Arrivals, payload: &[u8]| {
        arrivals.record(index_of(payload));
        arrivals.complete()
    };
    baseline::plain_subscriber(endpoint, channel, deadline, Arrivals::new(count), on_message).await
}

/// Latencies of the updates that arrived, and how many did not.
fn latencies(sent: &[Instant], received: &[Option<Instant>]) -> EndToEnd {
    let mut samples = Samples::with_capacity(sent.len());
    let mut missed = 0;
    for (sent_at, received_at) in sent.iter().zip(received) {
        match received_at {
            Some(at) => samples.push(at.saturating_duration_since(*sent_at)),
            None => missed += 1,
        }
    }
    EndToEnd { samples, missed }
}

/// Rate of the session that the memory section's clients follow: a robot's progress rate.
const SESSION_HZ: u64 = 100;
/// The longest the followed session runs, whatever the caller does.
const SESSION_MAX: Duration = Duration::from_secs(600);

/// Updates `session` through a producer at [`SESSION_HZ`] until `stop` is cancelled (or
/// [`SESSION_MAX`] passed), then flushes and stops the producer.
///
/// # Errors
///
/// The producer's final flush failed.
pub async fn run_session(manager: StateManager, session: SessionId, stop: CancellationToken) -> anyhow::Result<()> {
    // A token of its own: the writer must outlive `stop` to flush what was queued.
    let producer = manager.producer(ProducerConfig::default(), CancellationToken::new());
    let mut ticker = tokio::time::interval(Duration::from_millis(1000 / SESSION_HZ));
    let deadline = tokio::time::Instant::now() + SESSION_MAX;
    for index in 0..STROKES * POSES {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep_until(deadline) => break,
            _ = ticker.tick() => {}
        }
        producer.update_stroke_progress(&session, &indexed_update(index))?;
    }
    producer
        .close(FLUSH_TIMEOUT)
        .await
        .context("flushing the followed session's updates")?;
    Ok(())
}

/// When each update arrived at a receiver.
struct Arrivals {
    /// Arrival time by update index; `None` until it arrives.
    times: Vec<Option<Instant>>,
    /// How many indices have arrived.
    received: usize,
}

impl Arrivals {
    fn new(count: usize) -> Arrivals {
        Arrivals {
            times: vec![None; count],
            received: 0,
        }
    }

    /// Records the arrival of `index` now; other indices and repeats are ignored.
    fn record(&mut self, index: Option<usize>) {
        let at = Instant::now();
        if let Some(slot) = index.and_then(|index| self.times.get_mut(index))
            && slot.is_none()
        {
            *slot = Some(at);
            self.received += 1;
        }
    }

    fn complete(&self) -> bool {
        self.received == self.times.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A captured fast-path update is made to expect the document it stores; a slow-path one
    /// (no fast-path arguments) is left alone.
    #[test]
    fn captured_update_repeats_on_the_fast_path() {
        let words = |text: &str| text.split(' ').map(str::to_owned).collect::<Vec<_>>();
        let mut fast = words("EVALSHA sha 3 k1 k2 k3 a1 a2 a3 a4 a5 a6 a7 old new l r ev 1 2 n");
        repeatable(&mut fast);
        assert_eq!(
            fast,
            words("EVALSHA sha 3 k1 k2 k3 a1 a2 a3 a4 a5 a6 a7 new new l r ev 1 2 n")
        );
        let mut slow = words("EVALSHA sha 3 k1 k2 k3 a1 a2 a3 a4 a5 a6 a7");
        repeatable(&mut slow);
        assert_eq!(slow, words("EVALSHA sha 3 k1 k2 k3 a1 a2 a3 a4 a5 a6 a7"));
    }

    /// A captured command that is not a fast-path update of index 0 without a revision is
    /// refused with an error that shows it, whatever its key count says, never a panic.
    #[test]
    fn only_a_fast_path_update_is_indexed() {
        let session = SessionId::new("bench-s").unwrap();
        let words = |text: &str| text.split(' ').map(str::to_owned).collect::<Vec<_>>();
        let event = r#"{"type": "progress_update", "stroke_idx": 0, "pose_idx": 0, "x": 1}"#;
        let fast = |rev: &str, numkeys: &str| {
            let mut command = words(&format!(
                "EVALSHA sha {numkeys} k1 k2 k3 {rev} 1 p s 9 9 ch old new l r"
            ));
            command.extend([event.to_owned(), "0".to_owned(), "0".to_owned(), "n".to_owned()]);
            command
        };
        let indexed = IndexedUpdate::from_command(session.clone(), fast("", "3")).unwrap();
        assert_eq!(indexed.command[indexed.argv], keys::writer_rev("bench.plain-bench-s"));
        for (command, why) in [
            (fast("tatbot:rev:w", "3"), "a writer revision already"),
            (words("EVALSHA sha 3 k1 k2 k3 a1 a2 a3 a4 a5 a6 a7"), "the merge path"),
            (fast("", "18446744073709551615"), "a key count past the end"),
            (fast("", "three"), "a key count that is not a number"),
        ] {
            let err = match IndexedUpdate::from_command(session.clone(), command) {
                Ok(_) => panic!("accepted {why}"),
                Err(err) => format!("{err:#}"),
            };
            assert!(err.contains("is not the fast path's"), "{why}: {err}");
            assert!(err.contains("EVALSHA"), "{why}: {err}");
        }
    }

    /// The server's endpoint, and a manager on it as the bench's node.
    async fn bench_manager(server: &tatbot_state_testkit::RedisServer) -> (Endpoint, StateManager) {
        let endpoint = Endpoint::new(server.host(), server.port());
        let node = tatbot_state::NodeId::new("bench-test").unwrap();
        let manager = StateManager::connect(ManagerConfig::new(endpoint.clone(), node))
            .await
            .unwrap();
        (endpoint, manager)
    }

    /// A plain client whose command fails ends its own baseline: the round still measures every
    /// update, the client is dropped, and the error, naming the command, is kept for the note.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_plain_client_ends_its_baseline_not_the_round() {
        let server = tatbot_state_testkit::RedisServer::start();
        let (endpoint, manager) = bench_manager(&server).await;
        let session = start_session(&manager).await.unwrap();
        server.command(&["SET", "bench:text", "x"]).unwrap();
        let failing = PlainClient::connect(&endpoint, &["INCR".to_owned(), "bench:text".to_owned()])
            .await
            .unwrap();
        let mut plain = Some(failing);
        let mut into = Awaited::with_capacity(3);
        awaited(&manager, &session, 0, 3, &mut plain, &mut into).await.unwrap();
        assert!(plain.is_none());
        let failed = into.plain_failed.expect("the failure is kept");
        assert!(failed.contains("INCR from the plain client"), "{failed}");
        assert!(failed.contains("not an integer"), "{failed}");
        assert!(into.plain.percentile_us(0.5).is_none());
        assert!(into.update.percentile_us(0.5).is_some());
        assert!(into.ping.percentile_us(0.5).is_some());
    }

    /// Section 4's same-work path sends the captured update with a writer revision, as a
    /// producer's are: every update reaches the plain subscriber, each appends history (the
    /// script ran, on its fast path), the revision key counts them, a number already applied
    /// is skipped like a producer's replay, and the cleanup takes the session and the key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn same_work_path_does_a_producers_update() {
        let server = tatbot_state_testkit::RedisServer::start();
        let (endpoint, manager) = bench_manager(&server).await;
        let mut update = IndexedUpdate::capture(&endpoint, &manager).await.unwrap();
        let history = keys::history(&update.session);
        let rev_key = update.command[update.argv].clone();
        assert!(rev_key.starts_with(&keys::writer_rev("bench.")), "{rev_key}");

        let mut measured = plain_update_pubsub(&endpoint, &mut update, 20).await.unwrap();
        assert_eq!(measured.missed, 0);
        assert!(measured.samples.percentile_us(0.99).is_some());
        // The captured update, the untimed first one and the 20 timed.
        assert_eq!(server.command(&["XLEN", &history]).unwrap().trim(), ":22");
        assert_eq!(server.command(&["GET", &rev_key]).unwrap().trim(), "$2\r\n21");
        let last = server
            .command(&["XREVRANGE", &history, "+", "-", "COUNT", "1"])
            .unwrap();
        assert!(last.contains("pose_idx\r\n$2\r\n19\r\n"), "{last}");

        let mut replay = update.command.clone();
        replay[update.argv + 1] = "5".to_owned();
        let replay: Vec<&str> = replay.iter().map(String::as_str).collect();
        assert_eq!(server.command(&replay).unwrap().trim(), ":-22");
        assert_eq!(server.command(&["XLEN", &history]).unwrap().trim(), ":22");

        update.clear(&endpoint, &manager).await;
        let progress = keys::progress(&update.session);
        assert_eq!(
            server
                .command(&["EXISTS", &progress, &history, &rev_key])
                .unwrap()
                .trim(),
            ":0"
        );
    }

    /// The plain sender stamps every command it writes and reads every answer, the last one
    /// included: an error answer to the last command fails the run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plain_sends_reads_every_answer() {
        let server = tatbot_state_testkit::RedisServer::start();
        let endpoint = Endpoint::new(server.host(), server.port());
        server.command(&["SET", "bench:text", "x"]).unwrap();
        let incr = |key: &str| PlainClient::pack(&["INCR".to_owned(), key.to_owned()]);
        let plain = PlainClient::connect(&endpoint, &["INCR".to_owned()]).await.unwrap();
        let sent = plain_sends(plain, vec![incr("bench:n"), incr("bench:n"), incr("bench:n")])
            .await
            .unwrap();
        assert_eq!(sent.len(), 3);
        assert_eq!(server.command(&["GET", "bench:n"]).unwrap().trim(), "$1\r\n3");

        let plain = PlainClient::connect(&endpoint, &["INCR".to_owned()]).await.unwrap();
        let err = plain_sends(plain, vec![incr("bench:n"), incr("bench:text")])
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("not an integer"), "{err:#}");
    }

    /// An update's index survives the trip through stroke and pose.
    #[test]
    fn index_round_trip() {
        for index in [0, 1, 999, 1000, 4321, STROKES * POSES - 1] {
            let update = indexed_update(index);
            assert_eq!(
                update_index(i64::from(update.stroke_idx), i64::from(update.pose_idx)),
                Some(index)
            );
        }
        assert_eq!(update_index(-1, 0), None);
        assert_eq!(update_index(0, 1000), None);
    }
}
