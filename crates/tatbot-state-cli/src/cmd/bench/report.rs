//! The bench report: one struct of figures per section, and the text table.
//!
//! Each section's measuring code fills its own struct ([`AwaitedFigures`] for section 1, ...,
//! [`FailoverFigures`] for section 9), and the table prints each section from its struct. The
//! structs are flattened into [`Report`], so `--json` stays one flat object: every section's
//! keys are always there, `null` (or `[]`) for a section that did not run or a figure that
//! could not be measured.

use serde::Serialize;

use super::{Section, failover, target};

/// Everything measured; `--json` prints it as one object. Times in microseconds (`_us`) or
/// milliseconds (`_ms`), memory in MiB (`_mb`), rates per second; `null` where a figure could
/// not be measured (`notes` says why).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Whether this was a `--quick` run.
    pub quick: bool,
    /// `private` (started by the bench) or `given`.
    pub server: &'static str,
    /// The server's version.
    pub redis_version: Option<String>,
    /// Whether the server keeps an append-only file, which every update writes to before it is
    /// answered and published (`PING` does not).
    pub redis_aof: Option<bool>,
    /// Where it ran.
    pub machine: Machine,
    /// The sections that ran (all but failover unless `--only` named some).
    pub sections: Vec<Section>,
    /// Section 1.
    #[serde(flatten)]
    pub awaited: AwaitedFigures,
    /// Section 2.
    #[serde(flatten)]
    pub throughput: ThroughputFigures,
    /// Section 3.
    #[serde(flatten)]
    pub calls: CallFigures,
    /// Section 4.
    #[serde(flatten)]
    pub e2e: E2eFigures,
    /// Section 5.
    #[serde(flatten)]
    pub status: StatusFigures,
    /// Section 6.
    #[serde(flatten)]
    pub memory: MemoryFigures,
    /// Section 7.
    #[serde(flatten)]
    pub record: RecordFigures,
    /// Section 9.
    #[serde(flatten)]
    pub failover: FailoverFigures,
    /// Section 8.
    #[serde(flatten)]
    pub mcp: McpFigures,
    /// Why a figure is missing, and anything else a reader should know.
    pub notes: Vec<String>,
    /// Sections that failed, with the error.
    pub failures: Vec<String>,
}

/// Section 1: awaited updates against `PING`.
#[derive(Debug, Default, Serialize)]
pub struct AwaitedFigures {
    /// `PING` through the manager's shared connection (an update goes on its direct one),
    /// interleaved with the updates.
    pub ping_rtt_p50_us: Option<f64>,
    /// See `ping_rtt_p50_us`.
    pub ping_rtt_p99_us: Option<f64>,
    /// An awaited progress update, one at a time.
    pub update_awaited_p50_us: Option<f64>,
    /// See `update_awaited_p50_us`.
    pub update_awaited_p99_us: Option<f64>,
    /// The same with `reply_spin` zero: the answer waited for through the runtime's I/O
    /// driver (the library before issue #18's last change), interleaved with the others.
    pub update_awaited_p50_us_waiting: Option<f64>,
    /// Awaited updates back to back, with nothing in between, after each round's interleaved
    /// ones: the conditions of the `redis-benchmark` run that follows, and what is compared
    /// with it.
    pub update_alone_p50_us: Option<f64>,
    /// Time Redis spent per update script (`INFO commandstats`), network excluded.
    pub server_update_us: Option<f64>,
    /// The update command sent one at a time by `redis-benchmark` (`-c 1 -P 1`), after each
    /// round of the awaited updates: the median of the rounds' p50s, the floor for an
    /// awaited update.
    pub redis_benchmark_update_p50_us: Option<f64>,
    /// The update command sent one at a time by a plain blocking client in this process,
    /// interleaved with the awaited updates: the p50 of all rounds' samples, timed to the
    /// nanosecond where `redis-benchmark` reports 8 us buckets.
    pub plain_update_p50_us: Option<f64>,
    /// `redis-benchmark -c 1 -P 1 PING`.
    pub redis_benchmark_ping_p50_us: Option<f64>,
    /// See `redis_benchmark_ping_p50_us`.
    pub redis_benchmark_ping_p99_us: Option<f64>,
}

/// Section 2: producer throughput against `redis-benchmark -P 32`.
#[derive(Debug, Default, Serialize)]
pub struct ThroughputFigures {
    /// Redis's time per update during the producer's throughput runs, and during
    /// `redis-benchmark -P 32` of the same command.
    pub server_update_us_producer: Option<f64>,
    /// See `server_update_us_producer`.
    pub server_update_us_pipelined: Option<f64>,
    /// Updates acknowledged per second through one producer (median).
    pub throughput_updates_per_s: Option<f64>,
    /// `redis-benchmark -P 32` of the very command an update sends (median).
    pub pipelined_limit_per_s: Option<f64>,
    /// `redis-benchmark -P 32` of the reference `EVAL` (HSET + XADD + PUBLISH).
    pub pipelined_reference_eval_per_s: Option<f64>,
    /// `redis-benchmark -P 32 PING`.
    pub pipelined_ping_per_s: Option<f64>,
}

/// Section 3: the time a producer call takes with Redis up, paused and down.
#[derive(Debug, Default, Serialize)]
pub struct CallFigures {
    /// Redis up, the default wake.
    pub producer_call_p50_us_up: Option<f64>,
    /// See `producer_call_p50_us_up`.
    pub producer_call_p99_us_up: Option<f64>,
    /// See `producer_call_p50_us_up`.
    pub producer_call_p999_us_up: Option<f64>,
    /// Bursts the default wake (`Wake::Anticipate`) had the writer awake for, bursts it
    /// missed, and calls that woke the writer themselves.
    pub producer_wake_anticipated: Option<u64>,
    /// See `producer_wake_anticipated`.
    pub producer_wake_missed: Option<u64>,
    /// See `producer_wake_anticipated`.
    pub producer_wake_by_calls: Option<u64>,
    /// See `producer_wake_anticipated`: wake-ups of the pacer that came after the burst was due.
    pub producer_wake_late: Option<u64>,
    /// This process's CPU while the calls were made (1 kHz, bursts of 10), in percent of one
    /// core: the default wake, woken by calls, polled.
    pub producer_cpu_pct_up: Option<f64>,
    /// See `producer_cpu_pct_up`.
    pub producer_cpu_pct_up_immediate: Option<f64>,
    /// See `producer_cpu_pct_up`.
    pub producer_cpu_pct_up_polled: Option<f64>,
    /// With `Wake::Immediate` (each call that finds the writer parked wakes it).
    pub producer_call_p50_us_up_immediate: Option<f64>,
    /// See `producer_call_p50_us_up_immediate`.
    pub producer_call_p99_us_up_immediate: Option<f64>,
    /// See `producer_call_p50_us_up_immediate`.
    pub producer_call_p999_us_up_immediate: Option<f64>,
    /// With `Wake::Poll` (calls make no system call) instead of the default wake.
    pub producer_call_p50_us_up_polled: Option<f64>,
    /// See `producer_call_p50_us_up_polled`.
    pub producer_call_p99_us_up_polled: Option<f64>,
    /// See `producer_call_p50_us_up_polled`.
    pub producer_call_p999_us_up_polled: Option<f64>,
    /// Redis frozen (SIGSTOP); null on a given server.
    pub producer_call_p50_us_paused: Option<f64>,
    /// See `producer_call_p50_us_paused`.
    pub producer_call_p99_us_paused: Option<f64>,
    /// See `producer_call_p50_us_paused`.
    pub producer_call_p999_us_paused: Option<f64>,
    /// Nothing listening.
    pub producer_call_p50_us_down: Option<f64>,
    /// See `producer_call_p50_us_down`.
    pub producer_call_p99_us_down: Option<f64>,
    /// See `producer_call_p50_us_down`.
    pub producer_call_p999_us_down: Option<f64>,
}

/// Section 4: producer-to-subscriber latency at 1 kHz.
#[derive(Debug, Default, Serialize)]
pub struct E2eFigures {
    /// `PING` through the manager's shared connection at 1 kHz, in the same rounds.
    pub e2e_ping_p50_us: Option<f64>,
    /// See `e2e_ping_p50_us`.
    pub e2e_ping_p99_us: Option<f64>,
    /// `PING` from a plain blocking client at 1 kHz, in the same rounds: the paths' baseline,
    /// a round trip to Redis without the manager's hand-offs.
    pub e2e_plain_ping_p50_us: Option<f64>,
    /// See `e2e_plain_ping_p50_us`.
    pub e2e_plain_ping_p99_us: Option<f64>,
    /// A plain `PUBLISH` to a plain subscriber in this process: the transport floor.
    pub e2e_raw_publish_p50_us: Option<f64>,
    /// See `e2e_raw_publish_p50_us`.
    pub e2e_raw_publish_p99_us: Option<f64>,
    /// The update's own command, as a producer's writer sends it, from a plain blocking client
    /// to a plain subscriber in this process: the same work in Redis without the library.
    pub e2e_plain_update_p50_us: Option<f64>,
    /// See `e2e_plain_update_p50_us`.
    pub e2e_plain_update_p99_us: Option<f64>,
    /// See `e2e_plain_update_p50_us`.
    pub e2e_plain_update_missed: Option<usize>,
    /// Producer to a pub/sub subscriber.
    pub e2e_pubsub_p50_us: Option<f64>,
    /// See `e2e_pubsub_p50_us`.
    pub e2e_pubsub_p99_us: Option<f64>,
    /// Updates the subscriber never saw.
    pub e2e_pubsub_missed: Option<usize>,
    /// Pub/sub with a `Wake::Immediate` producer.
    pub e2e_pubsub_p50_us_immediate: Option<f64>,
    /// See `e2e_pubsub_p50_us_immediate`.
    pub e2e_pubsub_p99_us_immediate: Option<f64>,
    /// See `e2e_pubsub_p50_us_immediate`.
    pub e2e_pubsub_missed_immediate: Option<usize>,
    /// Pub/sub with a `Wake::Poll` producer.
    pub e2e_pubsub_p50_us_polled: Option<f64>,
    /// See `e2e_pubsub_p50_us_polled`.
    pub e2e_pubsub_p99_us_polled: Option<f64>,
    /// See `e2e_pubsub_p50_us_polled`.
    pub e2e_pubsub_missed_polled: Option<usize>,
    /// Producer to a follower (the follow API).
    pub e2e_follow_p50_us: Option<f64>,
    /// See `e2e_follow_p50_us`.
    pub e2e_follow_p99_us: Option<f64>,
    /// See `e2e_follow_p50_us`.
    pub e2e_follow_missed: Option<usize>,
}

/// Section 5: `status` and all-nodes health at scale (medians).
#[derive(Debug, Default, Serialize)]
pub struct StatusFigures {
    /// `status` over 10 nodes and 100 sessions.
    pub status_10_nodes_100_sessions_ms: Option<f64>,
    /// `status` over 100 nodes and 1,000 sessions.
    pub status_100_nodes_1000_sessions_ms: Option<f64>,
    /// `status` over 1,000 nodes and 10,000 sessions.
    pub status_1000_nodes_10000_sessions_ms: Option<f64>,
    /// All-nodes health over 10 nodes.
    pub health_10_nodes_ms: Option<f64>,
    /// All-nodes health over 100 nodes.
    pub health_100_nodes_ms: Option<f64>,
    /// All-nodes health over 1,000 nodes.
    pub health_1000_nodes_ms: Option<f64>,
    /// Time for ten times the data, divided by the time for the data.
    pub status_growth_100_to_1000: Option<f64>,
    /// See `status_growth_100_to_1000`.
    pub status_growth_1000_to_10000: Option<f64>,
    /// See `status_growth_100_to_1000`.
    pub health_growth_10_to_100: Option<f64>,
    /// See `status_growth_100_to_1000`.
    pub health_growth_100_to_1000: Option<f64>,
}

/// Section 6: memory of `mcp --transport http` and `viz` with 100 clients.
#[derive(Debug, Default, Serialize)]
pub struct MemoryFigures {
    /// Peak resident set with the clients.
    pub rss_mcp_100_clients_mb: Option<f64>,
    /// See `rss_mcp_100_clients_mb`.
    pub rss_viz_100_clients_mb: Option<f64>,
    /// Resident set at the end.
    pub rss_mcp_end_mb: Option<f64>,
    /// See `rss_mcp_end_mb`.
    pub rss_viz_end_mb: Option<f64>,
    /// Resident set of the server before any client connected: the baseline of the two above.
    pub rss_mcp_idle_mb: Option<f64>,
    /// See `rss_mcp_idle_mb`.
    pub rss_viz_idle_mb: Option<f64>,
    /// The anonymous part (heap, stacks) of the resident set, idle and with the clients; the
    /// rest is the mapped binary, shared between processes.
    pub rss_mcp_anon_idle_mb: Option<f64>,
    /// See `rss_mcp_anon_idle_mb`.
    pub rss_mcp_anon_mb: Option<f64>,
    /// See `rss_mcp_anon_idle_mb`.
    pub rss_viz_anon_idle_mb: Option<f64>,
    /// See `rss_mcp_anon_idle_mb`.
    pub rss_viz_anon_mb: Option<f64>,
    /// Clients the server accepted, and those that saw an update.
    pub mcp_clients_connected: Option<usize>,
    /// See `mcp_clients_connected`.
    pub mcp_clients_updated: Option<usize>,
    /// See `mcp_clients_connected`.
    pub viz_clients_connected: Option<usize>,
    /// See `mcp_clients_connected`.
    pub viz_clients_updated: Option<usize>,
}

/// Section 7: record and replay throughput.
#[derive(Debug, Default, Serialize)]
pub struct RecordFigures {
    /// Messages per record/replay run.
    pub record_messages: Option<u64>,
    /// Bytes of the recorded MCAP file.
    pub record_file_bytes: Option<usize>,
    /// Record (Redis to MCAP) and replay (MCAP to Redis), messages per second of wall time and
    /// of this process's CPU time: medians, and each run.
    pub record_per_s: Option<f64>,
    /// See `record_per_s`.
    pub record_per_cpu_s: Option<f64>,
    /// See `record_per_s`.
    pub replay_per_s: Option<f64>,
    /// See `record_per_s`.
    pub replay_per_cpu_s: Option<f64>,
    /// See `record_per_s`.
    pub record_runs_per_s: Vec<f64>,
    /// See `record_per_s`.
    pub replay_runs_per_s: Vec<f64>,
    /// CPU seconds per 100,000 messages (medians): this process, and the private
    /// `redis-server` (null on a given server). Their sum over two cores bounds the wall rate.
    pub record_client_cpu_s_per_100k: Option<f64>,
    /// See `record_client_cpu_s_per_100k`.
    pub record_server_cpu_s_per_100k: Option<f64>,
    /// See `record_client_cpu_s_per_100k`.
    pub replay_client_cpu_s_per_100k: Option<f64>,
    /// See `record_client_cpu_s_per_100k`.
    pub replay_server_cpu_s_per_100k: Option<f64>,
}

/// Section 9 (only when named): failover through Sentinel.
#[derive(Debug, Default, Serialize)]
pub struct FailoverFigures {
    /// Kill -9 of the master to the first write acknowledged on the new one (median, and each run).
    pub failover_ms: Option<f64>,
    /// See `failover_ms`.
    pub failover_runs_ms: Vec<f64>,
}

/// Section 8: MCP over streamable HTTP.
#[derive(Debug, Default, Serialize)]
pub struct McpFigures {
    /// MCP sessions opened at once, and those that initialized, subscribed and read.
    pub mcp_sessions_started: Option<usize>,
    /// See `mcp_sessions_started`.
    pub mcp_sessions_completed: Option<usize>,
    /// Wall time until all of them had, and one session's own time.
    pub mcp_sessions_wall_ms: Option<f64>,
    /// See `mcp_sessions_wall_ms`.
    pub mcp_session_p50_ms: Option<f64>,
    /// See `mcp_sessions_wall_ms`.
    pub mcp_session_p99_ms: Option<f64>,
    /// The MCP server's peak resident set with all of them open.
    pub rss_mcp_sessions_mb: Option<f64>,
    /// `ping` on a kept-alive connection.
    pub mcp_ping_p50_ms: Option<f64>,
    /// See `mcp_ping_p50_ms`.
    pub mcp_ping_p99_ms: Option<f64>,
    /// `ping` and `resources/read` of `state://status` from rmcp's client, which closes the
    /// connection after each answer.
    pub mcp_rmcp_ping_p50_ms: Option<f64>,
    /// See `mcp_rmcp_ping_p50_ms`.
    pub mcp_rmcp_ping_p99_ms: Option<f64>,
    /// See `mcp_rmcp_ping_p50_ms`.
    pub mcp_read_p50_ms: Option<f64>,
    /// See `mcp_rmcp_ping_p50_ms`.
    pub mcp_read_p99_ms: Option<f64>,
}

/// The machine the bench ran on.
#[derive(Debug, Default, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    cpus: usize,
    /// `model name` of the first CPU in `/proc/cpuinfo`.
    cpu_model: Option<String>,
    /// `MemTotal`, MiB.
    memory_mb: Option<f64>,
    /// One-minute load average when the bench started.
    load_start: Option<f64>,
    /// One-minute load average when it ended.
    pub load_end: Option<f64>,
}

impl Machine {
    /// This machine, now.
    pub fn now() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model: cpuinfo
                .lines()
                .find_map(|line| line.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, model)| model.trim().to_owned()),
            memory_mb: meminfo
                .lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .map(|kib| kib / 1024.0),
            load_start: load_average(),
            load_end: None,
        }
    }
}

/// The one-minute load average, where `/proc` has it.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One table row: what, its value, its baseline, the ratio, the target and the verdict.
struct Row {
    section: Section,
    name: String,
    value: String,
    baseline: String,
    ratio: String,
    target: String,
    verdict: &'static str,
}

/// `ok` or `MISS` for a figure and its limit; `-` when it is missing.
fn verdict(value: Option<f64>, met: impl Fn(f64) -> bool) -> &'static str {
    match value {
        Some(value) if met(value) => "ok",
        Some(_) => "MISS",
        None => "-",
    }
}

fn show(value: Option<f64>, unit: &str, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_owned(), |value| format!("{value:.decimals$} {unit}"))
}

fn ratio_of(value: Option<f64>, baseline: Option<f64>) -> Option<f64> {
    Some(value? / baseline?)
}

fn show_count(count: Option<u64>) -> String {
    count.map_or_else(|| "n/a".to_owned(), |count| count.to_string())
}

fn show_ratio(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "-".to_owned(), |ratio| format!("{ratio:.2}x"))
}

impl AwaitedFigures {
    /// Section 1's rows.
    fn rows(&self) -> Vec<Row> {
        let update_floor = self.redis_benchmark_update_p50_us;
        let awaited_ratio = ratio_of(self.update_awaited_p50_us, self.ping_rtt_p50_us);
        // Point 4's rows: the awaited update against the same command from a lean client.
        let against_same_command = |name: &str, value: Option<f64>, baseline: String, floor: Option<f64>| {
            let ratio = ratio_of(value, floor);
            Row {
                section: Section::Awaited,
                name: name.to_owned(),
                value: show(value, "us", 0),
                baseline,
                ratio: show_ratio(ratio),
                target: format!("<= {}x", target::AWAITED_FLOOR_RATIO),
                verdict: verdict(ratio, |ratio| ratio <= target::AWAITED_FLOOR_RATIO),
            }
        };
        vec![
            Row {
                section: Section::Awaited,
                name: "awaited update p50".to_owned(),
                value: show(self.update_awaited_p50_us, "us", 0),
                baseline: format!("manager's PING p50 {}", show(self.ping_rtt_p50_us, "us", 0)),
                ratio: show_ratio(awaited_ratio),
                target: format!("<= {}x", target::AWAITED_RATIO),
                verdict: verdict(awaited_ratio, |ratio| ratio <= target::AWAITED_RATIO),
            },
            Row {
                section: Section::Awaited,
                name: "awaited update p99".to_owned(),
                value: show(self.update_awaited_p99_us, "us", 0),
                baseline: format!("manager's PING p99 {}", show(self.ping_rtt_p99_us, "us", 0)),
                ratio: show_ratio(ratio_of(self.update_awaited_p99_us, self.ping_rtt_p99_us)),
                target: "-".to_owned(),
                verdict: "",
            },
            Row {
                section: Section::Awaited,
                name: "  manager's PING vs redis-benchmark".to_owned(),
                value: format!("PING p50 {}", show(self.ping_rtt_p50_us, "us", 0)),
                baseline: format!(
                    "redis-benchmark -P 1 {}",
                    show(self.redis_benchmark_ping_p50_us, "us", 0)
                ),
                ratio: show_ratio(ratio_of(self.ping_rtt_p50_us, self.redis_benchmark_ping_p50_us)),
                target: "-".to_owned(),
                verdict: "",
            },
            // redis-benchmark runs alone between the rounds: against it, the updates sent alone.
            against_same_command(
                "  update alone vs redis-benchmark",
                self.update_alone_p50_us,
                format!("same command -P 1 {}", show(update_floor, "us", 0)),
                update_floor,
            ),
            against_same_command(
                "  update vs plain client",
                self.update_awaited_p50_us,
                format!("same command, exact clock {}", show(self.plain_update_p50_us, "us", 1)),
                self.plain_update_p50_us,
            ),
            Row {
                section: Section::Awaited,
                name: "  update, answer waited for".to_owned(),
                value: show(self.update_awaited_p50_us_waiting, "us", 0),
                baseline: format!("same command -P 1, run alone {}", show(update_floor, "us", 0)),
                ratio: show_ratio(ratio_of(self.update_awaited_p50_us_waiting, update_floor)),
                target: "-".to_owned(),
                verdict: "",
            },
            Row {
                section: Section::Awaited,
                name: "  Redis time per update script".to_owned(),
                value: show(self.server_update_us, "us", 1),
                baseline: "INFO commandstats, network excluded".to_owned(),
                ratio: "-".to_owned(),
                target: "-".to_owned(),
                verdict: "",
            },
        ]
    }
}

impl ThroughputFigures {
    /// Section 2's rows.
    fn rows(&self) -> Vec<Row> {
        let throughput_ratio = ratio_of(self.throughput_updates_per_s, self.pipelined_limit_per_s);
        vec![
            Row {
                section: Section::Throughput,
                name: "throughput, one producer".to_owned(),
                value: show(self.throughput_updates_per_s, "/s", 0),
                baseline: format!("same command -P 32 {}", show(self.pipelined_limit_per_s, "/s", 0)),
                ratio: show_ratio(throughput_ratio),
                target: format!(">= {}x", target::THROUGHPUT_RATIO),
                verdict: verdict(throughput_ratio, |ratio| ratio >= target::THROUGHPUT_RATIO),
            },
            Row {
                section: Section::Throughput,
                name: "  vs reference EVAL".to_owned(),
                value: String::new(),
                baseline: format!(
                    "HSET+XADD+PUBLISH -P 32 {}",
                    show(self.pipelined_reference_eval_per_s, "/s", 0)
                ),
                ratio: show_ratio(ratio_of(
                    self.throughput_updates_per_s,
                    self.pipelined_reference_eval_per_s,
                )),
                target: "-".to_owned(),
                verdict: "",
            },
            Row {
                section: Section::Throughput,
                name: "  vs PING".to_owned(),
                value: String::new(),
                baseline: format!("PING -P 32 {}", show(self.pipelined_ping_per_s, "/s", 0)),
                ratio: show_ratio(ratio_of(self.throughput_updates_per_s, self.pipelined_ping_per_s)),
                target: "-".to_owned(),
                verdict: "",
            },
            Row {
                section: Section::Throughput,
                name: "  Redis time per update, producer".to_owned(),
                value: show(self.server_update_us_producer, "us", 1),
                baseline: format!("same command -P 32 {}", show(self.server_update_us_pipelined, "us", 1)),
                ratio: show_ratio(ratio_of(
                    self.server_update_us_producer,
                    self.server_update_us_pipelined,
                )),
                target: "-".to_owned(),
                verdict: "",
            },
        ]
    }
}

impl CallFigures {
    /// Section 3's rows.
    fn rows(&self) -> Vec<Row> {
        [
            (
                "up",
                self.producer_call_p50_us_up,
                self.producer_call_p99_us_up,
                self.producer_call_p999_us_up,
            ),
            (
                "up, woken by calls",
                self.producer_call_p50_us_up_immediate,
                self.producer_call_p99_us_up_immediate,
                self.producer_call_p999_us_up_immediate,
            ),
            (
                "up, polled wake",
                self.producer_call_p50_us_up_polled,
                self.producer_call_p99_us_up_polled,
                self.producer_call_p999_us_up_polled,
            ),
            (
                "paused",
                self.producer_call_p50_us_paused,
                self.producer_call_p99_us_paused,
                self.producer_call_p999_us_paused,
            ),
            (
                "down",
                self.producer_call_p50_us_down,
                self.producer_call_p99_us_down,
                self.producer_call_p999_us_down,
            ),
        ]
        .into_iter()
        .map(|(condition, p50, p99, p999)| Row {
            section: Section::Calls,
            name: format!("producer call p99, redis {condition}"),
            value: show(p99, "us", 2),
            baseline: format!("p50 {}, p99.9 {}", show(p50, "us", 2), show(p999, "us", 1)),
            ratio: "-".to_owned(),
            target: format!("<= {} us", target::CALL_P99_US),
            verdict: verdict(p99, |p99| p99 <= target::CALL_P99_US),
        })
        .chain([
            Row {
                section: Section::Calls,
                name: "  default wake: bursts anticipated".to_owned(),
                value: show_count(self.producer_wake_anticipated),
                baseline: format!(
                    "missed {}, late {}, calls that woke the writer {}",
                    show_count(self.producer_wake_missed),
                    show_count(self.producer_wake_late),
                    show_count(self.producer_wake_by_calls),
                ),
                ratio: "-".to_owned(),
                target: "-".to_owned(),
                verdict: "",
            },
            Row {
                section: Section::Calls,
                name: "  CPU while calling, default wake".to_owned(),
                value: show(self.producer_cpu_pct_up, "%", 1),
                baseline: format!(
                    "woken by calls {}, polled {}",
                    show(self.producer_cpu_pct_up_immediate, "%", 1),
                    show(self.producer_cpu_pct_up_polled, "%", 1)
                ),
                ratio: "-".to_owned(),
                target: "-".to_owned(),
                verdict: "",
            },
        ])
        .collect()
    }
}

impl E2eFigures {
    /// Section 4's rows: each path's p99 against a plain client's `PING`s, paced and measured
    /// in the same rounds; the manager's own paced `PING` is shown beside it.
    fn rows(&self) -> Vec<Row> {
        let baseline = format!(
            "plain PING p99 {} at 1 kHz (manager's {})",
            show(self.e2e_plain_ping_p99_us, "us", 0),
            show(self.e2e_ping_p99_us, "us", 0)
        );
        let value = |p50: Option<f64>, p99: Option<f64>| format!("{} (p50 {})", show(p99, "us", 0), show(p50, "us", 0));
        let floor = |name: &str, p50: Option<f64>, p99: Option<f64>| Row {
            section: Section::E2e,
            name: name.to_owned(),
            value: value(p50, p99),
            baseline: baseline.clone(),
            ratio: show_ratio(ratio_of(p99, self.e2e_plain_ping_p99_us)),
            target: "-".to_owned(),
            verdict: "",
        };
        let mut rows = vec![
            floor(
                "plain PUBLISH->subscriber p99",
                self.e2e_raw_publish_p50_us,
                self.e2e_raw_publish_p99_us,
            ),
            floor(
                "plain update->subscriber p99",
                self.e2e_plain_update_p50_us,
                self.e2e_plain_update_p99_us,
            ),
        ];
        // The default paths are also shown against the same work done without the library.
        for (path, p50, p99, against_same_work) in [
            ("pub/sub", self.e2e_pubsub_p50_us, self.e2e_pubsub_p99_us, true),
            (
                "pub/sub, woken by calls",
                self.e2e_pubsub_p50_us_immediate,
                self.e2e_pubsub_p99_us_immediate,
                false,
            ),
            (
                "pub/sub, polled wake",
                self.e2e_pubsub_p50_us_polled,
                self.e2e_pubsub_p99_us_polled,
                false,
            ),
            ("follow", self.e2e_follow_p50_us, self.e2e_follow_p99_us, true),
        ] {
            let ratio = ratio_of(p99, self.e2e_plain_ping_p99_us);
            rows.push(Row {
                section: Section::E2e,
                name: format!("producer->subscriber p99, {path}"),
                value: value(p50, p99),
                baseline: baseline.clone(),
                ratio: show_ratio(ratio),
                target: format!("<= {}x", target::E2E_RATIO),
                verdict: verdict(ratio, |ratio| ratio <= target::E2E_RATIO),
            });
            if against_same_work {
                rows.push(Row {
                    section: Section::E2e,
                    name: format!("  {path} vs plain update"),
                    value: show(p99, "us", 0),
                    baseline: format!(
                        "same command, plain client p99 {}",
                        show(self.e2e_plain_update_p99_us, "us", 0)
                    ),
                    ratio: show_ratio(ratio_of(p99, self.e2e_plain_update_p99_us)),
                    target: "-".to_owned(),
                    verdict: "",
                });
            }
        }
        rows
    }
}

impl StatusFigures {
    /// Section 5's rows.
    fn rows(&self) -> Vec<Row> {
        let mut rows = vec![Row {
            section: Section::Status,
            name: "status, 1,000 nodes 10,000 sessions".to_owned(),
            value: show(self.status_1000_nodes_10000_sessions_ms, "ms", 1),
            baseline: format!(
                "100: {}, 1,000: {}",
                show(self.status_10_nodes_100_sessions_ms, "ms", 1),
                show(self.status_100_nodes_1000_sessions_ms, "ms", 1)
            ),
            ratio: "-".to_owned(),
            target: format!("<= {} ms", target::STATUS_MS),
            verdict: verdict(self.status_1000_nodes_10000_sessions_ms, |ms| ms <= target::STATUS_MS),
        }];
        for (name, growth) in [
            ("status growth, 100 -> 1,000 sessions", self.status_growth_100_to_1000),
            ("status growth, 1,000 -> 10,000", self.status_growth_1000_to_10000),
            ("health growth, 10 -> 100 nodes", self.health_growth_10_to_100),
            ("health growth, 100 -> 1,000", self.health_growth_100_to_1000),
        ] {
            rows.push(Row {
                section: Section::Status,
                name: name.to_owned(),
                value: show_ratio(growth),
                baseline: "10x the data".to_owned(),
                ratio: "-".to_owned(),
                target: format!("<= {}x", target::GROWTH),
                verdict: verdict(growth, |growth| growth <= target::GROWTH),
            });
        }
        rows.push(Row {
            section: Section::Status,
            name: "all-nodes health, 1,000 nodes".to_owned(),
            value: show(self.health_1000_nodes_ms, "ms", 1),
            baseline: String::new(),
            ratio: "-".to_owned(),
            target: "-".to_owned(),
            verdict: "",
        });
        rows
    }
}

impl MemoryFigures {
    /// Section 6's rows.
    fn rows(&self) -> Vec<Row> {
        let count = |count: Option<usize>| count.map_or_else(|| "?".to_owned(), |count| count.to_string());
        [
            (
                "peak RSS, mcp --transport http",
                self.rss_mcp_100_clients_mb,
                self.rss_mcp_idle_mb,
                self.rss_mcp_anon_mb,
                self.mcp_clients_connected,
                self.mcp_clients_updated,
            ),
            (
                "peak RSS, viz",
                self.rss_viz_100_clients_mb,
                self.rss_viz_idle_mb,
                self.rss_viz_anon_mb,
                self.viz_clients_connected,
                self.viz_clients_updated,
            ),
        ]
        .into_iter()
        .map(|(name, rss, idle, anon, connected, updated)| Row {
            section: Section::Memory,
            name: name.to_owned(),
            value: show(rss, "MiB", 1),
            baseline: format!(
                "idle {}, heap {}; {} clients on, {} updated",
                show(idle, "MiB", 1),
                show(anon, "MiB", 1),
                count(connected),
                count(updated)
            ),
            ratio: "-".to_owned(),
            target: format!("<= {} MiB", target::RSS_MB),
            verdict: verdict(rss, |rss| rss <= target::RSS_MB),
        })
        .collect()
    }
}

impl RecordFigures {
    /// Section 7's rows.
    fn rows(&self) -> Vec<Row> {
        [
            (
                "record, Redis to MCAP",
                self.record_per_s,
                self.record_per_cpu_s,
                &self.record_runs_per_s,
                self.record_client_cpu_s_per_100k,
                self.record_server_cpu_s_per_100k,
            ),
            (
                "replay, MCAP to Redis",
                self.replay_per_s,
                self.replay_per_cpu_s,
                &self.replay_runs_per_s,
                self.replay_client_cpu_s_per_100k,
                self.replay_server_cpu_s_per_100k,
            ),
        ]
        .into_iter()
        .map(|(name, rate, cpu_rate, runs, client, server)| {
            let each: Vec<String> = runs.iter().map(|rate| format!("{rate:.0}")).collect();
            Row {
                section: Section::Record,
                name: format!("{name} (median)"),
                value: show(rate, "msg/s", 0),
                baseline: format!(
                    "per CPU s {}; CPU per 100k: ours {}, redis {}; runs {}",
                    show(cpu_rate, "msg/s", 0),
                    show(client, "s", 2),
                    show(server, "s", 2),
                    each.join(", ")
                ),
                ratio: "-".to_owned(),
                target: format!(">= {:.0} /s", target::RECORD_PER_S),
                verdict: verdict(rate, |rate| rate >= target::RECORD_PER_S),
            }
        })
        .collect()
    }
}

impl FailoverFigures {
    /// Section 9's row.
    fn rows(&self) -> Vec<Row> {
        let failover_target = failover::TARGET.as_secs_f64() * 1000.0;
        vec![Row {
            section: Section::Failover,
            name: "failover: kill -9 to first acked write (median)".to_owned(),
            value: show(self.failover_ms, "ms", 0),
            baseline: "down-after 1000 ms".to_owned(),
            ratio: "-".to_owned(),
            target: format!("<= {} s", failover::TARGET.as_secs()),
            verdict: verdict(self.failover_ms, |ms| ms <= failover_target),
        }]
    }
}

impl McpFigures {
    /// Section 8's rows.
    fn rows(&self) -> Vec<Row> {
        let all_done =
            self.mcp_sessions_completed.is_some() && self.mcp_sessions_completed == self.mcp_sessions_started;
        let wall_s = self.mcp_sessions_wall_ms.map(|ms| ms / 1000.0);
        vec![
            Row {
                section: Section::Mcp,
                name: format!(
                    "mcp: {} sessions at once, all done",
                    self.mcp_sessions_started
                        .map_or_else(|| "?".to_owned(), |n| n.to_string())
                ),
                value: show(wall_s, "s", 2),
                baseline: format!(
                    "{} done; one session p50 {}, p99 {}; server peak RSS {}",
                    self.mcp_sessions_completed
                        .map_or_else(|| "?".to_owned(), |n| n.to_string()),
                    show(self.mcp_session_p50_ms, "ms", 0),
                    show(self.mcp_session_p99_ms, "ms", 0),
                    show(self.rss_mcp_sessions_mb, "MiB", 1)
                ),
                ratio: "-".to_owned(),
                target: format!("<= {} s", target::MCP_SESSIONS_S),
                // A run where some sessions failed misses the target whatever its time.
                verdict: verdict(wall_s, |s| all_done && s <= target::MCP_SESSIONS_S),
            },
            Row {
                section: Section::Mcp,
                name: "mcp: ping p99, kept-alive connection".to_owned(),
                value: show(self.mcp_ping_p99_ms, "ms", 2),
                baseline: format!("p50 {}", show(self.mcp_ping_p50_ms, "ms", 2)),
                ratio: "-".to_owned(),
                target: format!("<= {} ms", target::MCP_KEPT_ALIVE_MS),
                verdict: verdict(self.mcp_ping_p99_ms, |ms| ms <= target::MCP_KEPT_ALIVE_MS),
            },
            Row {
                section: Section::Mcp,
                name: "mcp: ping p99, rmcp client".to_owned(),
                value: show(self.mcp_rmcp_ping_p99_ms, "ms", 2),
                baseline: format!(
                    "p50 {}; a new connection each",
                    show(self.mcp_rmcp_ping_p50_ms, "ms", 2)
                ),
                ratio: "-".to_owned(),
                target: "-".to_owned(),
                verdict: "",
            },
            // Reading `state://status` is Redis work (a scan of the sessions) as much as MCP's.
            Row {
                section: Section::Mcp,
                name: "mcp: status read p99, rmcp client".to_owned(),
                value: show(self.mcp_read_p99_ms, "ms", 2),
                baseline: format!("p50 {}", show(self.mcp_read_p50_ms, "ms", 2)),
                ratio: "-".to_owned(),
                target: "-".to_owned(),
                verdict: "",
            },
        ]
    }
}

/// The text table: each section's rows from its own figures, for the sections that ran.
pub fn render(report: &Report) -> String {
    let mut rows = Vec::new();
    rows.extend(report.awaited.rows());
    rows.extend(report.throughput.rows());
    rows.extend(report.calls.rows());
    rows.extend(report.e2e.rows());
    rows.extend(report.status.rows());
    rows.extend(report.memory.rows());
    rows.extend(report.record.rows());
    rows.extend(report.failover.rows());
    rows.extend(report.mcp.rows());
    rows.retain(|row| report.sections.contains(&row.section));

    let mut out = String::new();
    let machine = &report.machine;
    out.push_str(&format!(
        "tatbot-state bench{}: {} redis-server {} (AOF {}), {} CPUs ({}), load {} -> {}\n",
        if report.quick {
            " --quick (small counts; figures mean little)"
        } else {
            ""
        },
        report.server,
        report.redis_version.as_deref().unwrap_or("?"),
        match report.redis_aof {
            Some(true) => "on",
            Some(false) => "off",
            None => "?",
        },
        machine.cpus,
        machine.cpu_model.as_deref().unwrap_or("unknown CPU"),
        machine
            .load_start
            .map_or_else(|| "?".to_owned(), |load| format!("{load:.2}")),
        machine
            .load_end
            .map_or_else(|| "?".to_owned(), |load| format!("{load:.2}")),
    ));
    let header = Row {
        section: Section::Awaited,
        name: "measure".to_owned(),
        value: "value".to_owned(),
        baseline: "baseline (same run, same server)".to_owned(),
        ratio: "ratio".to_owned(),
        target: "target".to_owned(),
        verdict: "",
    };
    let width = |field: fn(&Row) -> &str| {
        rows.iter()
            .chain(std::iter::once(&header))
            .map(|row| field(row).chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths = [
        width(|row| &row.name),
        width(|row| &row.value),
        width(|row| &row.baseline),
        width(|row| &row.ratio),
        width(|row| &row.target),
    ];
    for row in std::iter::once(&header).chain(&rows) {
        let line = format!(
            "{:<w0$}  {:>w1$}  {:<w2$}  {:>w3$}  {:<w4$}  {}",
            row.name,
            row.value,
            row.baseline,
            row.ratio,
            row.target,
            row.verdict,
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    for note in &report.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    for failure in &report.failures {
        out.push_str(&format!("failed: {failure}\n"));
    }
    out
}
