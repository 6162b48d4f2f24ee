//! [`Subscription`]: typed pub/sub messages on a connection of their own.
//!
//! A Redis connection in subscribe mode can run nothing but (un)subscribe commands, so a
//! subscription never shares the manager's connection; like mini-redis's `Subscriber`, it is its
//! own type with its own methods. Every message is handed over with its raw payload and the
//! decode result, so a reader can show a malformed message from another client instead of
//! losing it.

use futures_util::StreamExt;
use redis::aio::PubSubStream;

use crate::connection::ManagerConfig;
use crate::error::{Error, Result};
use crate::model::Event;

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
    /// The message half of the pub/sub connection; the connection closes when it is dropped.
    stream: PubSubStream,
    patterns: Vec<String>,
}

impl Subscription {
    pub(crate) async fn open(
        client: &redis::Client,
        config: &ManagerConfig,
        patterns: &[&str],
    ) -> Result<Subscription> {
        let target = config.endpoint.to_string();
        let attempt = client.get_async_pubsub();
        let mut pubsub = match tokio::time::timeout(config.connect_timeout, attempt).await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(err)) => return Err(Error::from_connect(&target, err)),
            Err(_) => {
                return Err(Error::Timeout {
                    operation: "subscribe",
                    after: config.connect_timeout,
                });
            }
        };
        for pattern in patterns {
            pubsub
                .psubscribe(*pattern)
                .await
                .map_err(|err| Error::from_redis("subscribe", err))?;
        }
        Ok(Subscription {
            stream: pubsub.into_on_message(),
            patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
        })
    }

    /// The patterns subscribed to.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Waits for the next message; `None` once the connection is gone.
    pub async fn next(&mut self) -> Option<Message> {
        let msg = self.stream.next().await?;
        let channel = msg.get_channel_name().to_owned();
        let pattern = msg.get_pattern::<Option<String>>().ok().flatten();
        let bytes = msg.get_payload_bytes();
        let event = Event::from_json(bytes).map_err(|source| Error::Decode {
            key: format!("channel {channel}"),
            what: "event",
            source,
        });
        Some(Message {
            channel,
            pattern,
            payload: String::from_utf8_lossy(bytes).into_owned(),
            event,
        })
    }
}
