//! Connecting: wrong credentials, nothing listening, a paused server, a restart.

use std::time::Duration;

use tatbot_state::{Endpoint, Error, ManagerConfig, NodeId, StateManager};
use tatbot_state_testkit::RedisServer;

use crate::util::{config, eventually, one_pose};

fn node() -> NodeId {
    NodeId::new("hog").unwrap()
}

/// A wrong password, or none where one is required, is an Auth error with a hint.
#[tokio::test]
async fn wrong_password() {
    let server = RedisServer::builder().password("s3cret").start();
    let wrong = Endpoint::new(server.host(), server.port()).with_password("nope");
    let err = StateManager::connect(ManagerConfig::new(wrong, node()))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    // Issue #12: the message says what happened once; the server's words are its source and
    // the advice (which variables to check) is the binary's.
    assert_eq!(
        err.to_string(),
        format!("Redis at 127.0.0.1:{} refused the credentials", server.port())
    );
    assert_eq!(
        err.report().to_string(),
        format!(
            "Redis at 127.0.0.1:{} refused the credentials: \"WRONGPASS\": invalid username-password pair or user is disabled.",
            server.port()
        )
    );

    let none = Endpoint::new(server.host(), server.port());
    let err = StateManager::connect(ManagerConfig::new(none, node()))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");

    let state = StateManager::connect(config(&server, "hog")).await.unwrap();
    state.ping().await.unwrap();
}

/// Nothing listening: a one-line Unreachable error naming the target, quickly.
#[tokio::test]
async fn unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = std::time::Instant::now();
    let err = StateManager::connect(ManagerConfig::new(Endpoint::new("127.0.0.1", port), node()))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    // Issue #12: the driver's reason is the source, said once by the report, never twice.
    assert_eq!(err.to_string(), format!("cannot reach Redis at 127.0.0.1:{port}"));
    assert_eq!(
        err.report().to_string(),
        format!("cannot reach Redis at 127.0.0.1:{port}: Connection refused (os error 111)")
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A paused server makes calls time out with a Timeout error instead of hanging.
#[tokio::test]
async fn paused_server_times_out() {
    let server = RedisServer::start();
    let mut short = config(&server, "hog");
    short.response_timeout = Duration::from_millis(300);
    let state = StateManager::connect(short).await.unwrap();
    server.pause();
    let err = state.ping().await.unwrap_err();
    server.resume();
    assert!(
        matches!(err, Error::Timeout { after, .. } if after == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(err.is_connection_error());
}

/// After Redis restarts, the same manager works again without being rebuilt.
#[tokio::test]
async fn reconnects_after_restart() {
    let mut server = RedisServer::start();
    let state = StateManager::connect(config(&server, "hog")).await.unwrap();
    state.ping().await.unwrap();
    server.kill();
    assert!(state.ping().await.is_err());
    server.restart();
    assert!(eventually(Duration::from_secs(10), || async { state.ping().await.is_ok() }).await);
    // The scripts are loaded again after the restart (EVALSHA falls back to EVAL).
    state.start_stroke_session(&one_pose("s")).await.unwrap();
}

/// An outage longer than the shared connection's reconnect attempts.
const OUTAGE: Duration = Duration::from_secs(1);

/// Whether `err` is a refused connection: the request never left the process.
fn refused(err: &Error) -> bool {
    matches!(err, Error::Redis { source, .. } | Error::Unreachable { source, .. } if source.is_connection_refusal())
}

/// The first call after Redis came back works. While Redis was down, the shared connection's
/// reconnect failed and kept that failure, and the next caller got it though Redis was up
/// again; a call whose connection was refused never left the process, so it is made once more
/// on a fresh connection.
#[tokio::test]
async fn first_call_after_an_outage_works() {
    let mut server = RedisServer::start();
    let state = StateManager::connect(config(&server, "hog")).await.unwrap();
    state.ping().await.unwrap();
    server.kill();
    // Until a call is refused: the failed reconnect is what the next call gets.
    let refusing = eventually(Duration::from_secs(10), || async {
        state.ping().await.is_err_and(|err| refused(&err))
    });
    assert!(refusing.await, "calls refused while Redis is down");
    // The outage itself, longer than the connection's own reconnect attempts (50 ms apart).
    tokio::time::sleep(OUTAGE).await;
    server.restart();
    state.ping().await.expect("the first call after the outage");
    state
        .start_stroke_session(&one_pose("s"))
        .await
        .expect("a write after the outage");
}
