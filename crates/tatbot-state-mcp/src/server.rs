//! [`StateServer`]: the MCP handler, one per connection, over the process-wide [`ServerState`].
//!
//! Every request goes through [`uri::parse`] first, so an unknown URI is `-32002` (resource not
//! found; rmcp answers `-32602` instead to 2026-07 peers, as that revision of the spec requires)
//! and an invalid id is `-32602` with the library's reason, and neither reaches Redis. A read
//! answers two contents for the same URI: `text/plain` first, then `application/json`.
//!
//! Both subscription models rmcp offers are served from the same [`Hub`]:
//!
//! - 2025-11 and earlier (`resources/subscribe`, `resources/unsubscribe`): the connection gets
//!   one [`Subscriber`] on its first subscribe, and a task that sends
//!   `notifications/resources/updated`: over HTTP straight onto the session's GET stream
//!   ([`SessionNotifier`]), with one message per URI shared by all sessions
//!   ([`UpdateMessages`]); on stdio through the connection's peer. The handler holds the task's
//!   drop guard, so the task ends with the connection.
//! - 2026-07 (`subscriptions/listen`): each listen request is its own subscriber, accepted for
//!   the URIs of its filter that name a resource, and served by [`StateServer::listen`] itself
//!   until the client cancels the request or the server shuts down.
//!
//! Either way a subscriber's notifications are sent by one loop ([`forward`]) that drains its
//! pending set and then waits [`MIN_NOTIFY_INTERVAL`], so a robot updating at 100 Hz costs a
//! client at most ten notifications a second per URI.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use rmcp::model::{
    Implementation, ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, ResourceContents, ResourceTemplate,
    ResourceUpdatedNotification, ResourceUpdatedNotificationParam, ServerCapabilities, ServerConfig,
    ServerJsonRpcMessage, ServerNotification, SubscribeRequestParams, SubscriptionFilter, UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, model};
use serde_json::json;
use tatbot_state::params::Prefix;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::hub::{self, Hub, Subscriber};
use crate::reader::Reader;
use crate::render::{self, ConfigDescription, Rendered};
use crate::session::SessionNotifier;
use crate::uri::{self, Resource, UriError};

/// The client-to-server request methods of MCP: a custom request with one of these names had
/// params that did not fit it.
const KNOWN_METHODS: [&str; 16] = [
    "initialize",
    "ping",
    "completion/complete",
    "logging/setLevel",
    "prompts/get",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "subscriptions/listen",
    "tools/call",
    "tools/list",
    "tasks/get",
    "tasks/list",
];

/// Shortest time between two batches of update notifications to one subscriber.
pub const MIN_NOTIFY_INTERVAL: Duration = Duration::from_millis(100);

/// What every connection shares: the reader, the config description, the subscriber registry
/// and the background tasks that feed it.
pub struct ServerState {
    reader: Reader,
    config: ConfigDescription,
    hub: Arc<Hub>,
    /// Tracks the event listener, the parameter watch, the Redis watcher and the
    /// per-connection notification tasks; [`ServerState::stop`] closes it and waits for them.
    tracker: TaskTracker,
    /// Cancelled by [`ServerState::stop`] or by the caller's token it is a child of; every
    /// task and every open `subscriptions/listen` request ends when it fires.
    shutdown: CancellationToken,
    /// The update notifications the HTTP sessions send, one per URI.
    updates: UpdateMessages,
}

/// The `notifications/resources/updated` message of each URI, shared by the HTTP sessions that
/// send it: each session keeps its last few messages for a client that reconnects, and a
/// hundred sessions following one resource would otherwise keep a hundred copies of each.
#[derive(Default)]
struct UpdateMessages {
    /// Held weakly, so a message lives only while some session keeps it; dead entries are
    /// dropped whenever one is added.
    by_uri: Mutex<HashMap<String, Weak<ServerJsonRpcMessage>>>,
}

impl UpdateMessages {
    /// The message for `uri`: the one sessions hold already, or a new one.
    fn get(&self, uri: String) -> Arc<ServerJsonRpcMessage> {
        // Only lookups, inserts and removals happen under this lock: a poisoned map is whole.
        let mut by_uri = self.by_uri.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(message) = by_uri.get(&uri).and_then(Weak::upgrade) {
            return message;
        }
        by_uri.retain(|_, message| message.strong_count() > 0);
        let message = Arc::new(ServerJsonRpcMessage::notification(
            ServerNotification::ResourceUpdatedNotification(ResourceUpdatedNotification::new(
                ResourceUpdatedNotificationParam::new(uri.clone()),
            )),
        ));
        by_uri.insert(uri, Arc::downgrade(&message));
        message
    }
}

impl ServerState {
    /// Starts the event listener, the parameter watch and the Redis watcher; they run until
    /// `shutdown` fires or [`ServerState::stop`] is called.
    ///
    /// The parameter watch and the event subscription are opened before this returns, so every
    /// change after a client's subscription is notified: nothing can subscribe before the
    /// server answers. (Opened in the background, a subscription answered quickly could miss
    /// the first event; `stdio_subscription_notifies_when_progress_advances` did, about one
    /// run in twenty.) If Redis refuses either now (unreachable), its task tries again in the
    /// background (see [`hub::watch_params`] and [`hub::listen_events`]); the wait here is
    /// bounded by the manager's connect and response timeouts.
    pub async fn start(reader: Reader, config: ConfigDescription, shutdown: &CancellationToken) -> Arc<ServerState> {
        let all = Prefix::all();
        let (params_watch, events) = tokio::join!(reader.watch_params(&all), reader.subscribe(&hub::EVENT_PATTERNS));
        let params_watch = match params_watch {
            Ok(watch) => Some(watch),
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch parameter changes yet; retrying in the background");
                None
            }
        };
        let events = match events {
            Ok(subscription) => Some(subscription),
            Err(err) => {
                tracing::warn!(error = %err, "cannot subscribe to state events yet; retrying in the background");
                None
            }
        };
        let state = Arc::new(ServerState {
            reader,
            config,
            hub: Arc::new(Hub::default()),
            tracker: TaskTracker::new(),
            shutdown: shutdown.child_token(),
            updates: UpdateMessages::default(),
        });
        state.tracker.spawn(hub::listen_events(
            state.reader.clone(),
            state.hub.clone(),
            events,
            state.shutdown.clone(),
        ));
        state.tracker.spawn(hub::watch_params(
            state.reader.clone(),
            state.hub.clone(),
            params_watch,
            state.shutdown.clone(),
        ));
        state.tracker.spawn(hub::watch_redis(
            state.reader.clone(),
            state.hub.clone(),
            state.shutdown.clone(),
        ));
        state
    }

    /// Runs `task` beside the background tasks, with the token that stops them:
    /// [`ServerState::stop`] cancels it and waits for the task too.
    pub fn spawn<F, Fut>(&self, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task(self.shutdown.clone()));
    }

    /// Stops the background tasks and waits for them, at most `deadline`.
    pub async fn stop(&self, deadline: Duration) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait()).await.is_err() {
            tracing::warn!(?deadline, "background tasks did not stop in time");
        }
    }

    /// Maps a library error of a read to the MCP error the client sees.
    fn read_error(&self, err: &tatbot_state::Error) -> McpError {
        if !err.is_connection_error() {
            return McpError::internal_error(err.report().to_string(), None);
        }
        let mut message = format!("Redis is unreachable at {}: {}", self.reader.target(), err.report());
        if !message.contains("doctor") {
            message.push_str(". Check it with `tatbot-state doctor`");
        }
        message.push_str("; this server reconnects by itself when Redis is back");
        McpError::internal_error(message, Some(json!({"redis_connected": false})))
    }

    async fn read(&self, resource: &Resource) -> Result<Rendered, McpError> {
        let reader = &self.reader;
        let error = |err: tatbot_state::Error| self.read_error(&err);
        Ok(match resource {
            Resource::Status => render::status(&reader.system_status().await),
            Resource::LatestProgress => match reader.latest_active_session().await.map_err(error)? {
                Some(latest) => render::latest_progress(&latest.session_id, &latest.progress),
                None => render::no_active_session(),
            },
            Resource::Progress(session_id) => match reader.get_stroke_progress(session_id).await.map_err(error)? {
                Some(progress) => render::session_progress(session_id, &progress),
                None => {
                    return Err(McpError::resource_not_found(
                        format!(
                            "no stroke session {session_id}: it was never started or has expired; read {} for the stored ones",
                            uri::SESSIONS
                        ),
                        Some(json!({"uri": resource.uri()})),
                    ));
                }
            },
            Resource::Sessions => render::sessions(reader.list_sessions().await.map_err(error)?),
            Resource::Health(node_id) => {
                let health = reader.get_node_health(node_id).await.map_err(error)?;
                render::node_health(node_id, health.as_ref())
            }
            Resource::Nodes => {
                let (live, known) = tokio::join!(reader.get_all_nodes_health(), reader.known_nodes());
                // A registry of another type is listed as corrupt; the heartbeats still count.
                let known = match known {
                    Err(err) if !matches!(err, tatbot_state::Error::Corrupt { .. }) => return Err(error(err)),
                    known => known,
                };
                render::nodes(live.map_err(error)?, known)
            }
            Resource::Robots => render::robots(reader.get_all_robot_states().await.map_err(error)?),
            Resource::Robot(node_id) => match reader.get_robot_state(node_id).await.map_err(error)? {
                Some(state) => render::robot(&state),
                None => {
                    return Err(McpError::resource_not_found(
                        format!(
                            "no robot state from node {node_id}: its robot never wrote one; read {} for the stored ones",
                            uri::ROBOTS
                        ),
                        Some(json!({"uri": resource.uri()})),
                    ));
                }
            },
            Resource::Config => render::config(&self.config),
            Resource::Errors => render::errors(reader.list_errors(render::MAX_LISTED_ERRORS).await.map_err(error)?),
            Resource::Params => render::params(reader.list_params(&Prefix::all()).await.map_err(error)?),
            Resource::Param(name) => match reader.get_param(name).await.map_err(error)? {
                Some(param) => render::param(&param),
                None => {
                    return Err(McpError::resource_not_found(
                        format!(
                            "no parameter {name}: it is not declared; read {} for the declared ones",
                            uri::PARAMS
                        ),
                        Some(json!({"uri": resource.uri()})),
                    ));
                }
            },
        })
    }
}

/// The MCP handler of one connection (or, for stateless HTTP, of one request).
pub struct StateServer {
    state: Arc<ServerState>,
    /// This connection's `resources/subscribe` subscriber, made on its first subscribe.
    legacy: Mutex<Option<LegacySubscription>>,
}

/// A connection's 2025-11 subscriptions and the task that sends their notifications.
struct LegacySubscription {
    subscriber: Arc<Subscriber>,
    /// Cancels the notification task when the connection's handler is dropped.
    _stop: DropGuard,
}

impl StateServer {
    /// A handler for one connection.
    pub fn new(state: Arc<ServerState>) -> StateServer {
        StateServer {
            state,
            legacy: Mutex::new(None),
        }
    }

    /// This connection's legacy subscriber, starting its notification task on first use.
    ///
    /// The task sends on the HTTP session directly when the request came through one of our
    /// sessions (see [`SessionNotifier`]), and through the peer otherwise (stdio).
    fn legacy_subscriber(&self, context: &RequestContext<RoleServer>) -> Arc<Subscriber> {
        // Only `Option` assignments happen under this lock, so a poisoned one is still sound.
        let mut legacy = self.legacy.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(legacy) = &*legacy {
            return legacy.subscriber.clone();
        }
        let subscriber = self.state.hub.register();
        let stop = self.state.shutdown.child_token();
        let sink = match context.extensions.get::<SessionNotifier>() {
            Some(notifier) => Sink::Session(notifier.clone()),
            None => Sink::Peer(context.peer.clone()),
        };
        let task_state = self.state.clone();
        let task_subscriber = subscriber.clone();
        let task_stop = stop.clone();
        self.state.tracker.spawn(async move {
            let (sink, state) = (&sink, &*task_state);
            let send = |uri: String| sink.send(state, uri);
            tokio::select! {
                () = task_stop.cancelled() => {}
                () = forward(&task_subscriber, send) => {}
            }
        });
        *legacy = Some(LegacySubscription {
            subscriber: subscriber.clone(),
            _stop: stop.drop_guard(),
        });
        subscriber
    }
}

/// Where a connection's 2025-11 notifications go.
enum Sink {
    /// Through rmcp's service: stdio, and any transport without a session of ours.
    Peer(rmcp::Peer<RoleServer>),
    /// Straight onto the HTTP session's standalone stream.
    Session(SessionNotifier),
}

impl Sink {
    /// Tells the client that `uri` changed; `false` once it is gone.
    async fn send(&self, state: &ServerState, uri: String) -> bool {
        match self {
            Sink::Peer(peer) => peer
                .notify_resource_updated(ResourceUpdatedNotificationParam::new(uri))
                .await
                .is_ok(),
            Sink::Session(notifier) => notifier.send(state.updates.get(uri)).await,
        }
    }
}

/// Sends a notification for every URI the subscriber reports changed, batch by batch, until a
/// send fails (the client went away).
async fn forward<F, Fut>(subscriber: &Subscriber, mut send: F)
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = bool>,
{
    loop {
        for uri in subscriber.changed().await {
            tracing::debug!(uri = %uri, "resource updated");
            if !send(uri).await {
                return;
            }
        }
        tokio::time::sleep(MIN_NOTIFY_INTERVAL).await;
    }
}

/// The MCP error for a URI that names no resource.
fn uri_error(err: UriError) -> McpError {
    match &err {
        UriError::Unknown(uri) => McpError::resource_not_found(err.to_string(), Some(json!({"uri": uri}))),
        UriError::InvalidId { uri, .. } => McpError::invalid_params(err.to_string(), Some(json!({"uri": uri}))),
    }
}

fn resource(uri: &str, name: &str, title: &str, description: &str) -> model::Resource {
    model::Resource::new(uri, name)
        .with_title(title)
        .with_description(format!("{description} {BOTH_FORMS}"))
}

/// Appended to every description: how to get either form.
const BOTH_FORMS: &str = "Each read returns two contents for this URI: text/plain first, then application/json.";

impl ServerHandler for StateServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_resources()
                .enable_resources_subscribe()
                .build(),
        )
        .with_server_info(Implementation::new("tatbot-state", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Read-only state of the tatbot robot (stroke sessions, node health, system status, \
             runtime parameters). \
             Every resource read returns text/plain and application/json contents. \
             Subscribe to a resource to be told when it changes. This server never writes state.",
        )
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(ListResourcesResult::with_all_items(vec![
            resource(
                uri::STATUS,
                "status",
                "System status",
                "Redis reachable, active sessions, nodes online / known, corrupt entries.",
            ),
            resource(
                uri::LATEST_PROGRESS,
                "stroke-progress",
                "Latest active stroke session",
                "Progress of the most recently updated executing session of any node.",
            ),
            resource(
                uri::SESSIONS,
                "sessions",
                "Stroke sessions",
                "Stored stroke sessions (executing, paused, recently ended), newest first.",
            ),
            resource(
                uri::NODES,
                "nodes",
                "Nodes",
                "Every known node: online or not, and its last heartbeat.",
            ),
            resource(
                uri::ROBOTS,
                "robots",
                "Robots",
                "Every robot's state snapshot: arms connected, current pose, joints, when it was written.",
            ),
            resource(
                uri::CONFIG,
                "config",
                "Redis configuration",
                "The effective Redis target and where each field came from; the password is redacted.",
            ),
            resource(
                uri::ERRORS,
                "errors",
                "Recent errors",
                "The newest errors reported by the nodes.",
            ),
            resource(
                uri::PARAMS,
                "params",
                "Parameters",
                "Every runtime parameter by name: its type, value, version, and which node set it when.",
            ),
        ]))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new(uri::PROGRESS_TEMPLATE, "session-progress")
                .with_title("Stroke session progress")
                .with_description(format!(
                    "One session's progress; session ids look like stroke_hog_1795626937. {BOTH_FORMS}"
                )),
            ResourceTemplate::new(uri::HEALTH_TEMPLATE, "node-health")
                .with_title("Node health")
                .with_description(format!(
                    "One node's last heartbeat, or that it is offline. {BOTH_FORMS}"
                )),
            ResourceTemplate::new(uri::ROBOT_TEMPLATE, "robot")
                .with_title("Robot state")
                .with_description(format!(
                    "One node's robot state: arms connected, current pose, joint positions and velocities. {BOTH_FORMS}"
                )),
            ResourceTemplate::new(uri::PARAM_TEMPLATE, "param")
                .with_title("Parameter")
                .with_description(format!(
                    "One parameter with its declaration (description, min, max, step, read-only, default); \
                     names are dotted, like arms.goal_time_slow. {BOTH_FORMS}"
                )),
        ]))
    }

    /// A method rmcp could not parse lands here as a custom request. A method of the protocol
    /// gets there only when its params do not fit it (`resources/read` without a `uri`, say),
    /// which is `-32602` (invalid params), not `-32601` (no such method).
    async fn on_custom_request(
        &self,
        request: model::CustomRequest,
        _context: RequestContext<RoleServer>,
    ) -> Result<model::CustomResult, McpError> {
        let method: String = request
            .method
            .chars()
            .take(100)
            .flat_map(char::escape_default)
            .collect();
        if KNOWN_METHODS.contains(&request.method.as_str()) {
            return Err(McpError::invalid_params(
                format!(
                    "invalid params for {method}: check them against the MCP specification (resources/read needs {{\"uri\": \"state://...\"}})"
                ),
                None,
            ));
        }
        Err(McpError::new(
            model::ErrorCode::METHOD_NOT_FOUND,
            format!("no method {method}; this server serves resources (resources/list, resources/read, ...)"),
            None,
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let resource = uri::parse(&request.uri).map_err(uri_error)?;
        let rendered = self.state.read(&resource).await?;
        let json = serde_json::to_string_pretty(&rendered.json)
            .map_err(|err| McpError::internal_error(format!("encoding {}: {err}", request.uri), None))?;
        Ok(ReadResourceResult::new(vec![
            ResourceContents::text(rendered.text, request.uri.as_str()),
            ResourceContents::text(json, request.uri.as_str()).with_mime_type("application/json"),
        ])
        .into())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let resource = uri::parse(&request.uri).map_err(uri_error)?;
        // Notifications carry the canonical URI (`state://health/rpi-1` for `rpi%2D1`).
        self.legacy_subscriber(&context).subscribe(resource.uri());
        tracing::debug!(uri = %request.uri, "subscribed");
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let resource = uri::parse(&request.uri).map_err(uri_error)?;
        self.legacy_subscriber(&context).unsubscribe(&resource.uri());
        Ok(())
    }

    fn accepted_subscription_filter(&self, requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        // Only canonical URIs of resources we serve: the SDK lets through exactly the accepted
        // URIs, and our notifications carry canonical ones.
        let accepted: Vec<String> = requested
            .resource_subscriptions
            .iter()
            .flatten()
            .filter(|requested_uri| uri::parse(requested_uri).is_ok_and(|resource| resource.uri() == **requested_uri))
            .cloned()
            .collect();
        Some(SubscriptionFilter::builder().resource_subscriptions(accepted).build())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let subscriber = self.state.hub.register();
        for accepted_uri in context.accepted().resource_subscriptions.iter().flatten() {
            subscriber.subscribe(accepted_uri.clone());
        }
        let sink = context.sink().clone();
        let send = |uri: String| {
            let sink = sink.clone();
            async move { sink.notify_resource_updated(uri).await.is_ok() }
        };
        tokio::select! {
            () = context.cancelled() => {}
            () = self.state.shutdown.cancelled() => {}
            () = forward(&subscriber, send) => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sessions following one URI share one message for it while any of them holds it; other
    /// URIs get their own, and a message nobody holds is dropped.
    #[test]
    fn update_messages_are_shared_per_uri() {
        let updates = UpdateMessages::default();
        let first = updates.get("state://status".to_owned());
        let again = updates.get("state://status".to_owned());
        assert!(Arc::ptr_eq(&first, &again));
        let other = updates.get("state://nodes".to_owned());
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(
            serde_json::to_value(&*other).unwrap(),
            json!({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "state://nodes"}})
        );
        drop((first, again));
        let _errors = updates.get("state://errors".to_owned());
        let by_uri = updates.by_uri.lock().unwrap();
        let mut uris: Vec<&str> = by_uri.keys().map(String::as_str).collect();
        uris.sort_unstable();
        assert_eq!(uris, ["state://errors", "state://nodes"]);
    }
}
