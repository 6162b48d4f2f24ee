//! Issue #14 against the dashboard: connection cap and header-read timeout (point 11), the
//! Host/Origin/token guard and security headers (point 14), and ages measured against the
//! server's time at send (point 15).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tatbot_state::http::ServeConfig;
use tatbot_state_testkit::RedisServer;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

use crate::http::{LIMIT, SseStream, get_with};
use crate::server::{manager, next_named, serve, viz_state};

/// Point 11: past the connection cap a connection is answered 503 at once, a silent
/// connection is closed after the header-read timeout, and then a normal request is served.
#[tokio::test]
async fn silent_connections_are_capped_and_timed_out() {
    const CAP: usize = 4;
    let redis = RedisServer::start();
    let state = manager(&redis).await;
    let config = ServeConfig {
        max_connections: CAP,
        header_read_timeout: Duration::from_secs(1),
    };
    let dashboard = serve(viz_state(&state).with_serve_config(config)).await;

    let mut silent = Vec::new();
    for _ in 0..CAP {
        silent.push(TcpStream::connect(dashboard.addr).await.unwrap());
    }
    for _ in 0..2 {
        let mut excess = TcpStream::connect(dashboard.addr).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(LIMIT, excess.read_to_end(&mut answer))
            .await
            .expect("the excess connection is answered at once")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    }
    for mut connection in silent {
        let mut rest = Vec::new();
        let started = std::time::Instant::now();
        tokio::time::timeout(LIMIT, connection.read_to_end(&mut rest))
            .await
            .expect("the silent connection is closed by the header-read timeout")
            .ok();
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }
    let (status, _, body) = get_with(dashboard.addr, "/api/status", &[]).await;
    assert_eq!(status, 200, "{body}");
    dashboard.stop().await;
}

/// Point 14: a foreign Host (DNS rebinding) or Origin is refused with 403, and every answer
/// carries the CSP, `X-Frame-Options` and `X-Content-Type-Options`.
#[tokio::test]
async fn foreign_host_and_origin_are_refused() {
    let redis = RedisServer::start();
    let state = manager(&redis).await;
    let dashboard = serve(viz_state(&state)).await;
    let addr = dashboard.addr;

    for path in ["/", "/api/status", "/api/stream"] {
        let (status, _, _) = get_with(addr, path, &[("Host", "evil.example:8080")]).await;
        assert_eq!(status, 403, "{path}");
        let (status, _, _) = get_with(addr, path, &[("Origin", "http://evil.example")]).await;
        assert_eq!(status, 403, "{path}");
    }
    let (status, head, body) = get_with(addr, "/", &[("Origin", &format!("http://{addr}"))]).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    assert!(head.contains("frame-ancestors 'none'"), "{head}");
    assert!(head.contains("x-frame-options: deny"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    let (_, head, _) = get_with(addr, "/", &[("Host", "evil.example")]).await;
    assert!(head.contains("x-content-type-options: nosniff"), "refusals too: {head}");
    dashboard.stop().await;
}

/// Point 14: off loopback the dashboard needs a token; with one, a request without it gets a
/// Basic challenge (the browser's login), and Bearer or Basic with the token pass.
#[tokio::test]
async fn off_loopback_needs_the_token() {
    let redis = RedisServer::start();
    let state = manager(&redis).await;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let refused = tatbot_state_viz::serve(listener, viz_state(&state), tatbot_state::CancellationToken::new()).await;
    let err = refused.expect_err("no token off loopback");
    assert!(err.to_string().contains("without a token"), "{err}");

    // Bound to every interface, but this test only ever connects to 127.0.0.1.
    let dashboard = crate::server::serve_on("0.0.0.0:0", viz_state(&state).with_token(Some("s3cret".to_owned()))).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], dashboard.addr.port()));
    let (status, head, _) = get_with(addr, "/api/status", &[]).await;
    assert_eq!(status, 401);
    assert!(head.contains("www-authenticate: basic"), "{head}");
    let (status, _, _) = get_with(addr, "/api/status", &[("Authorization", "Bearer wrong")]).await;
    assert_eq!(status, 401);
    let (status, _, _) = get_with(addr, "/api/status", &[("Authorization", "Bearer s3cret")]).await;
    assert_eq!(status, 200);
    // "viewer:s3cret" in Base64, as a browser sends it after the login prompt.
    let (status, _, _) = get_with(addr, "/", &[("Authorization", "Basic dmlld2VyOnMzY3JldA==")]).await;
    assert_eq!(status, 200);
    dashboard.stop().await;
}

/// Point 15: a page that opens long after the hub took its snapshot gets that (old) snapshot
/// and then a `clock` with the server's time at send, which ages are measured against.
#[tokio::test]
async fn a_late_page_gets_the_server_time_at_send() {
    let redis = RedisServer::start();
    let state = manager(&redis).await;
    let dashboard = serve(viz_state(&state)).await;

    let mut first = SseStream::open(dashboard.addr, None).await;
    let snapshot = next_named(&mut first, "snapshot").await.json();
    let snapshot_time = snapshot["server_time_ms"].as_i64().unwrap();
    // The age under test: the hub's snapshot grows old while nothing changes.
    const AGE: Duration = Duration::from_secs(2);
    tokio::time::sleep(AGE).await;

    let mut late = SseStream::open(dashboard.addr, None).await;
    let cached = next_named(&mut late, "snapshot").await.json();
    assert_eq!(
        cached["server_time_ms"].as_i64(),
        Some(snapshot_time),
        "the hub's state, not a new read"
    );
    let clock = late.next().await.expect("a frame after the snapshot");
    assert_eq!(clock.event, "clock", "{clock:?}");
    let clock_time = clock.json()["server_time_ms"].as_i64().unwrap();
    let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
    assert!(
        clock_time >= snapshot_time + 1_900,
        "clock {clock_time}, snapshot {snapshot_time}"
    );
    // The testkit's Redis runs on this machine, so its clock is ours.
    assert!((now - clock_time).abs() < 1_000, "clock {clock_time}, now {now}");
    dashboard.stop().await;
}
