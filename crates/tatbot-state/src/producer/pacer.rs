//! [`Wake::Anticipate`](super::Wake::Anticipate): the writer is awake when the robot's next call
//! is due, so that the call makes no system call.
//!
//! A robot loop calls the producer at a steady rate (30 Hz to 1 kHz), in bursts of one or a few
//! calls. Between bursts the writer parks, and the first call of the next burst has to wake it:
//! a system call that on a virtualised machine costs the call 10 to 100 us. The [`Rhythm`]
//! learns when bursts start; when they come at a steady period it predicts the next one, and the
//! pacer's thread wakes the writer a little before it (the *lead*), so the writer is spinning when
//! the call comes and takes the op without anyone making a system call on the call's thread.
//!
//! The lead adapts: a burst that came while the writer was parked anyway (the thread woke too
//! late) makes it longer, bursts caught with time to spare make it slowly shorter. Calls that
//! come at no steady period are not predicted and wake the writer themselves, as with
//! [`Wake::Immediate`](super::Wake::Immediate). Once bursts stop coming the thread parks.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::HelperThread;

/// Burst-to-burst intervals the rhythm keeps.
const HISTORY: usize = 8;
/// Intervals needed before a period is trusted.
const MIN_INTERVALS: usize = HISTORY;
/// Calls closer than this are one burst (a caller preempted in the middle of its burst comes
/// back hundreds of microseconds later); so loops faster than about 1.6 kHz are not predicted.
pub(super) const MIN_PERIOD: Duration = Duration::from_micros(600);
/// Periods longer than this are not predicted.
const MAX_PERIOD: Duration = Duration::from_secs(1);
/// Intervals may stray this far from the period (and at most a quarter of it).
const MAX_JITTER: Duration = Duration::from_micros(250);
/// The first lead, and its bounds.
const FIRST_LEAD: Duration = Duration::from_micros(100);
const MIN_LEAD: Duration = Duration::from_micros(20);
const MAX_LEAD: Duration = Duration::from_micros(400);
/// The first tail (how long after a burst's due time the writer keeps waiting for it), and its
/// bounds.
const FIRST_TAIL: Duration = Duration::from_micros(50);
const MIN_TAIL: Duration = Duration::from_micros(10);
const MAX_TAIL: Duration = Duration::from_micros(400);
/// A lead or tail that was not needed shrinks by this fraction of itself per burst; one that
/// was too short grows by half. Misses then settle at about one burst in four hundred.
const SHRINK: u32 = 1024;
/// The writer stays awake for a burst at most this fraction of the period (lead and tail scaled
/// down together): a fast loop gets fewer bursts anticipated rather than a core kept busy.
const AWAKE_SHARE: u32 = 4;
/// Periods without a burst after which the rhythm counts as stopped.
const MAX_SKIPPED: u32 = 4;

/// The period of the bursts and how much they stray from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Beat {
    pub period: Duration,
    pub jitter: Duration,
}

/// When bursts start, and what the pacer predicts from it. Pure bookkeeping over the instants it
/// is given, so that tests can drive it.
#[derive(Debug)]
pub(super) struct Rhythm {
    /// When the last bursts started, oldest first.
    starts: VecDeque<Instant>,
    /// Their beat, measured each time a start is added.
    beat: Option<Beat>,
    /// How long before a due burst the writer is woken.
    lead: Duration,
    /// How long after a due burst the writer keeps waiting for it.
    tail: Duration,
    /// The due time of the burst the writer was last woken for, until a burst comes.
    expected: Option<Instant>,
    /// The due time the pacer last woke the writer for: it is not woken twice for one burst.
    woken_for: Option<Instant>,
    /// The writer stayed awake for the whole window of `expected` and parked.
    gave_up: bool,
    /// Bursts the writer was awake for, bursts it was woken for and missed, and wake-ups of
    /// the pacer's thread that came after the burst was due.
    pub caught: u64,
    pub missed: u64,
    pub late: u64,
}

impl Default for Rhythm {
    fn default() -> Rhythm {
        Rhythm {
            starts: VecDeque::with_capacity(HISTORY + 1),
            beat: None,
            lead: FIRST_LEAD,
            tail: FIRST_TAIL,
            expected: None,
            woken_for: None,
            gave_up: false,
            caught: 0,
            missed: 0,
            late: 0,
        }
    }
}

impl Rhythm {
    /// The steady period of the last bursts, if they have one.
    pub fn beat(&self) -> Option<Beat> {
        self.beat
    }

    /// Measures [`Rhythm::beat`] from the kept starts.
    fn measure_beat(&self) -> Option<Beat> {
        if self.starts.len() <= MIN_INTERVALS {
            return None;
        }
        let mut intervals: Vec<Duration> = self
            .starts
            .iter()
            .zip(self.starts.iter().skip(1))
            .map(|(earlier, later)| later.saturating_duration_since(*earlier))
            .collect();
        intervals.sort_unstable();
        let period = intervals[intervals.len() / 2];
        let mut strays: Vec<Duration> = intervals.iter().map(|interval| interval.abs_diff(period)).collect();
        strays.sort_unstable();
        // Two outliers (a missed tick, a preempted loop) do not break the beat.
        let jitter = strays[strays.len() - 3];
        let steady = (MIN_PERIOD..=MAX_PERIOD).contains(&period) && jitter <= MAX_JITTER && jitter <= period / 4;
        steady.then_some(Beat { period, jitter })
    }

    /// When to wake the writer next, and for which due time: the first predicted burst whose
    /// wake-up still lies ahead of `now` and that it was not woken for. `None` when there is no
    /// beat or the bursts stopped.
    pub fn next_wake(&self, now: Instant) -> Option<(Instant, Instant)> {
        let beat = self.beat?;
        let (lead, _) = self.window(beat.period);
        let mut due = self.anchor(beat.period)? + beat.period;
        for _ in 0..MAX_SKIPPED {
            let fresh = self.woken_for.is_none_or(|woken| due > woken + beat.period / 2);
            if fresh && due.checked_sub(lead).is_some_and(|wake| wake > now) {
                return Some((due - lead, due));
            }
            due += beat.period;
        }
        None
    }

    /// When the last burst should have started by the beat: the median of every kept start
    /// carried forward by whole periods, so one late or early burst does not shift the next
    /// prediction.
    fn anchor(&self, period: Duration) -> Option<Instant> {
        let count = u32::try_from(self.starts.len()).ok()?;
        let mut projected: Vec<Instant> = (0..count)
            .zip(&self.starts)
            .map(|(index, start)| *start + period * (count - 1 - index))
            .collect();
        projected.sort_unstable();
        projected.get(projected.len() / 2).copied()
    }

    /// The pacer's thread woke at `now` for the burst due at `due`: true when that is before
    /// the burst, and the writer is to be woken. A wake-up that came after it (the thread's
    /// sleep overran the lead) lengthens the lead instead.
    pub fn woke_for(&mut self, due: Instant, now: Instant) -> bool {
        self.woken_for = Some(due);
        if now >= due {
            self.late += 1;
            self.lead = (self.lead * 3 / 2).min(MAX_LEAD);
            return false;
        }
        self.expected = Some(due);
        self.gave_up = false;
        true
    }

    /// The writer waited out the window of the burst it was woken for and parks.
    pub fn gave_up(&mut self) {
        self.gave_up = self.expected.is_some();
    }

    /// How long a writer with nothing to do should stay awake: until the end of the window of
    /// the burst it was woken for.
    pub fn awake_until(&self) -> Option<Instant> {
        let period = self.beat.map_or(MAX_PERIOD, |beat| beat.period);
        Some(self.expected? + self.window(period).1)
    }

    /// The lead and tail in use for bursts `period` apart: together at most
    /// 1/[`AWAKE_SHARE`] of it.
    fn window(&self, period: Duration) -> (Duration, Duration) {
        let budget = period / AWAKE_SHARE;
        let wanted = self.lead + self.tail;
        if wanted <= budget {
            return (self.lead, self.tail);
        }
        let scale = budget.as_secs_f64() / wanted.as_secs_f64();
        (self.lead.mul_f64(scale), self.tail.mul_f64(scale))
    }

    /// A call's op reached the writer at `at`: `caught` when the writer was awake for it (the call
    /// made no system call), `awake_since` when the writer started waiting for it.
    ///
    /// A burst the writer was woken for adapts the lead and the tail: missed after the writer
    /// waited out its window, the tail was too short (the burst came late); missed otherwise,
    /// the lead was (the writer was not up yet). Caught with much of either to spare, that one
    /// shrinks a little.
    pub fn arrived(&mut self, at: Instant, caught: bool, awake_since: Instant) {
        let period = self.beat.map_or(MAX_PERIOD, |beat| beat.period);
        // An expectation more than half a period old was for a burst that did not come.
        if let Some(due) = self.expected.take().filter(|due| at <= *due + period / 2) {
            if caught {
                self.caught += 1;
                if due.saturating_duration_since(awake_since) > self.lead / 2 {
                    self.lead = (self.lead - self.lead / SHRINK).max(MIN_LEAD);
                }
                if (due + self.tail).saturating_duration_since(at) > self.tail / 2 {
                    self.tail = (self.tail - self.tail / SHRINK).max(MIN_TAIL);
                }
            } else {
                self.missed += 1;
                if self.gave_up {
                    self.tail = (self.tail * 3 / 2).min(MAX_TAIL);
                } else {
                    self.lead = (self.lead * 3 / 2).min(MAX_LEAD);
                }
            }
        }
        self.gave_up = false;
        let min_gap = self.beat.map_or(MIN_PERIOD, |beat| (beat.period / 2).max(MIN_PERIOD));
        if self
            .starts
            .back()
            .is_some_and(|last| at.saturating_duration_since(*last) < min_gap)
        {
            return;
        }
        if self.starts.len() > HISTORY {
            self.starts.pop_front();
        }
        self.starts.push_back(at);
        self.beat = self.measure_beat();
    }
}

/// The pacer: the rhythm, its thread, and what calls tell it.
#[derive(Debug)]
pub(super) struct Pacer {
    rhythm: Mutex<Rhythm>,
    /// The thread; it parks while there is no beat and must be unparked when one appears.
    helper: HelperThread,
    /// When the call that last woke a parked writer was made, in nanoseconds since `epoch`.
    called_at: AtomicU64,
    /// Calls that found the writer parked and woke it.
    pub call_wakes: AtomicU64,
    epoch: Instant,
}

impl Pacer {
    /// Starts the thread; `None` when the system refuses one.
    pub fn spawn(wake: &Arc<Notify>, writer_parked: Arc<AtomicBool>) -> Option<Arc<Pacer>> {
        let pacer = Arc::new(Pacer {
            rhythm: Mutex::default(),
            helper: HelperThread::default(),
            called_at: AtomicU64::new(0),
            call_wakes: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let (thread_pacer, wake) = (pacer.clone(), wake.clone());
        let body = move || thread_pacer.run(&wake, &writer_parked);
        pacer
            .helper
            .start("tatbot-producer-pace", "pacing", body)
            .then_some(pacer)
    }

    fn rhythm(&self) -> std::sync::MutexGuard<'_, Rhythm> {
        // Every mutation is a few field stores: a panic elsewhere leaves it consistent.
        self.rhythm.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A call found the writer parked and is about to wake it.
    pub fn call_wakes_writer(&self) {
        let nanos = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.called_at.store(nanos, Ordering::Relaxed);
        self.call_wakes.fetch_add(1, Ordering::Relaxed);
    }

    /// When the call that last woke the writer was made.
    pub fn last_call_wake(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.called_at.load(Ordering::Relaxed))
    }

    /// See [`Rhythm::awake_until`].
    pub fn awake_until(&self) -> Option<Instant> {
        self.rhythm().awake_until()
    }

    /// See [`Rhythm::gave_up`].
    pub fn gave_up(&self) {
        self.rhythm().gave_up();
    }

    /// See [`Rhythm::arrived`]; restarts the thread when the bursts have a beat again.
    pub fn arrived(&self, at: Instant, caught: bool, awake_since: Instant) {
        let beat = {
            let mut rhythm = self.rhythm();
            rhythm.arrived(at, caught, awake_since);
            rhythm.beat()
        };
        if beat.is_some() {
            self.helper.wake();
        }
    }

    /// Bursts caught and missed, late wake-ups, and the lead now.
    pub fn counts(&self) -> (u64, u64, u64, Duration) {
        let rhythm = self.rhythm();
        (rhythm.caught, rhythm.missed, rhythm.late, rhythm.lead)
    }

    /// Ends the thread.
    pub fn stop(&self) {
        self.helper.stop();
    }

    fn run(&self, wake: &Notify, writer_parked: &AtomicBool) {
        self.helper.enter();
        precise_sleeps();
        while !self.helper.is_stopped() {
            let next = self.rhythm().next_wake(Instant::now());
            let Some((wake_at, due)) = next else {
                // `arrived` records a beat, then wakes the thread.
                self.helper
                    .park_while(|| self.rhythm().next_wake(Instant::now()).is_none());
                continue;
            };
            std::thread::sleep(wake_at.saturating_duration_since(Instant::now()));
            let on_time = self.rhythm().woke_for(due, Instant::now());
            if on_time && writer_parked.load(Ordering::SeqCst) {
                wake.notify_one();
            }
        }
    }
}

/// Asks the kernel not to stretch this thread's sleeps (its default timer slack is 50 us, as
/// long as a lead).
fn precise_sleeps() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_TIMERSLACK takes one integer argument and changes only the calling
        // thread's timer slack.
        #[expect(unsafe_code, reason = "prctl has no safe wrapper in our dependencies")]
        let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn steady(rhythm: &mut Rhythm, from: Instant, period: Duration, count: u32) -> Instant {
        for tick in 0..count {
            rhythm.arrived(from + period * tick, false, from);
        }
        from + period * (count - 1)
    }

    #[test]
    fn a_steady_loop_gets_a_beat_and_the_next_wake_comes_a_lead_before_it() {
        let start = Instant::now();
        let mut rhythm = Rhythm::default();
        steady(&mut rhythm, start, MS, MIN_INTERVALS as u32);
        assert_eq!(rhythm.beat(), None, "too few intervals to trust");
        let last = steady(&mut rhythm, start, MS, 9);
        assert_eq!(
            rhythm.beat(),
            Some(Beat {
                period: MS,
                jitter: Duration::ZERO
            })
        );
        let (wake_at, due) = rhythm.next_wake(last).unwrap();
        assert_eq!(due, last + MS);
        assert_eq!(wake_at, due - FIRST_LEAD);
        assert_eq!(rhythm.window(MS), (FIRST_LEAD, FIRST_TAIL));
        // Woken for it: the next wake is for the burst after.
        assert!(rhythm.woke_for(due, wake_at));
        assert_eq!(rhythm.next_wake(wake_at).unwrap().1, due + MS);
    }

    #[test]
    fn calls_at_no_steady_period_are_not_predicted() {
        let start = Instant::now();
        let mut rhythm = Rhythm::default();
        for gap_us in [0, 1000, 2500, 2700, 5000, 5300, 8000, 8100, 9900] {
            rhythm.arrived(start + Duration::from_micros(gap_us), false, start);
        }
        assert_eq!(rhythm.beat(), None);
        assert_eq!(rhythm.next_wake(start), None);
    }

    #[test]
    fn calls_within_a_burst_are_one_burst_and_one_outlier_keeps_the_beat() {
        let start = Instant::now();
        let mut rhythm = Rhythm::default();
        for tick in 0..8u32 {
            let burst = start + MS * tick;
            rhythm.arrived(burst, false, start);
            rhythm.arrived(burst + Duration::from_micros(60), false, start);
        }
        // A skipped tick: one interval of 2 ms among 1 ms ones.
        rhythm.arrived(start + MS * 9, false, start);
        let beat = rhythm.beat().unwrap();
        assert_eq!(beat.period, MS);
        assert_eq!(beat.jitter, Duration::ZERO);
    }

    #[test]
    fn one_late_burst_does_not_shift_the_next_prediction() {
        let start = Instant::now();
        let mut rhythm = Rhythm::default();
        let last = steady(&mut rhythm, start, MS, 9);
        // The tenth burst comes 200 us late; the eleventh is due on the beat all the same.
        rhythm.arrived(last + MS + Duration::from_micros(200), false, start);
        assert_eq!(
            rhythm.next_wake(last + MS + Duration::from_micros(300)).unwrap().1,
            last + MS * 2
        );
    }

    #[test]
    fn a_late_wake_up_lengthens_the_lead_and_wakes_nobody() {
        let start = Instant::now();
        let mut rhythm = Rhythm::default();
        let last = steady(&mut rhythm, start, MS, 9);
        let due = last + MS;
        assert!(!rhythm.woke_for(due, due + Duration::from_micros(10)));
        assert_eq!((rhythm.late, rhythm.lead), (1, FIRST_LEAD * 3 / 2));
        assert_eq!(rhythm.awake_until(), None);
        // Not predicted twice.
        assert_eq!(rhythm.next_wake(due).unwrap().1, due + MS);
    }

    #[test]
    fn the_writer_is_awake_at_most_a_quarter_of_the_period() {
        let mut rhythm = Rhythm {
            lead: MAX_LEAD,
            tail: MAX_TAIL,
            ..Rhythm::default()
        };
        let (lead, tail) = rhythm.window(MS);
        assert!(
            lead + tail <= MS / AWAKE_SHARE + Duration::from_nanos(1),
            "{lead:?} {tail:?}"
        );
        assert_eq!(lead, tail);
        rhythm.lead = FIRST_LEAD;
        assert_eq!(rhythm.window(MS * 100), (FIRST_LEAD, MAX_TAIL));
    }

    #[test]
    fn stopped_bursts_end_the_predictions() {
        let start = Instant::now();
        let mut rhythm = Rhythm::default();
        let last = steady(&mut rhythm, start, MS, 9);
        assert!(rhythm.next_wake(last + MS * 2).is_some());
        assert_eq!(rhythm.next_wake(last + MS * (MAX_SKIPPED + 1)), None);
    }

    #[test]
    fn an_early_miss_lengthens_the_lead_a_late_one_the_tail_and_catches_shorten_them() {
        let start = Instant::now();
        let mut rhythm = Rhythm::default();
        let last = steady(&mut rhythm, start, MS, 9);
        let us = Duration::from_micros;
        // Came 10 us before its due time, while the writer was still parked: the lead.
        let due = last + MS;
        assert!(rhythm.woke_for(due, due - FIRST_LEAD));
        rhythm.arrived(due - us(10), false, due);
        assert_eq!((rhythm.lead, rhythm.tail), (FIRST_LEAD * 3 / 2, FIRST_TAIL));
        // Came after the writer gave up on it: the tail.
        let due = due + MS;
        assert!(rhythm.woke_for(due, due - rhythm.lead));
        rhythm.gave_up();
        rhythm.arrived(due + FIRST_TAIL + us(5), false, due + FIRST_TAIL + us(5));
        assert_eq!(rhythm.tail, FIRST_TAIL * 3 / 2);
        assert_eq!((rhythm.caught, rhythm.missed), (0, 2));
        // Caught on time, the writer up the whole lead before: both shrink.
        let (lead, tail) = (rhythm.lead, rhythm.tail);
        let due = due + MS;
        assert!(rhythm.woke_for(due, due - lead));
        rhythm.arrived(due, true, due - lead);
        assert!(rhythm.lead < lead && rhythm.tail < tail, "{rhythm:?}");
        assert_eq!((rhythm.caught, rhythm.missed), (1, 2));
        // Without a wake for it, a burst changes neither.
        let (lead, tail) = (rhythm.lead, rhythm.tail);
        rhythm.arrived(due + MS, false, start);
        assert_eq!((rhythm.lead, rhythm.tail), (lead, tail));
        assert_eq!(rhythm.awake_until(), None);
    }
}
