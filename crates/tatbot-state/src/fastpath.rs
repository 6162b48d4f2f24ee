//! The progress update's fast path: the merge done by the writer instead of inside Redis.
//!
//! A progress update merges a patch into the stored progress document. Done in Lua, that means
//! decoding the document and encoding it and the event again with `cjson`, about 20 of the 25 us
//! Redis spends per update (docs/PERFORMANCE.md). A writer that knows the stored bytes can do
//! that work itself: it sends the document it expects to find, the merged document and the
//! event, and the script compares the stored bytes with the expected ones. When they are equal,
//! the script stores and publishes what it was given; when they differ (another writer changed
//! the document, a Python node included, or the cache is stale) it merges the patch as before,
//! and returns the document it stored so the writer knows it again.
//!
//! The result is the same bytes either way, because the fast path is taken only for documents
//! this module can encode exactly as the script's `encode_ordered` and `encode_event` do:
//! every known field present in the contract's order and no other field, integers below
//! 10^14 (`cjson` writes 14 significant digits), and strings without backslashes or control
//! characters (where `cjson` and `serde_json` escape differently). The test
//! `props::fast_path_matches_the_script` runs both paths on random documents and updates.
//!
//! A [`DocCache`] holds what one writer last stored per session. It is a hint: a wrong entry
//! costs one slow update, never a wrong write.

use std::collections::HashMap;

use crate::ids::{NodeId, SessionId};
use crate::model::{ProgressUpdate, StrokeProgress};
use crate::pyjson::json_string;
use crate::timestamp::Timestamp;

/// Sessions a cache remembers; past it, the cache starts over (a robot runs one at a time).
const MAX_SESSIONS: usize = 64;
/// `cjson` writes numbers with 14 significant digits: integers below this come out exact.
const MAX_EXACT: i64 = 100_000_000_000_000;

/// What the script needs to take the fast path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FastArgs {
    /// The stored document the merge was based on.
    pub expected: String,
    /// The merged document.
    pub document: String,
    /// The descriptions after the merge, for the history entry.
    pub description_l: String,
    pub description_r: String,
    /// The `progress_update` event.
    pub event: String,
}

/// The last document a writer stored, per session.
#[derive(Debug, Default)]
pub(crate) struct DocCache {
    docs: HashMap<SessionId, Known>,
}

#[derive(Debug)]
struct Known {
    bytes: String,
    doc: StrokeProgress,
}

impl DocCache {
    /// Remembers `bytes` as the stored document of `session_id`, or forgets the session when
    /// the fast path cannot reproduce them.
    pub(crate) fn learn(&mut self, session_id: &SessionId, bytes: String) {
        let doc = serde_json::from_str::<StrokeProgress>(&bytes)
            .ok()
            .filter(representable)
            .filter(|doc| serde_json::to_string(doc).is_ok_and(|again| again == bytes));
        match doc {
            Some(doc) => self.insert(session_id.clone(), Known { bytes, doc }),
            None => self.forget(session_id),
        }
    }

    /// Remembers a document this writer built and stored itself.
    pub(crate) fn learn_built(&mut self, session_id: &SessionId, doc: &StrokeProgress, bytes: String) {
        if representable(doc) {
            self.insert(
                session_id.clone(),
                Known {
                    bytes,
                    doc: doc.clone(),
                },
            );
        }
    }

    /// Merges `update` into the known document of `session_id` and remembers the result, which
    /// the update will store if the script finds the expected bytes. `None` when the session is
    /// unknown or the result falls outside what the fast path encodes exactly; the session is
    /// forgotten then, as the slow path's answer will say what got stored.
    pub(crate) fn plan(
        &mut self,
        session_id: &SessionId,
        update: &ProgressUpdate,
        at: Timestamp,
        node_id: &NodeId,
    ) -> Option<FastArgs> {
        let known = self.docs.remove(session_id)?;
        let mut doc = known.doc;
        update.apply_to(&mut doc, at, node_id);
        if !representable(&doc) {
            return None;
        }
        let document = serde_json::to_string(&doc).ok()?;
        let event = progress_event(session_id, &doc);
        let args = FastArgs {
            expected: known.bytes,
            document: document.clone(),
            description_l: doc.stroke_description_l.clone(),
            description_r: doc.stroke_description_r.clone(),
            event,
        };
        self.insert(session_id.clone(), Known { bytes: document, doc });
        Some(args)
    }

    /// Reads the reply of a progress update of `session_id`: its history entry id, or `None`
    /// when the write was skipped as applied already. A merge in the script answers with the
    /// document it stored, which is learned; after the fast path the planned document is
    /// already known; anything else makes the session unknown.
    pub(crate) fn observe(&mut self, session_id: &SessionId, reply: redis::Value) -> Option<String> {
        match reply {
            redis::Value::Array(mut parts) if parts.len() == 2 => {
                let stored = parts
                    .pop()
                    .and_then(|value| redis::from_redis_value::<String>(value).ok());
                let id = parts
                    .pop()
                    .and_then(|value| redis::from_redis_value::<String>(value).ok());
                match stored {
                    Some(stored) => self.learn(session_id, stored),
                    None => self.forget(session_id),
                }
                id
            }
            redis::Value::Int(_) => {
                self.forget(session_id);
                None
            }
            other => {
                let id = redis::from_redis_value::<String>(other).ok();
                if id.is_none() {
                    self.forget(session_id);
                }
                id
            }
        }
    }

    /// Forgets `session_id` (its document changed in a way this writer did not build).
    pub(crate) fn forget(&mut self, session_id: &SessionId) {
        self.docs.remove(session_id);
    }

    /// Forgets every session.
    pub(crate) fn clear(&mut self) {
        self.docs.clear();
    }

    fn insert(&mut self, session_id: SessionId, known: Known) {
        if self.docs.len() >= MAX_SESSIONS && !self.docs.contains_key(&session_id) {
            self.docs.clear();
        }
        self.docs.insert(session_id, known);
    }
}

/// The `progress_update` event as the update script's `encode_event` writes it: Python's
/// separators, fields in this order, the merged document's counts and descriptions.
fn progress_event(session_id: &SessionId, doc: &StrokeProgress) -> String {
    let text = json_string;
    format!(
        "{{\"type\": \"progress_update\", \"session_id\": {}, \"node_id\": {}, \"stroke_idx\": {}, \
         \"pose_idx\": {}, \"total_strokes\": {}, \"stroke_length\": {}, \"description_l\": {}, \
         \"description_r\": {}, \"timestamp\": \"{}\"}}",
        text(session_id.as_str()),
        text(&doc.node_id),
        doc.stroke_idx,
        doc.pose_idx,
        doc.total_strokes,
        doc.stroke_length,
        text(&doc.stroke_description_l),
        text(&doc.stroke_description_r),
        doc.timestamp,
    )
}

/// Whether the script's encoders would write `doc` exactly as `serde_json` does.
fn representable(doc: &StrokeProgress) -> bool {
    let exact = |n: i64| n.unsigned_abs() < MAX_EXACT.unsigned_abs();
    let plain = |text: &str| !text.bytes().any(|b| b == b'\\' || b < 0x20 || b == 0x7f);
    // Unknown fields (a session's owner and lease, say) come after the known ones, sorted, as
    // the script writes them, and only with values both encoders write alike.
    let extra_ok = doc.extra.keys().zip(doc.extra.keys().skip(1)).all(|(a, b)| a < b)
        && doc.extra.iter().all(|(key, value)| {
            plain(key)
                && match value {
                    serde_json::Value::Null | serde_json::Value::Bool(_) => true,
                    serde_json::Value::Number(n) => n.as_i64().is_some_and(exact),
                    serde_json::Value::String(text) => plain(text),
                    _ => false,
                }
        });
    extra_ok
        && [
            doc.stroke_idx,
            doc.pose_idx,
            doc.total_strokes,
            doc.stroke_length,
            doc.offset_idx_l,
            doc.offset_idx_r,
        ]
        .into_iter()
        .all(exact)
        && [
            doc.node_id.as_str(),
            &doc.stroke_description_l,
            &doc.stroke_description_r,
            &doc.scene_name,
            doc.dataset_name.as_deref().unwrap_or(""),
        ]
        .into_iter()
        .all(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> StrokeProgress {
        serde_json::from_str(
            r#"{"timestamp":"2026-11-25T10:00:00.000001","node_id":"ook","stroke_idx":0,"pose_idx":0,"total_strokes":10,"stroke_length":4,"stroke_description_l":"","stroke_description_r":"","offset_idx_l":0,"offset_idx_r":0,"is_executing":true,"is_paused":false,"scene_name":"default","dataset_name":null}"#,
        )
        .unwrap()
    }

    fn ids() -> (SessionId, NodeId) {
        (SessionId::new("stroke_ook_1").unwrap(), NodeId::new("ook").unwrap())
    }

    #[test]
    fn learns_only_documents_it_reencodes_exactly() {
        let (session, node) = ids();
        let at = Timestamp::now();
        let exact = serde_json::to_string(&doc()).unwrap();
        let mut cache = DocCache::default();
        cache.learn(&session, exact.clone());
        let args = cache.plan(&session, &ProgressUpdate::new(1, 2), at, &node).unwrap();
        assert_eq!(args.expected, exact);

        // The same document with spaces, as another client may write it: not reproducible.
        cache.learn(&session, exact.replace(",\"node_id\"", ", \"node_id\""));
        assert!(cache.plan(&session, &ProgressUpdate::new(1, 2), at, &node).is_none());
        // Unknown fields after the known ones, sorted, with plain values: as the script writes them.
        let owned = exact.replace("}", ",\"lease_secs\":15,\"owner_node_id\":\"ook\"}");
        cache.learn(&session, owned.clone());
        let args = cache.plan(&session, &ProgressUpdate::new(1, 2), at, &node).unwrap();
        assert_eq!(args.expected, owned);
        // Unsorted, or a value cjson writes differently (an object, a float): not reproducible.
        for odd in [",\"zz\":1,\"aa\":2}", ",\"zz\":{\"a\":1}}", ",\"zz\":1.5}"] {
            cache.learn(&session, exact.replace("}", odd));
            assert!(
                cache.plan(&session, &ProgressUpdate::new(1, 2), at, &node).is_none(),
                "{odd}"
            );
        }
    }

    #[test]
    fn plans_chain_and_refuse_escapes() {
        let (session, node) = ids();
        let at = Timestamp::now();
        let mut cache = DocCache::default();
        let start = doc();
        cache.learn_built(&session, &start, serde_json::to_string(&start).unwrap());
        let first = cache.plan(&session, &ProgressUpdate::new(1, 0), at, &node).unwrap();
        let second = cache.plan(&session, &ProgressUpdate::new(1, 1), at, &node).unwrap();
        assert_eq!(second.expected, first.document);
        assert!(second.document.contains("\"pose_idx\":1"));
        assert!(
            second
                .event
                .starts_with("{\"type\": \"progress_update\", \"session_id\": \"stroke_ook_1\"")
        );

        let mut update = ProgressUpdate::new(2, 0);
        update.description_l = Some("tab\there".into());
        assert!(cache.plan(&session, &update, at, &node).is_none());
        assert!(cache.plan(&session, &ProgressUpdate::new(2, 1), at, &node).is_none());
    }
}

/// The fast path against the script's own merge, on a real server.
#[cfg(test)]
mod against_the_script {
    use proptest::prelude::*;
    use redis::AsyncCommands as _;
    use tatbot_state_testkit::RedisServer;

    use super::*;
    use crate::connection::{Endpoint, ManagerConfig};
    use crate::keys;
    use crate::ops::Op;

    /// Text that is sometimes plain and sometimes not: quotes, slashes, non-ASCII, escapes.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-zA-Z0-9 _./:-]{0,12}",
            1 => "[a-z\"/é€😀]{0,6}",
            1 => "[a-z\\\\\t\u{7f}\n]{0,4}",
        ]
    }

    fn update() -> impl Strategy<Value = ProgressUpdate> {
        (
            0u32..2000,
            0u32..50,
            prop::option::weighted(0.3, text()),
            prop::option::weighted(0.3, text()),
            prop::option::weighted(0.2, -5i64..5),
            prop::option::weighted(0.2, -5i64..5),
        )
            .prop_map(|(stroke, pose, l, r, ol, or)| ProgressUpdate {
                stroke_idx: stroke,
                pose_idx: pose,
                description_l: l,
                description_r: r,
                offset_idx_l: ol,
                offset_idx_r: or,
            })
    }

    fn document() -> impl Strategy<Value = StrokeProgress> {
        (
            (0i64..1000, 0i64..100, text(), text()),
            (any::<bool>(), any::<bool>(), text(), prop::option::of(text())),
        )
            .prop_map(
                |((total, length, l, r), (executing, paused, scene, dataset))| StrokeProgress {
                    timestamp: Timestamp::parse("2026-11-25T10:00:00.5").unwrap(),
                    node_id: "python-node".into(),
                    stroke_idx: 0,
                    pose_idx: 0,
                    total_strokes: total,
                    stroke_length: length,
                    stroke_description_l: l,
                    stroke_description_r: r,
                    offset_idx_l: 0,
                    offset_idx_r: 0,
                    is_executing: executing,
                    is_paused: paused,
                    scene_name: scene,
                    dataset_name: dataset,
                    extra: owner_fields(executing),
                },
            )
    }

    /// What our session start adds, sorted: present in half the documents.
    fn owner_fields(present: bool) -> crate::model::Extra {
        let mut extra = crate::model::Extra::default();
        if present {
            extra.insert("lease_secs".into(), 15.into());
            extra.insert("owner_instance".into(), "a1b2c3d4".into());
            extra.insert("owner_node_id".into(), "ook".into());
        }
        extra
    }

    /// The values of every entry of a stream, ids left out.
    async fn entries(connection: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<Vec<(String, String)>> {
        let reply: redis::streams::StreamRangeReply = connection.xrange_all(key).await.unwrap();
        reply
            .ids
            .into_iter()
            .map(|entry| {
                let mut fields: Vec<(String, String)> = entry
                    .map
                    .into_iter()
                    .map(|(k, v)| (k, redis::from_redis_value(v).unwrap()))
                    .collect();
                fields.sort();
                fields
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

        /// The same updates merged by the script (one session) and planned by a cache (another)
        /// store the same documents, history entries and events, byte for byte; and the fast
        /// path is really taken whenever the documents are plain.
        #[test]
        fn fast_path_matches_the_script(start in document(), updates in prop::collection::vec(update(), 1..6)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let server = RedisServer::start();
            runtime.block_on(async {
                let config = ManagerConfig::new(
                    Endpoint::new(server.host(), server.port()),
                    NodeId::new("ook").unwrap(),
                );
                let mut connection = redis::Client::open(server.url())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap();
                let slow = SessionId::new("stroke_ook_1").unwrap();
                let fast = SessionId::new("stroke_ook_2").unwrap();
                let initial = serde_json::to_string(&start).unwrap();
                for session in [&slow, &fast] {
                    let _: () = connection.hset(keys::progress(session), "progress", &initial).await.unwrap();
                }
                let mut cache = DocCache::default();
                cache.learn(&fast, initial.clone());
                let mut fast_taken = 0;
                let mut all_plain = representable(&start);
                for (index, update) in updates.iter().enumerate() {
                    let at = Timestamp::parse(&format!("2026-11-25T10:00:{:02}.25", index + 1)).unwrap();
                    for session in [&slow, &fast] {
                        let op = Op::Progress { session_id: session.clone(), update: update.clone(), at };
                        let args = if session == &fast { op.plan(&mut cache, &config.node_id) } else { None };
                        let reply: redis::Value = op
                            .invocation(&config, "", 0, args.as_ref())
                            .invoke_async(&mut connection)
                            .await
                            .unwrap();
                        if session == &fast {
                            if matches!(reply, redis::Value::BulkString(_)) {
                                fast_taken += 1;
                            }
                            prop_assert!(cache.observe(session, reply).is_some());
                        }
                    }
                    let plain = |text: &Option<String>| {
                        text.as_deref().is_none_or(|text| !text.bytes().any(|b| b == b'\\' || b < 0x20 || b == 0x7f))
                    };
                    all_plain &= plain(&update.description_l) && plain(&update.description_r);
                }
                let stored = |session: &SessionId| {
                    let mut connection = connection.clone();
                    let key = keys::progress(session);
                    async move {
                        let text: String = connection.hget(key, "progress").await.unwrap();
                        text
                    }
                };
                prop_assert_eq!(stored(&slow).await, stored(&fast).await);
                prop_assert_eq!(
                    entries(&mut connection, &keys::history(&slow)).await,
                    entries(&mut connection, &keys::history(&fast)).await
                );
                let events = entries(&mut connection, keys::EVENT_LOG).await;
                prop_assert_eq!(events.len(), updates.len() * 2);
                for pair in events.chunks(2) {
                    let slow_event = pair[0].iter().find(|(k, _)| k == "payload").unwrap().1.clone();
                    let fast_event = pair[1].iter().find(|(k, _)| k == "payload").unwrap().1.clone();
                    prop_assert_eq!(slow_event.replace("stroke_ook_1", "stroke_ook_2"), fast_event);
                }
                // Plain documents all the way: every update but none took the fast path.
                if all_plain {
                    prop_assert_eq!(fast_taken, updates.len());
                }
                Ok(())
            })?;
        }
    }
}
