//! Issue #13 points 2 and 5: a session whose robot died (`simulate` killed with SIGKILL) is
//! shown stale, never executing, by every view within its lease; it is announced once; and an
//! operator ends it with `sessions abort`, which a viewer may not run.

use std::time::{Duration, Instant};

use serde_json::Value;
use tatbot_state_testkit::RedisServer;

use crate::mcp::{read, stdio_client};
use crate::util::{assert_code, bin, json, role_server, run, spawn, stderr, stdout, wait_until};

use crate::viz::{artifact, wait_in_page};
use crate::webdriver::Browser;

/// The lease `simulate` is given: short, so the test is quick.
const LEASE_SECS: u64 = 2;

/// `bin()` for `server` as `user` (the ACL roles of `config/redis/users.acl`).
fn as_user(server: &RedisServer, user: &str) -> std::process::Command {
    let mut command = bin();
    let password = format!("{user}-pw");
    command.args([
        "-h",
        server.host(),
        "-p",
        &server.port().to_string(),
        "--user",
        user,
        "-a",
        &password,
    ]);
    command
}

/// A synchronous connection as the admin user.
fn admin_connection(server: &RedisServer) -> redis::Connection {
    let url = format!("redis://admin:admin-pw@{}:{}/", server.host(), server.port());
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

/// The payloads of the durable event log whose type is `kind`.
fn logged(server: &RedisServer, kind: &str) -> Vec<Value> {
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("tatbot:events")
        .arg("-")
        .arg("+")
        .query(&mut admin_connection(server))
        .unwrap();
    entries
        .ids
        .iter()
        .filter_map(|entry| entry.get::<String>("payload"))
        .filter_map(|payload| serde_json::from_str::<Value>(&payload).ok())
        .filter(|event| event["type"] == kind)
        .collect()
}

/// The session's state as `sessions --json` lists it.
fn listed_state(server: &RedisServer, session: &str) -> Value {
    let output = run(as_user(server, "viewer"), &["--json", "sessions"]);
    assert_code(&output, 0);
    json(&output)
        .as_array()
        .and_then(|sessions| sessions.iter().find(|entry| entry["session_id"] == session).cloned())
        .unwrap_or(Value::Null)
}

/// Whether the page scrolls sideways.
fn scrolls_sideways(browser: &Browser) -> bool {
    browser.eval("return document.documentElement.scrollWidth > window.innerWidth") == Value::Bool(true)
}

/// Kill -9 a `simulate` mid-session: within the lease every view shows the session stale
/// (CLI text and JSON, status, MCP, the dashboard in Chromium at 800×480 and 1400×900, which
/// never scrolls sideways), exactly one `session_stale` event exists, a viewer may not abort
/// it, an admin aborts it, and the dashboard greys what it last saw once Redis is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_simulate_turns_stale_everywhere_and_abort_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = role_server(dir.path());
    let viz = spawn(
        as_user(&server, "admin"),
        &["--node-id", "viz", "viz", "--bind", "127.0.0.1:0"],
    );
    let url = viz.stdout.next();
    let lease = LEASE_SECS.to_string();
    let mut simulate = spawn(
        as_user(&server, "admin"),
        &[
            "--node-id",
            "ook",
            "simulate",
            "--hz",
            "5",
            "--strokes",
            "50",
            "--stroke-length",
            "10",
            "--lease",
            &lease,
        ],
    );
    let session = simulate.stdout.next().trim().to_owned();
    assert!(session.starts_with("stroke_ook_"), "{session}");
    let small = Browser::start(800, 480);
    small.goto(&url);
    wait_in_page(
        &small,
        "the session executing",
        &format!(
            "const s = document.querySelector('[data-session=\"{session}\"]'); return s && s.querySelector('.state').textContent === 'executing' && s.querySelector('.age').textContent.startsWith('updated ')"
        ),
    );
    assert_eq!(listed_state(&server, &session)["state"], "executing");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(simulate.pid()).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    simulate.wait();
    let killed = Instant::now();
    wait_until("sessions --json to say stale", || {
        listed_state(&server, &session)["state"] == "stale"
    });
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(LEASE_SECS + 2),
        "stale {took:?} after the kill; the lease is {LEASE_SECS} s"
    );
    eprintln!("stale in the CLI {took:?} after the kill (lease {LEASE_SECS} s)");

    // CLI text and the status, as the viewer.
    let output = run(as_user(&server, "viewer"), &["sessions"]);
    let row = stdout(&output)
        .lines()
        .find(|line| line.contains(&session))
        .unwrap_or_default()
        .to_owned();
    assert!(row.contains("stale") && !row.contains("executing"), "{row}");
    let output = run(as_user(&server, "viewer"), &["status"]);
    let text = stdout(&output);
    assert!(
        text.contains("Active Sessions: 0\n") && text.contains("Stale Sessions: 1\n"),
        "{text}"
    );
    let output = run(as_user(&server, "admin"), &["--json", "status"]);
    assert_eq!(json(&output)["stale_sessions"], 1);

    // MCP, as the viewer.
    let (client, _pid) = stdio_client((), &server, &["--no-heartbeat", "--user", "viewer", "-a", "viewer-pw"]).await;
    let (text, status) = read(&client, "state://status").await;
    assert!(text.contains("Stale Sessions: 1\n"), "{text}");
    assert_eq!(status["active_sessions"], 0);
    let (text, progress) = read(&client, &format!("state://stroke/progress/{session}")).await;
    assert!(
        text.contains("State: stale\n") && text.contains("Executing: false\n"),
        "{text}"
    );
    assert_eq!(progress["state"], "stale");
    let (text, _) = read(&client, "state://stroke/progress").await;
    assert!(text.contains("No active stroke session"), "{text}");
    client.cancel().await.unwrap();

    // The dashboard, small and large, with no sideways scrolling.
    let stale_card = format!(
        "const s = document.querySelector('[data-session=\"{session}\"]'); \
         return s && s.querySelector('.state').textContent === 'stale' && /^updated \\d+ s ago$/.test(s.querySelector('.age').textContent)"
    );
    wait_in_page(&small, "the session stale at 800×480", &stale_card);
    assert!(!scrolls_sideways(&small), "the page scrolls sideways at 800×480");
    small.screenshot(&artifact("viz-stale-800x480.png"));
    let large = Browser::start(1400, 900);
    large.goto(&url);
    wait_in_page(&large, "the session stale at 1400×900", &stale_card);
    assert!(!scrolls_sideways(&large), "the page scrolls sideways at 1400×900");
    drop(large);

    // Announced exactly once, whoever looked.
    assert_eq!(logged(&server, "session_stale").len(), 1, "one session_stale event");

    // A viewer may not abort; an admin may.
    let output = run(
        as_user(&server, "viewer"),
        &["sessions", "abort", &session, "--reason", "robot died"],
    );
    assert_code(&output, 4);
    let err = stderr(&output);
    assert!(
        err.contains("viewer role only reads") && err.lines().count() <= 2,
        "{err}"
    );
    let output = run(
        as_user(&server, "admin"),
        &["sessions", "abort", &session, "--reason", "robot died"],
    );
    assert_code(&output, 0);
    assert!(stdout(&output).contains("aborted (was stale)"), "{}", stdout(&output));
    assert_eq!(listed_state(&server, &session)["state"], "aborted");
    let aborts = logged(&server, "session_abort");
    assert_eq!(aborts.len(), 1, "{aborts:?}");
    assert_eq!(aborts[0]["reason"], "robot died");
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("stroke:progress:{session}"))
        .query(&mut admin_connection(&server))
        .unwrap();
    assert!(ttl > 0, "aborted sessions expire: ttl {ttl}");
    let output = run(as_user(&server, "admin"), &["sessions", "end", &session]);
    assert_code(&output, 1);
    assert!(stderr(&output).contains("already aborted"), "{}", stderr(&output));
    assert_eq!(
        logged(&server, "session_stale").len(),
        1,
        "still one session_stale event"
    );
    wait_in_page(
        &small,
        "the session aborted",
        &format!(
            "const s = document.querySelector('[data-session=\"{session}\"]'); return s && s.querySelector('.state').textContent === 'aborted'"
        ),
    );

    // Redis gone: what the page shows is marked as last seen, in grey.
    server.stop();
    wait_in_page(
        &small,
        "nodes marked last seen",
        "return document.body.classList.contains('not-live') && document.getElementById('connection').textContent.includes('Redis is unreachable') \
            && [...document.querySelectorAll('#nodes tbody td.unknown')].some((td) => td.textContent.startsWith('last seen '))",
    );
    wait_in_page(
        &small,
        "sessions marked last seen",
        &format!(
            "const s = document.querySelector('[data-session=\"{session}\"]'); return s && s.querySelector('.age').textContent.startsWith('last seen ')"
        ),
    );
    small.screenshot(&artifact("viz-disconnected-800x480.png"));
    drop(viz);
}
