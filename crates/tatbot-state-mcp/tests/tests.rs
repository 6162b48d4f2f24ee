//! In-process tests of the MCP server: [`tatbot_state_mcp::serve_io`] on one end of an
//! in-memory pipe, rmcp's client on the other, a test-kit Redis behind it.
//!
//! The end-to-end tests of the `tatbot-state mcp` binary (stdio and HTTP, security, outages)
//! are in the CLI crate (`crates/tatbot-state-cli/tests/mcp.rs`); these cover what needs no
//! process: the 2026-07 `subscriptions/listen` model (for progress and parameters) and
//! heartbeat-driven notifications. `sessions.rs` checks the HTTP session model on the wire.

mod hardening;
mod sessions;

use std::time::Duration;

use rmcp::model::{
    ProtocolVersion, ReadResourceRequestParams, ResourceContents, ResourceUpdatedNotificationParam, ServerNotification,
    SubscribeRequestParams, SubscriptionFilter,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt, RoleClient, ServiceExt};
use tatbot_state::model::NodeHealth;
use tatbot_state::{
    CancellationToken, Descriptor, Endpoint, ManagerConfig, NodeId, ParamName, ParamValue, ProgressUpdate, SessionPlan,
    StateManager,
};
use tatbot_state_mcp::{ConfigDescription, serve_io};
use tatbot_state_testkit::RedisServer;
use tokio::sync::mpsc;

/// Bound on every wait of these tests.
const DEADLINE: Duration = Duration::from_secs(20);

/// A manager on `server` writing as `node`.
async fn manager(server: &RedisServer, node: &str) -> StateManager {
    let endpoint = Endpoint::new(server.host(), server.port());
    StateManager::connect(ManagerConfig::new(endpoint, NodeId::new(node).unwrap()))
        .await
        .unwrap()
}

/// Starts the server on one end of an in-memory pipe and returns the other end, and the token
/// that stops the server (cancelled when the returned guard drops).
async fn serve(server: &RedisServer) -> (tokio::io::DuplexStream, tokio_util::sync::DropGuard) {
    let reader = manager(server, "mcp").await;
    let config = ConfigDescription {
        target: format!("{}:{} (no password)", server.host(), server.port()),
        fields: Vec::new(),
    };
    let (server_end, client_end) = tokio::io::duplex(64 * 1024);
    let (input, output) = tokio::io::split(server_end);
    let shutdown = CancellationToken::new();
    tokio::spawn(serve_io(reader, config, input, output, shutdown.clone()));
    (client_end, shutdown.drop_guard())
}

/// Forwards `notifications/resources/updated` (2025-11 model) into a channel.
struct Updates(mpsc::Sender<String>);

impl ClientHandler for Updates {
    async fn on_resource_updated(&self, params: ResourceUpdatedNotificationParam, _: NotificationContext<RoleClient>) {
        // A full channel means the test stopped listening; dropping the URI is then harmless.
        let _ = self.0.try_send(params.uri);
    }
}

/// The text content of a read, checking that the JSON content follows it.
async fn read_text<S: rmcp::Service<RoleClient>>(client: &RunningService<RoleClient, S>, uri: &str) -> String {
    let result = client.read_resource(ReadResourceRequestParams::new(uri)).await.unwrap();
    let [
        ResourceContents::TextResourceContents {
            mime_type: Some(text_type),
            text,
            ..
        },
        ResourceContents::TextResourceContents {
            mime_type: Some(json_type),
            ..
        },
    ] = result.contents.as_slice()
    else {
        panic!("{uri}: expected text and JSON contents, got {:?}", result.contents);
    };
    assert_eq!(
        (text_type.as_str(), json_type.as_str()),
        ("text/plain", "application/json")
    );
    text.clone()
}

/// A 2026-07 client's `subscriptions/listen` is acknowledged for the resources it names and
/// delivers an update when progress advances; an invalid URI is left out of the acknowledgment.
#[tokio::test]
async fn listen_model_notifies_progress() {
    let redis = RedisServer::start();
    let robot = manager(&redis, "hog").await;
    let session_id = robot
        .start_stroke_session(&SessionPlan {
            total_strokes: 3,
            stroke_length: 4,
            scene: "demo".into(),
        })
        .await
        .unwrap();
    let (pipe, _stop) = serve(&redis).await;
    let client = ()
        .serve_with_lifecycle(
            pipe,
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .unwrap();
    let progress_uri = format!("state://stroke/progress/{session_id}");
    let filter = SubscriptionFilter::builder()
        .resource_subscription(progress_uri.as_str())
        .resource_subscription("state://health/*")
        .build();
    let mut subscription = client.listen(filter).await.unwrap();
    assert_eq!(
        subscription.acknowledged().resource_subscriptions,
        Some(vec![progress_uri.clone()])
    );

    robot
        .update_stroke_progress(&session_id, &ProgressUpdate::new(1, 2))
        .await
        .unwrap();
    let notification = tokio::time::timeout(DEADLINE, subscription.next())
        .await
        .expect("an update within the deadline")
        .unwrap()
        .expect("the subscription is open");
    let ServerNotification::ResourceUpdatedNotification(update) = notification else {
        panic!("expected a resource update, got {notification:?}");
    };
    assert_eq!(update.params.uri, progress_uri);
    let text = read_text(&client, &progress_uri).await;
    assert!(text.contains("Stroke: 2/3\n") && text.contains("Pose: 3/4\n"), "{text}");

    subscription.cancel().await.unwrap();
    client.cancel().await.unwrap();
}

/// A 2026-07 listen on `state://params` and one parameter delivers an update for each when a
/// node sets the parameter (from the audit log, not pub/sub), and a read shows the new value.
#[tokio::test]
async fn listen_model_notifies_param_changes() {
    let redis = RedisServer::start();
    let robot = manager(&redis, "hog").await;
    let params = robot.params();
    let goal = ParamName::new("arms.goal_time_slow").unwrap();
    params.declare(&goal, &Descriptor::new(2.0)).await.unwrap();
    let (pipe, _stop) = serve(&redis).await;
    let client = ()
        .serve_with_lifecycle(
            pipe,
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .unwrap();
    let goal_uri = "state://params/arms.goal_time_slow";
    let filter = SubscriptionFilter::builder()
        .resource_subscription("state://params")
        .resource_subscription(goal_uri)
        .resource_subscription("state://params/arms.*")
        .build();
    let mut subscription = client.listen(filter).await.unwrap();
    assert_eq!(
        subscription.acknowledged().resource_subscriptions,
        Some(vec!["state://params".to_owned(), goal_uri.to_owned()])
    );

    params.set(&goal, &ParamValue::Float(3.0)).await.unwrap();
    let mut updated = std::collections::BTreeSet::new();
    while updated.len() < 2 {
        let notification = tokio::time::timeout(DEADLINE, subscription.next())
            .await
            .expect("an update within the deadline")
            .unwrap()
            .expect("the subscription is open");
        let ServerNotification::ResourceUpdatedNotification(update) = notification else {
            panic!("expected a resource update, got {notification:?}");
        };
        updated.insert(update.params.uri);
    }
    assert!(
        updated.contains(goal_uri) && updated.contains("state://params"),
        "{updated:?}"
    );
    let text = read_text(&client, goal_uri).await;
    assert!(text.contains("Value: 3.0\nVersion: 2\nSet By: hog\n"), "{text}");

    subscription.cancel().await.unwrap();
    client.cancel().await.unwrap();
}

/// Heartbeats have no pub/sub event; a subscriber to a node's health is still told when its
/// heartbeat is renewed (the low-rate poll), and so is a subscriber to the node list.
#[tokio::test]
#[expect(deprecated, reason = "resources/subscribe is the 2025-11 model this test covers")]
async fn heartbeat_changes_are_notified() {
    let redis = RedisServer::start();
    let node = manager(&redis, "hog").await;
    let (pipe, _stop) = serve(&redis).await;
    let (tx, mut rx) = mpsc::channel(64);
    let client = Updates(tx).serve(pipe).await.unwrap();
    for uri in ["state://health/hog", "state://nodes"] {
        client.subscribe(SubscribeRequestParams::new(uri)).await.unwrap();
    }

    // The poll compares against the heartbeats it saw last time, so keep beating until it has
    // seen one and then a newer one.
    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while seen.len() < 2 {
        node.update_node_health(&NodeHealth::new("hog")).await.unwrap();
        tokio::select! {
            uri = rx.recv() => { seen.insert(uri.expect("the client is alive")); }
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = tokio::time::sleep_until(deadline) => panic!("no heartbeat notifications within {DEADLINE:?}: {seen:?}"),
        }
    }
    assert!(
        seen.contains("state://health/hog") && seen.contains("state://nodes"),
        "{seen:?}"
    );
    let text = read_text(&client, "state://health/hog").await;
    assert!(text.contains("Node: hog\nOnline: true\n"), "{text}");
    client.cancel().await.unwrap();
}

/// Issue #14 point 7: one corrupt parameter is listed with its error by `state://params`,
/// which still answers with the others (it used to fail the whole read with -32603).
#[tokio::test]
async fn params_resource_reports_a_corrupt_parameter() {
    let redis = RedisServer::start();
    let node = manager(&redis, "hog").await;
    let params = node.params();
    for name in ["arms.goal_time_slow", "arms.goal_time_fast"] {
        let name = ParamName::new(name).unwrap();
        params
            .declare(&name, &Descriptor::new(ParamValue::Float(2.0)))
            .await
            .unwrap();
    }
    redis
        .command(&["HSET", "tatbot:param:arms.goal_time_fast", "value", "\"fast\""])
        .unwrap();
    let (pipe, _stop) = serve(&redis).await;
    let client = ().serve(pipe).await.unwrap();
    let text = read_text(&client, "state://params").await;
    assert!(text.starts_with("Parameters: 1\narms.goal_time_slow = 2.0"), "{text}");
    assert!(
        text.contains("Corrupt Entries: 1\n  tatbot:param:arms.goal_time_fast: "),
        "{text}"
    );
    client.cancel().await.unwrap();
}

/// Another client's value under the node registry: `state://nodes` still lists the live nodes
/// and the registry as a corrupt entry (it used to fail the whole read).
#[tokio::test]
async fn nodes_resource_survives_a_registry_of_another_type() {
    use tatbot_state::model::NodeHealth;
    let redis = RedisServer::start();
    let node = manager(&redis, "hog").await;
    node.update_node_health(&NodeHealth::new("hog")).await.unwrap();
    redis.command(&["DEL", "tatbot:nodes"]).unwrap();
    redis.command(&["SET", "tatbot:nodes", "not a sorted set"]).unwrap();
    let (pipe, _stop) = serve(&redis).await;
    let client = ().serve(pipe).await.unwrap();
    let text = read_text(&client, "state://nodes").await;
    assert!(
        text.starts_with(
            "Nodes Online: 1/1
"
        ),
        "{text}"
    );
    assert!(text.contains("Corrupt Entries: 1\n  tatbot:nodes: "), "{text}");
    client.cancel().await.unwrap();
}

/// Issue #13 point 3: `state://robot` and `state://robot/{node_id}` show the stored robot
/// states, the template is listed, a subscriber is told of a change, and an unknown node is
/// "resource not found".
#[tokio::test]
#[expect(deprecated, reason = "resources/subscribe is the 2025-11 model this test covers")]
async fn robot_resources_show_and_notify() {
    use tatbot_state::model::RobotState;
    let redis = RedisServer::start();
    let node = manager(&redis, "hog").await;
    let mut robot = RobotState::new("hog");
    robot.current_pose = "ready".to_owned();
    robot.joints_l = Some(vec![0.5, -1.25]);
    node.update_robot_state(&robot).await.unwrap();
    redis
        .command(&["HSET", "robot:state:broken", "state", "{nope"])
        .unwrap();
    let (pipe, _stop) = serve(&redis).await;
    let (tx, mut rx) = mpsc::channel(64);
    let client = Updates(tx).serve(pipe).await.unwrap();

    let templates = client.list_all_resource_templates().await.unwrap();
    assert!(
        templates
            .iter()
            .any(|template| template.uri_template == "state://robot/{node_id}")
    );
    let resources = client.list_all_resources().await.unwrap();
    assert!(resources.iter().any(|resource| resource.uri == "state://robot"));

    let text = read_text(&client, "state://robot").await;
    assert!(text.starts_with("Robots: 1\nNODE"), "{text}");
    assert!(text.contains("hog   ready"), "{text}");
    assert!(text.contains("[0.50, -1.25]"), "{text}");
    assert!(text.contains("Corrupt Entries: 1\n  robot:state:broken: "), "{text}");
    let text = read_text(&client, "state://robot/hog").await;
    assert!(
        text.contains("Pose: ready\nLeft Arm: disconnected\n  Joints: [0.50, -1.25]"),
        "{text}"
    );

    client
        .subscribe(SubscribeRequestParams::new("state://robot/hog"))
        .await
        .unwrap();
    robot.current_pose = "drawing".to_owned();
    node.update_robot_state(&robot).await.unwrap();
    let updated = tokio::time::timeout(DEADLINE, rx.recv()).await.unwrap().unwrap();
    assert_eq!(updated, "state://robot/hog");
    assert!(read_text(&client, "state://robot/hog").await.contains("Pose: drawing"));

    let missing = client
        .read_resource(ReadResourceRequestParams::new("state://robot/nobody"))
        .await
        .unwrap_err();
    assert!(
        missing.to_string().contains("no robot state from node nobody"),
        "{missing}"
    );
    client.cancel().await.unwrap();
}
