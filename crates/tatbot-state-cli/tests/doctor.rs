//! `doctor`: one verdict per check against test-kit servers, dead ports and bad settings.

use std::process::Output;

use tatbot_state_testkit::RedisServer;

use crate::util::{assert_code, bin, bin_for, dead_port, json, role_server, run, stdout};

/// Every check name, in output order.
const CHECKS: [&str; 11] = [
    "config",
    "resolve",
    "tcp",
    "auth",
    "ping",
    "latency",
    "version",
    "persistence",
    "exposure",
    "clock",
    "pubsub",
];

/// The `[verdict]` of each check line, by check name, asserting the output has all of them in order.
#[track_caller]
fn verdicts(output: &Output) -> Vec<(String, String)> {
    let text = stdout(output);
    let found: Vec<(String, String)> = text
        .lines()
        .filter(|line| line.starts_with('['))
        .map(|line| {
            let mut words = line.split_whitespace();
            let verdict = words.next().expect("a verdict").to_owned();
            let check = words.next().expect("a check name").to_owned();
            (check, verdict)
        })
        .collect();
    let names: Vec<&str> = found.iter().map(|(check, _)| check.as_str()).collect();
    assert_eq!(names, CHECKS, "{text}");
    found
}

/// The line of one check.
#[track_caller]
fn line<'a>(text: &'a str, check: &str) -> &'a str {
    text.lines()
        .find(|line| line.split_whitespace().nth(1) == Some(check))
        .unwrap_or_else(|| panic!("no {check} line in\n{text}"))
}

/// Against a persistent test-kit server every check is ok, in text and in JSON.
#[test]
fn all_checks_pass_against_a_persistent_server() {
    let server = RedisServer::builder().persistence(true).start();
    let output = run(bin_for(&server), &["doctor"]);
    assert_code(&output, 0);
    for (check, verdict) in verdicts(&output) {
        assert_eq!(verdict, "[ok]", "{check}: {}", stdout(&output));
    }

    let output = run(bin_for(&server), &["doctor", "--json"]);
    assert_code(&output, 0);
    let checks = json(&output);
    let checks = checks.as_array().expect("an array");
    assert_eq!(checks.len(), CHECKS.len());
    for check in checks {
        assert_eq!(check["verdict"], "ok", "{check}");
        assert!(check["detail"].is_string() && check["hint"].is_null(), "{check}");
    }
}

/// A server without AOF is a warning with a hint, and warnings still exit 0.
#[test]
fn aof_off_is_a_warning() {
    let server = RedisServer::start();
    let output = run(bin_for(&server), &["doctor"]);
    assert_code(&output, 0);
    let text = stdout(&output);
    let persistence = line(&text, "persistence");
    assert!(
        persistence.starts_with("[warn]") && persistence.contains("AOF is off") && persistence.contains("hint:"),
        "{text}"
    );
}

/// With nothing listening, tcp fails, every later check is skipped, and the exit code is 1.
#[test]
fn server_down_fails_tcp_and_skips_the_rest() {
    let port = dead_port().to_string();
    let output = run(bin(), &["-p", &port, "doctor"]);
    assert_code(&output, 1);
    let verdicts = verdicts(&output);
    let text = stdout(&output);
    assert!(
        line(&text, "tcp").starts_with("[FAIL]") && text.contains("refused"),
        "{text}"
    );
    assert!(line(&text, "tcp").contains("server start"), "{text}");
    for (check, verdict) in &verdicts[3..] {
        assert_eq!(verdict, "[skip]", "{check}: {text}");
    }
}

/// A wrong password and a missing one fail the auth check with the matching reason and hint.
#[test]
fn wrong_or_missing_password_fails_auth() {
    let server = RedisServer::builder().password("s3cret").start();
    let port = server.port().to_string();

    let output = run(bin(), &["-p", &port, "-a", "wrong", "doctor"]);
    assert_code(&output, 1);
    let text = stdout(&output);
    let auth = line(&text, "auth");
    assert!(
        auth.starts_with("[FAIL]") && auth.contains("WRONGPASS") && auth.contains("REDIS_PASSWORD"),
        "{text}"
    );
    assert!(line(&text, "ping").starts_with("[skip]"), "{text}");

    let output = run(bin(), &["-p", &port, "doctor"]);
    assert_code(&output, 1);
    let text = stdout(&output);
    let auth = line(&text, "auth");
    assert!(
        auth.starts_with("[FAIL]") && auth.contains("NOAUTH") && auth.contains("REDIS_PASSWORD"),
        "{text}"
    );

    let output = run(bin_for(&server), &["doctor"]);
    assert_code(&output, 0);
    let text = stdout(&output);
    assert!(line(&text, "exposure").contains("password required"), "{text}");
}

/// A wrong password for an ACL user names the user in the failure.
#[test]
fn acl_user_with_wrong_password_is_named() {
    let acl = tempfile::NamedTempFile::new().expect("a temp file");
    std::fs::write(
        acl.path(),
        "user default on nopass ~* &* +@all\nuser robot on >pw ~* &* +@all\n",
    )
    .expect("write the ACL file");
    let server = RedisServer::builder().acl_file(acl.path()).start();
    let port = server.port().to_string();

    let output = run(bin(), &["-p", &port, "--user", "robot", "-a", "bad", "doctor"]);
    assert_code(&output, 1);
    let text = stdout(&output);
    assert!(line(&text, "auth").contains("user robot"), "{text}");

    let output = run(bin(), &["-p", &port, "--user", "robot", "-a", "pw", "doctor"]);
    assert_code(&output, 0);
    assert!(
        line(&stdout(&output), "auth").contains("user robot"),
        "{}",
        stdout(&output)
    );
}

/// A host that does not resolve, without an inventory, fails the resolve check with the REDIS_HOST hint.
#[test]
fn unresolvable_host_fails_resolve() {
    let output = run(bin(), &["-h", "eek.invalid", "doctor"]);
    assert_code(&output, 1);
    let text = stdout(&output);
    let resolve = line(&text, "resolve");
    assert!(
        resolve.starts_with("[FAIL]") && resolve.contains("eek.invalid") && resolve.contains("REDIS_HOST"),
        "{text}"
    );
    assert!(line(&text, "tcp").starts_with("[skip]"), "{text}");
}

/// With a node inventory the unresolvable host falls back to its IP (HOME mode) and everything passes.
#[test]
fn inventory_fallback_is_home_mode() {
    let server = RedisServer::builder().persistence(true).start();
    let conf = tempfile::tempdir().expect("a temp dir");
    std::fs::create_dir(conf.path().join("redis")).expect("mkdir redis");
    std::fs::write(
        conf.path().join("redis/default.yaml"),
        format!("host: eek.invalid\nport: {}\n", server.port()),
    )
    .expect("write default.yaml");
    std::fs::write(
        conf.path().join("nodes.yaml"),
        "nodes: [{name: eek.invalid, ip: 127.0.0.1}]\n",
    )
    .expect("write nodes.yaml");

    let dir = conf.path().display().to_string();
    let output = run(bin(), &["--config", &dir, "doctor"]);
    assert_code(&output, 0);
    let text = stdout(&output);
    let resolve = line(&text, "resolve");
    assert!(
        resolve.contains("HOME mode") && resolve.contains("nodes.yaml"),
        "{text}"
    );
    assert!(line(&text, "config").contains(&dir), "{text}");
    for (check, verdict) in verdicts(&output) {
        assert_eq!(verdict, "[ok]", "{check}: {text}");
    }
}

/// A frozen server (SIGSTOP) fails within the network timeout instead of hanging doctor.
#[test]
fn paused_server_fails_fast() {
    let server = RedisServer::start();
    server.pause();
    let started = std::time::Instant::now();
    let output = run(bin_for(&server), &["doctor"]);
    server.resume();
    assert_code(&output, 1);
    let text = stdout(&output);
    assert!(line(&text, "tcp").starts_with("[ok]"), "{text}");
    assert!(
        line(&text, "auth").starts_with("[FAIL]") && text.contains("did not answer PING"),
        "{text}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "doctor took {:?}",
        started.elapsed()
    );
}

/// Issue #14: as the read-only viewer, doctor checks subscribing, skips publishing instead of
/// failing, and names the `--user` flag as the source of the user name.
#[test]
fn viewer_role_passes_pubsub_without_publishing() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let server = role_server(dir.path());
    let port = server.port().to_string();
    let output = run(bin(), &["-p", &port, "--user", "viewer", "-a", "viewer-pw", "doctor"]);
    let text = stdout(&output);
    let pubsub = line(&text, "pubsub");
    assert!(
        pubsub.starts_with("[ok]") && pubsub.contains("may not PUBLISH") && pubsub.contains("SUBSCRIBE"),
        "{text}"
    );
    let config = line(&text, "config");
    assert!(
        config.contains("(flag --user)") && !config.contains("--username"),
        "{text}"
    );
    assert!(!text.contains("[FAIL]"), "{text}");
    assert_code(&output, 0);
}
