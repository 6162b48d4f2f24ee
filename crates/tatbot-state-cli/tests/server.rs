//! `server start | stop | status` on real redis-server processes in temp dirs.

use tatbot_state::{Endpoint, ManagerConfig, NodeId, ProgressUpdate, SessionId, SessionPlan, StateManager};
use tatbot_state_testkit::RedisServer;

use crate::util::{ServerDir, assert_code, bin, is_alive, json, run, stderr, stdout};

/// Runs a future on a fresh current-thread runtime (the tests themselves are synchronous).
fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

async fn manager(port: u16) -> StateManager {
    let node_id = NodeId::new("server-test").expect("a valid node id");
    StateManager::connect(ManagerConfig::new(Endpoint::new("127.0.0.1", port), node_id))
        .await
        .expect("the started server accepts connections")
}

/// A started server reports AOF everysec on loopback, and data written before `stop` is there after the next `start`.
#[test]
fn start_status_stop_restart_keeps_data() {
    let server_dir = ServerDir::new();
    let port = server_dir.port;

    let started = server_dir.server("start", &[]);
    assert_code(&started, 0);
    assert!(
        stdout(&started).contains("redis-server started"),
        "{}",
        stdout(&started)
    );
    let pid = server_dir.pid().expect("a pid file after start");
    assert!(is_alive(pid));

    let status = server_dir.server("status", &["--json"]);
    assert_code(&status, 0);
    let status = json(&status);
    assert_eq!(status["aof_enabled"], true, "{status}");
    assert_eq!(status["appendfsync"], "everysec", "{status}");
    assert_eq!(status["pid"], pid, "{status}");
    assert_eq!(status["ours"], true, "{status}");
    assert_eq!(status["port"], port, "{status}");
    let bind = status["bind"].as_array().expect("bind is a list");
    assert!(bind.iter().any(|address| address == "127.0.0.1"), "{status}");

    let session_id: SessionId = block_on(async {
        let manager = manager(port).await;
        let session_id = manager
            .start_stroke_session(&SessionPlan {
                total_strokes: 2,
                stroke_length: 3,
                scene: "persisted".into(),
            })
            .await
            .expect("start a session");
        manager
            .update_stroke_progress(&session_id, &ProgressUpdate::new(1, 2))
            .await
            .expect("update progress");
        session_id
    });

    let stopped = server_dir.server("stop", &[]);
    assert_code(&stopped, 0);
    assert!(stdout(&stopped).contains("stopped"), "{}", stdout(&stopped));
    assert!(!is_alive(pid), "stop returned while pid {pid} still runs");

    assert_code(&server_dir.server("start", &[]), 0);
    let progress = block_on(async { manager(port).await.get_stroke_progress(&session_id).await })
        .expect("read progress")
        .expect("the session survived the restart");
    assert_eq!((progress.stroke_idx, progress.pose_idx), (1, 2));
    assert_eq!(progress.scene_name, "persisted");

    assert_code(&server_dir.server("stop", &[]), 0);
    let status = server_dir.server("status", &[]);
    assert_code(&status, 3);
    assert!(
        stderr(&status).contains("tatbot-state server start"),
        "{}",
        stderr(&status)
    );
}

/// Starting twice is fine when it is ours, and a port served by another redis-server is an error.
#[test]
fn start_is_idempotent_and_refuses_a_foreign_port() {
    let server_dir = ServerDir::new();
    assert_code(&server_dir.server("start", &[]), 0);
    let again = server_dir.server("start", &[]);
    assert_code(&again, 0);
    assert!(stdout(&again).contains("already running"), "{}", stdout(&again));

    let foreign = RedisServer::start();
    let other_dir = tempfile::tempdir().expect("a temp dir");
    let port = foreign.port().to_string();
    let dir = other_dir.path().display().to_string();
    let refused = run(bin(), &["-p", &port, "server", "start", "--dir", &dir]);
    assert_code(&refused, 1);
    assert!(
        stderr(&refused).contains("already served by another redis-server"),
        "{}",
        stderr(&refused)
    );
    assert_code(&server_dir.server("stop", &[]), 0);
}

/// A password becomes requirepass: status without it is exit 4, with it exit 0.
#[test]
fn password_becomes_requirepass() {
    let server_dir = ServerDir::new();
    assert_code(&server_dir.server("start", &["-a", "s3cret"]), 0);
    let conf = std::fs::read_to_string(server_dir.path().join("redis.conf")).expect("redis.conf");
    assert!(conf.lines().any(|line| line == "requirepass \"s3cret\""));

    assert_code(&server_dir.server("status", &[]), 4);
    assert_code(&server_dir.server("status", &["-a", "s3cret"]), 0);
    assert_code(&server_dir.server("stop", &["-a", "s3cret"]), 0);
}

/// An address the host does not have makes start fail with Redis's reason, leaving no process.
#[test]
fn bind_failure_is_reported_from_the_log() {
    let server_dir = ServerDir::new();
    // 192.0.2.1 is TEST-NET-1: never assigned to this host, so Redis cannot bind it.
    let failed = server_dir.server("start", &["--bind", "192.0.2.1"]);
    assert_code(&failed, 1);
    assert!(
        stderr(&failed).contains("exited during startup") && stderr(&failed).contains("192.0.2.1"),
        "{}",
        stderr(&failed)
    );
    assert!(crate::util::processes_in(server_dir.path()).is_empty());
}

/// Runs one script that writes `keys` (so its effects reach the AOF inside `MULTI`/`EXEC`) on
/// the server at `port`, and answers which of `probe` exist.
fn script_writes_then_exists(port: u16, keys: &[&str], probe: &[&str]) -> Vec<bool> {
    block_on(async {
        let mut connection = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("the started server accepts connections");
        if !keys.is_empty() {
            let script = "for _, key in ipairs(KEYS) do redis.call('SET', key, '1') end";
            let mut invocation = redis::cmd("EVAL");
            invocation.arg(script).arg(keys.len()).arg(keys);
            let () = invocation.query_async(&mut connection).await.expect("the script runs");
        }
        let mut exists = Vec::new();
        for key in probe {
            let found: bool = redis::cmd("EXISTS")
                .arg(*key)
                .query_async(&mut connection)
                .await
                .unwrap();
            exists.push(found);
        }
        exists
    })
}

/// A crash that cuts the AOF inside a script's `MULTI` block: Redis 7.0 alone keeps the open
/// block and, at the restart after the next one, merges the writes made in between into it, so
/// the half-written script comes back applied. `server start` repairs the AOF first (cut before
/// the `MULTI`, with a warning): the cut script stays unapplied, the later one applied.
#[test]
fn start_repairs_an_aof_cut_inside_a_script() {
    let server_dir = ServerDir::new();
    let port = server_dir.port;
    assert_code(&server_dir.server("start", &[]), 0);
    script_writes_then_exists(port, &["cut_a", "cut_b"], &[]);
    assert_code(&server_dir.server("stop", &[]), 0);

    // The crash: the file ends inside the block's closing EXEC (14 bytes: *1 $4 EXEC).
    cut_inside_the_last_exec(&server_dir.path().join("data"));

    let started = server_dir.server("start", &[]);
    assert_code(&started, 0);
    assert!(
        stderr(&started).contains("the AOF ended inside a write"),
        "{}",
        stderr(&started)
    );
    assert_eq!(
        script_writes_then_exists(port, &["later_c", "later_d"], &["cut_a", "cut_b"]),
        [false, false]
    );
    assert_code(&server_dir.server("stop", &[]), 0);
    assert_code(&server_dir.server("start", &[]), 0);
    assert_eq!(
        script_writes_then_exists(port, &[], &["cut_a", "cut_b", "later_c", "later_d"]),
        [false, false, true, true],
        "the cut script stays unapplied after the next restart, the later one is kept"
    );
}

/// The AOF file Redis appends to, in the data dir `data`.
fn incr_aof(data: &std::path::Path) -> std::path::PathBuf {
    tatbot_state_testkit::aof::appended(data)
        .unwrap()
        .expect("an incremental AOF file")
}

/// Cuts the AOF Redis appends to under the data dir `data` inside its last script's closing
/// `EXEC`, as a crash can; answers the file and what it holds now.
fn cut_inside_the_last_exec(data: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let incr = incr_aof(data);
    let mut bytes = std::fs::read(&incr).unwrap();
    assert!(
        bytes.ends_with(b"EXEC\r\n"),
        "the script's writes end the AOF inside MULTI/EXEC"
    );
    bytes.truncate(bytes.len() - 5);
    std::fs::write(&incr, &bytes).unwrap();
    (incr, bytes)
}

/// A `redis-server` started by hand on the config `server start` wrote, without its repair,
/// refuses an AOF cut inside a script, saying what to do, and leaves it as it was; with Redis's
/// default (`aof-load-truncated yes`) it loaded the half script and kept the block open, which
/// the restart after the next one merges with later writes.
#[test]
fn redis_on_the_projects_config_refuses_a_cut_aof() {
    let server_dir = ServerDir::new();
    let port = server_dir.port;
    assert_code(&server_dir.server("start", &[]), 0);
    script_writes_then_exists(port, &["cut_a", "cut_b"], &[]);
    assert_code(&server_dir.server("stop", &[]), 0);
    let conf = server_dir.path().join("redis.conf");
    assert!(
        std::fs::read_to_string(&conf)
            .unwrap()
            .contains("\naof-load-truncated no\n"),
        "the generated redis.conf refuses a cut AOF"
    );
    let (incr, cut) = cut_inside_the_last_exec(&server_dir.path().join("data"));

    let log = server_dir.path().join("redis.log");
    let logged = std::fs::read(&log).map_or(0, |text| text.len());
    // The binary `server start` uses: TATBOT_REDIS_SERVER, else the one on PATH.
    let binary = std::env::var_os(tatbot_state_testkit::REDIS_SERVER_ENV).unwrap_or_else(|| "redis-server".into());
    let mut redis = std::process::Command::new(binary);
    redis.arg(&conf).args(["--daemonize", "no"]);
    let status = crate::util::spawn(redis, &[]).wait();
    assert!(!status.success(), "redis-server loaded a cut AOF: {status}");
    let said = String::from_utf8_lossy(&std::fs::read(&log).unwrap()[logged..]).into_owned();
    assert!(said.contains("Unexpected end of file"), "{said}");
    assert!(said.contains("redis-check-aof --fix"), "{said}");
    assert_eq!(std::fs::read(&incr).unwrap(), cut, "the file is left as it was");
}

/// `server repair --data` on the data dir of a redis-server run by hand: refused while Redis
/// has the AOF open; then cuts a script the crash cut inside its `EXEC` (which stays unapplied
/// once Redis starts again) and says so, finds the file whole the second time, refuses damage
/// in the middle and leaves the file as it was, names a dir that does not exist, and refuses a
/// Redis 6 single-file AOF.
#[test]
fn repair_cuts_a_crash_cut_and_refuses_the_rest() {
    let mut server = RedisServer::builder().persistence(true).start();
    let data = server.dir().to_str().unwrap().to_owned();
    let repair = || run(bin(), &["server", "repair", "--data", &data]);
    let script = |keys: &[&str]| {
        let mut args = vec![
            "EVAL",
            "for _, key in ipairs(KEYS) do redis.call('SET', key, '1') end",
            "2",
        ];
        args.extend_from_slice(keys);
        assert_eq!(server.command(&args).unwrap(), "$-1\r\n");
    };
    script(&["kept_a", "kept_b"]);
    script(&["cut_a", "cut_b"]);

    let refused = repair();
    assert_code(&refused, 1);
    assert!(
        stderr(&refused).contains("(redis-server) has the AOF in"),
        "{}",
        stderr(&refused)
    );

    server.stop();
    let (incr, _) = cut_inside_the_last_exec(server.dir());
    let cut = repair();
    assert_code(&cut, 0);
    assert!(stdout(&cut).contains("ended inside a write"), "{}", stdout(&cut));
    let whole = repair();
    assert_code(&whole, 0);
    assert!(stdout(&whole).contains("nothing to cut"), "{}", stdout(&whole));
    server.restart();
    let exists = |key: &str| server.command(&["EXISTS", key]).unwrap() == ":1\r\n";
    assert!(exists("kept_a") && exists("kept_b"), "the whole script is kept");
    assert!(!exists("cut_a") && !exists("cut_b"), "the cut script stays unapplied");

    server.stop();
    let bytes = std::fs::read(&incr).unwrap();
    let at = bytes
        .windows(6)
        .position(|window| window == b"kept_b")
        .expect("kept_b is in the AOF");
    let damaged = [&bytes[..at], b"@@flipped@@", &bytes[at..]].concat();
    std::fs::write(&incr, &damaged).unwrap();
    let refused = repair();
    assert_code(&refused, 1);
    assert!(
        stderr(&refused).contains("is damaged before its end"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(std::fs::read(&incr).unwrap(), damaged, "the file is left as it was");

    let missing = run(bin(), &["server", "repair", "--data", &format!("{data}/missing")]);
    assert_code(&missing, 1);
    assert!(stderr(&missing).contains("is not a directory"), "{}", stderr(&missing));

    let redis6 = tempfile::tempdir().unwrap();
    std::fs::write(redis6.path().join("appendonly.aof"), b"*1\r\n$5\r\nMULTI\r\n").unwrap();
    let single = run(bin(), &["server", "repair", "--data", redis6.path().to_str().unwrap()]);
    assert_code(&single, 1);
    assert!(
        stderr(&single).contains("is a single-file AOF (Redis 6 or older)"),
        "{}",
        stderr(&single)
    );
}

/// Damage in the middle of the AOF (not a crash's cut at its end) is not cut: `--fix` would drop
/// every write after it. `server start` refuses with one line naming the checker, and the file
/// is left as it was for a person to rescue.
#[test]
fn start_leaves_an_aof_damaged_in_the_middle_alone() {
    let server_dir = ServerDir::new();
    let port = server_dir.port;
    assert_code(&server_dir.server("start", &[]), 0);
    for key in ["k1", "k2", "k3"] {
        script_writes_then_exists(port, &[key], &[]);
    }
    assert_code(&server_dir.server("stop", &[]), 0);
    let incr = incr_aof(&server_dir.path().join("data"));
    let bytes = std::fs::read(&incr).unwrap();
    let at = bytes
        .windows(2)
        .position(|window| window == b"k2")
        .expect("k2 is in the AOF");
    let damaged = [&bytes[..at], b"@@flipped@@", &bytes[at..]].concat();
    std::fs::write(&incr, &damaged).unwrap();

    let refused = server_dir.server("start", &[]);
    assert_code(&refused, 1);
    let text = stderr(&refused);
    assert_eq!(text.trim_end().lines().count(), 1, "{text}");
    assert!(text.contains("is damaged before its end, not cut by a crash"), "{text}");
    assert!(text.contains("keep a copy of the directory"), "{text}");
    assert_eq!(std::fs::read(&incr).unwrap(), damaged, "the file is left as it was");
}

/// `start` returns once the server has loaded its data, not as soon as it answers `INFO`
/// (which a server loading its AOF does, while every other command gets `-LOADING`): a
/// command right after `start` is served. Before, with 500,000 writes to load, the first
/// command after `start` failed with "Redis is loading the dataset in memory".
#[test]
fn start_waits_for_the_data_to_load() {
    let server_dir = ServerDir::new();
    let port = server_dir.port;
    stopped_with_keys(&server_dir, 500_000);
    assert_code(&server_dir.server("start", &[]), 0);
    assert_eq!(
        script_writes_then_exists(port, &[], &["key0", "key499999"]),
        [true, true],
        "served right after start"
    );
    assert_code(&server_dir.server("stop", &[]), 0);
}

/// Starts the server of `server_dir`, writes `count` small keys `key0`... and stops it: its
/// AOF then takes a while to load (the time is per command).
fn stopped_with_keys(server_dir: &ServerDir, count: usize) {
    assert_code(&server_dir.server("start", &[]), 0);
    fill(server_dir.port, count);
    assert_code(&server_dir.server("stop", &[]), 0);
}

/// Writes `count` small keys `key0`... to the server at `port`.
fn fill(port: u16, count: usize) {
    block_on(async {
        let mut connection = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        for chunk in 0..count.div_ceil(10_000) {
            let mut writes = redis::pipe();
            for i in chunk * 10_000..count.min((chunk + 1) * 10_000) {
                writes.cmd("SET").arg(format!("key{i}")).arg(i).ignore();
            }
            let () = writes.query_async(&mut connection).await.unwrap();
        }
    });
}

/// Whether the server at `port` says it is loading its data (`INFO persistence`); `None` when
/// it does not answer.
fn loading(port: u16) -> Option<bool> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(2))).ok()?;
    stream.write_all(b"INFO persistence\r\n").ok()?;
    let mut answer = Vec::new();
    let mut buffer = [0; 4096];
    while !answer.windows(8).any(|window| window == b"loading:") || !answer.ends_with(b"\r\n\r\n") {
        let read = stream.read(&mut buffer).ok().filter(|read| *read > 0)?;
        answer.extend_from_slice(&buffer[..read]);
    }
    Some(String::from_utf8_lossy(&answer).contains("loading:1"))
}

/// A second `start` while the first one's server is still loading its data waits for it and
/// says it was running already. It used to fail: the server answered `INFO` without its pid
/// yet, which read as "already running (pid N) but not on port P".
#[test]
fn start_while_the_server_loads_waits_for_it() {
    let server_dir = ServerDir::new();
    let port = server_dir.port;
    stopped_with_keys(&server_dir, 1_000_000);
    let dir = server_dir.path().display().to_string();
    let port_arg = port.to_string();
    let mut first = bin()
        .args(["-p", &port_arg, "server", "start", "--dir", &dir])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while loading(port) != Some(true) {
        assert!(
            std::time::Instant::now() < deadline,
            "the server is seen loading its data"
        );
        std::thread::yield_now();
    }
    let second = server_dir.server("start", &["--json"]);
    assert_code(&second, 0);
    assert_eq!(json(&second)["already_running"], true, "{}", stdout(&second));
    assert_eq!(loading(port), Some(false), "the second start returns once it is loaded");
    assert!(first.wait().unwrap().success());
    assert_code(&server_dir.server("stop", &[]), 0);
}
