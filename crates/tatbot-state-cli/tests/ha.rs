//! High availability from the command line: the Sentinel settings in `config`, and commands
//! that find the master through the test kit's Sentinels and follow a failover.

use crate::util::{assert_code, bin, json, run, stderr, stdout};

/// `config` shows the Sentinel target with a source per field, never the Sentinels' password.
#[test]
fn config_shows_sentinel_settings_and_sources() {
    let mut command = bin();
    command
        .env("REDIS_SENTINELS", "eek:26379,hog")
        .env("REDIS_SENTINEL_PASSWORD", "sentinel-secret");
    let output = run(command, &["--json", "--master-name", "robot", "config"]);
    assert_code(&output, 0);
    assert!(!stdout(&output).contains("sentinel-secret"));
    let config = json(&output);
    assert_eq!(config["sentinels"]["value"], "eek:26379,hog:26379");
    assert_eq!(config["sentinels"]["source"], "environment variable REDIS_SENTINELS");
    assert_eq!(config["master_name"]["value"], "robot");
    assert_eq!(config["master_name"]["source"], "flag --master-name");
    assert_eq!(config["sentinel_password"]["value"], "(set)");

    let output = run(bin(), &["--sentinel", "eek:99999", "config"]);
    assert_code(&output, 6);
    let text = stderr(&output);
    assert!(
        text.contains("flag --sentinel: \"eek:99999\" is not a sentinel address"),
        "{text}"
    );
}

/// Kills every process working in a directory when dropped (the CLI's Sentinels are daemons).
struct KillOnDrop(tempfile::TempDir);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in crate::util::processes_in(self.0.path()) {
            if let Ok(raw) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// A fleet run with the CLI alone: `server start --ha`, `server start --replica-of`, three
/// `server sentinel start --monitor ... --quorum 2`; `server status` shows the role, offset and
/// lag, and `doctor --sentinel ...` checks the Sentinels (reachable, agreeing, quorum) and the
/// replica's lag against the master they name.
#[test]
fn ha_fleet_started_status_and_doctor() {
    use crate::util::{ServerDir, dead_port, wait_until};

    let primary = ServerDir::new();
    let replica = ServerDir::new();
    assert_code(&primary.server("start", &["--ha"]), 0);
    let master = format!("127.0.0.1:{}", primary.port);
    assert_code(&replica.server("start", &["--replica-of", &master]), 0);
    wait_until("the replica syncs", || {
        let status = json(&replica.server("status", &["--json"]));
        status["replication"]["master"]["link_status"] == "up"
    });
    let status = replica.server("status", &[]);
    assert!(
        stdout(&status).contains(&format!("role      replica of {master}, link up")),
        "{}",
        stdout(&status)
    );
    let status = json(&primary.server("status", &["--json"]));
    assert_eq!(status["replication"]["role"], "master");
    // The replica says "link up" once it has loaded the master's snapshot; the master moves it
    // from `wait_bgsave` to `online` when its first acknowledgement arrives, a moment later.
    wait_until("the master sees the replica online", || {
        let status = json(&primary.server("status", &["--json"]));
        status["replication"]["replicas"][0]["state"] == "online"
    });

    let sentinels = KillOnDrop(tempfile::tempdir().unwrap());
    let dir = sentinels.0.path().display().to_string();
    let mut flags = Vec::new();
    for _ in 0..3 {
        let port = dead_port().to_string();
        let output = run(
            bin(),
            &[
                "server",
                "sentinel",
                "start",
                "--monitor",
                &master,
                "--quorum",
                "2",
                "--sentinel-port",
                &port,
                "--dir",
                &dir,
            ],
        );
        assert_code(&output, 0);
        assert!(
            stdout(&output).contains("monitoring master tatbot"),
            "{}",
            stdout(&output)
        );
        flags.extend(["--sentinel".to_owned(), format!("127.0.0.1:{port}")]);
    }
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.push("doctor");
    // The Sentinels find each other within a few hello periods (2 s each).
    wait_until("doctor passes with three sentinels", || {
        let output = run(bin(), &args);
        let text = stdout(&output);
        output.status.code() == Some(0) && text.contains("[ok]   sentinels") && text.contains("[ok]   replication")
    });
    let text = stdout(&run(bin(), &args));
    assert!(
        text.contains(&format!(
            "3/3 reachable, 3 name master tatbot at 127.0.0.1:{}",
            primary.port
        )),
        "{text}"
    );
}

/// `bench --quick --only failover` times one kill -9 failover on a fleet of its own and reports
/// it (the figure itself is not checked: these machines are too noisy); the default run leaves
/// the section out.
#[test]
fn bench_only_failover_reports_the_time() {
    let output = run(bin(), &["--json", "bench", "--quick", "--only", "failover"]);
    assert_code(&output, 0);
    let report = json(&output);
    assert_eq!(report["sections"], serde_json::json!(["failover"]));
    assert!(report["failover_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{report}");
    assert_eq!(report["failover_runs_ms"].as_array().map(Vec::len), Some(1));
}
