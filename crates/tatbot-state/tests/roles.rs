//! The ACL template `config/redis/users.acl`: the viewer may only read and subscribe, the robot
//! may do its work but not administer the server, and wrong credentials get a one-line error.

use std::path::PathBuf;

use serde_json::json;
use tatbot_state::model::NodeHealth;
use tatbot_state::{
    CancellationToken, Category, Endpoint, Error, ManagerConfig, NodeId, ProducerConfig, ProgressUpdate, StateManager,
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

/// Sends one raw command as `user` and returns the server's error code, if any.
async fn denied_code(server: &RedisServer, user: &str, password: &str, args: &[&str]) -> Option<String> {
    let url = format!("redis://{user}:{password}@{}:{}/", server.host(), server.port());
    let mut connection = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    let result: redis::RedisResult<redis::Value> = command.query_async(&mut connection).await;
    result.err().map(|err| err.code().unwrap_or("?").to_owned())
}

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
    let session = robot.start_stroke_session(2, 2, "s").await.unwrap();

    let viewer = connect(&server, "viewer", "viewer-pw").await.unwrap();
    let status = viewer.system_status().await;
    assert!(status.redis_connected && status.error.is_none(), "{status:?}");
    assert_eq!(status.active_sessions, 1);
    assert!(viewer.get_stroke_progress(&session).await.unwrap().is_some());
    assert!(viewer.get_history(&session, None, 10).await.unwrap().is_empty());
    let snapshot = tatbot_state::follow::snapshot(
        &viewer,
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
    let session = robot.start_stroke_session(2, 2, "s").await.unwrap();
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
    let status = robot.system_status().await;
    assert!(status.error.is_none(), "{status:?}");
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
