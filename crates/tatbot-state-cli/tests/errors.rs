//! Issue #12 section 2: the exact final line and exit code of the ten most common failures,
//! against `tests/data/errors.golden`.
//!
//! Each case runs the real binary against real test-kit servers. Ports and temporary paths
//! change from run to run, so they are replaced by `<port>` and `<dir>` before comparing;
//! everything else must match byte for byte. After an intended change of a message, rewrite
//! the file with `UPDATE_GOLDEN=1 cargo nextest run -p tatbot-state-cli errors::` and review
//! the diff.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use tatbot_state_testkit::RedisServer;

use crate::util::{bin, bin_for, dead_port, stderr, stdout};

/// Where the expected text lives.
const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/errors.golden");

/// One failure: its name, the command as shown, and what the binary did.
struct Case {
    name: &'static str,
    shown: String,
    output: Output,
}

/// Runs `command` with `args`, recording it under `name`.
fn case(name: &'static str, mut command: Command, args: &[&str]) -> Case {
    command.args(args);
    // The variables a case sets (not the ones `bin()` removes), then the arguments, quoted
    // where they hold a space.
    let set_vars = command
        .get_envs()
        .filter_map(|(name, value)| Some(format!("{}={}", name.to_string_lossy(), value?.to_string_lossy())));
    let words = std::iter::once("tatbot-state".to_owned()).chain(command.get_args().map(|arg| {
        let arg = arg.to_string_lossy();
        if arg.contains(' ') {
            format!("{arg:?}")
        } else {
            arg.into_owned()
        }
    }));
    let shown = set_vars
        .filter(|var| !var.starts_with("HOME="))
        .chain(words)
        .collect::<Vec<_>>()
        .join(" ");
    let output = command.output().expect("the test binary runs");
    Case { name, shown, output }
}

/// Replaces what differs between runs: every port in `ports` and the temporary dir.
fn normalize(text: &str, ports: &[u16], dir: &Path) -> String {
    let mut text = text.replace(&dir.display().to_string(), "<dir>");
    for port in ports {
        text = text
            .replace(&format!(":{port}"), ":<port>")
            .replace(&format!(" {port} "), " <port> ");
    }
    text
}

/// The ten failures of issue #12 and a web server where Redis should be (issue #14 point 16),
/// each said once with its hint and exit code; a closed stdout ends quietly with exit 0 and
/// nothing on stderr.
#[test]
fn issue_12_common_failures_match_the_golden_file() {
    let server = RedisServer::start();
    let locked = RedisServer::builder().password("right").start();
    let dir = tempfile::TempDir::new().expect("a temp dir");
    let dead = dead_port();
    let held = TcpListener::bind("127.0.0.1:0").expect("bind a port to hold");
    let held_port = held.local_addr().expect("a bound listener has an address").port();

    // A web server where Redis should be: answers every connection with an HTTP status line.
    let web = TcpListener::bind("127.0.0.1:0").expect("bind the web port");
    let web_port = web.local_addr().expect("a bound listener has an address").port();
    std::thread::spawn(move || {
        for stream in web.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = std::io::Write::write_all(&mut stream, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });

    let conf = dir.path().join("conf");
    std::fs::create_dir_all(conf.join("redis")).expect("create the conf dir");
    std::fs::write(conf.join("redis/default.yaml"), "host: [127.0.0.1\nport: 6379\n").expect("write the yaml");
    let conf_arg = conf.display().to_string();

    let mut bad_url = bin();
    bad_url.env("REDIS_URL", "http://127.0.0.1:6379");

    let mut wrong_password = bin();
    wrong_password.args(["-p", &locked.port().to_string(), "-a", "wrong"]);
    let mut no_password = bin();
    no_password.args(["-p", &locked.port().to_string()]);

    // A pipe whose reader is gone before the binary writes: every write fails with EPIPE.
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let mut closed_stdout = bin_for(&server);
    closed_stdout.stdout(Stdio::from(writer));

    let held_bind = format!("127.0.0.1:{held_port}");
    let cases = [
        case("unreachable", bin(), &["-p", &dead.to_string(), "status"]),
        case("refused password", wrong_password, &["status"]),
        case("NOAUTH", no_password, &["status"]),
        case("unknown session", bin_for(&server), &["progress", "stroke_nobody_1"]),
        case("unknown node", bin_for(&server), &["health", "nobody"]),
        case(
            "bad id",
            bin_for(&server),
            &["--node-id", "bad id", "heartbeat", "--once"],
        ),
        case("bad YAML config", bin(), &["--config", &conf_arg, "status"]),
        case("bad URL", bad_url, &["status"]),
        case("address in use", bin_for(&server), &["viz", "--bind", &held_bind]),
        case("closed stdout", closed_stdout, &["--json", "status"]),
        case("not a Redis server", bin(), &["-p", &web_port.to_string(), "status"]),
    ];
    drop(held);

    let ports = [server.port(), locked.port(), dead, held_port, web_port];
    let mut actual = String::new();
    for case in &cases {
        assert!(
            case.output.stdout.is_empty() || case.name == "closed stdout",
            "{}: a failure prints nothing on stdout, got {}",
            case.name,
            stdout(&case.output)
        );
        let code = case
            .output
            .status
            .code()
            .map_or("a signal".to_owned(), |code| code.to_string());
        let _ = write!(
            actual,
            "## {}\n$ {}\nexit {code}\n{}\n",
            case.name,
            normalize(&case.shown, &ports, dir.path()),
            normalize(&stderr(&case.output), &ports, dir.path()),
        );
    }

    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|value| value == "1") {
        std::fs::write(GOLDEN, &actual).expect("write the golden file");
        return;
    }
    let expected =
        std::fs::read_to_string(GOLDEN).unwrap_or_else(|err| panic!("{GOLDEN}: {err}; create it with UPDATE_GOLDEN=1"));
    assert!(
        actual == expected,
        "the error lines differ from {GOLDEN} (rerun with UPDATE_GOLDEN=1 if the change is intended)\n\
         --- expected\n{expected}\n--- actual\n{actual}"
    );
}

/// Issue #12: data another LAN member stored wrongly is exit 7 "corrupt data", never 2 "bad
/// usage" nor the generic 1, and the line names the key once.
#[test]
fn issue_12_corrupt_stored_data_exits_7() {
    let server = RedisServer::start();
    server
        .command(&["SET", "stroke:progress:stroke_a_1", "not a hash"])
        .expect("store a wrong type");
    server
        .command(&[
            "HSET",
            "tatbot:param:arms.x",
            "descriptor",
            "{nope",
            "value",
            "1",
            "version",
            "1",
        ])
        .expect("store a bad descriptor");

    let output = crate::util::run(bin_for(&server), &["progress", "stroke_a_1"]);
    crate::util::assert_code(&output, 7);
    assert_eq!(
        stderr(&output),
        "tatbot-state: reading the progress of stroke_a_1: stroke:progress:stroke_a_1: stored value is corrupt \
         (the key is not a hash); fix or delete the key\n"
    );

    let output = crate::util::run(bin_for(&server), &["param", "get", "arms.x"]);
    crate::util::assert_code(&output, 7);
    assert_eq!(
        stderr(&output),
        "tatbot-state: reading parameter arms.x: tatbot:param:arms.x: cannot decode parameter descriptor: \
         key must be a string at line 1 column 2\n"
    );
}
