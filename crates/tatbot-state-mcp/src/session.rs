//! Streamable HTTP sessions (the 2025-11 model): [`Sessions`], the rmcp `SessionManager` that
//! [`crate::http`] serves with, and [`SessionTransport`], what one session's MCP service reads
//! client messages from and writes its messages to.
//!
//! # Why not rmcp's `LocalSessionManager`
//!
//! Memory. rmcp's local session manager runs every session as an actor: a task that owns the
//! session's streams, fed by a channel of HTTP events and, through rmcp's `WorkerTransport`,
//! by three more channels (to the service, from it, and one for control messages). A tokio
//! `mpsc` channel allocates a block of 32 slots when it is made, and a second one once 32
//! items have passed through it, whatever its capacity; rmcp's message types are about 500
//! bytes, so each such channel holds 16 KiB. Measured with heaptrack on 100 sessions that
//! follow a session at 100 Hz (`tatbot-state bench --only memory`), these four channels and
//! the worker task were 87 KiB of the 150 KiB each session cost, and made the server miss its
//! 20 MiB budget.
//!
//! Here a session is shared state behind a mutex instead of an actor: HTTP requests and the
//! service's sends update it directly, and no task runs per session. The channels that remain
//! carry small items: client messages are boxed on their way to the service, and so are the
//! events of each SSE stream, so a slot is a pointer. Notifications can also skip the service
//! ([`SessionNotifier`]), whose own channel would otherwise grow a second 10 KiB block in
//! every session that follows a running robot.
//!
//! # What it keeps from rmcp
//!
//! The behaviour is rmcp 3.11's `session/local.rs`, ported: the same routing of the service's
//! messages (a response, an error, or a progress or cancellation notification for a request
//! goes on that request's POST stream; a request with an originating request goes on that
//! request's stream, per SEP-2260; everything else on the standalone GET stream), the same
//! event ids (`index` on the standalone stream, `index/http_request_id` on a request's), the
//! same cache of the last [`STREAM_CAPACITY`] messages per stream for a client that comes back
//! with `Last-Event-ID`, the same priming event on request streams, the same "shadow" streams
//! for a second GET while the first is open, and the same timeouts (no `initialize` within
//! [`INIT_TIMEOUT`], or nothing at all for [`SessionLimits::idle_timeout`], closes the session).
//!
//! Three things differ, all on purpose:
//!
//! - Timeouts are checked by one task for all sessions ([`Sessions::expire_until`]) every
//!   [`SWEEP_INTERVAL`] (or half the idle timeout, if shorter) instead of by a timer per
//!   session, so a session may outlive its timeout by up to that interval.
//! - Sessions are capped ([`SessionLimits::max_sessions`]): a new session past the cap closes
//!   the one idle longest. rmcp keeps every session until it times out, so a client that
//!   sends `initialize` in a loop (80,000 in 6 s, issue #14) held 2 GB that no timeout had yet
//!   freed. Closing the idle-longest rather than refusing the new one keeps the server usable
//!   by a real client during such a flood; the flood's own sessions are the ones closed.
//! - A client that does not read one of its streams blocks only the messages for that stream;
//!   in rmcp it blocks the whole session's actor.
//!
//! No event store is supported (rmcp's `EventStore`, for resuming on another instance): this
//! server keeps sessions in memory only, as it did with `LocalSessionManager`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use futures_util::Stream;
use rmcp::RoleServer;
use rmcp::model::{
    CancelledNotificationParam, ClientJsonRpcMessage, ClientNotification, ClientRequest, GetExtensions as _,
    GetMeta as _, JsonRpcMessage, JsonRpcRequest, Notification, ProgressNotificationParam, ProgressToken, RequestId,
    ServerJsonRpcMessage, ServerNotification,
};
use rmcp::service::OriginatingRequestId;
use rmcp::transport::Transport;
use rmcp::transport::common::server_side_http::session_id;
use rmcp::transport::streamable_http_server::session::{ServerSseMessage, SessionId, SessionManager};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Capacity of each SSE stream's channel, and how many of a stream's newest messages are kept
/// for a client that reconnects with `Last-Event-ID` (rmcp's default). The channels carry
/// boxed events: a block of 32 slots is then 256 bytes instead of 1.5 KiB, and every open
/// standalone stream holds two.
const STREAM_CAPACITY: usize = 16;
/// Client messages that may wait for the session's service (rmcp's default capacity).
const INBOX_CAPACITY: usize = 16;
/// A session that has not received its `initialize` request this long after it was made is
/// closed (rmcp's default).
const INIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the cache of a cancelled request's stream is kept for a late resume (rmcp's
/// default).
const COMPLETED_CACHE_TTL: Duration = Duration::from_secs(60);
/// The reconnection delay sent in the priming event that opens each request's stream; the
/// same as rmcp's `StreamableHttpServerConfig::sse_retry`, which primes the other streams.
pub const SSE_RETRY: Duration = Duration::from_secs(3);
/// Most shadow streams per session; the oldest is dropped for a new one (rmcp's limit).
const MAX_SHADOW_STREAMS: usize = 32;
/// How often [`Sessions::expire_until`] looks for sessions past a timeout.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Why a session operation failed; rmcp answers HTTP 500 with it, or for a failed resume an
/// empty stream.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No session has this id (it was closed, expired, or never made).
    #[error("no session {0}")]
    NotFound(SessionId),
    /// The session closed while the operation waited.
    #[error("the session is closed")]
    Closed,
    /// The stream of this HTTP request is gone: answered and closed, or never opened.
    #[error("the stream of HTTP request {0} is closed")]
    StreamClosed(u64),
    /// A `Last-Event-ID` that names no event of this session.
    #[error("invalid event id {0:?}")]
    InvalidEventId(String),
}

/// How many sessions may be open and how long one may idle.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Most sessions open at once; a new one past it closes the one idle longest.
    pub max_sessions: usize,
    /// A session that neither receives a request nor sends a message for this long is closed:
    /// the safety net for clients that vanish without `DELETE`.
    pub idle_timeout: Duration,
}

/// The sessions of one HTTP server, by id.
pub struct Sessions {
    /// The live sessions. A session leaves when it is closed (`DELETE`, its service ended, a
    /// timeout, eviction); its service's transport may hold it a little longer, until the
    /// service sees it closed.
    sessions: Mutex<HashMap<SessionId, Arc<Session>>>,
    limits: SessionLimits,
}

impl Sessions {
    /// No sessions yet, within `limits` (a cap below one counts as one).
    pub fn new(limits: SessionLimits) -> Sessions {
        Sessions {
            sessions: Mutex::new(HashMap::new()),
            limits: SessionLimits {
                max_sessions: limits.max_sessions.max(1),
                ..limits
            },
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<SessionId, Arc<Session>>> {
        // Only inserts and removes happen under this lock, so a poisoned map is still whole.
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, id: &SessionId) -> Result<Arc<Session>, SessionError> {
        match self.map().get(id) {
            Some(session) => Ok(session.clone()),
            None => Err(SessionError::NotFound(id.clone())),
        }
    }

    /// Closes the sessions past [`INIT_TIMEOUT`] or the idle timeout every [`SWEEP_INTERVAL`]
    /// (or half the idle timeout, if shorter), until `shutdown`.
    pub async fn expire_until(&self, shutdown: CancellationToken) {
        let interval = SWEEP_INTERVAL
            .min(self.limits.idle_timeout / 2)
            .max(Duration::from_millis(10));
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            self.expire(Instant::now());
        }
    }

    /// Closes the sessions that are past a timeout at `now`.
    fn expire(&self, now: Instant) {
        let mut expired = Vec::new();
        let idle_timeout = self.limits.idle_timeout;
        self.map().retain(|id, session| {
            let keep = !session.expired(now, idle_timeout);
            if !keep {
                expired.push((id.clone(), session.clone()));
            }
            keep
        });
        for (id, session) in expired {
            tracing::debug!(session_id = %id, "MCP session timed out");
            session.close();
        }
    }
}

impl SessionManager for Sessions {
    type Error = SessionError;
    type Transport = SessionTransport;

    async fn create_session(&self) -> Result<(SessionId, SessionTransport), SessionError> {
        let id = session_id();
        let (inbox_tx, inbox) = mpsc::channel(INBOX_CAPACITY);
        let session = Arc::new(Session {
            inbox: inbox_tx,
            state: Mutex::new(State::new(Instant::now())),
            closed: CancellationToken::new(),
        });
        let evicted = {
            let mut map = self.map();
            let evicted = if map.len() >= self.limits.max_sessions {
                let idle_longest = map
                    .iter()
                    .min_by_key(|(_, session)| session.lock().last_active)
                    .map(|(id, _)| id.clone());
                idle_longest.and_then(|id| map.remove_entry(&id))
            } else {
                None
            };
            map.insert(id.clone(), session.clone());
            evicted
        };
        if let Some((evicted_id, evicted)) = evicted {
            tracing::warn!(
                session_id = %evicted_id,
                max_sessions = self.limits.max_sessions,
                "too many MCP sessions; closed the one idle longest"
            );
            evicted.close();
        }
        tracing::debug!(session_id = %id, "MCP session created");
        Ok((id, SessionTransport { session, inbox }))
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, SessionError> {
        self.get(id)?.initialize(message).await
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, SessionError> {
        Ok(self.map().contains_key(id))
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), SessionError> {
        let removed = self.map().remove(id);
        if let Some(session) = removed {
            tracing::debug!(session_id = %id, "MCP session closed");
            session.close();
        }
        Ok(())
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, SessionError> {
        let session = self.get(id)?;
        let (http_request_id, receiver) = session.lock().open_request_stream();
        session.push(message, Some(http_request_id)).await?;
        Ok(receiver_stream(receiver))
    }

    async fn accept_message(&self, id: &SessionId, message: ClientJsonRpcMessage) -> Result<(), SessionError> {
        self.get(id)?.push(message, None).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, SessionError> {
        let session = self.get(id)?;
        let mut state = session.lock();
        state.touch();
        // A new standalone stream replays what was sent while none was open.
        let receiver = state.open_standalone(Some(0))?;
        Ok(receiver_stream(receiver))
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, SessionError> {
        let Some(event_id) = EventId::parse(&last_event_id) else {
            return Err(SessionError::InvalidEventId(last_event_id));
        };
        let session = self.get(id)?;
        let receiver = session.lock().resume(event_id)?;
        Ok(receiver_stream(receiver))
    }
}

/// An SSE stream over a channel's receiver.
fn receiver_stream(
    mut receiver: mpsc::Receiver<Box<ServerSseMessage>>,
) -> impl Stream<Item = ServerSseMessage> + Send + Sync + 'static {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx).map(|event| event.map(|event| *event)))
}

/// One session: what its HTTP requests and its service share.
struct Session {
    /// Client messages on their way to the service; [`SessionTransport`] holds the receiver.
    /// Boxed, so a slot of the channel is a pointer and not a whole message.
    inbox: mpsc::Sender<Box<ClientJsonRpcMessage>>,
    state: Mutex<State>,
    /// Cancelled when the session closes: the service's transport then reports the end of
    /// input, and a pending `initialize` gives up.
    closed: CancellationToken,
}

impl Session {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No critical section can panic half-way through an update that matters: the worst is
        // a message cached but not sent, which a resume replays. A poisoned state is usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands the `initialize` request to the service and waits for its answer (the first
    /// message the service sends).
    async fn initialize(&self, message: ClientJsonRpcMessage) -> Result<ServerJsonRpcMessage, SessionError> {
        let (answer_tx, answer_rx) = oneshot::channel();
        {
            let mut state = self.lock();
            state.touch();
            state.initialize_requested = true;
            state.initializing = Some(answer_tx);
        }
        self.send_to_service(message).await?;
        tokio::select! {
            answer = answer_rx => answer.map_err(|_| SessionError::Closed),
            () = self.closed.cancelled() => Err(SessionError::Closed),
        }
    }

    /// Hands a client message to the service, after noting which stream its answers go on: a
    /// request POSTed as `http_request_id` is answered on that request's stream, and a
    /// cancellation closes the cancelled request's stream.
    async fn push(&self, message: ClientJsonRpcMessage, http_request_id: Option<u64>) -> Result<(), SessionError> {
        {
            let mut state = self.lock();
            state.touch();
            match &message {
                JsonRpcMessage::Request(request) => {
                    if let Some(http_request_id) = http_request_id {
                        state.register_request(request, http_request_id);
                    }
                }
                JsonRpcMessage::Notification(notification) => {
                    if let ClientNotification::CancelledNotification(cancelled) = &notification.notification
                        && let Some(request_id) = &cancelled.params.request_id
                    {
                        state.unregister(&Route::Request(request_id.clone()));
                    }
                }
                JsonRpcMessage::Response(_) | JsonRpcMessage::Error(_) => {}
            }
        }
        self.send_to_service(message).await
    }

    async fn send_to_service(&self, message: ClientJsonRpcMessage) -> Result<(), SessionError> {
        tokio::select! {
            sent = self.inbox.send(Box::new(message)) => sent.map_err(|_| SessionError::Closed),
            () = self.closed.cancelled() => Err(SessionError::Closed),
        }
    }

    /// Whether the session is past a timeout at `now`.
    fn expired(&self, now: Instant, idle_timeout: Duration) -> bool {
        let state = self.lock();
        if state.initialize_requested {
            now.saturating_duration_since(state.last_active) >= idle_timeout
        } else {
            now.saturating_duration_since(state.created) >= INIT_TIMEOUT
        }
    }

    /// Ends the session: the service sees the end of its input, and every stream ends (the
    /// state drops the senders).
    fn close(&self) {
        self.closed.cancel();
        let mut state = self.lock();
        state.initializing = None;
        state.requests.clear();
        state.routes.clear();
        state.standalone.close();
        state.shadows.clear();
    }
}

/// What decides where a message of the service goes: a client request's id, or the progress
/// token of one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Route {
    Request(RequestId),
    Progress(ProgressToken),
}

/// Where one message of the service goes.
enum Outbound {
    /// The stream of this HTTP request; `close` once the message answers the request.
    Request { http_request_id: u64, close: bool },
    /// The standalone GET stream.
    Standalone,
}

/// The mutable part of a session.
struct State {
    created: Instant,
    /// The last request of the client or message of the service.
    last_active: Instant,
    /// Whether `initialize` has arrived; until then [`INIT_TIMEOUT`] applies, after it
    /// [`SessionLimits::idle_timeout`].
    initialize_requested: bool,
    /// Set while `initialize` waits: the service's first message is its answer and goes here,
    /// not on a stream.
    initializing: Option<oneshot::Sender<ServerJsonRpcMessage>>,
    next_http_request_id: u64,
    /// The streams of POSTed requests, by HTTP request id. An answered request's stream is
    /// removed; a cancelled one's is kept, closed, for [`COMPLETED_CACHE_TTL`].
    requests: HashMap<u64, RequestStream>,
    /// Which request stream the messages for a request id or progress token go on.
    routes: HashMap<Route, u64>,
    /// The standalone stream (`GET`), which outlives its HTTP responses: its cache survives a
    /// reconnect.
    standalone: CachedStream,
    /// Further `GET` streams opened while the standalone one is open. They carry only rmcp's
    /// keep-alives, so competing reconnects do not close each other's streams.
    shadows: Vec<mpsc::Sender<Box<ServerSseMessage>>>,
}

/// The stream of one POSTed request.
struct RequestStream {
    stream: CachedStream,
    /// The routes that lead here.
    routes: HashSet<Route>,
    /// When the request was cancelled; the entry expires [`COMPLETED_CACHE_TTL`] later.
    completed_at: Option<Instant>,
}

impl State {
    fn new(now: Instant) -> State {
        State {
            created: now,
            last_active: now,
            initialize_requested: false,
            initializing: None,
            next_http_request_id: 0,
            requests: HashMap::new(),
            routes: HashMap::new(),
            standalone: CachedStream::new(None),
            shadows: Vec::new(),
        }
    }

    /// Notes activity (see [`SessionLimits::idle_timeout`]) and drops the caches of cancelled requests that
    /// expired.
    fn touch(&mut self) {
        self.last_active = Instant::now();
        self.requests
            .retain(|_, request| request.completed_at.is_none_or(|at| at.elapsed() < COMPLETED_CACHE_TTL));
    }

    /// Opens the stream for a new POSTed request, primed with the reconnection delay.
    fn open_request_stream(&mut self) -> (u64, mpsc::Receiver<Box<ServerSseMessage>>) {
        self.touch();
        let http_request_id = self.next_http_request_id;
        self.next_http_request_id = self.next_http_request_id.wrapping_add(1);
        let mut stream = CachedStream::new(Some(http_request_id));
        let receiver = stream.open();
        // The channel is empty and has room, so nothing can wait here.
        let _ = stream.send(ServerSseMessage::retry(SSE_RETRY));
        self.requests.insert(
            http_request_id,
            RequestStream {
                stream,
                routes: HashSet::new(),
                completed_at: None,
            },
        );
        tracing::debug!(http_request_id, "MCP request stream opened");
        (http_request_id, receiver)
    }

    fn register_request(&mut self, request: &JsonRpcRequest<ClientRequest>, http_request_id: u64) {
        self.register(Route::Request(request.id.clone()), http_request_id);
        if let Some(progress_token) = request.request.get_meta().get_progress_token() {
            self.register(Route::Progress(progress_token), http_request_id);
        }
    }

    fn register(&mut self, route: Route, http_request_id: u64) {
        if let Some(request) = self.requests.get_mut(&http_request_id) {
            request.routes.insert(route.clone());
            self.routes.insert(route, http_request_id);
        }
    }

    /// Forgets `route`. For a request id (the request was answered or cancelled) this also
    /// closes the request's stream and forgets its other routes; the stream's cache stays for
    /// a late resume.
    fn unregister(&mut self, route: &Route) {
        let Some(http_request_id) = self.routes.remove(route) else {
            return;
        };
        let Some(request) = self.requests.get_mut(&http_request_id) else {
            tracing::warn!(http_request_id, "no stream for a routed MCP request");
            return;
        };
        if !request.routes.is_empty() && !matches!(route, Route::Request(_)) {
            return;
        }
        tracing::debug!(http_request_id, "MCP request stream closed");
        request.completed_at = Some(Instant::now());
        request.stream.close();
        for route in request.routes.drain() {
            self.routes.remove(&route);
        }
    }

    /// Where `message` goes (rmcp's `resolve_outbound_channel`).
    fn outbound(&self, message: &ServerJsonRpcMessage) -> Outbound {
        let request_stream = |route: Route, close: bool| match self.routes.get(&route) {
            Some(&http_request_id) => Outbound::Request { http_request_id, close },
            None => Outbound::Standalone,
        };
        match message {
            // SEP-2260: a request made while handling a client request goes on that
            // request's stream, never on the standalone one.
            JsonRpcMessage::Request(request) => match request.request.extensions().get::<OriginatingRequestId>() {
                Some(originating) => {
                    let outbound = request_stream(Route::Request(originating.0.clone()), false);
                    if matches!(outbound, Outbound::Standalone) {
                        tracing::warn!(
                            originating_request_id = %originating.0,
                            "a server request cannot go on its originating request's stream (answered already); sending it on the standalone stream"
                        );
                    }
                    outbound
                }
                None => Outbound::Standalone,
            },
            JsonRpcMessage::Notification(notification) => match &notification.notification {
                ServerNotification::ProgressNotification(Notification {
                    params: ProgressNotificationParam { progress_token, .. },
                    ..
                }) => request_stream(Route::Progress(progress_token.clone()), false),
                ServerNotification::CancelledNotification(Notification {
                    params:
                        CancelledNotificationParam {
                            request_id: Some(request_id),
                            ..
                        },
                    ..
                }) => request_stream(Route::Request(request_id.clone()), false),
                _ => Outbound::Standalone,
            },
            JsonRpcMessage::Response(response) => request_stream(Route::Request(response.id.clone()), true),
            JsonRpcMessage::Error(error) => match &error.id {
                Some(id) => request_stream(Route::Request(id.clone()), true),
                None => Outbound::Standalone,
            },
        }
    }

    /// Puts a message of the service on its stream (see [`State::outbound`]); an answer
    /// closes its request's stream and forgets the request.
    fn send(&mut self, message: Arc<ServerJsonRpcMessage>) -> Result<Option<Blocked>, SessionError> {
        self.touch();
        let answered = match &*message {
            JsonRpcMessage::Response(response) => Some(Route::Request(response.id.clone())),
            JsonRpcMessage::Error(error) => error.id.clone().map(Route::Request),
            JsonRpcMessage::Request(_) | JsonRpcMessage::Notification(_) => None,
        };
        let outbound = self.outbound(&message);
        let event = event(message);
        let blocked = match outbound {
            Outbound::Request { http_request_id, close } => {
                let Some(request) = self.requests.get_mut(&http_request_id) else {
                    return Err(SessionError::StreamClosed(http_request_id));
                };
                let blocked = request.stream.send(event);
                if close && let Some(request) = self.requests.remove(&http_request_id) {
                    for route in request.routes {
                        self.routes.remove(&route);
                    }
                }
                blocked
            }
            Outbound::Standalone => self.standalone.send(event),
        };
        if let Some(answered) = answered {
            self.unregister(&answered);
        }
        Ok(blocked)
    }

    /// Opens the standalone stream if none is open (replaying its cache from event `replay_from`
    /// when given), or else a shadow stream.
    fn open_standalone(
        &mut self,
        replay_from: Option<usize>,
    ) -> Result<mpsc::Receiver<Box<ServerSseMessage>>, SessionError> {
        if !self.standalone.is_open() {
            tracing::debug!("MCP standalone stream opened");
            let receiver = self.standalone.open();
            if let Some(index) = replay_from {
                self.standalone.replay(index)?;
            }
            return Ok(receiver);
        }
        if self.shadows.len() >= MAX_SHADOW_STREAMS {
            tracing::warn!(
                shadows = self.shadows.len(),
                "too many shadow streams on an MCP session; dropping the oldest"
            );
            self.shadows.remove(0);
        }
        // Nothing is ever sent on a shadow stream, so one slot is plenty.
        let (sender, receiver) = mpsc::channel(1);
        self.shadows.push(sender);
        tracing::debug!(shadows = self.shadows.len(), "MCP shadow stream opened");
        Ok(receiver)
    }

    /// Reopens the stream `event_id` was sent on and replays its cache from that event.
    fn resume(&mut self, event_id: EventId) -> Result<mpsc::Receiver<Box<ServerSseMessage>>, SessionError> {
        self.touch();
        self.shadows.retain(|shadow| !shadow.is_closed());
        let Some(http_request_id) = event_id.http_request_id else {
            return self.open_standalone(Some(event_id.index));
        };
        let Some(request) = self.requests.get_mut(&http_request_id) else {
            return Err(SessionError::StreamClosed(http_request_id));
        };
        let receiver = request.stream.open();
        request.stream.replay(event_id.index)?;
        if request.completed_at.is_some() {
            // A cancelled request's stream ends once replayed, instead of hanging.
            request.stream.close();
        }
        Ok(receiver)
    }
}

/// An SSE event carrying `message`, without copying it.
fn event(message: Arc<ServerJsonRpcMessage>) -> ServerSseMessage {
    // `ServerSseMessage` cannot be built field by field outside rmcp; `from_message` would
    // move the message into an `Arc` of its own.
    let mut event = ServerSseMessage::retry(SSE_RETRY);
    event.retry = None;
    event.message = Some(message);
    event
}

/// A message that did not fit its stream's channel: the sender waits for room outside the
/// session's lock.
struct Blocked {
    sender: mpsc::Sender<Box<ServerSseMessage>>,
    event: Box<ServerSseMessage>,
}

impl Blocked {
    async fn wait(self) {
        if self.sender.send(self.event).await.is_err() {
            tracing::trace!("an MCP stream closed while a message waited for it");
        }
    }
}

/// One SSE stream's sending end, with the cache that a reconnecting client is replayed from.
struct CachedStream {
    /// `None` while no client reads this stream; what is sent then is only cached.
    sender: Option<mpsc::Sender<Box<ServerSseMessage>>>,
    /// The newest [`STREAM_CAPACITY`] events, oldest first.
    cache: VecDeque<ServerSseMessage>,
    /// The HTTP request this is the stream of, `None` for the standalone stream; part of
    /// every event id.
    http_request_id: Option<u64>,
    /// The index the next event gets.
    next_index: usize,
}

impl CachedStream {
    fn new(http_request_id: Option<u64>) -> CachedStream {
        CachedStream {
            sender: None,
            cache: VecDeque::new(),
            http_request_id,
            next_index: 0,
        }
    }

    fn is_open(&self) -> bool {
        self.sender.as_ref().is_some_and(|sender| !sender.is_closed())
    }

    /// A new channel for the stream, replacing (and so closing) the previous one.
    fn open(&mut self) -> mpsc::Receiver<Box<ServerSseMessage>> {
        let (sender, receiver) = mpsc::channel(STREAM_CAPACITY);
        self.sender = Some(sender);
        receiver
    }

    /// Ends the stream for its reader; the cache stays.
    fn close(&mut self) {
        self.sender = None;
    }

    /// Numbers `event`, caches it and sends it if a client reads the stream. A full channel
    /// hands the event back to be waited for outside the lock; ordering holds because tokio
    /// gives channel room to waiting senders first, in order.
    fn send(&mut self, mut event: ServerSseMessage) -> Option<Blocked> {
        let index = self.next_index;
        self.next_index += 1;
        event.event_id = Some(match self.http_request_id {
            Some(http_request_id) => format!("{index}/{http_request_id}"),
            None => index.to_string(),
        });
        if self.cache.len() >= STREAM_CAPACITY {
            self.cache.pop_front();
        }
        self.cache.push_back(event.clone());
        let sender = self.sender.as_ref()?;
        match sender.try_send(Box::new(event)) {
            Ok(()) => None,
            Err(TrySendError::Closed(_)) => {
                tracing::trace!("no client reads this MCP stream; the event is only cached");
                None
            }
            Err(TrySendError::Full(event)) => Some(Blocked {
                sender: sender.clone(),
                event,
            }),
        }
    }

    /// Sends the cached events again, from event `index` on (rmcp's `sync`: the event the
    /// client named is sent again too).
    fn replay(&self, index: usize) -> Result<(), SessionError> {
        let first_index = self.next_index - self.cache.len();
        let skip = index.saturating_sub(first_index);
        if skip > self.cache.len() {
            return Err(SessionError::InvalidEventId(index.to_string()));
        }
        let Some(sender) = &self.sender else {
            return Ok(());
        };
        for event in self.cache.iter().skip(skip) {
            // Called right after `open`: the channel is empty, holds as many events as the
            // cache, and its receiver has not been handed out, so this cannot fail.
            let _ = sender.try_send(Box::new(event.clone()));
        }
        Ok(())
    }
}

/// An SSE event id: `index` on the standalone stream, `index/http_request_id` on a request's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EventId {
    index: usize,
    http_request_id: Option<u64>,
}

impl EventId {
    fn parse(text: &str) -> Option<EventId> {
        let (index, http_request_id) = match text.split_once('/') {
            Some((index, http_request_id)) => (index, Some(http_request_id.parse().ok()?)),
            None => (text, None),
        };
        Some(EventId {
            index: index.parse().ok()?,
            http_request_id,
        })
    }
}

/// Sends a session's notifications onto its streams directly, not through rmcp's service.
///
/// [`SessionTransport`] puts one into the extensions of every request it hands to the
/// service, so that the request's handler can reach its session. A notification sent through
/// the service's `Peer` crosses two more channels with slots of about 500 bytes (the peer's
/// and the service loop's) and a task per notification; the notifications of a followed
/// session then cost every session another 10 KiB block. From here, a notification is routed,
/// numbered and cached exactly as if the service had sent it (see [`State::send`]).
///
/// It holds the session weakly: a handler that keeps it does not keep the session alive.
#[derive(Clone)]
pub struct SessionNotifier(Weak<Session>);

impl SessionNotifier {
    /// Sends `notification` to the client, sharing the message (it may go to many sessions).
    /// Returns `false` once the session is closed.
    pub async fn send(&self, notification: Arc<ServerJsonRpcMessage>) -> bool {
        let Some(session) = self.0.upgrade() else {
            return false;
        };
        if session.closed.is_cancelled() {
            return false;
        }
        let routed = session.lock().send(notification);
        drop(session);
        match routed {
            Ok(Some(blocked)) => blocked.wait().await,
            Ok(None) => {}
            // Only answers and messages about a request go on a request's stream.
            Err(err) => tracing::debug!(error = %err, "a notification found no stream"),
        }
        true
    }
}

/// What one session's MCP service reads the client's messages from and sends its own to.
pub struct SessionTransport {
    session: Arc<Session>,
    inbox: mpsc::Receiver<Box<ClientJsonRpcMessage>>,
}

impl Transport<RoleServer> for SessionTransport {
    type Error = SessionError;

    fn send(&mut self, item: ServerJsonRpcMessage) -> impl Future<Output = Result<(), SessionError>> + Send + 'static {
        // Routed and cached now, in the order the service sends; only waiting for room in a
        // full channel is left to the future.
        let routed = {
            let mut state = self.session.lock();
            match state.initializing.take() {
                Some(answer) => {
                    state.touch();
                    // `initialize_session` gave up (the session closed) if this fails.
                    let _ = answer.send(item);
                    Ok(None)
                }
                None => state.send(Arc::new(item)),
            }
        };
        async move {
            if let Some(blocked) = routed? {
                blocked.wait().await;
            }
            Ok(())
        }
    }

    async fn receive(&mut self) -> Option<ClientJsonRpcMessage> {
        let mut message = tokio::select! {
            message = self.inbox.recv() => *message?,
            () = self.session.closed.cancelled() => return None,
        };
        if let JsonRpcMessage::Request(request) = &mut message {
            request
                .request
                .extensions_mut()
                .insert(SessionNotifier(Arc::downgrade(&self.session)));
        }
        Some(message)
    }

    async fn close(&mut self) -> Result<(), SessionError> {
        self.session.close();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rmcp::model::ServerResult;
    use serde_json::json;

    use super::*;

    fn client_message(value: serde_json::Value) -> ClientJsonRpcMessage {
        serde_json::from_value(value).unwrap()
    }

    fn server_message(value: serde_json::Value) -> Arc<ServerJsonRpcMessage> {
        Arc::new(serde_json::from_value(value).unwrap())
    }

    fn updated(uri: &str) -> Arc<ServerJsonRpcMessage> {
        server_message(json!({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": uri}}))
    }

    /// The ids of the events waiting in `receiver`, and whether its stream has ended.
    fn drain(receiver: &mut mpsc::Receiver<Box<ServerSseMessage>>) -> (Vec<String>, bool) {
        let mut ids = Vec::new();
        loop {
            match receiver.try_recv() {
                Ok(event) => ids.push(event.event_id.unwrap_or_default()),
                Err(mpsc::error::TryRecvError::Empty) => return (ids, false),
                Err(mpsc::error::TryRecvError::Disconnected) => return (ids, true),
            }
        }
    }

    /// A request's answer goes on its POST stream after the priming event, and ends it; a
    /// notification about nothing in particular goes on the standalone stream.
    #[test]
    fn answers_go_on_their_request_stream() {
        let mut state = State::new(Instant::now());
        let mut standalone = state.open_standalone(Some(0)).unwrap();
        let (http_request_id, mut request_stream) = state.open_request_stream();
        let JsonRpcMessage::Request(request) = client_message(json!({
            "jsonrpc": "2.0", "id": 7, "method": "resources/subscribe",
            "params": {"uri": "state://status", "_meta": {"progressToken": "p7"}},
        })) else {
            panic!("not a request");
        };
        state.register_request(&request, http_request_id);
        let progress = server_message(json!({
            "jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": "p7", "progress": 1},
        }));
        assert!(state.send(progress).unwrap().is_none());
        assert!(state.send(updated("state://status")).unwrap().is_none());
        let answer = Arc::new(ServerJsonRpcMessage::response(
            ServerResult::empty(()),
            RequestId::Number(7),
        ));
        assert!(state.send(answer.clone()).unwrap().is_none());

        let id = http_request_id;
        assert_eq!(
            drain(&mut request_stream),
            (vec![format!("0/{id}"), format!("1/{id}"), format!("2/{id}")], true)
        );
        assert_eq!(drain(&mut standalone), (vec!["0".to_owned()], false));
        assert!(state.routes.is_empty() && state.requests.is_empty());
        // An answer to no open request goes on the standalone stream, as in rmcp.
        assert!(state.send(answer).unwrap().is_none());
        assert_eq!(drain(&mut standalone), (vec!["1".to_owned()], false));
    }

    /// What is sent while no client reads the standalone stream is cached, and a client that
    /// comes back with `Last-Event-ID` is replayed from that event (inclusive, as rmcp does).
    #[test]
    fn standalone_stream_resumes_from_last_event_id() {
        let mut state = State::new(Instant::now());
        assert!(state.send(updated("state://status")).unwrap().is_none());
        let mut first = state.open_standalone(Some(0)).unwrap();
        assert!(state.send(updated("state://nodes")).unwrap().is_none());
        assert_eq!(drain(&mut first), (vec!["0".to_owned(), "1".to_owned()], false));
        drop(first);
        assert!(state.send(updated("state://errors")).unwrap().is_none());
        let mut resumed = state
            .resume(EventId {
                index: 1,
                http_request_id: None,
            })
            .unwrap();
        assert_eq!(drain(&mut resumed), (vec!["1".to_owned(), "2".to_owned()], false));
        assert!(matches!(
            state.resume(EventId {
                index: 0,
                http_request_id: Some(99)
            }),
            Err(SessionError::StreamClosed(99))
        ));
    }

    /// A second GET while the first is open gets a shadow stream that carries nothing, so two
    /// reconnecting clients cannot take the notifications from each other.
    #[test]
    fn second_get_is_a_shadow() {
        let mut state = State::new(Instant::now());
        let mut primary = state.open_standalone(Some(0)).unwrap();
        let mut shadow = state.open_standalone(Some(0)).unwrap();
        assert!(state.send(updated("state://status")).unwrap().is_none());
        assert_eq!(drain(&mut primary), (vec!["0".to_owned()], false));
        assert_eq!(drain(&mut shadow), (Vec::new(), false));
        drop(primary);
        let mut next = state.open_standalone(None).unwrap();
        assert!(state.send(updated("state://status")).unwrap().is_none());
        assert_eq!(drain(&mut next), (vec!["1".to_owned()], false));
    }

    /// A cancelled request's stream ends, but its cache can still be resumed (and the resumed
    /// stream ends after the replay).
    #[test]
    fn cancelled_request_keeps_its_cache() {
        let mut state = State::new(Instant::now());
        let (http_request_id, mut request_stream) = state.open_request_stream();
        let JsonRpcMessage::Request(request) = client_message(json!({
            "jsonrpc": "2.0", "id": "r1", "method": "resources/read", "params": {"uri": "state://status"},
        })) else {
            panic!("not a request");
        };
        state.register_request(&request, http_request_id);
        state.unregister(&Route::Request(RequestId::String("r1".into())));
        assert_eq!(drain(&mut request_stream), (vec![format!("0/{http_request_id}")], true));
        let mut resumed = state
            .resume(EventId {
                index: 0,
                http_request_id: Some(http_request_id),
            })
            .unwrap();
        assert_eq!(drain(&mut resumed), (vec![format!("0/{http_request_id}")], true));
    }

    const LIMITS: SessionLimits = SessionLimits {
        max_sessions: 1_000,
        idle_timeout: Duration::from_secs(300),
    };
    const IDLE_TIMEOUT: Duration = LIMITS.idle_timeout;

    /// A session without `initialize` expires after [`INIT_TIMEOUT`]; after it, one without
    /// activity after the idle timeout; an expired session is closed and removed.
    #[tokio::test]
    async fn sessions_expire() {
        let sessions = Sessions::new(LIMITS);
        let (waiting_id, _waiting) = sessions.create_session().await.unwrap();
        let (idle_id, mut idle) = sessions.create_session().await.unwrap();
        let started = Instant::now();
        idle.session.lock().initialize_requested = true;
        sessions.expire(started + INIT_TIMEOUT);
        assert!(!sessions.has_session(&waiting_id).await.unwrap());
        assert!(sessions.has_session(&idle_id).await.unwrap());
        sessions.expire(started + IDLE_TIMEOUT + Duration::from_secs(1));
        assert!(!sessions.has_session(&idle_id).await.unwrap());
        assert!(idle.receive().await.is_none(), "the service sees the end of its input");
    }

    /// Past the cap, a new session closes the one idle longest, and only that one.
    #[tokio::test]
    async fn the_session_idle_longest_makes_room() {
        let sessions = Sessions::new(SessionLimits {
            max_sessions: 3,
            ..LIMITS
        });
        let mut made = Vec::new();
        for _ in 0..3 {
            made.push(sessions.create_session().await.unwrap());
        }
        // The first session is the newest active now; the second is idle longest.
        made[0].1.session.lock().touch();
        let (newest, _) = sessions.create_session().await.unwrap();
        assert!(
            !sessions.has_session(&made[1].0).await.unwrap(),
            "the idle-longest is closed"
        );
        for id in [&made[0].0, &made[2].0, &newest] {
            assert!(sessions.has_session(id).await.unwrap());
        }
        assert_eq!(sessions.map().len(), 3);
        assert!(
            made[1].1.receive().await.is_none(),
            "its service sees the end of its input"
        );
    }

    /// Event ids round-trip the two forms rmcp writes, and nothing else parses.
    #[test]
    fn event_ids() {
        assert_eq!(
            EventId::parse("7"),
            Some(EventId {
                index: 7,
                http_request_id: None
            })
        );
        assert_eq!(
            EventId::parse("0/3"),
            Some(EventId {
                index: 0,
                http_request_id: Some(3)
            })
        );
        for bad in ["", "x", "1/", "/1", "1/x", "-1"] {
            assert_eq!(EventId::parse(bad), None, "{bad}");
        }
    }

    /// A stream caches its newest events, numbers them on, and replays from the event named.
    #[tokio::test]
    async fn cache_and_replay() {
        let mut stream = CachedStream::new(Some(4));
        for _ in 0..STREAM_CAPACITY + 2 {
            assert!(stream.send(ServerSseMessage::retry(SSE_RETRY)).is_none());
        }
        assert_eq!(stream.cache.len(), STREAM_CAPACITY);
        assert_eq!(stream.cache.front().unwrap().event_id.as_deref(), Some("2/4"));
        let mut receiver = stream.open();
        stream.replay(STREAM_CAPACITY).unwrap();
        let mut replayed = Vec::new();
        while let Ok(event) = receiver.try_recv() {
            replayed.push(event.event_id.unwrap());
        }
        assert_eq!(replayed, ["16/4", "17/4"]);
        assert!(matches!(
            stream.replay(STREAM_CAPACITY * 3),
            Err(SessionError::InvalidEventId(_))
        ));
    }
}
