//! [`Subscription`]: typed pub/sub messages on a connection of their own, that comes back by
//! itself.
//!
//! A Redis connection in subscribe mode can run nothing but (un)subscribe commands and `PING`,
//! so a subscription never shares the manager's connection; like mini-redis's `Subscriber`, it
//! is its own type with its own methods. Every message is handed over with its raw payload and
//! the decode result, so a reader can show a malformed message from another client instead of
//! losing it.
//!
//! The connection is watched: after [`KEEPALIVE`] without a message the subscription sends a
//! `PING`, and a `PING` unanswered within [`PING_TIMEOUT`] (a half-open connection), a closed
//! connection or a Redis restart make it reconnect with capped backoff and subscribe to the
//! same patterns again. Pub/sub keeps nothing for absent listeners, so messages published
//! during the gap are gone; [`Subscription::reconnects`] counts the gaps, and the follow API
//! ([`crate::follow`]) is the gap-free alternative.

use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};

use crate::connection::ManagerConfig;
use crate::error::{Error, Result};
use crate::model::Event;

/// Silence after which the subscription checks its connection with a `PING`.
pub const KEEPALIVE: Duration = Duration::from_secs(2);
/// How long that `PING` may take before the connection counts as dead.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// First delay between reconnect attempts; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Cap on the delay between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// One received message.
#[derive(Debug)]
pub struct Message {
    /// The channel it was published on.
    pub channel: String,
    /// The pattern that matched it.
    pub pattern: Option<String>,
    /// The body as received (lossy UTF-8).
    pub payload: String,
    /// The decoded event, or why the body did not decode.
    pub event: Result<Event>,
}

/// A live `PSUBSCRIBE` on a dedicated connection; dropping it unsubscribes.
pub struct Subscription {
    client: redis::Client,
    connect_timeout: Duration,
    patterns: Vec<String>,
    /// The command half (for `PING`) and the message half of the live connection; `None`
    /// between a failure and the next successful reconnect. Dropping both closes it.
    live: Option<(PubSubSink, PubSubStream)>,
    reconnects: u64,
}

impl Subscription {
    pub(crate) async fn open(
        client: &redis::Client,
        config: &ManagerConfig,
        patterns: &[&str],
    ) -> Result<Subscription> {
        let mut subscription = Subscription {
            client: client.clone(),
            connect_timeout: config.connect_timeout,
            patterns: patterns.iter().map(|pattern| (*pattern).to_owned()).collect(),
            live: None,
            reconnects: 0,
        };
        let target = config.endpoint.to_string();
        subscription.live = Some(subscription.connect().await.map_err(|err| match err {
            Error::Redis { source, .. } => Error::from_connect(&target, source),
            other => other,
        })?);
        Ok(subscription)
    }

    async fn connect(&self) -> Result<(PubSubSink, PubSubStream)> {
        let attempt = async {
            let (mut sink, stream) = self.client.get_async_pubsub().await?.split();
            for pattern in &self.patterns {
                sink.psubscribe(pattern.as_str()).await?;
            }
            Ok::<_, redis::RedisError>((sink, stream))
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(live)) => Ok(live),
            Ok(Err(err)) => Err(Error::from_redis("subscribe", err)),
            Err(_) => Err(Error::Timeout {
                operation: "subscribe",
                after: self.connect_timeout,
            }),
        }
    }

    /// The patterns subscribed to.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// How many times the connection was lost and made again.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Waits for the next message, reconnecting as often as needed; `None` never comes while
    /// the subscription lives (the `Option` is kept for `while let` loops).
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            if let Some((sink, stream)) = &mut self.live {
                tokio::select! {
                    message = stream.next() => match message {
                        Some(message) => return Some(decode(&message)),
                        None => tracing::warn!("subscription connection closed; resubscribing"),
                    },
                    () = tokio::time::sleep(KEEPALIVE) => {
                        match tokio::time::timeout(PING_TIMEOUT, sink.ping::<String>()).await {
                            Ok(Ok(_)) => continue,
                            _ => tracing::warn!("subscription connection silent; resubscribing"),
                        }
                    }
                }
            }
            self.live = None;
            self.reconnect().await;
        }
    }

    async fn reconnect(&mut self) {
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.connect().await {
                Ok(live) => {
                    self.live = Some(live);
                    self.reconnects += 1;
                    tracing::info!(patterns = ?self.patterns, "resubscribed");
                    return;
                }
                Err(err) => tracing::debug!(error = %err, delay = ?backoff, "resubscribe failed"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

fn decode(message: &redis::Msg) -> Message {
    let channel = message.get_channel_name().to_owned();
    let pattern = message.get_pattern::<Option<String>>().ok().flatten();
    let bytes = message.get_payload_bytes();
    let event = Event::from_json(bytes).map_err(|source| Error::Decode {
        key: format!("channel {channel}"),
        what: "event",
        source,
    });
    Message {
        channel,
        pattern,
        payload: String::from_utf8_lossy(bytes).into_owned(),
        event,
    }
}
