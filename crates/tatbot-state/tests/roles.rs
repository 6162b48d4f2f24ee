//! The ACL template `config/redis/users.acl`: the viewer may only read and subscribe, the robot
//! may do its work but not administer the server, and wrong credentials get a one-line error.
//!
//! Issue #14 point 10: neither role may change server-side code (functions, the script cache),
//! reach another database, or list key names outside the robot's namespaces; each attack is
//! tried as the robot and as the viewer.

use std::path::PathBuf;

use serde_json::json;
use tatbot_state::model::NodeHealth;
use tatbot_state::{
    CancellationToken, Category, Endpoint, Error, HistoryCursor, ManagerConfig, NodeId, ProducerConfig, ProgressUpdate,
    SessionPlan, StateManager,
};
use tatbot_state_testkit::RedisServer;

const TEMPLATE: &str = include_str!("../../../config/redis/users.acl");

/// A server loading the template with the test's passwords.
fn server_with_roles() -> (RedisServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let rendered = TEMPLATE
        .replace("CHANGE-ME-admin", "admin-pw")
        .replace("CHANGE-ME-robot", "robot-pw")
        .replace("CHANGE-ME-viewer", "viewer-pw");
    let path: PathBuf = dir.path().join("users.acl");
    std::fs::write(&path, rendered).unwrap();
    (RedisServer::builder().acl_file(&path).start(), dir)
}

fn endpoint(server: &RedisServer, user: &str, password: &str) -> Endpoint {
    Endpoint::new(server.host(), server.port())
        .with_username(user)
        .with_password(password)
}

async fn connect(server: &RedisServer, user: &str, password: &str) -> tatbot_state::Result<StateManager> {
    StateManager::connect(ManagerConfig::new(
        endpoint(server, user, password),
        NodeId::new("hog").unwrap(),
    ))
    .await
}

/// A raw connection as `user`, for commands the library never sends.
async fn raw(server: &RedisServer, user: &str, password: &str) -> redis::aio::MultiplexedConnection {
    let url = format!("redis://{user}:{password}@{}:{}/", server.host(), server.port());
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Sends one raw command as `user` and returns the server's error code, if any.
async fn denied_code(server: &RedisServer, user: &str, password: &str, args: &[&str]) -> Option<String> {
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    denied(server, user, password, &command).await
}

/// Sends `command` as `user` and returns the server's error code, if any.
async fn denied(server: &RedisServer, user: &str, password: &str, command: &redis::Cmd) -> Option<String> {
    let mut connection = raw(server, user, password).await;
    let result: redis::RedisResult<redis::Value> = command.query_async(&mut connection).await;
    result.err().map(|err| err.code().unwrap_or("?").to_owned())
}

/// The two roles that must not change server-side code or reach outside their data.
const LOW_ROLES: [(&str, &str); 2] = [("robot", "robot-pw"), ("viewer", "viewer-pw")];

const ADMIN_ONLY: [&[&str]; 4] = [
    &["FLUSHALL"],
    &["CONFIG", "GET", "port"],
    &["SHUTDOWN", "NOSAVE"],
    &["KEYS", "*"],
];

/// The viewer reads and subscribes, and every write or admin command is refused.
#[tokio::test]
async fn viewer_reads_only() {
    let (server, _dir) = server_with_roles();
    let robot = connect(&server, "robot", "robot-pw").await.unwrap();
    let session = robot
        .start_stroke_session(&SessionPlan {
            total_strokes: 2,
            stroke_length: 2,
            scene: "s".into(),
        })
        .await
        .unwrap();

    let viewer = connect(&server, "viewer", "viewer-pw").await.unwrap();
    let status = viewer.system_status().await;
    assert!(status.redis_connected && status.error.is_none(), "{status:?}");
    assert_eq!(status.active_sessions, 1);
    assert!(viewer.get_stroke_progress(&session).await.unwrap().is_some());
    assert!(
        viewer
            .get_history(&session, &HistoryCursor::Start, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let snapshot = viewer
        .snapshot(
            &tatbot_state::Scope::All,
            &tatbot_state::follow::FollowConfig::default(),
        )
        .await
        .unwrap();
    assert_eq!(snapshot.sessions.len(), 1, "the follow snapshot works for the viewer");
    let mut subscription = viewer.subscribe(&["stroke:events:*"]).await.unwrap();
    robot
        .update_stroke_progress(&session, &ProgressUpdate::new(0, 1))
        .await
        .unwrap();
    assert!(subscription.next().await.unwrap().event.is_ok());

    let err = viewer
        .update_stroke_progress(&session, &ProgressUpdate::new(1, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
    assert!(err.to_string().contains("lacks the permission"), "{err}");
    let writes: [&[&str]; 4] = [
        &["HSET", "robot:state:x", "state", "{}"],
        &["DEL", "tatbot:sessions"],
        &["PUBLISH", "robot:events", "{}"],
        &["XADD", "tatbot:events", "*", "a", "b"],
    ];
    for command in writes.iter().chain(ADMIN_ONLY.iter()) {
        assert_eq!(
            denied_code(&server, "viewer", "viewer-pw", command).await.as_deref(),
            Some("NOPERM"),
            "viewer ran {command:?}"
        );
    }
}

/// The robot does all of its work, through the awaited calls and the producer, but cannot
/// flush, reconfigure or shut down the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn robot_works_but_cannot_administer() {
    let (server, _dir) = server_with_roles();
    let robot = connect(&server, "robot", "robot-pw").await.unwrap();
    let session = robot
        .start_stroke_session(&SessionPlan {
            total_strokes: 2,
            stroke_length: 2,
            scene: "s".into(),
        })
        .await
        .unwrap();
    // A killed producer's record, an hour old: the robot's producer takes it out.
    let mut admin = raw(&server, "admin", "admin-pw").await;
    let stale = json!({
        "stats": {"dropped": 0, "rejected": 0, "restored": 0},
        "updated": "2020-01-01T00:00:00",
    });
    let () = redis::cmd("HSET")
        .arg("tatbot:producers")
        .arg("killed.1")
        .arg(stale.to_string())
        .query_async(&mut admin)
        .await
        .unwrap();
    let producer = robot.producer(ProducerConfig::default(), CancellationToken::new());
    producer
        .update_stroke_progress(&session, &ProgressUpdate::new(0, 0))
        .unwrap();
    producer.update_node_health(&NodeHealth::new("hog")).unwrap();
    producer
        .report_error(&Category::new("hardware").unwrap(), "e", json!({}))
        .unwrap();
    producer.end_stroke_session(&session);
    producer.flush(std::time::Duration::from_secs(10)).await.unwrap();
    assert_eq!(producer.stats().rejected, 0, "{:?}", producer.stats());
    assert!(!robot.get_stroke_progress(&session).await.unwrap().unwrap().is_executing);
    assert_eq!(robot.list_errors(10).await.unwrap().len(), 1);
    let pruned = crate::util::eventually(std::time::Duration::from_secs(30), || {
        let mut admin = admin.clone();
        async move {
            let exists: bool = redis::cmd("HEXISTS")
                .arg("tatbot:producers")
                .arg("killed.1")
                .query_async(&mut admin)
                .await
                .unwrap();
            !exists
        }
    })
    .await;
    assert!(pruned, "the robot may take stale records out");
    // Listing needs SCAN, which the robot may not run (issue #14 point 10): the status says so.
    let status = robot.system_status().await;
    assert!(status.redis_connected, "{status:?}");
    let error = status.error.unwrap_or_default();
    assert!(error.contains("denied scan") && error.contains("viewer"), "{error}");
    for command in ADMIN_ONLY {
        assert_eq!(
            denied_code(&server, "robot", "robot-pw", command).await.as_deref(),
            Some("NOPERM"),
            "robot ran {command:?}"
        );
    }
    assert_eq!(
        denied_code(&server, "admin", "admin-pw", &["CONFIG", "GET", "port"]).await,
        None
    );
}

/// A wrong password for a known user, and the disabled default user, get the credentials error.
#[tokio::test]
async fn wrong_credentials() {
    let (server, _dir) = server_with_roles();
    let err = connect(&server, "viewer", "nope").await.err().unwrap();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    let line = err.to_string();
    assert!(
        line.contains("refused the credentials") && !line.contains('\n'),
        "{line}"
    );
    let anonymous = StateManager::connect(ManagerConfig::new(
        Endpoint::new(server.host(), server.port()),
        NodeId::new("x").unwrap(),
    ))
    .await;
    assert!(matches!(anonymous, Err(Error::Auth { .. })), "{:?}", anonymous.err());
}

/// A function library whose function empties every database: what a robot would plant.
const WIPING_LIBRARY: &str =
    "#!lua name=planted\nredis.register_function('wipe', function() return redis.call('FLUSHALL') end)";

/// A harmless library the admin loads, which the other roles must not change.
const ADMIN_LIBRARY: &str =
    "#!lua name=tatbot_admin\nredis.register_function('tatbot_ping', function() return 'pong' end)";

/// Issue #14 point 10: neither the robot nor the viewer can load a function, so an admin's
/// `FCALL` of a planted name finds nothing to run and the data stays.
#[tokio::test]
async fn issue_14_no_function_is_planted_for_the_admin() {
    let (server, _dir) = server_with_roles();
    let mut admin = raw(&server, "admin", "admin-pw").await;
    let () = redis::cmd("SET")
        .arg("tatbot:keep")
        .arg("1")
        .query_async(&mut admin)
        .await
        .unwrap();
    for (user, password) in LOW_ROLES {
        let mut plant = redis::cmd("FUNCTION");
        plant.arg("LOAD").arg("REPLACE").arg(WIPING_LIBRARY);
        assert_eq!(
            denied(&server, user, password, &plant).await.as_deref(),
            Some("NOPERM"),
            "{user} loaded a function"
        );
    }
    let fcall: redis::RedisResult<redis::Value> = redis::cmd("FCALL").arg("wipe").arg(0).query_async(&mut admin).await;
    assert!(fcall.is_err(), "the admin ran a planted function: {fcall:?}");
    let size: u64 = redis::cmd("DBSIZE").query_async(&mut admin).await.unwrap();
    assert_eq!(size, 1);
}

/// Issue #14 point 10: the admin's functions and cached scripts cannot be flushed, deleted,
/// replaced or killed by the robot or the viewer, and neither may start the script debugger.
#[tokio::test]
async fn issue_14_server_side_code_is_out_of_reach() {
    let (server, _dir) = server_with_roles();
    let mut admin = raw(&server, "admin", "admin-pw").await;
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(ADMIN_LIBRARY)
        .query_async(&mut admin)
        .await
        .unwrap();
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return 1")
        .query_async(&mut admin)
        .await
        .unwrap();
    let dump: Vec<u8> = redis::cmd("FUNCTION")
        .arg("DUMP")
        .query_async(&mut admin)
        .await
        .unwrap();

    let mut restore = redis::cmd("FUNCTION");
    restore.arg("RESTORE").arg(&dump).arg("FLUSH");
    let mut attacks: Vec<redis::Cmd> = [
        &["FUNCTION", "FLUSH"][..],
        &["FUNCTION", "DELETE", "tatbot_admin"],
        &["FUNCTION", "KILL"],
        &["SCRIPT", "FLUSH"],
        &["SCRIPT", "KILL"],
        &["SCRIPT", "DEBUG", "YES"],
    ]
    .iter()
    .map(|args| {
        let mut command = redis::cmd(args[0]);
        command.arg(&args[1..]);
        command
    })
    .collect();
    attacks.push(restore);
    for (user, password) in LOW_ROLES {
        for command in &attacks {
            assert_eq!(
                denied(&server, user, password, command).await.as_deref(),
                Some("NOPERM"),
                "{user} ran {}",
                String::from_utf8_lossy(&command.get_packed_command()).escape_debug()
            );
        }
    }
    let pong: String = redis::cmd("FCALL")
        .arg("tatbot_ping")
        .arg(0)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(pong, "pong");
    let cached: Vec<u8> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&sha)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(cached, [1]);
}

/// Issue #14 point 10: no role but admin reaches another database, by command or from a script.
#[tokio::test]
async fn issue_14_other_databases_are_out_of_reach() {
    let (server, _dir) = server_with_roles();
    let mut admin = raw(&server, "admin", "admin-pw").await;
    let () = redis::cmd("SET")
        .arg("tatbot:x")
        .arg("1")
        .query_async(&mut admin)
        .await
        .unwrap();
    let attacks: [&[&str]; 4] = [
        &["SELECT", "1"],
        &["MOVE", "tatbot:x", "1"],
        &["COPY", "tatbot:x", "tatbot:x", "DB", "1"],
        &["SWAPDB", "0", "1"],
    ];
    for (user, password) in LOW_ROLES {
        for command in attacks {
            assert_eq!(
                denied_code(&server, user, password, command).await.as_deref(),
                Some("NOPERM"),
                "{user} ran {command:?}"
            );
        }
    }

    // The robot may load and run scripts (its write path does), but a script runs with the
    // robot's rights; the viewer may not load one at all.
    let mut robot = raw(&server, "robot", "robot-pw").await;
    for body in [
        "redis.call('SELECT', 1) return redis.call('SET', 'tatbot:x', 2)",
        "return redis.call('MOVE', 'tatbot:x', 1)",
        "return redis.call('COPY', 'tatbot:x', 'tatbot:x', 'DB', 1)",
    ] {
        let script = redis::Script::new(body);
        let result: redis::RedisResult<redis::Value> = script.invoke_async(&mut robot).await;
        let err = result.expect_err(body);
        assert!(err.to_string().contains("can't run this command"), "{body}: {err}");
    }
    assert_eq!(
        denied_code(&server, "viewer", "viewer-pw", &["SCRIPT", "LOAD", "return 1"])
            .await
            .as_deref(),
        Some("NOPERM")
    );

    let other_url = format!("redis://admin:admin-pw@{}:{}/1", server.host(), server.port());
    let mut other = redis::Client::open(other_url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let size: u64 = redis::cmd("DBSIZE").query_async(&mut other).await.unwrap();
    assert_eq!(size, 0, "a key reached database 1");
    let value: String = redis::cmd("GET").arg("tatbot:x").query_async(&mut admin).await.unwrap();
    assert_eq!(value, "1");
}

/// Issue #14 point 10: the robot cannot learn key or channel names outside its namespaces
/// (`SCAN`, `RANDOMKEY`, `PUBSUB CHANNELS`, broadcast client tracking); the viewer, which may
/// read every key, still lists them; the robot's listing calls fail with a one-line hint.
#[tokio::test]
async fn issue_14_robot_cannot_list_names_outside_its_namespaces() {
    let (server, _dir) = server_with_roles();
    let mut admin = raw(&server, "admin", "admin-pw").await;
    let () = redis::cmd("SET")
        .arg("other:secret")
        .arg("1")
        .query_async(&mut admin)
        .await
        .unwrap();
    let listings: [&[&str]; 4] = [
        &["SCAN", "0"],
        &["RANDOMKEY"],
        &["PUBSUB", "CHANNELS"],
        &["CLIENT", "TRACKING", "on", "BCAST"],
    ];
    for command in listings {
        assert_eq!(
            denied_code(&server, "robot", "robot-pw", command).await.as_deref(),
            Some("NOPERM"),
            "robot ran {command:?}"
        );
    }
    let mut viewer = raw(&server, "viewer", "viewer-pw").await;
    let (_, names): (u64, Vec<String>) = redis::cmd("SCAN").arg(0).query_async(&mut viewer).await.unwrap();
    assert_eq!(names, ["other:secret"], "the viewer reads every key by design");

    let robot = connect(&server, "robot", "robot-pw").await.unwrap();
    let err = robot.list_sessions().await.unwrap_err();
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
    let line = err.to_string();
    assert!(
        line.contains("scan") && line.contains("viewer") && !line.contains('\n'),
        "{line}"
    );
}

/// Issue #12: the heartbeat agent of a read-only user stops at once with `PermissionDenied`
/// (retrying cannot succeed), instead of warning every interval until it is cancelled; the MCP
/// server's heartbeat is this agent and relies on that.
#[tokio::test]
async fn viewer_heartbeat_agent_stops_with_permission_denied() {
    let (server, _dir) = server_with_roles();
    let viewer = connect(&server, "viewer", "viewer-pw").await.unwrap();
    let options = tatbot_state::heartbeat::HeartbeatOptions {
        interval: std::time::Duration::from_millis(50),
        ..Default::default()
    };
    // Never cancelled: only the refusal can end the agent.
    let shutdown = CancellationToken::new();
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(5), viewer.heartbeat(options, shutdown))
        .await
        .expect("the agent stops by itself");
    assert!(matches!(stopped, Err(Error::PermissionDenied { .. })), "{stopped:?}");
}

/// The size of a collection read whole is asked with `MEMORY USAGE`, which the viewer may run:
/// its registry read refuses another client's huge one. A user whose ACL lacks the command
/// reads the registry as before instead of failing.
#[tokio::test]
async fn collection_sizes_are_asked_as_the_viewer_and_skipped_without_the_permission() {
    let (server, _dir) = server_with_roles();
    let robot = connect(&server, "robot", "robot-pw").await.unwrap();
    robot.update_node_health(&NodeHealth::new("hog")).await.unwrap();
    let mut admin = raw(&server, "admin", "admin-pw").await;
    let () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "plain",
            "on",
            ">plain-pw",
            "~*",
            "&*",
            "+@read",
            "+@connection",
            "-memory",
            "+info",
        ])
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(
        denied_code(&server, "plain", "plain-pw", &["MEMORY", "USAGE", "tatbot:nodes"])
            .await
            .as_deref(),
        Some("NOPERM")
    );
    let plain = connect(&server, "plain", "plain-pw").await.unwrap();
    let viewer = connect(&server, "viewer", "viewer-pw").await.unwrap();
    assert_eq!(plain.known_nodes().await.unwrap().len(), 1);
    assert_eq!(viewer.known_nodes().await.unwrap().len(), 1);

    let () = redis::cmd("ZADD")
        .arg("tatbot:nodes")
        .arg(1)
        .arg("x".repeat(9 << 20))
        .query_async(&mut admin)
        .await
        .unwrap();
    let err = viewer.known_nodes().await.unwrap_err();
    assert!(
        err.to_string().contains("bytes in Redis; a collection read whole"),
        "{err}"
    );
    assert_eq!(plain.known_nodes().await.unwrap().len(), 2, "read whole, as before");
}
