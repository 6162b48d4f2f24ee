//! Integration tests for the test kit: every test starts its own real `redis-server`.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use tatbot_state_testkit::RedisServer;

/// How long a test waits for an `appendfsync everysec` write to show up in the AOF.
const AOF_WAIT: Duration = Duration::from_secs(5);

/// Sends a bare `PING` without authenticating and returns the first reply line.
fn raw_ping(addr: SocketAddr, timeout: Duration) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(b"*1\r\n$4\r\nPING\r\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

/// Whether a process with this pid still exists (zombies included, since they keep /proc).
fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A default server starts, reports its address, and answers PING through `command`.
#[test]
fn start_answers_ping() {
    let server = RedisServer::start();
    assert_eq!(server.host(), "127.0.0.1");
    assert_eq!(server.addr().port(), server.port());
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}/", server.port()));
    assert_eq!(server.password(), None);
    assert!(server.is_running());
    assert!(server.pid().is_some());
    assert_eq!(server.command(&["PING"]).unwrap(), "+PONG\r\n");
    assert_eq!(server.command(&["SET", "k", "v"]).unwrap(), "+OK\r\n");
    assert_eq!(server.command(&["GET", "k"]).unwrap(), "$1\r\nv\r\n");
    assert!(server.log_path().starts_with(server.dir()));
    assert!(server.log_path().exists());
}

/// Two servers get distinct ports, directories and processes, and do not share data.
#[test]
fn two_servers_are_isolated() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());
    assert_ne!(a.pid(), b.pid());
    a.command(&["SET", "only-in-a", "1"]).unwrap();
    assert_eq!(b.command(&["EXISTS", "only-in-a"]).unwrap(), ":0\r\n");
}

/// With a password an unauthenticated client gets NOAUTH, while `command` authenticates.
#[test]
fn password_is_required() {
    let server = RedisServer::builder().password("p@ss word:/%").start();
    assert_eq!(server.password(), Some("p@ss word:/%"));
    let reply = raw_ping(server.addr(), Duration::from_secs(5)).unwrap();
    assert!(reply.starts_with("-NOAUTH"), "unexpected reply {reply:?}");
    assert_eq!(server.command(&["PING"]).unwrap(), "+PONG\r\n");
    assert_eq!(
        server.url(),
        format!("redis://:p%40ss%20word%3A%2F%25@127.0.0.1:{}/", server.port())
    );
}

/// An ACL file that disables the default user still counts as "up", and is enforced.
#[test]
fn acl_file_without_password_starts() {
    let acl_dir = tempfile::tempdir().unwrap();
    let acl = acl_dir.path().join("users.acl");
    std::fs::write(&acl, "user default off\nuser alice on >wonderland ~* &* +@all\n").unwrap();
    let server = RedisServer::builder().acl_file(&acl).start();
    let reply = server.command(&["PING"]).unwrap();
    assert!(reply.starts_with("-NOAUTH"), "unexpected reply {reply:?}");
    // The copy inside the server's directory is the one in use.
    let reply = server.command(&["ACL", "USERS"]).unwrap();
    assert!(reply.starts_with("-NOAUTH"), "unexpected reply {reply:?}");
    assert!(server.dir().join("users.acl").exists());
}

/// Extra directives reach redis.conf and DEBUG is allowed from loopback clients.
#[test]
fn extra_config_and_debug_command() {
    let server = RedisServer::builder()
        .config("maxmemory", "10mb")
        .config("databases", "4")
        .start();
    assert_eq!(
        server.command(&["CONFIG", "GET", "maxmemory"]).unwrap(),
        "*2\r\n$9\r\nmaxmemory\r\n$8\r\n10485760\r\n"
    );
    assert!(server.command(&["SELECT", "4"]).unwrap().starts_with("-ERR"));
    assert_eq!(server.command(&["DEBUG", "SLEEP", "0"]).unwrap(), "+OK\r\n");
}

/// A bad directive fails startup with Redis's own complaint in the error message.
#[test]
fn bad_config_reports_redis_stderr() {
    let err = RedisServer::builder()
        .config("no-such-directive", "1")
        .try_start()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("no-such-directive"), "unexpected error: {msg}");
    assert!(msg.contains("exited during startup"), "unexpected error: {msg}");
}

/// With the AOF on, data acknowledged and written before a SIGKILL survives a restart.
#[test]
fn aof_survives_kill_and_restart() {
    let mut server = RedisServer::builder().persistence(true).start();
    let port = server.port();
    let old_pid = server.pid().unwrap();
    assert_eq!(server.command(&["SET", "crash-key", "crash-value"]).unwrap(), "+OK\r\n");
    assert!(
        server.wait_for_aof(b"crash-value", AOF_WAIT),
        "the SET never reached the AOF"
    );
    assert!(server.dir().join("appendonlydir").is_dir());

    server.kill();
    assert!(!server.is_running());
    assert_eq!(server.pid(), None);
    assert!(!process_exists(old_pid));
    assert!(server.dir().exists(), "kill() must keep the data dir");

    server.restart();
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), Some(old_pid));
    assert_eq!(server.command(&["GET", "crash-key"]).unwrap(), "$11\r\ncrash-value\r\n");
}

/// A script writing `keys`, whose writes Redis appends to the AOF as one `MULTI`/`EXEC` block,
/// as every write of the library is.
fn script_writes(server: &RedisServer, keys: &[&str]) {
    let mut args = vec!["EVAL", "for _, key in ipairs(KEYS) do redis.call('SET', key, '1') end"];
    let count = keys.len().to_string();
    args.push(&count);
    args.extend_from_slice(keys);
    assert_eq!(server.command(&args).unwrap(), "$-1\r\n");
}

/// Whether each of `keys` exists.
fn exist(server: &RedisServer, keys: &[&str]) -> Vec<bool> {
    keys.iter()
        .map(|key| server.command(&["EXISTS", key]).unwrap() == ":1\r\n")
        .collect()
}

/// The AOF file Redis appends to.
fn incr_aof(server: &RedisServer) -> std::path::PathBuf {
    tatbot_state_testkit::aof::appended(server.dir())
        .unwrap()
        .expect("an incremental AOF file")
}

/// An AOF that a crash cut inside a script's `EXEC` is cut before its `MULTI` at the restart:
/// the script stays unapplied, also after the next restart, and later writes are kept.
#[test]
fn restart_cuts_an_aof_that_ends_inside_a_write() {
    let mut server = RedisServer::builder().persistence(true).start();
    script_writes(&server, &["cut_a", "cut_b"]);
    server.stop();
    let incr = incr_aof(&server);
    let bytes = std::fs::read(&incr).unwrap();
    assert!(
        bytes.ends_with(b"EXEC\r\n"),
        "the script's writes end the AOF inside MULTI/EXEC"
    );
    std::fs::write(&incr, &bytes[..bytes.len() - 5]).unwrap();

    server.restart();
    assert_eq!(exist(&server, &["cut_a", "cut_b"]), [false, false]);
    script_writes(&server, &["later_c", "later_d"]);
    server.stop();
    server.restart();
    assert_eq!(
        exist(&server, &["cut_a", "cut_b", "later_c", "later_d"]),
        [false, false, true, true],
        "the cut script stays unapplied after the next restart, the later one is kept"
    );
}

/// The first multiple of a 4 KiB page at or after `len`.
fn page_end(len: usize) -> usize {
    len.div_ceil(4096) * 4096
}

/// A `kill -9` between two pages of Redis's write can cut the AOF right after a line's `$` or
/// its digits (seen in `survives_five_crashes`: a file ending in `XADD\r\n$43\r\n...\r\n$` on a
/// 4 KiB page boundary). `redis-check-aof` then says "Expected \r\n, got: 0000" (its line
/// buffer's end, not the file's bytes), not that the file ends early; it is a cut all the same:
/// the restart cuts the last script before its `MULTI`, keeps what came before, and later
/// writes survive the next restart. Cut after `*`, `$`, `$6`, `$6\r`, and inside a value, of
/// a script's second write; and inside a script's only write (which Redis writes without
/// `MULTI`).
#[test]
fn restart_cuts_an_aof_cut_inside_a_line() {
    let cuts: [(&str, &[&str], &[u8], usize); 6] = [
        ("after *", &["torn_b", "torn_c"], b"*3\r\n$3\r\nSET\r\n$6\r\ntorn_c", 1),
        ("after $", &["torn_b", "torn_c"], b"$6\r\ntorn_c", 1),
        ("after $6", &["torn_b", "torn_c"], b"$6\r\ntorn_c", 2),
        ("after $6\\r", &["torn_b", "torn_c"], b"$6\r\ntorn_c", 3),
        ("inside a value", &["torn_b", "torn_c"], b"$6\r\ntorn_c", 7),
        ("a script's only write", &["torn_b"], b"$6\r\ntorn_b", 1),
    ];
    for (cut, torn, at, keep) in cuts {
        let mut server = RedisServer::builder().persistence(true).start();
        script_writes(&server, &["kept_a", "kept_b"]);
        script_writes(&server, torn);
        server.stop();
        let incr = incr_aof(&server);
        let bytes = std::fs::read(&incr).unwrap();
        std::fs::write(&incr, &bytes[..find(&bytes, at) + keep]).unwrap();

        server
            .try_restart()
            .unwrap_or_else(|err| panic!("{cut}: a crash's cut is cut, not refused: {err}"));
        assert_eq!(
            exist(&server, &["kept_a", "torn_b", "torn_c"]),
            [true, false, false],
            "{cut}"
        );
        script_writes(&server, &["later_d", "later_e"]);
        server.stop();
        server.restart();
        assert_eq!(
            exist(&server, &["kept_a", "torn_b", "torn_c", "later_d"]),
            [true, false, false, true],
            "{cut}: the cut script stays unapplied after the next restart, the later one is kept"
        );
    }
}

/// The bytes of every file under `dir`, by name.
fn files(dir: &Path) -> Vec<(std::ffi::OsString, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (entry.file_name(), std::fs::read(entry.path()).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// Where `needle` first starts in `bytes`.
fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|window| window == needle)
        .unwrap_or_else(|| panic!("{} is in the AOF", String::from_utf8_lossy(needle)))
}

/// Damage near the end is not a cut, and the files are left as they were. Shapes:
/// - a broken line end in the last script, then zeros to the page's end;
/// - zeros in the middle, and at the end;
/// - a value's length made larger in the first script, then zeros; and the same without zeros,
///   where the checker reads past the end as if the file were cut in that script: `--fix` would
///   drop it and every script after it, all acknowledged (it did, before);
/// - an incremental file that Redis no longer appends to (a later one follows it in the
///   manifest) ending as a crash's cut would: a crash cannot cut it.
#[test]
fn restart_leaves_damage_near_the_end_alone() {
    type Damage = fn(&Path, &[u8]);
    let damages: [(&str, Damage); 5] = [
        ("broken line end, then zeros", |incr, bytes| {
            // After the key: the checker can tell (a flipped byte inside a value it cannot).
            let at = find(bytes, b"k3") + 2;
            let mut damaged = [&bytes[..at], b"@@", &bytes[at + 2..bytes.len() - 3]].concat();
            damaged.resize(page_end(bytes.len() + 1), 0);
            std::fs::write(incr, damaged).unwrap();
        }),
        ("zeros in the middle and at the end", |incr, bytes| {
            let at = find(bytes, b"k2");
            let mut damaged = bytes.to_vec();
            damaged[at..at + 8].fill(0);
            damaged.resize(page_end(bytes.len() + 1), 0);
            std::fs::write(incr, damaged).unwrap();
        }),
        ("a length made larger, then zeros", |incr, bytes| {
            let at = find(bytes, b"$2\r\nk1");
            let mut damaged = [&bytes[..at], b"$400", &bytes[at + 2..]].concat();
            damaged.resize(page_end(bytes.len() + 1), 0);
            std::fs::write(incr, damaged).unwrap();
        }),
        ("a length made larger, at the end", |incr, bytes| {
            let at = find(bytes, b"$2\r\nk1");
            std::fs::write(incr, [&bytes[..at], b"$400", &bytes[at + 2..]].concat()).unwrap();
        }),
        ("a cut at the end of an earlier file", |incr, bytes| {
            let dir = incr.parent().unwrap();
            // Ends the way a crash's cut would: a MULTI and part of a SET.
            let at = find(bytes, b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$2\r\nk2");
            std::fs::write(incr, &bytes[..at + 25]).unwrap();
            let later = [b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n", &bytes[at..]].concat();
            std::fs::write(dir.join("appendonly.aof.2.incr.aof"), later).unwrap();
            let manifest = dir.join("appendonly.aof.manifest");
            let listed = std::fs::read_to_string(&manifest).unwrap();
            std::fs::write(manifest, listed + "file appendonly.aof.2.incr.aof seq 2 type i\n").unwrap();
        }),
    ];
    for (damage, write) in damages {
        let mut server = RedisServer::builder().persistence(true).start();
        for key in ["k1", "k2", "k3"] {
            script_writes(&server, &[key, &format!("{key}_b")]);
        }
        server.stop();
        let incr = incr_aof(&server);
        write(&incr, &std::fs::read(&incr).unwrap());
        let dir = server.dir().join("appendonlydir");
        let damaged = files(&dir);

        let err = server.try_restart().expect_err(damage);
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{damage}: {err}");
        assert!(
            err.to_string()
                .contains("is damaged before its end, not cut by a crash"),
            "{damage}: {err}"
        );
        assert!(!server.is_running(), "{damage}");
        assert!(files(&dir) == damaged, "{damage}: the files are left as they were");
    }
}

/// Damage in the middle of the AOF is not cut (`redis-check-aof --fix` would drop every write
/// after it): the restart fails with `InvalidData` and one line, and the file is left as it was.
#[test]
fn restart_leaves_an_aof_damaged_in_the_middle_alone() {
    let mut server = RedisServer::builder().persistence(true).start();
    for key in ["k1", "k2", "k3"] {
        script_writes(&server, &[key]);
    }
    server.stop();
    let incr = incr_aof(&server);
    let bytes = std::fs::read(&incr).unwrap();
    let at = bytes
        .windows(2)
        .position(|window| window == b"k2")
        .expect("k2 is in the AOF");
    let damaged = [&bytes[..at], b"@@flipped@@", &bytes[at..]].concat();
    std::fs::write(&incr, &damaged).unwrap();

    let err = server.try_restart().expect_err("a damaged AOF is refused");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    let message = err.to_string();
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.contains("is damaged before its end, not cut by a crash"),
        "{message}"
    );
    assert!(!server.is_running());
    assert_eq!(std::fs::read(&incr).unwrap(), damaged, "the file is left as it was");
}

/// A graceful stop flushes the AOF, so the data is there after a restart.
#[test]
fn stop_flushes_aof_and_restart_keeps_data() {
    let mut server = RedisServer::builder().persistence(true).password("pw").start();
    let port = server.port();
    server.command(&["RPUSH", "list", "a", "b", "c"]).unwrap();
    server.stop();
    assert!(!server.is_running());
    // Stopping twice is harmless.
    server.stop();
    assert!(server.command(&["PING"]).is_err(), "stopped server answered");

    server.restart();
    assert_eq!(server.port(), port);
    assert_eq!(server.command(&["LLEN", "list"]).unwrap(), ":3\r\n");
}

/// Without persistence a restart comes back empty, on the same port.
#[test]
fn restart_without_persistence_is_empty() {
    let mut server = RedisServer::start();
    let port = server.port();
    server.command(&["SET", "k", "v"]).unwrap();
    // Restarting a running server kills it first.
    server.restart();
    assert_eq!(server.port(), port);
    assert_eq!(server.command(&["EXISTS", "k"]).unwrap(), ":0\r\n");
}

/// restart() waits for its port while another process briefly holds it.
#[test]
fn restart_waits_for_a_briefly_taken_port() {
    let mut server = RedisServer::start();
    server.stop();
    let squatter = std::net::TcpListener::bind(server.addr()).unwrap();
    // The squatter holds the port for a while in the background, as an unrelated process
    // that grabbed it would; restart() must retry binding instead of failing at once.
    let holder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(squatter);
    });
    server.restart();
    holder.join().unwrap();
    assert_eq!(server.command(&["PING"]).unwrap(), "+PONG\r\n");
    let log = std::fs::read_to_string(server.log_path()).unwrap();
    assert!(log.contains("Address already in use"), "no bind retry happened");
}

/// A paused server accepts connections but does not answer until it is resumed.
#[test]
fn pause_blocks_until_resume() {
    let server = RedisServer::start();
    server.pause();
    // A paused server is still a live process.
    assert!(server.is_running());
    let err = raw_ping(server.addr(), Duration::from_millis(300)).unwrap_err();
    assert!(
        matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
        "expected a timeout, got {err:?}"
    );
    let err = server
        .command_with_timeout(&["PING"], Duration::from_millis(300))
        .unwrap_err();
    assert!(
        matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
        "expected a timeout, got {err:?}"
    );
    server.resume();
    assert_eq!(raw_ping(server.addr(), Duration::from_secs(5)).unwrap(), "+PONG\r\n");
}

/// Stopping a paused server still works, because stop() resumes it first.
#[test]
fn stop_handles_paused_server() {
    let mut server = RedisServer::start();
    let pid = server.pid().unwrap();
    server.pause();
    server.stop();
    assert!(!server.is_running());
    assert!(!process_exists(pid));
}

/// Dropping the server kills and reaps its process and removes its directory.
#[test]
fn drop_removes_process_and_dir() {
    let server = RedisServer::builder().persistence(true).start();
    let pid = server.pid().unwrap();
    let dir = server.dir().to_owned();
    assert!(process_exists(pid));
    assert!(dir.exists());
    // Freezing it first shows that Drop does not depend on the server's cooperation.
    server.pause();
    drop(server);
    assert!(!process_exists(pid), "redis-server {pid} survived drop");
    assert!(!dir.exists(), "{} survived drop", dir.display());
}

/// A panicking test still cleans up, because unwinding runs Drop.
#[test]
fn drop_cleans_up_after_panic() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let server = RedisServer::start();
        tx.send((server.pid().unwrap(), server.dir().to_owned())).unwrap();
        panic!("simulated test failure");
    })
    .join();
    assert!(result.is_err());
    let (pid, dir) = rx.recv().unwrap();
    assert!(!process_exists(pid), "redis-server {pid} survived a panic");
    assert!(!dir.exists(), "{} survived a panic", dir.display());
}

/// A missing binary fails with the install hint, both from try_start and from start.
#[test]
fn missing_binary_reports_install_hint() {
    let missing = Path::new("/nonexistent/tatbot/redis-server");
    let err = RedisServer::builder().binary(missing).try_start().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "redis-server not found: install it with `sudo apt-get install -y redis-server` \
             (or set TATBOT_REDIS_SERVER)"
        ),
        "unexpected message: {msg}"
    );
    assert!(msg.contains("/nonexistent/tatbot/redis-server"));

    let panic = std::panic::catch_unwind(|| RedisServer::builder().binary(missing).start())
        .expect_err("start() must panic without a binary");
    let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(text.contains("redis-server not found"), "panic said: {text}");
}

/// The server can be shared across threads and moved into async tasks.
#[test]
fn server_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RedisServer>();
    assert_send_sync::<tatbot_state_testkit::Builder>();
}

#[test]
fn sentinel_cluster_agrees_and_fails_over() {
    use tatbot_state_testkit::SentinelCluster;
    let mut cluster = SentinelCluster::builder()
        .password("pw")
        .sentinel_password("spw")
        .start();
    let old = cluster.master_port().expect("the sentinels name a master");
    assert_eq!(old, cluster.servers()[0].port());
    assert_eq!(cluster.sentinel_addrs().len(), 3);
    cluster.server_mut(old).kill();
    let new = cluster
        .wait_for_new_master(old, Duration::from_secs(30))
        .expect("a replica is promoted");
    assert_eq!(new, cluster.servers()[1].port());
    assert!(
        cluster
            .server(new)
            .command(&["SET", "k", "v"])
            .unwrap()
            .starts_with("+OK")
    );
    // The old primary comes back as a replica of the new one.
    cluster.server_mut(old).restart();
    cluster
        .wait_for_replica(old, Duration::from_secs(30))
        .expect("the old primary rejoins as a replica");
}
