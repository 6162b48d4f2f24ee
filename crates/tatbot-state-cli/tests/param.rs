//! `tatbot-state param`: each action end to end, with its exit codes and its `--json` output.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use tatbot_state_testkit::RedisServer;
use tempfile::TempDir;

use crate::util::{assert_code, bin, bin_for, dead_port, json, json_lines, run, spawn, stderr, stdout};

/// A Hydra-style arms config.
const ARMS: &str = "\
# @package _global_
defaults:
  - _self_
_target_: tatbot.bot.arms.Arms
goal_time_slow: 2.0
goal_time_fast: 0.5
offset_num: 4
ip_l: 192.168.1.3
joints_home: [0, 0.5, 1]
tag: ${oc.env:TATBOT_TAG}
";

/// `bin_for(server)` acting as node `cli`.
fn param(server: &RedisServer) -> Command {
    let mut command = bin_for(server);
    command.args(["--node-id", "cli"]);
    command
}

/// Writes `text` to a file in `dir` and returns its path as a string.
fn file(dir: &TempDir, name: &str, text: &str) -> String {
    let path: PathBuf = dir.path().join(name);
    std::fs::write(&path, text).expect("write the YAML file");
    path.display().to_string()
}

/// A server with the arms config loaded under `arms`.
fn loaded() -> (RedisServer, TempDir) {
    let server = RedisServer::start();
    let dir = TempDir::new().unwrap();
    let arms = file(&dir, "arms.yaml", ARMS);
    assert_code(&run(param(&server), &["param", "load", &arms, "--prefix", "arms"]), 0);
    (server, dir)
}

/// A dry run shows the declarations and skips and changes nothing; the load then declares, and list, get, describe and dump show it.
#[test]
fn load_then_read() {
    let server = RedisServer::start();
    let dir = TempDir::new().unwrap();
    let arms = file(&dir, "arms.yaml", ARMS);
    let output = run(
        param(&server),
        &["param", "load", &arms, "--prefix", "arms", "--dry-run"],
    );
    assert_code(&output, 0);
    let text = stdout(&output);
    for line in [
        "+ arms.goal_time_slow (float) = 2.0",
        "+ arms.joints_home (float[]) = [0.0,0.5,1.0]",
        "  skipped arms._target_: Hydra special key",
        "  skipped arms.tag: Hydra interpolation",
        "5 new, 0 changed, 0 unchanged, 3 skipped: dry run, nothing changed",
    ] {
        assert!(
            text.lines().any(|shown| shown == line),
            "{line:?} missing from:\n{text}"
        );
    }
    assert_eq!(
        json(&run(param(&server), &["--json", "param", "list"])),
        serde_json::json!([])
    );

    let output = run(param(&server), &["--json", "param", "load", &arms, "--prefix", "arms"]);
    assert_code(&output, 0);
    let plan = json(&output);
    assert_eq!(
        (plan["applied"].as_bool(), plan["changes"].as_array().map(Vec::len)),
        (Some(true), Some(5))
    );

    let listed = json(&run(param(&server), &["--json", "param", "list", "arms"]));
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|param| param["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "arms.goal_time_fast",
            "arms.goal_time_slow",
            "arms.ip_l",
            "arms.joints_home",
            "arms.offset_num"
        ]
    );
    let text = stdout(&run(param(&server), &["param", "list"]));
    assert!(text.starts_with("NAME "), "{text}");
    assert!(text.contains("arms.offset_num      int      1        cli"), "{text}");

    let output = run(param(&server), &["param", "get", "arms.goal_time_slow"]);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "2.0\n");
    let got = json(&run(param(&server), &["--json", "param", "get", "arms.ip_l"]));
    assert_eq!(
        (
            &got["value"],
            &got["version"],
            &got["actor"],
            &got["descriptor"]["type"]
        ),
        (
            &serde_json::json!("192.168.1.3"),
            &serde_json::json!(1),
            &serde_json::json!("cli"),
            &serde_json::json!("string")
        )
    );

    let text = stdout(&run(param(&server), &["param", "describe", "arms.offset_num"]));
    for line in [
        "arms.offset_num",
        "  type:         int",
        "  value:        4",
        "  read-only:    no",
    ] {
        assert!(
            text.lines().any(|shown| shown == line),
            "{line:?} missing from:\n{text}"
        );
    }
    let described = json(&run(
        param(&server),
        &["--json", "param", "describe", "arms.offset_num"],
    ));
    assert_eq!(described["descriptor"]["default"], 4);

    let output = run(param(&server), &["param", "dump", "arms"]);
    assert_code(&output, 0);
    let dump = stdout(&output);
    assert!(
        dump.starts_with("arms:\n  goal_time_fast: 0.5\n  goal_time_slow: 2.0\n"),
        "{dump}"
    );
    let values = json(&run(param(&server), &["--json", "param", "dump"]));
    assert_eq!(values["arms.joints_home"], serde_json::json!([0.0, 0.5, 1.0]));

    // The dump loads back as it is: nothing to change.
    let dumped = file(&dir, "dump.yaml", &dump);
    let output = run(param(&server), &["param", "load", &dumped]);
    assert_code(&output, 0);
    assert!(
        stdout(&output).ends_with("0 new, 0 changed, 5 unchanged, 0 skipped: loaded\n"),
        "{}",
        stdout(&output)
    );
}

/// `set` parses with the declared type and exits 0, 2 for a bad value or name, 5 for an unknown parameter, 8 for a stale `--if-version` (a lost race, issue #12).
#[test]
fn set_and_its_exit_codes() {
    let (server, _dir) = loaded();
    let output = run(param(&server), &["param", "set", "arms.goal_time_slow", "3"]);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "arms.goal_time_slow = 3.0 (version 2)\n");
    let output = run(param(&server), &["param", "set", "arms.goal_time_slow", "-1.5"]);
    assert_code(&output, 0);
    let set = json(&run(
        param(&server),
        &["--json", "param", "set", "arms.joints_home", "[1, 2]"],
    ));
    assert_eq!(
        (&set["value"], &set["version"]),
        (&serde_json::json!([1.0, 2.0]), &serde_json::json!(2))
    );

    let output = run(param(&server), &["param", "set", "arms.offset_num", "many"]);
    assert_code(&output, 2);
    assert!(
        stderr(&output).contains("arms.offset_num: expected an int, got the string \"many\""),
        "{}",
        stderr(&output)
    );
    let output = run(param(&server), &["param", "set", "arms.nope", "1"]);
    assert_code(&output, 5);
    assert!(
        stderr(&output).contains("no parameter arms.nope"),
        "{}",
        stderr(&output)
    );
    assert_code(&run(param(&server), &["param", "get", "arms.nope"]), 5);
    assert_code(&run(param(&server), &["param", "describe", "arms.nope"]), 5);
    let output = run(param(&server), &["param", "get", "arms..x"]);
    assert_code(&output, 2);
    assert!(
        stderr(&output).contains("invalid parameter name"),
        "{}",
        stderr(&output)
    );

    let output = run(
        param(&server),
        &["param", "set", "arms.offset_num", "6", "--if-version", "5"],
    );
    assert_code(&output, 8);
    assert!(
        stderr(&output).contains("arms.offset_num: version is 1, not 5; nothing was written"),
        "{}",
        stderr(&output)
    );
    let output = run(
        param(&server),
        &["param", "set", "arms.offset_num", "6", "--if-version", "1"],
    );
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "arms.offset_num = 6 (version 2)\n");
}

/// A load with one bad value exits 2 and changes nothing; its dry run also exits 2, showing the diff and the error.
#[test]
fn load_with_a_bad_value_changes_nothing() {
    let (server, dir) = loaded();
    let bad = file(
        &dir,
        "bad.yaml",
        "arms:\n  goal_time_slow: 9.0\n  offset_num: many\n  new_flag: true\n",
    );
    let output = run(param(&server), &["param", "load", &bad]);
    assert_code(&output, 2);
    assert!(
        stderr(&output).contains("arms.offset_num: expected an int, got the string \"many\""),
        "{}",
        stderr(&output)
    );
    let output = run(param(&server), &["param", "load", &bad, "--dry-run"]);
    assert_code(&output, 2);
    let text = stdout(&output);
    for line in [
        "~ arms.goal_time_slow: 2.0 -> 9.0",
        "+ arms.new_flag (bool) = true",
        "! arms.offset_num: expected an int, got the string \"many\"",
        "1 new, 1 changed, 0 unchanged, 0 skipped: dry run, and the load would fail: nothing changed",
    ] {
        assert!(
            text.lines().any(|shown| shown == line),
            "{line:?} missing from:\n{text}"
        );
    }
    let plan = json(&run(param(&server), &["--json", "param", "load", &bad, "--dry-run"]));
    assert_eq!(plan["applied"], false);
    assert_eq!(plan["errors"].as_array().map(Vec::len), Some(1));

    assert_eq!(
        stdout(&run(param(&server), &["param", "get", "arms.goal_time_slow"])),
        "2.0\n"
    );
    assert_code(&run(param(&server), &["param", "get", "arms.new_flag"]), 5);
    let history = json_lines(&stdout(&run(
        param(&server),
        &["--json", "param", "history", "-n", "100"],
    )));
    assert_eq!(history.len(), 5, "only the declarations are in the audit log");

    let missing = dir.path().join("missing.yaml").display().to_string();
    assert_code(&run(param(&server), &["param", "load", &missing]), 1);
}

/// `watch` prints each change under its prefix once, as it happens, and exits after `-n`.
#[test]
fn watch_prints_changes() {
    let (server, _dir) = loaded();
    let mut watching = spawn(
        param(&server),
        &["--json", "param", "watch", "arms.offset_num", "-n", "2"],
    );
    watching.stderr.wait_for("watching arms.offset_num");
    for (name, value) in [
        ("arms.goal_time_slow", "2.5"),
        ("arms.offset_num", "5"),
        ("arms.offset_num", "6"),
    ] {
        assert_code(&run(param(&server), &["param", "set", name, value]), 0);
    }
    assert_eq!(watching.wait().code(), Some(0));
    let changes = json_lines(&watching.stdout.rest().join("\n"));
    let seen: Vec<(&serde_json::Value, &serde_json::Value, &serde_json::Value)> = changes
        .iter()
        .map(|change| (&change["version"], &change["old"], &change["new"]))
        .collect();
    assert_eq!(
        seen,
        [
            (&serde_json::json!(2), &serde_json::json!(4), &serde_json::json!(5)),
            (&serde_json::json!(3), &serde_json::json!(5), &serde_json::json!(6)),
        ]
    );
    assert_eq!(changes[0]["actor"], "cli");
    assert_eq!(changes[0]["op"], "set");
}

/// `history` prints the latest changes oldest first, in text and as JSON lines.
#[test]
fn history_prints_the_audit_log() {
    let (server, _dir) = loaded();
    assert_code(&run(param(&server), &["param", "set", "arms.ip_l", "10.0.0.2"]), 0);
    let changes = json_lines(&stdout(&run(
        param(&server),
        &["--json", "param", "history", "arms", "-n", "2"],
    )));
    let names: Vec<(&str, &str)> = changes
        .iter()
        .map(|change| (change["name"].as_str().unwrap(), change["op"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("arms.joints_home", "declare"), ("arms.ip_l", "set")]);
    let text = stdout(&run(param(&server), &["param", "history", "-n", "1"]));
    assert!(
        text.trim_end()
            .ends_with("set  arms.ip_l v2  \"192.168.1.3\" -> \"10.0.0.2\"  by cli"),
        "{text}"
    );
}

/// Every action that needs Redis exits 3 when it is unreachable.
#[test]
fn redis_down_exits_3() {
    let port = dead_port().to_string();
    for action in [
        &["param", "get", "arms.x"][..],
        &["param", "set", "arms.x", "1"],
        &["param", "list"],
        &["param", "watch"],
        &["param", "history"],
    ] {
        let mut command = bin();
        command.args(["-p", &port]);
        assert_code(&run(command, action), 3);
    }
}

/// Issue #14 point 13: `param load /dev/zero` stops reading at the size bound and exits 2 at
/// once with a one-line error, instead of growing until the kernel kills it.
#[test]
fn issue_14_load_of_dev_zero_is_refused_quickly() {
    let server = RedisServer::start();
    let started = std::time::Instant::now();
    let output = run(param(&server), &["param", "load", "/dev/zero"]);
    let elapsed = started.elapsed();
    assert_code(&output, 2);
    assert_eq!(
        stderr(&output),
        "tatbot-state: /dev/zero is larger than the limit of 4194304 bytes (4 MiB) for a parameter file; split it\n"
    );
    assert!(elapsed < std::time::Duration::from_secs(5), "took {elapsed:?}");
}

/// Issue #14 point 13: an endless pipe on stdin is read up to the bound only; the writer sees
/// the pipe close once the loader has refused it.
#[test]
fn issue_14_load_of_an_endless_pipe_is_refused() {
    let server = RedisServer::start();
    let mut child = param(&server)
        .args(["param", "load", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tatbot-state");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let writer = std::thread::spawn(move || {
        let chunk = "a: 1\n".repeat(1000);
        let mut written = 0_usize;
        // Bounded: a loader that read everything would be stopped here after 64 MiB.
        while written < 64 << 20 {
            if stdin.write_all(chunk.as_bytes()).is_err() {
                return written;
            }
            written += chunk.len();
        }
        written
    });
    let output = child.wait_with_output().expect("wait for tatbot-state");
    let written = writer.join().expect("the writer thread");
    assert_code(&output, 2);
    assert_eq!(
        stderr(&output),
        "tatbot-state: stdin is larger than the limit of 4194304 bytes (4 MiB) for a parameter file; split it\n"
    );
    assert!(written < 64 << 20, "the loader read all {written} bytes");
}

/// Issue #14 point 13: an unknown tag and deep nesting each exit 2 with the line number, and
/// nothing is loaded.
#[test]
fn issue_14_load_refuses_tags_and_depth_with_the_line() {
    let server = RedisServer::start();
    let dir = TempDir::new().unwrap();
    let tagged = file(&dir, "tagged.yaml", "a: 1\nb: 2\nc: !!python/object:os.system ls\n");
    let output = run(param(&server), &["param", "load", &tagged]);
    assert_code(&output, 2);
    assert!(
        stderr(&output).contains(": line 3: unknown YAML tag !!python/object:os.system (only !!str,"),
        "{}",
        stderr(&output)
    );
    let deep = file(&dir, "deep.yaml", &format!("a: 1\nb: {}\n", "{c: ".repeat(200_000)));
    let output = run(param(&server), &["param", "load", &deep]);
    assert_code(&output, 2);
    assert!(
        stderr(&output).contains(": line 2: maps and lists nest deeper than 72 levels"),
        "{}",
        stderr(&output)
    );
    assert_code(&run(param(&server), &["param", "get", "a"]), 5);
}

/// Issue #14 point 7: one corrupt parameter is a row with its error; the others still list
/// and `param list` succeeds, in text and JSON.
#[test]
fn list_reports_a_corrupt_parameter() {
    let (server, _dir) = loaded();
    server
        .command(&["HSET", "tatbot:param:arms.offset_num", "value", "not json"])
        .unwrap();
    let output = run(param(&server), &["param", "list"]);
    assert_code(&output, 0);
    let text = stdout(&output);
    assert!(
        text.lines().any(|line| line.starts_with("arms.goal_time_slow ")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|line| line.starts_with("arms.offset_num") && line.contains("error: tatbot:param:arms.offset_num")),
        "{text}"
    );
    let listed = json(&run(param(&server), &["--json", "param", "list"]));
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 5, "{listed:?}");
    let corrupt: Vec<_> = listed.iter().filter(|param| param.get("error").is_some()).collect();
    assert_eq!(corrupt.len(), 1);
    assert_eq!(corrupt[0]["name"], "arms.offset_num");
}

/// Issue #13 point 6: `param dump arms > f; param load f` is the identity (nothing changes),
/// and `param load --prefix arms f` on that file is refused instead of creating `arms.arms.*`.
#[test]
fn dump_then_load_is_the_identity_and_a_double_prefix_is_refused() {
    let (server, dir) = loaded();
    let dump = run(param(&server), &["param", "dump", "arms"]);
    assert_code(&dump, 0);
    let dumped = file(&dir, "dumped.yaml", &stdout(&dump));
    let reload = run(param(&server), &["--json", "param", "load", &dumped]);
    assert_code(&reload, 0);
    let plan: serde_json::Value = serde_json::from_str(&stdout(&reload)).unwrap();
    assert_eq!(plan["changes"], serde_json::json!([]), "{plan}");
    assert_eq!(stdout(&run(param(&server), &["param", "dump", "arms"])), stdout(&dump));

    let doubled = run(param(&server), &["param", "load", &dumped, "--prefix", "arms"]);
    assert_code(&doubled, 2);
    let errors = stderr(&doubled);
    assert!(errors.contains("already under arms"), "{errors}");
    assert!(errors.contains("load it without --prefix"), "{errors}");
    let list = stdout(&run(param(&server), &["param", "list"]));
    assert!(!list.contains("arms.arms."), "{list}");
}

/// `param undeclare NAME` removes the parameter (gone from `get` and `list`, the removal in the
/// audit log), a second undeclare is "not found" (5), and the name can be declared again.
#[test]
fn undeclare_removes_a_parameter() {
    let (server, _dir) = loaded();
    let output = run(param(&server), &["param", "undeclare", "arms.offset_num"]);
    assert_code(&output, 0);
    assert!(
        stdout(&output).contains("arms.offset_num (int) undeclared; it was 4"),
        "{}",
        stdout(&output)
    );
    assert_code(&run(param(&server), &["param", "get", "arms.offset_num"]), 5);
    let list = stdout(&run(param(&server), &["param", "list", "arms"]));
    assert!(
        !list.contains("offset_num") && list.contains("goal_time_slow"),
        "{list}"
    );
    let history = stdout(&run(param(&server), &["--json", "param", "history", "arms.offset_num"]));
    let last = json_lines(&history).pop().expect("a change");
    assert_eq!(last["op"], "undeclare", "{history}");
    let again = run(param(&server), &["param", "undeclare", "arms.offset_num"]);
    assert_code(&again, 5);
    assert!(
        stderr(&again).contains("no parameter arms.offset_num"),
        "{}",
        stderr(&again)
    );
    let dir = TempDir::new().unwrap();
    let yaml = file(&dir, "offset.yaml", "arms:\n  offset_num: 7\n");
    assert_code(&run(param(&server), &["param", "load", &yaml]), 0);
    assert_eq!(
        stdout(&run(param(&server), &["param", "get", "arms.offset_num"])).trim(),
        "7"
    );
}

/// Undeclaring is for admins: the robot and viewer roles of the ACL template are refused with a
/// one-line message that names the admin user, exit 4, and the parameter stays.
#[test]
fn undeclare_is_refused_for_robot_and_viewer() {
    let dir = TempDir::new().unwrap();
    let server = crate::util::role_server(dir.path());
    let as_user = |user: &str, args: &[&str]| {
        let mut command = bin();
        command.args([
            "-p",
            &server.port().to_string(),
            "--user",
            user,
            "-a",
            &format!("{user}-pw"),
        ]);
        run(command, args)
    };
    let yaml = file(&dir, "arms.yaml", "arms:\n  goal_time_slow: 2.0\n");
    assert_code(&as_user("admin", &["param", "load", &yaml]), 0);
    for user in ["robot", "viewer"] {
        let output = as_user(user, &["param", "undeclare", "arms.goal_time_slow"]);
        assert_code(&output, 4);
        let text = stderr(&output);
        assert!(
            text.contains("an admin operation") && text.contains("--user admin"),
            "{user}: {text}"
        );
        assert_eq!(text.trim().lines().count(), 1, "{user}: {text}");
    }
    assert_code(&as_user("viewer", &["param", "get", "arms.goal_time_slow"]), 0);
    assert_code(&as_user("admin", &["param", "undeclare", "arms.goal_time_slow"]), 0);
}
