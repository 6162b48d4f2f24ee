//! [`Producer`]: the robot's write path, which never waits on Redis.
//!
//! The robot's control loop runs at 30 Hz or more. A producer call (progress, robot state,
//! heartbeat, error, end/pause/resume) turns the write into an op (one script invocation), puts
//! it on an in-memory queue under a mutex held for a few instructions, and returns; a background
//! writer task sends what is queued as one pipeline per batch, with up to two batches on its
//! connection at once (the next built while Redis runs the previous). When Redis is slow, paused,
//! restarting or down, calls still return at once and the queue absorbs the backlog. [`Wake`]
//! says how a call gets the writer going.
//!
//! Memory is bounded. Snapshots (robot state, heartbeats) are coalesced: only the newest per key
//! waits. Ops that carry history (progress, errors) queue up to [`ProducerConfig::max_queued`];
//! past it the oldest is dropped, counted in [`ProducerStats::dropped`], and its fields are
//! folded into the next progress update of the same session, so the progress snapshot still
//! ends right and only the dropped history entry and event are lost. Once the writer gets
//! through again it reports the drop as an error event (category `state_server`).
//!
//! Nothing is written twice. Every op gets a sequence number, and the write scripts record the
//! last number applied per producer (`tatbot:rev:{writer}`, and `tatbot:rev:{writer}.snapshots`
//! for the coalesced snapshots, which leave the queue out of order) in the same atomic step as
//! the write, skipping any op at or below it. That makes it safe to resend a whole batch after a
//! failure, and to replay recent ops after a Redis restart: the writer keeps the ops acknowledged
//! in the last [`ProducerConfig::replay_window`] and, when the server's `run_id` changes (a
//! restart that may have lost the last second of an `appendfsync everysec` AOF), sends them
//! again; those that survived are skipped, those that were lost are written, in order.
//!
//! Skipping by number is only safe while Redis sees the numbers in order: a later number applied
//! first makes an earlier write look like a duplicate, and it is lost. So a batch goes out only
//! on the connection that carries every unanswered batch before it; after a failure the
//! unanswered batches go again first, in order, on the new connection, after the replay. A
//! replay also starts the replay window again for what it sent, since the new server may lose
//! it again until its next fsync.
//!
//! A restart can also lose a whole session: its start fell in the lost tail, or the server came
//! back without its data. The writer keeps its own copy of every session document it wrote (and
//! of the sessions its manager started), and after a restart re-creates each executing or
//! recently written session that is missing, before replaying, so the replayed and the later
//! writes are stored. A re-created session whose start lies before the replay window has lost
//! history for good: that is an error, logged, stored in `tatbot:errors` and counted in
//! [`ProducerStats::restored`]. [`Producer::start_stroke_session`] queues the start itself as a
//! write, so it is replayed like the others.
//!
//! An acknowledged write is not yet on disk: with `appendfsync everysec` a crash within about a
//! second loses it. So after its last batch an idle writer keeps checking its connection every
//! [`WATCH_INTERVAL`] until [`ProducerConfig::durability_horizon`] has passed; a crash in that
//! time is found at once and the writes are replayed when Redis is back, even when the robot has
//! nothing more to send. [`Producer::close`] waits for that too.
//!
//! Nothing is lost silently: writes dropped from a full queue or refused by Redis are counted,
//! reported as one error event per batch (category `state_server`) and returned as
//! [`Error::NotStored`] by the next [`Producer::flush`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::direct::{self, Direct};
use crate::error::{Error, Result};
use crate::fastpath::DocCache;
use crate::follow::io::VALUE_OVERHEAD;
use crate::ids::{Category, SessionId};
use crate::manager::StateManager;
use crate::model::{NodeHealth, ProgressUpdate, RobotState, SessionPlan, StrokeProgress};
use crate::ops::{Op, RunState, health_op, robot_state_op};
use crate::scripts;
use crate::sentinel;
use crate::{keys, timestamp::Timestamp};

mod pacer;

use pacer::Pacer;

/// Default bound on queued history-bearing ops.
pub const DEFAULT_MAX_QUEUED: usize = 100_000;
/// Default number of ops per pipeline.
pub const DEFAULT_BATCH_SIZE: usize = 512;
/// Default time an acknowledged op is kept for replay after a Redis restart: more than the
/// one second an `appendfsync everysec` AOF may lose, with margin for the restart itself.
pub const DEFAULT_REPLAY_WINDOW: Duration = Duration::from_secs(5);
/// Default cap on the reconnect backoff.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_millis(500);
/// First reconnect delay; doubled on each failure up to the cap.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// How often a producer stores its counters in `tatbot:producers`.
const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// How long a stopping writer tries to take its record out of `tatbot:producers`.
const RETIRE_TIMEOUT: Duration = Duration::from_millis(500);
/// `tatbot:producers` expires a week after the last producer wrote to it.
const PRODUCERS_TTL_SECS: i64 = 7 * 24 * 3600;
/// A record of `tatbot:producers` with nothing to report (no drop, refusal or restore) that
/// has not been updated for this long is taken out by a producer that starts: its producer was
/// killed, or is idle (and writes it again with its next batch), and `status` shows nothing of
/// it.
const PRUNE_AFTER: Duration = Duration::from_secs(600);
/// How long the producer that prunes holds [`keys::PRODUCERS_PRUNING`]: one pass a minute for
/// the whole fleet at most.
const PRUNE_EVERY_SECS: u64 = 60;
/// The most one pass reads of `tatbot:producers` (its records, with their framing); the next
/// pass goes on, as does one that ran out of [`PRUNE_TIMEOUT`].
const PRUNE_MAX_BYTES: u64 = 32 << 20;
const PRUNE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most ops kept for replay, whatever their age.
const MAX_REPLAY_OPS: usize = 200_000;
/// Default time an acknowledged write may still be lost by a Redis crash: `appendfsync
/// everysec` writes the AOF every second and, when the disk is slow, Redis delays the write by
/// up to another second.
pub const DEFAULT_DURABILITY_HORIZON: Duration = Duration::from_secs(2);
/// How often an idle writer checks its connection while its last writes may still be lost.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(100);
/// Sessions a writer keeps its copy of; past it, the least recently written one goes.
const MAX_KNOWN_SESSIONS: usize = 64;

/// How a producer queues and sends.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Bound on queued progress updates and errors; past it the oldest is dropped.
    pub max_queued: usize,
    /// Ops per pipeline.
    pub batch_size: usize,
    /// How long acknowledged ops are kept for replay after a Redis restart.
    pub replay_window: Duration,
    /// Cap on the delay between reconnect attempts.
    pub max_backoff: Duration,
    /// How a call gets the writer going; see [`Wake`].
    pub wake: Wake,
    /// How long after its last acknowledged write the writer keeps watching for a Redis crash
    /// that could lose it (see the module docs); [`Producer::close`] waits for it. Zero turns
    /// the watch off, for a server with `appendfsync always` or data that may be lost.
    pub durability_horizon: Duration,
}

/// How a producer call gets the writer to send what it queued.
///
/// Waking a parked task from another thread is a system call (a futex or eventfd write) that
/// usually takes a few microseconds and, on a loaded or virtualised machine, sometimes tens.
/// Between a robot loop's bursts the writer parks, so the first call of each burst would pay
/// it; the default avoids that for loops that call at a steady rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wake {
    /// The default: the writer learns the period of the bursts of calls and a thread of the
    /// producer's own wakes it a little before the next burst is due, so the call finds it
    /// awake and makes no system call, and the op goes out at once. Calls at no steady period
    /// (bursts from 600 us to 1 s apart) wake the writer themselves, as with
    /// [`Wake::Immediate`]. The price is the writer awake, spinning, around each burst: a lead
    /// before its due time and a tail after it, adapted to how late the wake-ups and the bursts
    /// come and together at most a quarter of the period; and a thread that sleeps between
    /// bursts and parks when they stop.
    #[default]
    Anticipate,
    /// The call wakes the writer itself when the writer is parked: no thread and no spinning
    /// beyond [`SPIN_BEFORE_PARK`]. A writer that is sending, or that finished a batch less
    /// than [`SPIN_BEFORE_PARK`] ago, looks at the queue itself, and the call makes no system
    /// call.
    Immediate,
    /// A thread of the producer's own checks every interval (at least [`MIN_POLL_INTERVAL`],
    /// plus the kernel's timer slack, about 50 us) whether something was queued, and wakes
    /// the writer. Calls then make no system call, except the first after the producer was
    /// idle for [`POLL_LINGER`], which restarts that thread. The price is up to one interval
    /// of extra latency to subscribers and a thread that wakes every interval while the
    /// producer is busy.
    Poll(Duration),
}

/// How long an idle writer keeps looking at the queue before it parks (see [`Wake::Immediate`]).
pub const SPIN_BEFORE_PARK: Duration = Duration::from_micros(50);

/// The longest an idle writer stays awake for a burst the pacer expects.
const MAX_AWAKE: Duration = Duration::from_millis(1);

/// The shortest interval [`Wake::Poll`] uses; a shorter one would keep a core busy.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_micros(10);

/// How long the polling thread of [`Wake::Poll`] keeps polling after the last call before it
/// parks.
pub const POLL_LINGER: Duration = Duration::from_millis(250);

impl Default for ProducerConfig {
    fn default() -> ProducerConfig {
        ProducerConfig {
            max_queued: DEFAULT_MAX_QUEUED,
            batch_size: DEFAULT_BATCH_SIZE,
            replay_window: DEFAULT_REPLAY_WINDOW,
            max_backoff: DEFAULT_MAX_BACKOFF,
            wake: Wake::default(),
            durability_horizon: DEFAULT_DURABILITY_HORIZON,
        }
    }
}

/// Counters of a producer, for `status` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProducerStats {
    /// Ops accepted from callers.
    pub enqueued: u64,
    /// Highest sequence number such that every op up to it is done (written, skipped as a
    /// duplicate, superseded, dropped or rejected).
    pub acknowledged: u64,
    /// Ops waiting now.
    pub queued: usize,
    /// Ops dropped because the queue was full.
    pub dropped: u64,
    /// Snapshots replaced by a newer one before they were sent.
    pub coalesced: u64,
    /// Ops Redis refused (unknown session, corrupt document, permission).
    pub rejected: u64,
    /// Failed send attempts (each followed by a backoff and a resend).
    pub retries: u64,
    /// Redis restarts noticed (`run_id` changed).
    pub restarts: u64,
    /// Ops sent again after a restart.
    pub replayed: u64,
    /// Sessions re-created after a Redis restart lost them.
    pub restored: u64,
}

/// How a [`Wake::Anticipate`] writer was woken; see [`Producer::wake_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WakeStats {
    /// Calls that found the writer parked and woke it (a system call on the call's thread).
    pub call_wakes: u64,
    /// Bursts the pacer woke the writer for that found it awake.
    pub anticipated: u64,
    /// Bursts the pacer woke the writer for that came while it was parked anyway.
    pub missed: u64,
    /// Bursts the pacer's thread woke up for too late (after they were due).
    pub late: u64,
    /// How long before a due burst the pacer wakes the writer now, in microseconds.
    pub lead_us: u64,
}

/// One queued op and its sequence number.
#[derive(Debug, Clone)]
struct Queued {
    seq: u64,
    op: Op,
}

/// What waits to be sent. Guarded by a `std` mutex: every critical section is a few
/// instructions with no `.await`.
#[derive(Debug, Default)]
struct Queue {
    next_seq: u64,
    /// History-bearing and run-state ops, in order.
    ops: VecDeque<Queued>,
    /// The newest snapshot per key.
    snapshots: HashMap<String, Queued>,
    /// Drops not yet reported as an error event.
    unreported_drops: u64,
    /// Refusals not yet reported as an error event, and the first one's reason.
    unreported_rejections: u64,
    rejection_reason: Option<String>,
    stats: ProducerStats,
}

/// State shared by the handles and the writer task.
struct Shared {
    queue: Mutex<Queue>,
    /// Calls queued so far, counted after each push: the idle writer spins on this instead of
    /// on the queue's lock, so a call never waits for a lock that a spinning writer holds (or
    /// was preempted holding).
    pushes: AtomicU64,
    /// Wakes the writer when something is queued and it is parked.
    wake: Arc<Notify>,
    /// The writer is parked (or about to park) on `wake`: a call must wake it. While it works
    /// or spins it looks at the queue itself, and a call makes no system call.
    parked: Arc<AtomicBool>,
    /// The polling thread of [`Wake::Poll`], if that is the policy.
    poller: Option<Arc<Poller>>,
    /// The pacing thread of [`Wake::Anticipate`], if that is the policy.
    pacer: Option<Arc<Pacer>>,
    /// The acknowledged sequence number; `flush` waits on it.
    acknowledged: watch::Sender<u64>,
    /// The sequence number up to which writes have been on the server for the durability
    /// horizon; `close` waits on it.
    durable: watch::Sender<u64>,
    /// The drop and refusal counts the last `flush` reported.
    reported_failures: Mutex<(u64, u64)>,
    /// Set when the writer has stopped (after its [`Writer::retire`], when it is dropped);
    /// `close` waits on it.
    stopped: watch::Sender<bool>,
    config: ProducerConfig,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A poisoned queue only means a panic elsewhere mid-push; the queue is still consistent
        // because every mutation is a single push, pop or insert.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A thread of the producer's own ([`Wake::Poll`]'s poller, [`Wake::Anticipate`]'s pacer) that
/// parks when it has nothing to do, and what others need to reach it.
#[derive(Debug, Default)]
struct HelperThread {
    /// The thread is parked (or about to park) and must be unparked to go on.
    parked: AtomicBool,
    /// The writer stopped: the thread ends.
    stopped: AtomicBool,
    /// The thread, once it runs.
    thread: OnceLock<std::thread::Thread>,
}

impl HelperThread {
    /// Starts `body` on a thread named `name`; false, with a warning naming `what`, when the
    /// system refuses one (calls then wake the writer themselves).
    fn start(&self, name: &str, what: &str, body: impl FnOnce() + Send + 'static) -> bool {
        match std::thread::Builder::new().name(name.to_owned()).spawn(body) {
            Ok(handle) => {
                // Set here as well as in the thread (`enter`), so nobody finds it unset once
                // the thread may park.
                let _ = self.thread.set(handle.thread().clone());
                true
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot start the producer's {what} thread; calls wake the writer instead");
                false
            }
        }
    }

    /// Called first by the thread itself.
    fn enter(&self) {
        let _ = self.thread.set(std::thread::current());
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Unparks the thread if it is parked: a store, and a system call only then.
    fn wake(&self) {
        if self.parked.load(Ordering::SeqCst)
            && let Some(thread) = self.thread.get()
        {
            thread.unpark();
        }
    }

    /// Parks the calling thread unless `idle` has become false or the thread was stopped.
    /// The park is announced before the last look, so whoever changes what `idle` reads and
    /// then calls [`HelperThread::wake`] is either seen here or sees `parked` and unparks (a
    /// token kept for `park` if it comes first).
    fn park_while(&self, idle: impl Fn() -> bool) {
        self.parked.store(true, Ordering::SeqCst);
        if idle() && !self.is_stopped() {
            std::thread::park();
        }
        self.parked.store(false, Ordering::SeqCst);
    }

    /// Ends the thread.
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }
}

/// The polling thread of [`Wake::Poll`], and what calls tell it.
#[derive(Debug, Default)]
struct Poller {
    /// Something was queued since the thread last looked.
    pending: AtomicBool,
    /// The thread; it parks when idle past [`POLL_LINGER`], and a call must unpark it.
    helper: HelperThread,
}

impl Poller {
    /// Starts the thread; `None` when the system refuses one.
    fn spawn(wake: &Arc<Notify>, interval: Duration) -> Option<Arc<Poller>> {
        let poller = Arc::new(Poller::default());
        let (thread_poller, wake) = (poller.clone(), wake.clone());
        let body = move || thread_poller.run(&wake, interval.max(MIN_POLL_INTERVAL));
        poller
            .helper
            .start("tatbot-producer-poll", "polling", body)
            .then_some(poller)
    }

    /// A call queued something: a store, and a system call only when the thread is parked.
    fn pending(&self) {
        self.pending.store(true, Ordering::SeqCst);
        self.helper.wake();
    }

    /// Ends the thread.
    fn stop(&self) {
        self.helper.stop();
    }

    fn run(&self, wake: &Notify, interval: Duration) {
        self.helper.enter();
        let mut last_call = Instant::now();
        while !self.helper.is_stopped() {
            if self.pending.swap(false, Ordering::SeqCst) {
                wake.notify_one();
                last_call = Instant::now();
            } else if last_call.elapsed() > POLL_LINGER {
                self.helper.park_while(|| !self.pending.load(Ordering::SeqCst));
                last_call = Instant::now();
                continue;
            }
            std::thread::sleep(interval);
        }
    }
}

/// Queues writes for a background writer; every call returns without waiting on Redis.
///
/// Cheap to clone; clones share the queue and the writer. The writer stops when the
/// cancellation token given to [`StateManager::producer`] fires, or after [`Producer::close`].
#[derive(Clone)]
pub struct Producer {
    shared: Arc<Shared>,
    manager: StateManager,
    /// Stops the writer.
    stop: CancellationToken,
}

impl StateManager {
    /// Starts a producer: a background writer task on the current tokio runtime, stopped by
    /// `shutdown` (or by [`Producer::close`]).
    pub fn producer(&self, config: ProducerConfig, shutdown: CancellationToken) -> Producer {
        let (acknowledged, _) = watch::channel(0);
        let (durable, _) = watch::channel(0);
        let wake = Arc::new(Notify::new());
        let parked = Arc::new(AtomicBool::new(false));
        let (poller, pacer) = match config.wake {
            Wake::Anticipate => (None, Pacer::spawn(&wake, parked.clone())),
            Wake::Immediate => (None, None),
            Wake::Poll(interval) => (Poller::spawn(&wake, interval), None),
        };
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            pushes: AtomicU64::new(0),
            wake,
            parked,
            poller,
            pacer,
            acknowledged,
            durable,
            reported_failures: Mutex::default(),
            stopped: watch::channel(false).0,
            config,
        });
        let writer_id = format!("{}.{:08x}", self.node_id(), rand_u32());
        let writer = Writer::new(self.clone(), shared.clone(), &writer_id);
        tokio::spawn(writer.run(shutdown.clone()));
        Producer {
            shared,
            manager: self.clone(),
            stop: shutdown,
        }
    }
}

impl Producer {
    fn push(&self, op: Op) -> u64 {
        let mut queue = self.shared.lock();
        queue.next_seq += 1;
        let seq = queue.next_seq;
        queue.stats.enqueued += 1;
        if let Some(key) = op.snapshot_key() {
            if queue.snapshots.insert(key.to_owned(), Queued { seq, op }).is_some() {
                queue.stats.coalesced += 1;
            }
        } else {
            if queue.ops.len() >= self.shared.config.max_queued {
                queue.drop_oldest();
            }
            queue.ops.push_back(Queued { seq, op });
        }
        drop(queue);
        self.shared.pushes.fetch_add(1, Ordering::SeqCst);
        match &self.shared.poller {
            // Pairs with the writer's store of `parked` before its last look at the queue: either
            // it sees this op there, or this load sees it parked.
            None if self.shared.parked.load(Ordering::SeqCst) => {
                if let Some(pacer) = &self.shared.pacer {
                    pacer.call_wakes_writer();
                }
                self.shared.wake.notify_one();
            }
            None => {}
            Some(poller) => poller.pending(),
        }
        seq
    }

    /// Starts a session (awaited: the id comes from Redis) and queues its start as a write, so
    /// that a Redis restart losing the start is repaired like any other recent write.
    ///
    /// # Errors
    ///
    /// As [`StateManager::start_stroke_session`].
    pub async fn start_stroke_session(&self, plan: &SessionPlan) -> Result<SessionId> {
        let session_id = self.manager.start_stroke_session(plan).await?;
        let started = self
            .manager
            .started_sessions()
            .into_iter()
            .rev()
            .find(|started| started.session_id == session_id);
        if let Some(started) = started {
            self.push(
                self.manager
                    .ensure_op(&session_id, &started.progress, started.start_ms)?,
            );
        }
        Ok(session_id)
    }

    /// Queues a progress update (see [`StateManager::update_stroke_progress`]); returns its
    /// sequence number.
    ///
    /// # Errors
    ///
    /// Only bad input (a description over the size limit); never Redis.
    pub fn update_stroke_progress(&self, session_id: &SessionId, update: &ProgressUpdate) -> Result<u64> {
        self.update_stroke_progress_owned(session_id, update.clone())
    }

    /// [`Producer::update_stroke_progress`] taking the update by value, so that its
    /// descriptions are not copied again: for a caller that builds one update per call.
    ///
    /// # Errors
    ///
    /// As [`Producer::update_stroke_progress`].
    pub fn update_stroke_progress_owned(&self, session_id: &SessionId, update: ProgressUpdate) -> Result<u64> {
        Ok(self.push(self.manager.progress_op(session_id, update)?))
    }

    /// Queues a pause.
    pub fn pause_stroke_session(&self, session_id: &SessionId) -> u64 {
        self.push(self.manager.run_state_op(session_id, RunState::Pause))
    }

    /// Queues a resume.
    pub fn resume_stroke_session(&self, session_id: &SessionId) -> u64 {
        self.push(self.manager.run_state_op(session_id, RunState::Resume))
    }

    /// Queues the end of a session, after every update queued before it.
    pub fn end_stroke_session(&self, session_id: &SessionId) -> u64 {
        self.push(self.manager.run_state_op(session_id, RunState::End))
    }

    /// Queues a robot state snapshot; a newer one for the same node replaces it if still queued.
    ///
    /// # Errors
    ///
    /// An invalid `state.node_id`.
    pub fn update_robot_state(&self, state: &RobotState) -> Result<u64> {
        Ok(self.push(robot_state_op(state)?))
    }

    /// Queues a heartbeat; a newer one for the same node replaces it if still queued.
    ///
    /// # Errors
    ///
    /// An invalid `health.node_id`.
    pub fn update_node_health(&self, health: &NodeHealth) -> Result<u64> {
        Ok(self.push(health_op(health)?))
    }

    /// Queues an error report.
    ///
    /// # Errors
    ///
    /// A message over the size limit.
    pub fn report_error(&self, category: &Category, message: &str, details: Value) -> Result<u64> {
        Ok(self.push(self.manager.error_op(category, message, details)?))
    }

    /// Waits until every op queued before this call is done (written, or skipped, dropped or
    /// rejected and counted).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when that takes longer than `limit` (Redis down or paused);
    /// [`Error::NotStored`] when writes were dropped or refused since the last flush said so.
    pub async fn flush(&self, limit: Duration) -> Result<()> {
        let target = self.shared.lock().next_seq;
        self.wait_for(target, limit).await?;
        self.failures_since_last_flush()
    }

    /// [`Error::NotStored`] with the drops and refusals no flush has reported yet.
    fn failures_since_last_flush(&self) -> Result<()> {
        let (dropped, rejected) = {
            let queue = self.shared.lock();
            (queue.stats.dropped, queue.stats.rejected)
        };
        let mut reported = self
            .shared
            .reported_failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (new_dropped, new_rejected) = (dropped - reported.0, rejected - reported.1);
        *reported = (dropped, rejected);
        if new_dropped == 0 && new_rejected == 0 {
            return Ok(());
        }
        Err(Error::NotStored {
            dropped: new_dropped,
            rejected: new_rejected,
        })
    }

    /// Waits until op `seq` (as returned by a queuing call) and all before it are done.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] after `limit`.
    pub async fn wait_for(&self, seq: u64, limit: Duration) -> Result<()> {
        let mut acknowledged = self.shared.acknowledged.subscribe();
        let reached = tokio::time::timeout(limit, acknowledged.wait_for(|done| *done >= seq)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            // The writer is gone (stopped); nothing more will be acknowledged.
            Ok(Err(_)) => Err(Error::ProducerStopped),
            Err(_) => Err(Error::Timeout {
                operation: "producer flush",
                after: limit,
            }),
        }
    }

    /// The counters now.
    pub fn stats(&self) -> ProducerStats {
        let queue = self.shared.lock();
        let mut stats = queue.stats;
        stats.queued = queue.ops.len() + queue.snapshots.len();
        stats.acknowledged = *self.shared.acknowledged.borrow();
        stats
    }

    /// How the writer was woken so far, for benchmarks and tests: all zero unless the policy is
    /// [`Wake::Anticipate`].
    pub fn wake_stats(&self) -> WakeStats {
        self.shared.pacer.as_ref().map_or_else(WakeStats::default, |pacer| {
            let (anticipated, missed, late, lead) = pacer.counts();
            WakeStats {
                call_wakes: pacer.call_wakes.load(Ordering::Relaxed),
                anticipated,
                missed,
                late,
                lead_us: u64::try_from(lead.as_micros()).unwrap_or(u64::MAX),
            }
        })
    }

    /// Flushes, waits until the last writes have been on the server for the durability horizon
    /// (so a Redis crash in that time is still repaired), all within `limit`, and stops the
    /// writer.
    ///
    /// # Errors
    ///
    /// As [`Producer::flush`], or [`Error::NotDurable`] when Redis could not be watched for the
    /// horizon within `limit`; the writer is stopped either way.
    pub async fn close(&self, limit: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        let target = self.shared.lock().next_seq;
        let closed = async {
            self.flush(limit).await?;
            let mut durable = self.shared.durable.subscribe();
            match tokio::time::timeout_at(deadline, durable.wait_for(|done| *done >= target)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(_)) => Err(Error::ProducerStopped),
                Err(_) => Err(Error::NotDurable {
                    horizon: self.shared.config.durability_horizon,
                }),
            }
        }
        .await;
        self.stop.cancel();
        // The writer's last act is to take its record out of `tatbot:producers` (see
        // `Writer::retire`): waited for, within the same limit.
        let mut stopped = self.shared.stopped.subscribe();
        let _ = tokio::time::timeout_at(deadline, stopped.wait_for(|stopped| *stopped)).await;
        closed
    }
}

impl Queue {
    /// Drops the oldest progress update or error, folding a dropped update's fields into the
    /// next update of the same session so the stored snapshot still ends right.
    fn drop_oldest(&mut self) {
        let Some(index) = self
            .ops
            .iter()
            .position(|queued| matches!(queued.op, Op::Progress { .. } | Op::Error { .. }))
        else {
            // Only run-state changes are queued; they are few and never dropped.
            return;
        };
        let Some(dropped) = self.ops.remove(index) else { return };
        self.stats.dropped += 1;
        self.unreported_drops += 1;
        let Op::Progress {
            session_id,
            update: old,
            ..
        } = dropped.op
        else {
            return;
        };
        let next = self.ops.iter_mut().skip(index).find_map(|queued| match &mut queued.op {
            Op::Progress {
                session_id: next_id,
                update,
                ..
            } if *next_id == session_id => Some(update),
            _ => None,
        });
        if let Some(update) = next {
            // The newer update wins; what only the dropped one set is kept.
            update.description_l = update.description_l.take().or(old.description_l);
            update.description_r = update.description_r.take().or(old.description_r);
            update.offset_idx_l = update.offset_idx_l.or(old.offset_idx_l);
            update.offset_idx_r = update.offset_idx_r.or(old.offset_idx_r);
        }
    }

    /// Nothing waits to be sent.
    fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.snapshots.is_empty()
    }

    /// Takes up to `limit` ops and every waiting snapshot, and the sequence number that is
    /// fully done once they are.
    fn take_batch(&mut self, limit: usize) -> Option<(Vec<Queued>, u64)> {
        if self.ops.is_empty() && self.snapshots.is_empty() {
            return None;
        }
        let count = self.ops.len().min(limit);
        let mut batch: Vec<Queued> = self.snapshots.drain().map(|(_, queued)| queued).collect();
        batch.sort_by_key(|queued| queued.seq);
        batch.extend(self.ops.drain(..count));
        // Ops still queued have higher numbers than the ones taken, so everything below the
        // first of them is done once this batch is.
        let done_through = self.ops.front().map_or(self.next_seq, |queued| queued.seq - 1);
        Some((batch, done_through))
    }
}

/// Batches a writer has on its connection at once: the next is built and sent while Redis
/// runs the previous one.
const IN_FLIGHT: usize = 2;

/// What ended the writer's wait for answers.
enum Step {
    /// The next answer on the direct connection.
    Answer(redis::RedisResult<redis::Value>),
    /// A call queued something and there is room for another batch.
    Woken,
    /// The oldest batch was not answered within the response timeout.
    TimedOut,
    /// A Sentinel announced a new master while batches were in flight.
    Switched,
}

/// The error of batches in flight when a Sentinel announced a new master; like any failure of
/// a batch, it sends them again on a new connection.
fn switched() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "a sentinel announced a new master",
    ))
}

/// A batch sent and not answered yet.
struct InFlight {
    batch: Vec<Queued>,
    /// The sequence number that is fully done once this batch is.
    done_through: u64,
    /// The sessions its ops write to.
    sessions: HashSet<SessionId>,
    /// Every progress update and run-state change in it took the fast path's planning.
    all_fast: bool,
    /// Answers its pipeline gets: one per op.
    answers: usize,
    /// When it counts as unanswered.
    deadline: tokio::time::Instant,
    /// What the writer had sent before it: its ops above that go out for the first time.
    sent_before: SentThrough,
}

/// The highest sequence number a writer had sent on each of its revision keys (ops,
/// snapshots), before a batch or so far: no write of the writer can have recorded more, so a
/// script that skips an op above it as already applied, or answers that it recorded more,
/// found a number another client wrote into the revision key ([`Writer::broken_revisions`]).
#[derive(Debug, Clone, Copy, Default)]
struct SentThrough([u64; 2]);

impl SentThrough {
    /// Which revision key `op` is numbered on: 1 for snapshots, 0 for the others.
    fn kind(op: &Op) -> usize {
        usize::from(op.snapshot_key().is_some())
    }

    /// True when `queued` goes out for the first time.
    fn is_first(self, queued: &Queued) -> bool {
        queued.seq > self.0[SentThrough::kind(&queued.op)]
    }
}

/// The background task that sends queued ops.
struct Writer {
    manager: StateManager,
    shared: Arc<Shared>,
    /// Ticks when a Sentinel announces a new master: the connection in use (to the old one,
    /// which may still answer, having been frozen or cut off past the switch) is dropped.
    switches: watch::Receiver<u64>,
    /// `{node_id}.{random}`: tells this producer's revisions and counters apart.
    writer_id: String,
    /// `tatbot:rev:{writer}` and `tatbot:rev:{writer}.snapshots`, by [`SentThrough::kind`]: where
    /// the scripts record the last op applied, and the last snapshot.
    rev_keys: [String; 2],
    /// The server last written to: its address, `run_id` and replication id. Any change (a
    /// restart, a failover to another server, a promotion) may have lost acknowledged writes,
    /// so it triggers the replay.
    server: Option<ServerIdentity>,
    /// Acknowledged ops kept for replay, oldest first, with when they were acknowledged.
    recent: VecDeque<(Instant, Queued)>,
    /// The last snapshot sent per key, for replay.
    last_snapshots: HashMap<String, Queued>,
    /// The writer's own connection, `None` after any failure. It is a plain multiplexed
    /// connection, not the manager's auto-reconnecting one, on purpose: that one reconnects
    /// silently (even when another task saw the error), and a silent reconnect to a restarted
    /// server would skip the `run_id` check. Every connection here is prepared (scripts loaded,
    /// `run_id` checked, lost writes replayed) before the first batch goes out on it.
    connection: Option<MultiplexedConnection>,
    /// The connection the batches in flight go out on, opened just before `connection` to the
    /// same server (so a restart between the two kills it), and read by this task itself: no
    /// driver task between the writer and Redis ([`crate::direct`]). Used only while
    /// `connection` is `Some`; `None` when the address is not TCP (every batch then goes
    /// alone on `connection`).
    direct: Option<Direct>,
    /// When the counters were last stored in Redis.
    stats_published: Option<Instant>,
    /// The drop, refusal and restore counts last stored.
    failures_published: (u64, u64, u64),
    /// The progress documents this writer stored, for the update's fast path.
    docs: DocCache,
    /// This writer's copy of the sessions it wrote, to re-create one a restart lost.
    known: HashMap<SessionId, KnownSession>,
    /// When the last batch was acknowledged, while its writes may still be lost in a crash;
    /// the idle writer watches the connection until the durability horizon has passed.
    unsafe_since: Option<Instant>,
    /// The sequence number that is durable once the horizon has passed since `unsafe_since`.
    unsafe_through: u64,
    /// The highest number sent so far on each revision key.
    sent: SentThrough,
    /// Revision keys found holding a number above any this writer sent, with the number to set
    /// them back to on the next connection, before anything goes out on it.
    repairs: Vec<(String, u64)>,
}

/// A writer that ends, however (its loop stopped, or its task was dropped with the runtime),
/// says so: `close` waits for it.
impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.stopped.send_replace(true);
    }
}

/// Which Redis server a writer wrote to; see [`Writer::server`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerIdentity {
    /// `host:port` as located.
    address: String,
    /// `run_id`: new on every start of the process.
    run_id: Option<String>,
    /// `master_replid`: new when a replica is promoted (and on every start).
    replid: Option<String>,
}

/// A writer's copy of one session.
#[derive(Debug, Clone)]
struct KnownSession {
    /// The progress document as this writer's acknowledged writes left it.
    doc: StrokeProgress,
    /// When the session started (the session index's score).
    start_ms: i64,
    /// When this writer last wrote to it; `None` for a session only its manager started.
    touched: Option<Instant>,
    /// Some of this writer's writes to it left the replay window: a replay no longer
    /// rebuilds its whole history.
    pruned: bool,
}

impl Writer {
    fn new(manager: StateManager, shared: Arc<Shared>, writer_id: &str) -> Writer {
        Writer {
            switches: manager.switches(),
            manager,
            shared,
            writer_id: writer_id.to_owned(),
            rev_keys: [
                keys::writer_rev(writer_id),
                keys::writer_rev(&format!("{writer_id}.snapshots")),
            ],
            server: None,
            recent: VecDeque::new(),
            last_snapshots: HashMap::new(),
            connection: None,
            direct: None,
            stats_published: None,
            failures_published: (0, 0, 0),
            docs: DocCache::default(),
            known: HashMap::new(),
            unsafe_since: None,
            unsafe_through: 0,
            sent: SentThrough::default(),
            repairs: Vec::new(),
        }
    }

    #[tracing::instrument(name = "producer", skip_all, fields(writer = %self.rev_keys[0]))]
    async fn run(mut self, shutdown: CancellationToken) {
        // The batches in flight, oldest first, and the answers the oldest got so far.
        let mut sent: VecDeque<InFlight> = VecDeque::new();
        let mut answers: Vec<redis::RedisResult<redis::Value>> = Vec::new();
        // Only Sentinel announces switches: without it the branch costs nothing.
        let sentinel = self.manager.locator().sentinel().is_some();
        loop {
            let filled = self.fill(&mut sent).await;
            if sent.is_empty() {
                let taken = self.shared.lock().take_batch(self.shared.config.batch_size);
                let Some((batch, done_through)) = taken else {
                    if !self.idle(&shutdown).await {
                        break;
                    }
                    continue;
                };
                // No connection: this batch goes alone, on a new one, after the replay.
                if !self.send_until_done(&batch, &shutdown).await {
                    break;
                }
                self.finish(batch, done_through).await;
                continue;
            }
            // What is queued while the answers are awaited goes out with the next answer, or at
            // once when the polling thread of `Wake::Poll` says so; calls themselves only wake a
            // parked writer, so they make no system call here.
            let room = sent.len() < IN_FLIGHT && sent.iter().all(|in_flight| in_flight.all_fast);
            let deadline = sent
                .front()
                .map_or_else(tokio::time::Instant::now, |oldest| oldest.deadline);
            let step = match (filled, self.direct.as_mut()) {
                (Err(err), _) => Step::Answer(Err(err)),
                (Ok(()), None) => Step::Answer(Err(direct::timed_out("batch (no connection)"))),
                (Ok(()), Some(live)) => tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    answer = live.next_answer() => Step::Answer(answer),
                    () = self.shared.wake.notified(), if room => Step::Woken,
                    () = tokio::time::sleep_until(deadline) => Step::TimedOut,
                    Ok(()) = self.switches.changed(), if sentinel => Step::Switched,
                },
            };
            let failure = match step {
                Step::Woken => continue,
                Step::TimedOut => Err(direct::timed_out("producer batch")),
                // The batches in flight go again on a new connection to the master the
                // Sentinels name now; what the old one did with them is lost with it anyway.
                Step::Switched => Err(switched()),
                Step::Answer(Ok(value)) => {
                    answers.push(value.extract_error());
                    if sent.front().is_some_and(|oldest| answers.len() < oldest.answers) {
                        continue;
                    }
                    Ok(())
                }
                Step::Answer(Err(err)) => Err(err),
            };
            let Some(oldest) = sent.pop_front() else {
                continue;
            };
            let later: HashSet<SessionId> = sent.iter().flat_map(|later| later.sessions.iter().cloned()).collect();
            let results = std::mem::take(&mut answers);
            let settled = failure
                .map_err(|err| Error::from_redis("producer batch", err))
                .and_then(|()| self.settle(&oldest.batch, results, &later, oldest.sent_before));
            if let Err(err) = settled {
                // This batch and every one sent after it go again, in order, on a new connection
                // (which replays first when Redis restarted); ops already applied are skipped by
                // their number. Nothing newer goes out before them.
                tracing::debug!(error = %err, "batch failed; resending");
                self.disconnect();
                self.docs.clear();
                self.shared.lock().stats.retries += 1;
                let mut stopped = false;
                for again in std::iter::once(oldest).chain(sent.drain(..)) {
                    if !self.send_until_done(&again.batch, &shutdown).await {
                        stopped = true;
                        break;
                    }
                    self.finish(again.batch, again.done_through).await;
                }
                if stopped {
                    break;
                }
                continue;
            }
            self.finish(oldest.batch, oldest.done_through).await;
        }
        if let Some(poller) = &self.shared.poller {
            poller.stop();
        }
        if let Some(pacer) = &self.shared.pacer {
            pacer.stop();
        }
        self.retire().await;
        tracing::debug!("producer writer stopped");
    }

    /// A writer that stops with every op acknowledged and nothing to report takes its record
    /// out of `tatbot:producers`: each producer adds a field of its own (its writer id is new
    /// every time), and the hash, which expires only a week after the last write to it, would
    /// otherwise keep one for every producer an active fleet ever started, all read by every
    /// `status`. A producer that dropped, refused or restored writes, or stops with ops not
    /// acknowledged (queued, or in flight), stores its counters once more and keeps its record,
    /// which `status` sums. Best effort, within [`RETIRE_TIMEOUT`]: a writer that cannot reach
    /// Redis now, or a process that is killed, leaves the record as it was.
    async fn retire(&mut self) {
        let clean = {
            let queue = self.shared.lock();
            let stats = &queue.stats;
            *self.shared.acknowledged.borrow() >= queue.next_seq
                && (stats.dropped, stats.rejected, stats.restored) == (0, 0, 0)
        };
        if !clean {
            let _ = tokio::time::timeout(RETIRE_TIMEOUT, self.publish_stats()).await;
            return;
        }
        let Some(mut connection) = self.connection.clone() else {
            return;
        };
        if self.stats_published.is_none() {
            return;
        }
        let mut removal = redis::cmd("HDEL");
        removal.arg(keys::PRODUCERS).arg(&self.writer_id);
        let removed = tokio::time::timeout(RETIRE_TIMEOUT, removal.query_async::<i64>(&mut connection)).await;
        if let Ok(Err(err)) = removed {
            tracing::debug!(error = %err, "cannot remove the producer's record");
        }
    }

    /// Sends queued batches on the current connection until [`IN_FLIGHT`] are on it.
    ///
    /// The invariant that keeps a replay from losing a write: every op below the first one
    /// unanswered is acknowledged by the server the connection talks to (or replayed to it),
    /// and every op from it on goes out on that one connection, in order. So no batch is sent
    /// while there is no connection and others are in flight (after a failure they are resent
    /// first, on the new one), and a batch planned without the fast path waits for its answers,
    /// which say what the documents are, before the next one is planned.
    ///
    /// The batches go out on the direct connection in sequence order; a failed write is an
    /// error, and the batch is already in `sent`, so it goes again with the others.
    async fn fill(&mut self, sent: &mut VecDeque<InFlight>) -> redis::RedisResult<()> {
        // A new master was announced: nothing more goes out on this connection. The batches in
        // flight go again (a failure); with none, the next batch goes after a lookup.
        if self.switches.has_changed().unwrap_or(false) {
            self.switches.borrow_and_update();
            self.disconnect();
            if !sent.is_empty() {
                return Err(switched());
            }
        }
        while sent.len() < IN_FLIGHT && sent.iter().all(|in_flight| in_flight.all_fast) {
            if self.connection.is_none() || self.direct.is_none() {
                return Ok(());
            }
            let taken = self.shared.lock().take_batch(self.shared.config.batch_size);
            let Some((batch, done_through)) = taken else {
                return Ok(());
            };
            let (pipe, all_fast, sent_before) = self.pipeline(&batch);
            let sessions = batch.iter().filter_map(|queued| queued.op.session().cloned()).collect();
            sent.push_back(InFlight {
                batch,
                done_through,
                sessions,
                all_fast,
                answers: pipe.len(),
                deadline: tokio::time::Instant::now() + self.manager.config().response_timeout,
                sent_before,
            });
            if let Some(live) = self.direct.as_mut() {
                live.send(&pipe.get_packed_pipeline(), pipe.len()).await?;
            }
        }
        Ok(())
    }

    /// Nothing queued, nothing in flight: waits for a call, watching the connection while
    /// recent writes may still be lost. False when shut down.
    ///
    /// It first spins for [`SPIN_BEFORE_PARK`], or until the end of the window of a burst the
    /// pacer ([`Wake::Anticipate`]) expects, yielding to other tasks, so that calls coming then
    /// find it awake and make no system call; then it parks and says so in `parked`, and the
    /// next call (or the pacer, before the next burst is due) wakes it.
    async fn idle(&mut self, shutdown: &CancellationToken) -> bool {
        let mut awake_until = Instant::now() + SPIN_BEFORE_PARK;
        // The push count at the last look at the queue; none yet, so the first look is made.
        let mut looked_at = None;
        loop {
            let spinning_since = Instant::now();
            let expected = self.shared.pacer.as_ref().and_then(|pacer| pacer.awake_until());
            if let Some(until) = expected {
                awake_until = awake_until.max(until.min(spinning_since + MAX_AWAKE));
            }
            while Instant::now() < awake_until && !shutdown.is_cancelled() {
                // Read before the look: a push after it changes the count, so the next round
                // looks again.
                let pushes = self.shared.pushes.load(Ordering::SeqCst);
                if looked_at != Some(pushes) {
                    looked_at = Some(pushes);
                    if !self.shared.lock().is_empty() {
                        self.arrived(true, spinning_since);
                        return true;
                    }
                }
                // Other tasks first, then other threads: on a machine with few cores the call's
                // own thread may be waiting for this one's core.
                tokio::task::yield_now().await;
                std::thread::yield_now();
            }
            if let (Some(pacer), Some(_)) = (&self.shared.pacer, expected) {
                pacer.gave_up();
            }
            let call_wakes = self.call_wakes();
            self.shared.parked.store(true, Ordering::SeqCst);
            // The last look, after announcing the park: a call that did not see `parked`
            // queued before it and is found here.
            if !self.shared.lock().is_empty() {
                self.shared.parked.store(false, Ordering::SeqCst);
                self.arrived(true, spinning_since);
                return true;
            }
            let watching = self.unsafe_since.is_some();
            let sentinel = self.manager.locator().sentinel().is_some();
            let woken = tokio::select! {
                () = shutdown.cancelled() => false,
                () = self.shared.wake.notified() => true,
                () = tokio::time::sleep(WATCH_INTERVAL), if watching => {
                    self.shared.parked.store(false, Ordering::SeqCst);
                    return self.watch(shutdown).await;
                }
                // A new master: move to it now, so that recent writes it lacks are replayed
                // there at once (not with the next call), and the watch does not take the old
                // master's answers for durability.
                Ok(()) = self.switches.changed(), if sentinel => {
                    self.shared.parked.store(false, Ordering::SeqCst);
                    self.disconnect();
                    return self.send_until_done(&[], shutdown).await;
                }
            };
            self.shared.parked.store(false, Ordering::SeqCst);
            if !woken {
                return false;
            }
            if self.shared.lock().is_empty() {
                // The pacer's wake before a burst: stay awake for its window.
                awake_until = Instant::now();
                continue;
            }
            // Caught unless a call had to wake the parked writer.
            let caught = self.call_wakes() == call_wakes;
            self.arrived(caught, Instant::now());
            return true;
        }
    }

    /// Calls that found the writer parked and woke it, when a pacer counts them.
    fn call_wakes(&self) -> u64 {
        self.shared
            .pacer
            .as_ref()
            .map_or(0, |pacer| pacer.call_wakes.load(Ordering::SeqCst))
    }

    /// Tells the pacer a burst reached the idle writer: now, or when the call that woke it was
    /// made.
    fn arrived(&self, caught: bool, awake_since: Instant) {
        if let Some(pacer) = &self.shared.pacer {
            let at = if caught { Instant::now() } else { pacer.last_call_wake() };
            pacer.arrived(at, caught, awake_since);
        }
    }

    /// Records a batch Redis answered: kept for replay, failures reported, acknowledged.
    async fn finish(&mut self, batch: Vec<Queued>, done_through: u64) {
        self.remember(batch);
        // Queued before the acknowledgement, so a flush that returns after it has the report
        // in its range.
        self.report_failures();
        self.shared.acknowledged.send_replace(done_through);
        self.mark_unsafe(done_through);
        if self.stats_published.is_none()
            && let Some(connection) = self.connection.clone()
        {
            // With the first stats store, off the writer's path: the batches do not wait for it.
            let own = self.writer_id.clone();
            tokio::spawn(async move {
                if tokio::time::timeout(PRUNE_TIMEOUT, prune_records(connection, &own))
                    .await
                    .is_err()
                {
                    tracing::debug!("pruning stale producer records took too long; stopped");
                }
            });
        }
        self.publish_stats().await;
    }

    /// Writes up to `through` were just acknowledged: they are durable once the horizon has
    /// passed with the server still up.
    fn mark_unsafe(&mut self, through: u64) {
        if self.shared.config.durability_horizon.is_zero() {
            self.shared.durable.send_replace(through);
        } else {
            self.unsafe_since = Some(Instant::now());
            self.unsafe_through = through;
        }
    }

    /// One look at the connection while recent writes may still be lost: a server that died
    /// is reconnected to (which replays what a restart lost); one that stayed up past the
    /// horizon makes the writes durable. False when shut down first.
    async fn watch(&mut self, shutdown: &CancellationToken) -> bool {
        let alive = match self.connection.clone() {
            Some(mut connection) => redis::cmd("PING").query_async::<String>(&mut connection).await.is_ok(),
            None => false,
        };
        if !alive {
            self.connection = None;
            tracing::debug!("redis went away while recent writes may not be on disk; reconnecting");
            // Reconnecting prepares the connection, which replays when the server restarted.
            return self.send_until_done(&[], shutdown).await;
        }
        if self
            .unsafe_since
            .is_some_and(|since| since.elapsed() >= self.shared.config.durability_horizon)
        {
            self.unsafe_since = None;
            self.shared.durable.send_replace(self.unsafe_through);
        }
        true
    }

    /// Sends `batch` until Redis has answered every op; false when shut down first.
    async fn send_until_done(&mut self, batch: &[Queued], shutdown: &CancellationToken) -> bool {
        let mut backoff = Backoff::new(MIN_BACKOFF, self.shared.config.max_backoff);
        // A Sentinel's `+switch-master` ends an attempt stuck on the old master (paused, or cut
        // off) at once instead of after the response timeout, and cuts a backoff short.
        let mut switches = self.manager.switches();
        loop {
            let attempt = async {
                let mut connection = self.connected().await?;
                self.send(&mut connection, batch).await
            };
            let outcome = tokio::select! {
                outcome = attempt => outcome,
                Ok(()) = switches.changed() => Err(Error::NoMaster {
                    master_name: self.manager.locator().describe(),
                    tried: "a sentinel announced a new master".to_owned(),
                }),
            };
            match outcome {
                Ok(()) => return true,
                Err(err) => {
                    self.connection = None;
                    // What the failed batch stored is unknown; its resend merges in the script.
                    self.docs.clear();
                    self.shared.lock().stats.retries += 1;
                    tracing::debug!(error = %err, "send failed; retrying");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(backoff.next_delay()) => {}
                Ok(()) = switches.changed() => {}
            }
        }
    }

    /// Drops both connections: the next batch goes after a lookup, on new ones.
    fn disconnect(&mut self) {
        self.connection = None;
        self.direct = None;
    }

    /// The writer's connection, opened and prepared if needed.
    async fn connected(&mut self) -> Result<MultiplexedConnection> {
        // A switch announced since the connection was made: it may lead to the old master.
        if self.switches.has_changed().unwrap_or(false) {
            self.disconnect();
        }
        if let Some(connection) = &self.connection {
            return Ok(connection.clone());
        }
        let config = self.manager.config();
        let settings = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout));
        // Looked up on every connect: with Sentinel this is the master the Sentinels name now,
        // so the switches announced so far are taken into account.
        self.switches.borrow_and_update();
        let client = self.manager.locator().client().await?;
        // Opened before the prepared connection: a restart between the two closes this one, so
        // a batch never reaches a server whose identity was not checked.
        self.direct = Direct::connect(&client, config.connect_timeout)
            .await
            .map_err(|err| Error::from_connect(&self.manager.locator().current().to_string(), err))?;
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&settings)
            .await
            .map_err(|err| Error::from_connect(&self.manager.locator().current().to_string(), err))?;
        self.prepare(&mut connection, &client).await?;
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    /// Loads the scripts and checks the server's identity (`client`'s, with Sentinel still the
    /// one the Sentinels name); after a restart or a failover, replays recent ops.
    async fn prepare(&mut self, connection: &mut MultiplexedConnection, client: &redis::Client) -> Result<()> {
        for script in scripts::pipelined() {
            script
                .load_async(connection)
                .await
                .map_err(|err| Error::from_redis("load scripts", err))?;
        }
        let info: String = redis::cmd("INFO")
            .arg("server")
            .arg("replication")
            .query_async(connection)
            .await
            .map_err(|err| Error::from_redis("INFO server", err))?;
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(|value| value.trim().to_owned())
        };
        if field("role").is_some_and(|role| role != "master") {
            // Sentinel named it a moment ago, but it was demoted since: look again.
            return Err(Error::NoMaster {
                master_name: self.manager.locator().describe(),
                tried: "the server named is no longer the master".to_owned(),
            });
        }
        // An old master that was frozen while this connection was opened says "master" until
        // the Sentinels demote it; the Sentinels must still name the server connected to.
        if let redis::ConnectionAddr::Tcp(host, port) = client.get_connection_info().addr() {
            self.manager.locator().confirm(host, *port).await?;
        }
        // Revision keys another client broke are set back before anything goes out again.
        while let Some((key, seq)) = self.repairs.first() {
            scripts::LOWER
                .key(key)
                .arg(*seq)
                .invoke_async::<i64>(connection)
                .await
                .map_err(|err| Error::from_redis("set back a revision key", err))?;
            self.repairs.remove(0);
        }
        let server = ServerIdentity {
            address: self.manager.locator().current().to_string(),
            run_id: field("run_id"),
            replid: field("master_replid"),
        };
        let changed = self.server.as_ref().filter(|last| **last != server);
        if let Some(last) = changed {
            let replay: Vec<Queued> = self.recent_ops();
            let why = if last.address != server.address || last.run_id != server.run_id {
                "redis restarted or failed over"
            } else {
                "redis was promoted or resynced"
            };
            tracing::warn!(ops = replay.len(), from = %last.address, to = %server.address, "{why}; replaying recent writes");
            self.docs.clear();
            self.restore_sessions(connection).await?;
            self.send(connection, &replay).await?;
            // The replayed writes are as recent on this server as writes acknowledged now: a
            // second crash before its next fsync can lose them again, so their replay window
            // starts again. Counted from their first acknowledgement, the next batch after it
            // would forget them while this server may not have them on disk yet.
            let now = Instant::now();
            for (at, _) in &mut self.recent {
                *at = now;
            }
            {
                let mut queue = self.shared.lock();
                queue.stats.restarts += 1;
                queue.stats.replayed += replay.len() as u64;
            }
            // The replayed writes are as fresh as any: watch them past the horizon again.
            let watched = !self.shared.config.durability_horizon.is_zero();
            if watched && (self.unsafe_since.is_some() || !replay.is_empty()) {
                self.unsafe_since = Some(Instant::now());
            }
        }
        self.server = Some(server);
        Ok(())
    }

    /// After a restart, re-creates each session this writer (or its manager) knows that is
    /// executing or was written within the replay window and that the server no longer has.
    async fn restore_sessions(&mut self, connection: &mut MultiplexedConnection) -> Result<()> {
        for started in self.manager.started_sessions() {
            self.known.entry(started.session_id).or_insert(KnownSession {
                doc: started.progress,
                start_ms: started.start_ms,
                touched: None,
                pruned: false,
            });
        }
        let window = self.shared.config.replay_window;
        let candidates: Vec<(SessionId, KnownSession)> = self
            .known
            .iter()
            .filter(|(_, known)| known.doc.is_executing || known.touched.is_some_and(|at| at.elapsed() <= window))
            .map(|(id, known)| (id.clone(), known.clone()))
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        // A refusal (a key of the wrong type, a permission) is that session's, not the pipeline's.
        pipe.ignore_errors();
        for (session_id, known) in &candidates {
            let op = self.manager.ensure_op(session_id, &known.doc, known.start_ms)?;
            pipe.invoke_script(&op.invocation(self.manager.config(), "", 0, None));
        }
        let results: Vec<redis::RedisResult<i64>> = pipe
            .query_async(connection)
            .await
            .map_err(|err| Error::from_redis("restore sessions", err))?;
        let mut created = Vec::with_capacity(results.len());
        for ((session_id, _), result) in candidates.iter().zip(results) {
            match result {
                Ok(count) => created.push(count),
                Err(err) if err.is_io_error() || err.is_connection_dropped() || err.code() == Some("NOSCRIPT") => {
                    return Err(Error::from_redis("restore sessions", err));
                }
                Err(err) => {
                    tracing::error!(session = %session_id, error = %Error::from_redis("restore session", err), "cannot re-create a session redis lost");
                    created.push(0);
                }
            }
        }
        for ((session_id, known), created) in candidates.iter().zip(created) {
            if created != 1 {
                continue;
            }
            self.shared.lock().stats.restored += 1;
            if !known.pruned {
                // Every write this producer made to it is still in the replay window.
                tracing::warn!(session = %session_id, "redis lost a recent session; re-created it and replaying its writes");
                continue;
            }
            let message = format!(
                "Redis lost session {session_id} (restarted without its data); re-created it from this producer's copy: \
                 progress is current, history older than the last {:?} is gone",
                window
            );
            tracing::error!(session = %session_id, "{message}");
            let details = serde_json::json!({"session_id": session_id.as_str(), "at": Timestamp::now()});
            self.queue_report(&message, details);
        }
        Ok(())
    }

    /// Recent ops and the last snapshots, in sequence order.
    fn recent_ops(&self) -> Vec<Queued> {
        let mut ops: Vec<Queued> = self.recent.iter().map(|(_, queued)| queued.clone()).collect();
        ops.extend(self.last_snapshots.values().cloned());
        ops.sort_by_key(|queued| queued.seq);
        ops.dedup_by_key(|queued| queued.seq);
        ops
    }

    /// One pipeline, awaited; per-op refusals are logged and counted, a connection failure is
    /// an error.
    async fn send(&mut self, connection: &mut MultiplexedConnection, batch: &[Queued]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let (pipe, _, sent_before) = self.pipeline(batch);
        let results: Vec<redis::RedisResult<redis::Value>> = pipe
            .query_async(connection)
            .await
            .map_err(|err| Error::from_redis("producer batch", err))?;
        self.settle(batch, results, &HashSet::new(), sent_before)
    }

    /// The pipeline of `batch`, whether every progress update and run-state change in it took
    /// the fast path's planning, and what was sent before it ([`SentThrough`]).
    ///
    /// Progress updates take the fast path when the writer knows the session's document: each
    /// is planned on the document the previous one will store, so a whole batch chains, and so
    /// does the next batch while this one is in flight.
    fn pipeline(&mut self, batch: &[Queued]) -> (redis::Pipeline, bool, SentThrough) {
        let sent_before = self.sent;
        for queued in batch {
            let kind = SentThrough::kind(&queued.op);
            self.sent.0[kind] = self.sent.0[kind].max(queued.seq);
        }
        let config = self.manager.config();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut all_fast = true;
        for queued in batch {
            // Snapshots are coalesced and so sent out of order with the other ops; each kind has
            // its own revision, and within a kind sequence numbers only ever increase.
            let rev_key = &self.rev_keys[SentThrough::kind(&queued.op)];
            let fast = queued.op.plan(&mut self.docs, &config.node_id);
            all_fast &= fast.is_some() || !matches!(queued.op, Op::Progress { .. } | Op::RunState { .. });
            pipe.invoke_script(&queued.op.invocation(config, rev_key, queued.seq, fast.as_ref()));
        }
        (pipe, all_fast, sent_before)
    }

    /// Reads the answers to `batch`: per-op refusals are logged and counted, a connection
    /// failure is an error, and so is a broken revision key ([`Writer::broken_revisions`]).
    /// `later` holds the sessions that batches sent after this one write to: a document this
    /// batch's answer reports for them is already out of date.
    fn settle(
        &mut self,
        batch: &[Queued],
        results: Vec<redis::RedisResult<redis::Value>>,
        later: &HashSet<SessionId>,
        sent_before: SentThrough,
    ) -> Result<()> {
        self.broken_revisions(batch, &results, sent_before)?;
        let mut results = results;
        if let Some(index) = results.iter().position(|result| {
            result
                .as_ref()
                .is_err_and(|err| err.code() == Some("NOSCRIPT") || sentinel::is_failover_signal(err))
        }) && let Err(err) = results.swap_remove(index)
        {
            // The batch is resent whole; ops already applied are skipped by their number. A
            // server that is no longer a writable master (`READONLY`: demoted after a failover;
            // `NOREPLICAS`: cut off from its replicas) applied nothing, and the reconnect looks
            // the master up again.
            return Err(Error::from_redis("producer batch", err));
        }
        for (queued, result) in batch.iter().zip(&results) {
            if let Ok(reply) = result {
                self.learn(&queued.op, reply);
            }
        }
        let mut rejected = 0;
        // The last op on each session says what it holds now; earlier ones were planned over.
        let mut settled = HashSet::new();
        for (queued, result) in batch.iter().zip(results).rev() {
            let session = queued.op.session().filter(|session| settled.insert(*session));
            match result {
                Ok(reply) => {
                    if let (Some(session), Op::Progress { .. }) = (session, &queued.op) {
                        if later.contains(session) && matches!(reply, redis::Value::Array(_)) {
                            // A later batch was planned on a document this one did not store:
                            // its own answer will say what is stored.
                            self.docs.forget(session);
                        } else {
                            self.docs.observe(session, reply);
                        }
                    }
                }
                Err(err) => {
                    if let Some(session) = queued.op.session() {
                        self.docs.forget(session);
                    }
                    rejected += 1;
                    let err = Error::from_redis("producer write", err);
                    tracing::debug!(seq = queued.seq, error = %err, "redis refused a queued write");
                    if !matches!(queued.op, Op::Error { .. }) {
                        // Refused error reports are counted, not reported again.
                        let mut queue = self.shared.lock();
                        queue.unreported_rejections += 1;
                        queue.rejection_reason.get_or_insert_with(|| err.report().to_string());
                    }
                }
            }
        }
        self.shared.lock().stats.rejected += rejected;
        Ok(())
    }

    /// Fails when a revision key holds a number another client wrote, above any this writer
    /// sent: an op of `batch` skipped as already applied (a negative answer, -1 minus the
    /// number recorded) that went out for the first time, or whose key recorded more than this
    /// writer ever sent. Every write on that key would be skipped, silently lost, from then on.
    ///
    /// The failure sends this batch and the ones in flight after it again on a new connection,
    /// and before anything goes out there both revision keys are set back (only ever lowered):
    /// the broken one to just below the first op skipped, the other to the last op of its kind
    /// this batch or an earlier one applied (the batches after this one are not read, and their
    /// ops may have been skipped on it too). The broken key is reported. A write that the other
    /// client's number let through, or that a batch in flight applied, may then be applied
    /// twice; none is lost.
    fn broken_revisions(
        &mut self,
        batch: &[Queued],
        results: &[redis::RedisResult<redis::Value>],
        sent_before: SentThrough,
    ) -> Result<()> {
        let mut first_skipped: [Option<u64>; 2] = [None, None];
        let mut applied = sent_before.0;
        for (queued, result) in batch.iter().zip(results) {
            let kind = SentThrough::kind(&queued.op);
            match result {
                Ok(redis::Value::Int(skipped @ ..0))
                    if sent_before.is_first(queued) || skipped.unsigned_abs() - 1 > self.sent.0[kind] =>
                {
                    first_skipped[kind].get_or_insert(queued.seq);
                }
                Ok(_) if first_skipped[kind].is_none() => applied[kind] = applied[kind].max(queued.seq),
                _ => {}
            }
        }
        if first_skipped == [None, None] {
            return Ok(());
        }
        let mut broken = None;
        for (kind, skipped) in first_skipped.into_iter().enumerate() {
            let key = self.rev_keys[kind].clone();
            let Some(seq) = skipped else {
                self.repairs.push((key, applied[kind]));
                continue;
            };
            let message = format!(
                "{key} held a number above any write of this producer (another client wrote it), so Redis \
                 skipped its writes from #{seq} on as already applied; the key is set back and they go again"
            );
            tracing::error!("{message}");
            self.queue_report(
                &message,
                serde_json::json!({"key": key, "seq": seq, "at": Timestamp::now()}),
            );
            self.repairs.push((key.clone(), seq - 1));
            broken = Some(Error::Corrupt {
                key,
                detail: format!("a revision above this writer's #{seq}"),
            });
        }
        broken.map_or(Ok(()), Err)
    }

    /// Updates this writer's copy of a session from an op Redis applied and its reply.
    fn learn(&mut self, op: &Op, reply: &redis::Value) {
        let Some(session_id) = op.session() else { return };
        if let Op::Ensure { document, start_ms, .. } = op
            && !self.known.contains_key(session_id)
            && let Ok(doc) = serde_json::from_str::<StrokeProgress>(document)
        {
            self.remember_session(session_id, doc, *start_ms);
        }
        // A merge inside the script answers with the document it stored, other writers'
        // fields included: the best copy there is.
        if let (Op::Progress { .. }, redis::Value::Array(parts)) = (op, reply)
            && let Some(redis::Value::BulkString(stored)) = parts.get(1)
            && let Ok(doc) = serde_json::from_slice::<StrokeProgress>(stored)
        {
            let start_ms = self
                .known
                .get(session_id)
                .map_or_else(|| start_ms_of(session_id, &doc), |known| known.start_ms);
            self.remember_session(session_id, doc, start_ms);
            return;
        }
        let node_id = self.manager.node_id().clone();
        let Some(known) = self.known.get_mut(session_id) else {
            return;
        };
        known.touched = Some(Instant::now());
        match op {
            Op::Progress { update, at, .. } => update.apply_to(&mut known.doc, *at, &node_id),
            Op::RunState { patch, kind, .. } => {
                if let Some(at) = patch
                    .get("timestamp")
                    .and_then(Value::as_str)
                    .and_then(|text| Timestamp::parse(text).ok())
                {
                    known.doc.timestamp = at;
                }
                known.doc.node_id = node_id.to_string();
                match kind {
                    RunState::Pause => known.doc.is_paused = true,
                    RunState::Resume => known.doc.is_paused = false,
                    RunState::End | RunState::Abort => (known.doc.is_executing, known.doc.is_paused) = (false, false),
                }
            }
            _ => {}
        }
    }

    /// Keeps `doc` as this writer's copy of `session_id`, making room if needed.
    fn remember_session(&mut self, session_id: &SessionId, doc: StrokeProgress, start_ms: i64) {
        if self.known.len() >= MAX_KNOWN_SESSIONS && !self.known.contains_key(session_id) {
            let oldest = self
                .known
                .iter()
                .min_by_key(|(_, known)| (known.doc.is_executing, known.touched))
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                self.known.remove(&oldest);
            }
        }
        let pruned = self.known.get(session_id).is_some_and(|known| known.pruned);
        self.known.insert(
            session_id.clone(),
            KnownSession {
                doc,
                start_ms,
                touched: Some(Instant::now()),
                pruned,
            },
        );
    }

    /// Keeps acknowledged ops for replay and forgets those past the window.
    fn remember(&mut self, batch: Vec<Queued>) {
        let now = Instant::now();
        for queued in batch {
            match queued.op.snapshot_key() {
                Some(key) => {
                    self.last_snapshots.insert(key.to_owned(), queued);
                }
                None => self.recent.push_back((now, queued)),
            }
        }
        let window = self.shared.config.replay_window;
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > window || self.recent.len() > MAX_REPLAY_OPS)
        {
            // That session can no longer be rebuilt whole by a replay.
            if let Some((_, pruned)) = self.recent.pop_front()
                && let Some(session_id) = pruned.op.session()
                && let Some(known) = self.known.get_mut(session_id)
            {
                known.pruned = true;
            }
        }
    }

    /// Stores this producer's counters in `tatbot:producers` (at most once per
    /// [`STATS_INTERVAL`]) so `status` on any node can show drops and replays.
    async fn publish_stats(&mut self) {
        let stats = {
            let queue = self.shared.lock();
            let mut stats = queue.stats;
            stats.queued = queue.ops.len() + queue.snapshots.len();
            stats.acknowledged = *self.shared.acknowledged.borrow();
            stats
        };
        // A new failure is published at once, so `status` shows it while it matters.
        let failures = (stats.dropped, stats.rejected, stats.restored);
        let new_failure = failures != self.failures_published;
        if !new_failure && self.stats_published.is_some_and(|at| at.elapsed() < STATS_INTERVAL) {
            return;
        }
        self.stats_published = Some(Instant::now());
        self.failures_published = failures;
        let record = serde_json::json!({"stats": stats, "updated": Timestamp::now()});
        let Some(mut connection) = self.connection.clone() else {
            return;
        };
        let result: redis::RedisResult<()> = redis::pipe()
            .hset(keys::PRODUCERS, &self.writer_id, record.to_string())
            .ignore()
            .expire(keys::PRODUCERS, PRODUCERS_TTL_SECS)
            .ignore()
            .query_async(&mut connection)
            .await;
        if let Err(err) = result {
            if err.is_io_error() || err.is_connection_dropped() || err.is_timeout() {
                // The next batch reconnects and prepares.
                self.connection = None;
            }
            // Otherwise the key is not a hash (anyone on the LAN may write it): the connection
            // is fine, and dropping it would reconnect after every batch.
            tracing::debug!(error = %err, "cannot store producer stats");
        }
    }

    /// Queues an error event about dropped and refused ops, once the writer is getting through
    /// again.
    fn report_failures(&self) {
        let (dropped, rejected, reason) = {
            let mut queue = self.shared.lock();
            (
                std::mem::take(&mut queue.unreported_drops),
                std::mem::take(&mut queue.unreported_rejections),
                queue.rejection_reason.take(),
            )
        };
        if dropped > 0 {
            let message = format!("dropped {dropped} queued updates while Redis was unreachable (queue bound reached)");
            tracing::error!("{message}");
            self.queue_report(
                &message,
                serde_json::json!({"dropped": dropped, "at": Timestamp::now()}),
            );
        }
        if rejected > 0 {
            let reason = reason.unwrap_or_default();
            let message = format!("Redis refused {rejected} queued writes; the first: {reason}");
            tracing::error!("{message}");
            self.queue_report(
                &message,
                serde_json::json!({"rejected": rejected, "reason": reason, "at": Timestamp::now()}),
            );
        }
    }

    /// Queues an error event (category `state_server`) about this producer's own failures.
    fn queue_report(&self, message: &str, details: Value) {
        let category = Category::new("state_server").expect("a valid literal category");
        match self.manager.error_op(&category, message, details) {
            Ok(op) => {
                let mut queue = self.shared.lock();
                queue.next_seq += 1;
                let seq = queue.next_seq;
                queue.ops.push_back(Queued { seq, op });
            }
            Err(err) => tracing::warn!(error = %err, "cannot report the producer's failures"),
        }
    }
}

/// Takes the stale records out of `tatbot:producers`: those with nothing to report (no drop,
/// refusal or restore) not updated for [`PRUNE_AFTER`] by the server's clock, which killed
/// producers leave (one that stops cleanly takes its own out), so that a fleet whose processes
/// are killed, or restarted in a loop, does not grow the hash until `status` refuses to read it
/// (more than 20,000 records). Records with something to report stay (`status` sums them) until
/// the hash expires, and so do records that do not decode (`status` reports them) and those
/// written again since they were read ([`scripts::PRUNE`] takes out only what still holds the
/// value read). One producer of the fleet does it at a time, once a minute at most
/// ([`keys::PRODUCERS_PRUNING`]), reading at most [`PRUNE_MAX_BYTES`] in `HSCAN` pages; the
/// next pass goes on. Best effort: errors end it quietly.
async fn prune_records(mut connection: MultiplexedConnection, own: &str) {
    let started: redis::RedisResult<(Option<String>, (u64, u64))> = redis::pipe()
        .cmd("SET")
        .arg(keys::PRODUCERS_PRUNING)
        .arg(own)
        .arg("NX")
        .arg("EX")
        .arg(PRUNE_EVERY_SECS)
        .cmd("TIME")
        .query_async(&mut connection)
        .await;
    let now_ms = match started {
        Ok((Some(_), (secs, micros))) => (secs * 1000 + micros / 1000) as i64,
        // Another producer pruned within the minute.
        Ok((None, _)) => return,
        Err(err) => {
            tracing::debug!(error = %err, "cannot start pruning the producer records");
            return;
        }
    };
    let horizon = now_ms - PRUNE_AFTER.as_millis() as i64;
    let (mut cursor, mut read, mut pruned) = (0u64, 0u64, 0usize);
    loop {
        let page: redis::RedisResult<(u64, Vec<Record>)> = redis::cmd("HSCAN")
            .arg(keys::PRODUCERS)
            .arg(cursor)
            .arg("COUNT")
            .arg(500)
            .query_async(&mut connection)
            .await;
        let (next, records) = match page {
            Ok(page) => page,
            Err(err) => {
                tracing::debug!(error = %err, "cannot read the producer records; pruning stopped");
                return;
            }
        };
        // Counted as `follow::io::reply_bytes` counts a reply: each value with its framing.
        read += records
            .iter()
            .map(|(writer, record)| (writer.len() + record.len() + 2 * VALUE_OVERHEAD) as u64)
            .sum::<u64>();
        let mut prune = scripts::PRUNE.prepare_invoke();
        prune.key(keys::PRODUCERS);
        let mut stale = 0;
        for (writer, record) in &records {
            if writer.as_slice() != own.as_bytes() && is_stale_record(record, horizon) {
                prune.arg(writer.as_slice()).arg(record.as_slice());
                stale += 1;
            }
        }
        if stale > 0 {
            match prune.invoke_async::<usize>(&mut connection).await {
                Ok(removed) => pruned += removed,
                Err(err) => {
                    tracing::debug!(error = %err, "cannot remove stale producer records; pruning stopped");
                    return;
                }
            }
        }
        if next == 0 || read >= PRUNE_MAX_BYTES {
            break;
        }
        cursor = next;
    }
    if pruned > 0 {
        tracing::debug!(pruned, "took stale producer records out");
    }
}

/// A field of `tatbot:producers` and its value, as bytes (another client's may not be text).
type Record = (Vec<u8>, Vec<u8>);

/// Whether `record`, a value of `tatbot:producers`, has nothing to report and was last updated
/// before `horizon` (Unix milliseconds).
fn is_stale_record(record: &[u8], horizon: i64) -> bool {
    if record.len() > crate::model::MAX_DOCUMENT_BYTES {
        return false;
    }
    let Ok(record) = serde_json::from_slice::<Value>(record) else {
        return false;
    };
    let quiet = ["dropped", "rejected", "restored"]
        .iter()
        .all(|name| record["stats"][name].as_u64() == Some(0));
    let updated = record["updated"].as_str().and_then(|text| Timestamp::parse(text).ok());
    quiet && updated.is_some_and(|at| at.unix_millis() < horizon)
}

/// When a session started, from its id (`stroke_{node}_{secs}[_{n}]`), or else from `doc`.
fn start_ms_of(session_id: &SessionId, doc: &StrokeProgress) -> i64 {
    let id = session_id.as_str();
    let base = match id.rsplit_once('_') {
        // `_{n}` follows the seconds only for a second session in the same second.
        Some((head, n)) if n.len() < 5 && head.rsplit_once('_').is_some_and(|(_, secs)| secs.len() >= 9) => head,
        _ => id,
    };
    base.rsplit_once('_')
        .and_then(|(_, secs)| secs.parse::<i64>().ok())
        .map_or_else(|| doc.timestamp.unix_millis(), |secs| secs.saturating_mul(1000))
}

/// A random number for writer ids, from the standard library's randomly seeded hasher.
pub(crate) fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish() as u32
}
