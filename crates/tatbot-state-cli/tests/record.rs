//! `record`, `replay` and `foxglove` (issue #17): MCAP files read back with the `mcap` crate,
//! a replay watched through the follow API, and a Foxglove WebSocket client.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tatbot_state_testkit::RedisServer;

use crate::util::{DEADLINE, assert_code, bin, bin_for, run, simulate, spawn, stderr, stdout};

/// A message read back: topic, log time, JSON.
type Read = (String, u64, Value);

/// Every message of an MCAP file, and the schema encoding per topic.
fn read_mcap(path: &Path) -> (Vec<Read>, BTreeMap<String, String>) {
    let bytes = std::fs::read(path).unwrap();
    let mut messages = Vec::new();
    let mut schemas = BTreeMap::new();
    for message in mcap::MessageStream::new(&bytes).unwrap() {
        let message = message.unwrap();
        let schema = message.channel.schema.as_ref().expect("every channel has a schema");
        assert!(!schema.data.is_empty());
        schemas.insert(message.channel.topic.clone(), schema.encoding.clone());
        let value: Value = serde_json::from_slice(&message.data).unwrap();
        messages.push((message.channel.topic.clone(), message.log_time, value));
    }
    (messages, schemas)
}

fn on_topic<'a>(messages: &'a [Read], topic: &str) -> Vec<&'a Value> {
    messages
        .iter()
        .filter(|(name, ..)| name == topic)
        .map(|(_, _, value)| value)
        .collect()
}

/// A recorded simulated session holds every history entry and event once, with a JSON Schema
/// per channel, in log-time order; a corrupt history entry is counted and skipped.
#[test]
fn record_has_every_entry_once_with_schemas_in_log_time_order() {
    let server = RedisServer::start();
    let session = simulate(&server, "recbot", 3, 4);
    let history_key = format!("stream:stroke_history:{session}");
    server
        .command(&[
            "XADD",
            &history_key,
            "*",
            "stroke_idx",
            "not-a-number",
            "\u{1b}[2J",
            "x",
        ])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("session.mcap");
    let output = run(bin_for(&server), &["record", &session, "-o", file.to_str().unwrap()]);
    assert_code(&output, 0);
    assert!(stderr(&output).contains("skipped 1 corrupt"), "{}", stderr(&output));
    assert!(stdout(&output).contains("recorded"), "{}", stdout(&output));

    let (messages, schemas) = read_mcap(&file);
    assert!(schemas.values().all(|encoding| encoding == "jsonschema"), "{schemas:?}");
    let times: Vec<u64> = messages.iter().map(|(_, time, _)| *time).collect();
    assert!(
        times.windows(2).all(|pair| pair[0] <= pair[1]),
        "log times go back: {times:?}"
    );

    let progress = on_topic(&messages, "/tatbot/progress");
    let steps: Vec<(i64, i64)> = progress
        .iter()
        .map(|record| {
            (
                record["stroke_idx"].as_i64().unwrap(),
                record["pose_idx"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(i64, i64)> = (0..3)
        .flat_map(|stroke| (0..4).map(move |pose| (stroke, pose)))
        .collect();
    assert_eq!(steps, expected);
    assert!(progress.iter().all(|record| record["session_id"] == session.as_str()));
    let stored_ids: Vec<String> = server
        .command(&["XRANGE", &history_key, "-", "+"])
        .unwrap()
        .lines()
        .filter(|line| line.contains('-') && line.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_owned)
        .collect();
    let recorded_ids: Vec<&str> = progress.iter().map(|record| record["id"].as_str().unwrap()).collect();
    assert_eq!(&recorded_ids, &stored_ids[..12], "each stored entry once, in order");

    let events = on_topic(&messages, "/tatbot/events");
    let types: Vec<&str> = events
        .iter()
        .map(|record| record["event"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"session_start"), "{types:?}");
    assert_eq!(types.last(), Some(&"session_end"), "{types:?}");
    assert_eq!(types.iter().filter(|kind| **kind == "progress_update").count(), 12);
    let mut event_ids: Vec<&str> = events.iter().map(|record| record["id"].as_str().unwrap()).collect();
    event_ids.dedup();
    assert_eq!(event_ids.len(), events.len(), "no event twice");
}

/// `record --all --follow` stopped by SIGINT still writes a complete, valid file.
#[test]
fn record_follow_interrupted_leaves_a_valid_file() {
    let server = RedisServer::start();
    let session = simulate(&server, "recbot", 2, 3);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("live.mcap");
    let mut recorder = spawn(
        bin_for(&server),
        &["record", "--all", "--follow", "-o", file.to_str().unwrap()],
    );
    recorder.stderr.wait_for("recording live");
    // Live, the recorder reads with `XREAD BLOCK` 200 ms, over and over, on one connection: it
    // used to open a new one for every read (five a second while idle, more while busy).
    let (connections, reads) = connections_and_xreads(&server);
    let deadline = Instant::now() + DEADLINE;
    let (mut connections_now, mut reads_now) = (connections, reads);
    let mut probes = 1;
    while reads_now < reads + 10 {
        assert!(Instant::now() < deadline, "10 live reads within {DEADLINE:?}");
        (connections_now, reads_now) = connections_and_xreads(&server);
        probes += 1;
    }
    // Each look above is a connection of its own.
    assert!(
        connections_now - connections <= probes + 1,
        "{} connections for {} live reads",
        connections_now - connections - probes,
        reads_now - reads
    );
    signal::kill(Pid::from_raw(i32::try_from(recorder.pid()).unwrap()), Signal::SIGINT).unwrap();
    assert!(recorder.wait().success());

    let bytes = std::fs::read(&file).unwrap();
    let summary = mcap::Summary::read(&bytes)
        .unwrap()
        .expect("a finished file has a summary");
    assert_eq!(summary.channels.len(), 6);
    let (messages, _) = read_mcap(&file);
    let progress = on_topic(&messages, "/tatbot/progress");
    assert_eq!(progress.len(), 6);
    assert!(progress.iter().all(|record| record["session_id"] == session.as_str()));
}

/// The server's `total_connections_received` and `XREAD` calls, counting this look's own
/// connection.
fn connections_and_xreads(server: &RedisServer) -> (u64, u64) {
    let info = server.command(&["INFO", "stats", "commandstats"]).unwrap();
    let field = |prefix: &str, name: &str| {
        info.lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| {
                line.trim_start_matches(prefix)
                    .split(',')
                    .find_map(|part| part.strip_prefix(name)?.trim().parse().ok())
            })
            .unwrap_or(0)
    };
    (
        field("total_connections_received:", ""),
        field("cmdstat_xread:", "calls="),
    )
}

/// Runs `record SESSION --follow` on a fresh 40 Hz simulation of `strokes` x `length` poses;
/// returns the record command's output and the messages of its file, after the simulation ended.
fn record_follow(server: &RedisServer, strokes: &str, length: &str) -> (std::process::Output, Vec<Read>) {
    let mut simulation = spawn(
        bin_for(server),
        &[
            "--node-id",
            "livebot",
            "simulate",
            "--hz",
            "40",
            "--strokes",
            strokes,
            "--stroke-length",
            length,
        ],
    );
    let session = simulation.stdout.next();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("follow.mcap");
    let output = run(
        bin_for(server),
        &["record", &session, "--follow", "-o", file.to_str().unwrap()],
    );
    assert!(simulation.wait().success());
    let messages = if file.exists() { read_mcap(&file).0 } else { Vec::new() };
    (output, messages)
}

/// `record SESSION --follow` records a running session live and stops by itself at its end.
#[test]
fn record_follow_stops_when_the_session_ends() {
    let server = RedisServer::start();
    let (output, messages) = record_follow(&server, "2", "10");
    assert_code(&output, 0);
    assert_eq!(on_topic(&messages, "/tatbot/progress").len(), 20);
    let events = on_topic(&messages, "/tatbot/events");
    assert_eq!(events.last().unwrap()["event"]["type"], "session_end");
}

/// Another client's value under a log the recorder reads live fails every `XREAD` that names
/// it: the recorder leaves that key out, counts it as corrupt, and still records the session
/// live to its end (before, it read nothing and never stopped). Without the event log no
/// `session_end` comes, and the session's document tells that it ended.
#[test]
fn record_follow_leaves_out_a_log_of_another_type() {
    for broken in ["tatbot:errors", "tatbot:events"] {
        let server = RedisServer::start();
        server.command(&["SET", broken, "not a stream"]).unwrap();
        // 2.5 s of updates: the recording reads most of them live.
        let (output, messages) = record_follow(&server, "5", "20");
        assert_code(&output, 0);
        assert!(stderr(&output).contains("corrupt"), "{broken}: {}", stderr(&output));
        assert_eq!(on_topic(&messages, "/tatbot/progress").len(), 100, "{broken}");
        let events = on_topic(&messages, "/tatbot/events");
        if broken == "tatbot:events" {
            assert!(events.is_empty(), "{events:?}");
        } else {
            assert_eq!(events.last().unwrap()["event"]["type"], "session_end");
        }
    }
}

/// Records `strokes` x `length` poses of a fresh simulation to a file in `dir`.
fn recorded_session(server: &RedisServer, dir: &Path, hz: &str) -> (String, std::path::PathBuf) {
    let output = run(
        bin_for(server),
        &[
            "--node-id",
            "hog",
            "simulate",
            "--hz",
            hz,
            "--strokes",
            "2",
            "--stroke-length",
            "5",
        ],
    );
    assert_code(&output, 0);
    let session = stdout(&output).lines().next().unwrap().to_owned();
    let file = dir.join("session.mcap");
    assert_code(
        &run(bin_for(server), &["record", &session, "-o", file.to_str().unwrap()]),
        0,
    );
    (session, file)
}

/// A replay at rate 10 into another server: a follower sees the same progress steps as the
/// original, under the replay prefix, and the replay takes about a tenth of the original time.
#[test]
fn replay_at_rate_10_shows_the_same_progress_to_a_follower() {
    let original = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (session, file) = recorded_session(&original, dir.path(), "20");
    let (messages, _) = read_mcap(&file);
    let progress = on_topic(&messages, "/tatbot/progress");
    let expected: Vec<(i64, i64, String)> = progress
        .iter()
        .map(|record| {
            let description = record["description_l"].as_str().unwrap().to_owned();
            (
                record["stroke_idx"].as_i64().unwrap(),
                record["pose_idx"].as_i64().unwrap(),
                description,
            )
        })
        .collect();
    let times: Vec<u64> = messages.iter().map(|(_, time, _)| *time).collect();
    let span = Duration::from_nanos(times.last().unwrap() - times.first().unwrap());

    let target = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seen = runtime.block_on(async {
        let config = tatbot_state::ManagerConfig::new(
            tatbot_state::Endpoint::new(target.host(), target.port()),
            tatbot_state::NodeId::new("watcher").unwrap(),
        );
        let manager = tatbot_state::StateManager::connect(config).await.unwrap();
        let mut follower = manager.follow(tatbot_state::Scope::All, None);
        // The first item is the (empty) snapshot: the follower is reading before the replay.
        assert!(matches!(
            follower.next().await,
            Some(tatbot_state::FollowItem::Snapshot(_))
        ));
        let url = format!("redis://{}:{}", target.host(), target.port());
        let started = Instant::now();
        let replay = tokio::process::Command::from(bin())
            .args(["replay", file.to_str().unwrap(), "--rate", "10", "--into", &url])
            .output();
        let collect = async {
            let mut seen = Vec::new();
            while seen.len() < expected.len() {
                let item = tokio::time::timeout(DEADLINE, follower.next()).await.unwrap().unwrap();
                if let tatbot_state::FollowItem::Change(change) = item
                    && let tatbot_state::follow::ChangeKind::Progress { session_id, entry } = change.kind
                {
                    seen.push((
                        session_id.to_string(),
                        entry.stroke_idx,
                        entry.pose_idx,
                        entry.description_l,
                    ));
                }
            }
            seen
        };
        let (output, seen) = tokio::join!(replay, collect);
        let output = output.unwrap();
        assert_code(&output, 0);
        assert!(
            started.elapsed() >= span / 10,
            "{:?} is faster than a tenth of {span:?}",
            started.elapsed()
        );
        seen
    });
    let replayed = format!("replay.{session}");
    assert!(seen.iter().all(|(id, ..)| *id == replayed), "{seen:?}");
    let steps: Vec<(i64, i64, String)> = seen
        .into_iter()
        .map(|(_, stroke, pose, text)| (stroke, pose, text))
        .collect();
    assert_eq!(steps, expected);
    // The original session id was never written on the target.
    let exists = target
        .command(&["EXISTS", &format!("stroke:progress:{session}")])
        .unwrap();
    assert_eq!(exists.trim().trim_start_matches(':'), "0");
}

/// Not MCAP, truncated, an unknown channel, an empty file: one line on stderr, no panic.
#[test]
fn replay_rejects_bad_files_with_one_line() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (_, good) = recorded_session(&server, dir.path(), "0");
    let bytes = std::fs::read(&good).unwrap();

    let not_mcap = dir.path().join("notes.mcap");
    std::fs::write(&not_mcap, "hello, this is text\n").unwrap();
    let truncated = dir.path().join("truncated.mcap");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let empty = dir.path().join("empty.mcap");
    std::fs::write(&empty, b"").unwrap();
    let unknown = dir.path().join("unknown.mcap");
    {
        let mut writer = mcap::Writer::new(std::io::BufWriter::new(std::fs::File::create(&unknown).unwrap())).unwrap();
        let channel = writer
            .add_channel(0, "/camera/image", "json", &BTreeMap::new())
            .unwrap();
        let header = mcap::records::MessageHeader {
            channel_id: channel,
            sequence: 1,
            log_time: 1,
            publish_time: 1,
        };
        writer.write_to_known_channel(&header, b"{}").unwrap();
        writer.finish().unwrap();
    }
    for (file, expected) in [
        (&not_mcap, "not an MCAP file"),
        (&truncated, "truncated"),
        (&empty, "not an MCAP file"),
        (&unknown, "unknown channel \"/camera/image\""),
    ] {
        let output = run(bin(), &["replay", file.to_str().unwrap(), "--exit-when-done"]);
        assert_code(&output, 1);
        let text = stderr(&output);
        assert_eq!(text.trim_end().lines().count(), 1, "{text}");
        assert!(text.contains(expected), "{text}");
    }
    let output = run(
        bin(),
        &["replay", good.to_str().unwrap(), "--rate", "0", "--into", &server.url()],
    );
    assert_code(&output, 2);
    assert!(
        stderr(&output).contains("rate 0 is not a positive number"),
        "{}",
        stderr(&output)
    );
}

/// Records that declare lengths far beyond their own size (a header from the `replay_reader`
/// fuzz target, and a channel whose topic claims 3.7 GB) are one-line errors, run under a 2 GiB
/// address-space limit: the `mcap` crate's parser reserves a declared string length before
/// reading it, so without the check the process aborts on the allocation.
#[test]
fn replay_refuses_huge_declared_lengths() {
    if std::process::Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // fuzz/artifacts/replay_reader/oom-002c04c8…, as the fuzzer wrote it.
    let mut fuzzed = b"\x89MCAP0\r\n\x01\x0f".to_vec();
    fuzzed.extend_from_slice(&[0; 12]);
    fuzzed.extend_from_slice(&[0x40, 0x06]);
    fuzzed.extend_from_slice(&[0xdf; 40]);
    fuzzed.extend_from_slice(&[0; 24]);
    fuzzed.extend_from_slice(&[0x09, 0x00]);
    assert_eq!(fuzzed.len(), 90);
    let mut channel = b"\x89MCAP0\r\n".to_vec();
    let body: Vec<u8> = [&[1u8, 0, 0, 0][..], &0xdf06_4000u32.to_le_bytes(), b"/tatbot/progress"].concat();
    channel.push(mcap::records::op::CHANNEL);
    channel.extend_from_slice(&(body.len() as u64).to_le_bytes());
    channel.extend_from_slice(&body);
    for (name, bytes, expected) in [
        ("fuzzed.mcap", fuzzed, "corrupt MCAP file"),
        ("channel.mcap", channel, "lengths overrun the record"),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, bytes).unwrap();
        let mut command = std::process::Command::new("prlimit");
        command.arg("--as=2147483648").arg(env!("CARGO_BIN_EXE_tatbot-state"));
        let output = run(command, &["replay", file.to_str().unwrap(), "--exit-when-done"]);
        let text = stderr(&output);
        assert_code(&output, 1);
        assert_eq!(text.trim_end().lines().count(), 1, "{name}: {text}");
        assert!(text.contains(expected), "{name}: {text}");
    }
}

/// A Foxglove WebSocket client gets the channels with their schemas, live progress messages on
/// the progress channel it subscribed to, and the parameters.
#[test]
fn foxglove_serves_live_progress_and_parameters() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("params.yaml");
    std::fs::write(&yaml, "arms:\n  goal_time_slow: 2.5\n").unwrap();
    assert_code(&run(bin_for(&server), &["param", "load", yaml.to_str().unwrap()]), 0);

    let foxglove = spawn(bin_for(&server), &["foxglove", "--bind", "127.0.0.1:0"]);
    let line = foxglove.stdout.wait_for("ws://");
    let address = line
        .split_whitespace()
        .find(|word| word.starts_with("ws://"))
        .unwrap()
        .to_owned();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut request = address.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "foxglove.sdk.v1".parse().unwrap());
        let (mut socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(response.headers()["sec-websocket-protocol"], "foxglove.sdk.v1");

        let mut channel_ids = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while channel_ids.len() < 6 {
            let message = tokio::time::timeout_at(deadline, socket.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let WsMessage::Text(text) = message else { continue };
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["op"] == "advertise" {
                for channel in value["channels"].as_array().unwrap() {
                    assert_eq!(channel["schemaEncoding"], "jsonschema");
                    assert!(channel["schema"].as_str().unwrap().contains("properties"));
                    channel_ids.insert(
                        channel["topic"].as_str().unwrap().to_owned(),
                        channel["id"].as_u64().unwrap(),
                    );
                }
            }
        }
        let subscribe = serde_json::json!({
            "op": "subscribe",
            "subscriptions": [{"id": 7, "channelId": channel_ids["/tatbot/progress"]}],
        });
        socket
            .send(WsMessage::Text(subscribe.to_string().into()))
            .await
            .unwrap();
        let get = serde_json::json!({"op": "getParameters", "parameterNames": [], "id": "all"});
        socket.send(WsMessage::Text(get.to_string().into())).await.unwrap();

        let simulation = tokio::process::Command::from(bin_for(&server))
            .args([
                "--node-id",
                "foxbot",
                "simulate",
                "--hz",
                "50",
                "--strokes",
                "2",
                "--stroke-length",
                "5",
            ])
            .output();
        let read = async {
            let (mut parameters, mut progress) = (None, Vec::new());
            while parameters.is_none() || progress.len() < 3 {
                let message = tokio::time::timeout_at(deadline, socket.next())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                match message {
                    WsMessage::Text(text) => {
                        let value: Value = serde_json::from_str(&text).unwrap();
                        if value["op"] == "parameterValues" && value["id"] == "all" {
                            parameters = Some(value["parameters"].clone());
                        }
                    }
                    WsMessage::Binary(data) => {
                        // Opcode 1 (message data), subscription id, log time, payload.
                        assert_eq!(data[0], 1);
                        assert_eq!(u32::from_le_bytes(data[1..5].try_into().unwrap()), 7);
                        let record: Value = serde_json::from_slice(&data[13..]).unwrap();
                        progress.push(record);
                    }
                    _ => {}
                }
            }
            (parameters.unwrap(), progress)
        };
        let (output, (parameters, progress)) = tokio::join!(simulation, read);
        assert!(output.unwrap().status.success());
        assert_eq!(parameters[0]["name"], "arms.goal_time_slow");
        assert_eq!(parameters[0]["value"], 2.5);
        assert!(
            progress
                .iter()
                .all(|record| record["session_id"].as_str().unwrap().starts_with("stroke_foxbot_"))
        );
        assert_eq!(progress[0]["stroke_idx"], 0);
    });
}

/// The dashboard in Chromium shows a session replayed into its server; clicking it opens the
/// session's timeline from its history stream, which stays browsable after the end, and the
/// scrubber moves through its entries.
#[test]
fn dashboard_shows_a_replayed_session_and_its_timeline() {
    use crate::viz::{artifact, wait_in_page};
    use crate::webdriver::Browser;

    let original = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (session, file) = recorded_session(&original, dir.path(), "50");
    let target = RedisServer::start();
    let viz = spawn(bin_for(&target), &["--node-id", "viz", "viz", "--bind", "127.0.0.1:0"]);
    let url = viz.stdout.wait_for("http://");
    let url = url
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap()
        .to_owned();
    let browser = Browser::start(1280, 1000);
    browser.goto(&url);

    let output = run(
        bin(),
        &[
            "replay",
            file.to_str().unwrap(),
            "--rate",
            "10",
            "--into",
            &target.url(),
        ],
    );
    assert_code(&output, 0);
    let replayed = format!("replay.{session}");
    let card = format!("document.querySelector('[data-session=\"{replayed}\"]')");
    wait_in_page(
        &browser,
        "the replayed session, ended",
        &format!("const c = {card}; return c && c.querySelector('.state').textContent === 'ended'"),
    );
    browser.eval(&format!("{card}.click(); return true"));
    let title = wait_in_page(
        &browser,
        "the timeline",
        "const t = document.getElementById('timeline-title').textContent; return t.includes('10 entries') && t",
    );
    assert!(title.as_str().unwrap().contains("ended"), "{title}");
    let marks = browser.eval("return [...document.querySelectorAll('.timeline-mark')].map((m) => m.textContent)");
    assert_eq!(marks, serde_json::json!(["session_start", "session_end"]));
    let last = browser.eval("return document.getElementById('timeline-at').textContent");
    assert!(last.as_str().unwrap().starts_with("10/10"), "{last}");
    let first = browser.eval(
        "const s = document.getElementById('timeline-scrub'); s.value = 0; \
         s.dispatchEvent(new Event('input')); return document.getElementById('timeline-at').textContent",
    );
    assert!(first.as_str().unwrap().starts_with("1/10"), "{first}");
    assert!(first.as_str().unwrap().contains("stroke 1 pose 1"), "{first}");
    browser.screenshot(&artifact("viz-timeline.png"));
}

/// Entries per session in [`long_sessions_record_merged_and_replay_in_order`]: more than one
/// `XRANGE` page (10,000) and more than one replay pipeline (1,000).
const LONG_SESSION: usize = 12_000;

/// Writes `LONG_SESSION` entries to each session's history, alternating between them so their
/// ids interleave; entry `i` is stroke `i / 1000`, pose `i % 1000`. Returns each session's ids.
fn seed_long_sessions(server: &RedisServer, sessions: [&str; 2]) -> [Vec<String>; 2] {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = redis::Client::open(format!("redis://{}:{}/", server.host(), server.port())).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let mut ids = [Vec::new(), Vec::new()];
        for start in (0..LONG_SESSION).step_by(1_000) {
            let mut pipe = redis::pipe();
            for i in start..start + 1_000 {
                for session in sessions {
                    pipe.cmd("XADD")
                        .arg(format!("stream:stroke_history:{session}"))
                        .arg("*")
                        .arg("stroke_idx")
                        .arg(i / 1_000)
                        .arg("pose_idx")
                        .arg(i % 1_000)
                        .arg("description_l")
                        .arg(format!("{session} {i}"))
                        .arg("description_r")
                        .arg("")
                        .arg("node_id")
                        .arg("hog");
                }
            }
            let added: Vec<String> = pipe.query_async(&mut connection).await.unwrap();
            for (index, id) in added.into_iter().enumerate() {
                ids[index % 2].push(id);
            }
        }
        ids
    })
}

/// The `(pose_idx, description_l)` of every entry of a history stream, and a progress
/// document, read with a plain client.
fn read_history(server: &RedisServer, session: &str) -> (Vec<(i64, String)>, Value) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = redis::Client::open(format!("redis://{}:{}/", server.host(), server.port())).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(format!("stream:stroke_history:{session}"))
            .arg("-")
            .arg("+")
            .query_async(&mut connection)
            .await
            .unwrap();
        let entries = reply
            .ids
            .iter()
            .map(|entry| {
                let pose: String = entry.get("pose_idx").unwrap();
                (pose.parse().unwrap(), entry.get("description_l").unwrap())
            })
            .collect();
        let doc: String = redis::cmd("HGET")
            .arg(format!("stroke:progress:{session}"))
            .arg("progress")
            .query_async(&mut connection)
            .await
            .unwrap();
        (entries, serde_json::from_str(&doc).unwrap())
    })
}

/// Two long sessions whose entries interleave, each read in several pages: the recording has
/// every entry once, merged in log-time order (equal milliseconds in the order the sessions
/// were named, each session's entries in stream order). Replayed as fast as it goes, with
/// pipelines in flight back to back, each replayed stream holds its entries in the original
/// order and each progress document is that of the session's last entry.
#[test]
fn long_sessions_record_merged_and_replay_in_order() {
    let server = RedisServer::start();
    let sessions = ["long_a", "long_b"];
    let ids = seed_long_sessions(&server, sessions);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("long.mcap");
    let output = run(
        bin_for(&server),
        &["record", sessions[0], sessions[1], "-o", file.to_str().unwrap()],
    );
    assert_code(&output, 0);

    let (messages, _) = read_mcap(&file);
    let recorded: Vec<(String, String)> = on_topic(&messages, "/tatbot/progress")
        .iter()
        .map(|record| {
            (
                record["session_id"].as_str().unwrap().to_owned(),
                record["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let millis = |id: &str| id.split_once('-').unwrap().0.parse::<u64>().unwrap();
    let mut expected: Vec<(String, String)> = sessions
        .iter()
        .zip(&ids)
        .flat_map(|(session, ids)| ids.iter().map(|id| ((*session).to_owned(), id.clone())))
        .collect();
    expected.sort_by_key(|(_, id)| millis(id));
    assert_eq!(recorded.len(), 2 * LONG_SESSION);
    assert!(
        recorded == expected,
        "the recording is not the entries merged by log time"
    );
    let times: Vec<u64> = messages.iter().map(|(_, time, _)| *time).collect();
    assert!(times.windows(2).all(|pair| pair[0] <= pair[1]), "log times go back");

    let target = RedisServer::start();
    let url = format!("redis://{}:{}", target.host(), target.port());
    let output = run(
        bin(),
        &["replay", file.to_str().unwrap(), "--rate", "1000000000", "--into", &url],
    );
    assert_code(&output, 0);
    assert!(
        stdout(&output).contains(&format!("replayed {}", 2 * LONG_SESSION)),
        "{}",
        stdout(&output)
    );
    for session in sessions {
        let (entries, doc) = read_history(&target, &format!("replay.{session}"));
        // The stream is trimmed to about its bound (10,000): what is left is the end, in order.
        assert!(entries.len() >= 10_000, "{} entries", entries.len());
        let skipped = LONG_SESSION - entries.len();
        let original: Vec<(i64, String)> = (skipped..LONG_SESSION)
            .map(|i| ((i % 1_000) as i64, format!("{session} {i}")))
            .collect();
        assert!(entries == original, "replay.{session} is not in the original order");
        assert_eq!(doc["stroke_idx"], 11);
        assert_eq!(doc["pose_idx"], 999);
        assert_eq!(doc["stroke_description_l"], format!("{session} {}", LONG_SESSION - 1));
    }
}
