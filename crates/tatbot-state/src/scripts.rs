//! Server-side Lua scripts: each multi-key write is one atomic round trip.
//!
//! The Python reference read a progress document, changed it in Python and wrote it back in
//! four round trips, so two writers lost each other's changes (WIRE.md fault 1). Here the merge
//! happens inside Redis: the script decodes the stored document, overwrites only the fields the
//! caller named, keeps every other field (including ones we do not know), and writes history,
//! event and event-log entries in the same atomic step.
//!
//! The structures every writer shares (the event log, the error log, the session index, the
//! node registry) are written only while they hold their type: a key of another type there
//! (anyone can store anything) skips that part, and the write it belongs to is kept; readers
//! report the key as corrupt.
//!
//! Key names reach the scripts from [`crate::keys`] as `KEYS` or, where a name depends on a value
//! computed inside the script (the unique session id), as a prefix in `ARGV`.
//!
//! Every write script but session start takes a writer revision as `ARGV[1]` (a key, or `''`
//! for none) and `ARGV[2]` (a sequence number). A [`crate::Producer`] numbers its writes and
//! may send one again after a lost connection or a Redis restart; the script applies a write
//! only when its number is above the last one recorded for that writer, in the same atomic
//! step, so a replay never duplicates a history entry or an event. A write skipped that way
//! answers -1 minus the number recorded. The revision key is shared data too: a value of another
//! type, or text that is not a whole number, counts as nothing recorded; a number above anything
//! the writer sent is the writer's to find and set back.
//!
//! Documents are re-encoded with the contract's field order, compact, so the stored bytes look
//! like what pydantic writes. Redis's `cjson` escapes `/` as `\/`; we undo that. Two limits of
//! `cjson` apply to fields we do not know and therefore pass through: numbers are written with
//! 14 significant digits, and an empty JSON array comes back as `{}`.

use std::sync::LazyLock;

use redis::Script;

/// Helpers shared by the scripts: decoding with a typed error, and ordered encoding.
const PRELUDE: &str = r#"
local function decode_doc(key, field, raw)
  local ok, doc = pcall(cjson.decode, raw)
  local bad = not ok or type(doc) ~= 'table'
  if not bad then
    -- cjson decodes arrays to tables too; only an object has string keys alone.
    for k, _ in pairs(doc) do
      if type(k) ~= 'string' then bad = true break end
    end
  end
  if bad then
    return nil, redis.error_reply('TATBOT_CORRUPT ' .. key .. ' field ' .. field .. ' is not a JSON object')
  end
  return doc
end

local function unslash(text)
  return (string.gsub(text, '\\/', '/'))
end

local function encode_ordered(doc, order)
  local parts, seen = {}, {}
  for _, k in ipairs(order) do
    local v = doc[k]
    if v ~= nil then
      parts[#parts + 1] = cjson.encode(k) .. ':' .. cjson.encode(v)
      seen[k] = true
    end
  end
  local rest = {}
  for k, _ in pairs(doc) do
    if not seen[k] then rest[#rest + 1] = k end
  end
  table.sort(rest)
  for _, k in ipairs(rest) do
    parts[#parts + 1] = cjson.encode(k) .. ':' .. cjson.encode(doc[k])
  end
  return unslash('{' .. table.concat(parts, ',') .. '}')
end

-- Python's json.dumps separators, fields in the given order.
local function encode_event(fields)
  local parts = {}
  for i, kv in ipairs(fields) do
    parts[i] = cjson.encode(kv[1]) .. ': ' .. cjson.encode(kv[2])
  end
  return unslash('{' .. table.concat(parts, ', ') .. '}')
end

-- Runs a write to a structure every writer shares (a log, an index). Any client can store
-- anything under a key: when the key holds another type (or a stream whose last possible id
-- was used up), this part is skipped (readers report the key as corrupt) and the write it
-- belongs to is kept, instead of one key failing every write of the fleet. Any other error
-- fails the script, as redis.call would. True when written.
local function shared_write(...)
  local reply = redis.pcall(...)
  if type(reply) == 'table' and reply.err then
    if string.sub(reply.err, 1, 9) == 'WRONGTYPE' then return false end
    if string.find(reply.err, 'exhausted the last possible ID', 1, true) then return false end
    error(reply)
  end
  return true
end

-- Appends to a log stream (the event log, the error log); see shared_write.
local function append_log(key, trim, maxlen, channel, payload)
  return shared_write('XADD', key, 'MAXLEN', trim, maxlen, '*', 'channel', channel, 'payload', payload)
end

local function as_string(v)
  if type(v) == 'string' then return v end
  return ''
end

-- How long a writer's revision key outlives its last write (seconds).
local REVISION_TTL = 86400

-- The last sequence number recorded at a writer's revision key `rev_key`: 0 when there is none,
-- or when the key holds something no writer wrote (another type, or text that is not a whole
-- number of at most 15 digits).
local function recorded(rev_key)
  local stored = redis.pcall('GET', rev_key)
  if type(stored) == 'string' and #stored <= 15 and string.match(stored, '^%d+$') then
    return tonumber(stored)
  end
  return 0
end

-- Nil when this writer's write `seq` was not applied yet, and records it ('' means no writer);
-- else the answer of a write already applied: -1 minus the number recorded, so that the writer
-- can tell a number it never sent (`Writer::broken_revisions`).
local function applied(rev_key, seq)
  if rev_key == '' then return nil end
  local last = recorded(rev_key)
  if tonumber(seq) <= last then return -1 - last end
  redis.call('SET', rev_key, seq, 'EX', REVISION_TTL)
  return nil
end

local PROGRESS_ORDER = {'timestamp', 'node_id', 'stroke_idx', 'pose_idx', 'total_strokes',
  'stroke_length', 'stroke_description_l', 'stroke_description_r', 'offset_idx_l',
  'offset_idx_r', 'is_executing', 'is_paused', 'scene_name', 'dataset_name'}

-- Merges `patch_json` into the progress document at `key` and stores it. Returns the merged
-- document, the patch and the stored text; or nil and the reply to return: an error when the
-- session is missing or its document corrupt, -1 - n when this writer's `seq` was applied already
-- (n the number recorded).
local function merge_progress(key, session_id, rev_key, seq, patch_json)
  local raw = redis.call('HGET', key, 'progress')
  if not raw then return nil, redis.error_reply('TATBOT_NOSESSION ' .. session_id) end
  local doc, err = decode_doc(key, 'progress', raw)
  if not doc then return nil, err end
  local skipped = applied(rev_key, seq)
  if skipped then return nil, skipped end
  local patch = cjson.decode(patch_json)
  for k, v in pairs(patch) do doc[k] = v end
  local stored = encode_ordered(doc, PROGRESS_ORDER)
  redis.call('HSET', key, 'progress', stored)
  return doc, patch, stored
end
"#;

/// Starts a session under a unique id.
///
/// KEYS: session index, event log.
/// ARGV: base id, seq key, progress prefix, progress JSON, start ms, event log maxlen,
/// session channel, node id, total strokes, scene name, timestamp, seq TTL seconds.
/// Returns the session id: the base id when free, else `{base}_{n}` with the first free `n`.
const START_SESSION: &str = r#"
local n = redis.call('INCR', ARGV[2])
redis.call('EXPIRE', ARGV[2], ARGV[12])
local id
while true do
  if n == 1 then id = ARGV[1] else id = ARGV[1] .. '_' .. n end
  if redis.call('EXISTS', ARGV[3] .. id) == 0 then break end
  n = redis.call('INCR', ARGV[2])
end
redis.call('HSET', ARGV[3] .. id, 'progress', ARGV[4])
shared_write('ZADD', KEYS[1], ARGV[5], id)
local ev = encode_event({{'type', 'session_start'}, {'session_id', id}, {'node_id', ARGV[8]},
  {'total_strokes', tonumber(ARGV[9])}, {'scene_name', ARGV[10]}, {'timestamp', ARGV[11]}})
redis.call('PUBLISH', ARGV[7], ev)
append_log(KEYS[2], '~', ARGV[6], ARGV[7], ev)
return id
"#;

/// Makes sure a session exists: when its progress hash is missing (a Redis restart lost it),
/// stores the document a producer knows, indexes the session and announces it again with
/// `session_start`. Nothing happens when the hash exists.
///
/// KEYS: progress hash, session index, event log.
/// ARGV: rev key, seq, progress JSON, session id, start ms, event log maxlen, session channel,
/// `session_start` event JSON, retention seconds (0 keeps the keys; set for an ended session).
/// Returns 1 when it created the session, 0 when it exists, a negative number for a write already
/// applied (as every write script: -1 minus the number recorded).
const ENSURE_SESSION: &str = r#"
local skipped = applied(ARGV[1], ARGV[2])
if skipped then return skipped end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[3])
if tonumber(ARGV[9]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[9]) end
shared_write('ZADD', KEYS[2], ARGV[5], ARGV[4])
redis.call('PUBLISH', ARGV[7], ARGV[8])
append_log(KEYS[3], '~', ARGV[6], ARGV[7], ARGV[8])
return 1
"#;

/// Merges a progress update, appends history, publishes and logs the event.
///
/// KEYS: progress hash, history stream, event log.
/// ARGV: rev key, seq, patch JSON (must hold timestamp, node_id, stroke_idx, pose_idx),
/// session id, history maxlen, event log maxlen, progress channel; then, for the fast path
/// (`crate::fastpath`), the document expected, the merged document, the two descriptions, the
/// event, and the stroke index, pose index and node id as the history entry writes them.
/// Returns the history entry id after the fast path; `{id, stored document}` after a merge in
/// the script; a negative number for a write already applied.
const UPDATE_PROGRESS: &str = r#"
if ARGV[8] and redis.call('HGET', KEYS[1], 'progress') == ARGV[8] then
  local skipped = applied(ARGV[1], ARGV[2])
  if skipped then return skipped end
  redis.call('HSET', KEYS[1], 'progress', ARGV[9])
  local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*',
    'stroke_idx', ARGV[13], 'pose_idx', ARGV[14],
    'description_l', ARGV[10], 'description_r', ARGV[11], 'node_id', ARGV[15])
  redis.call('PUBLISH', ARGV[7], ARGV[12])
  append_log(KEYS[3], '~', ARGV[6], ARGV[7], ARGV[12])
  return id
end
local doc, patch, stored = merge_progress(KEYS[1], ARGV[4], ARGV[1], ARGV[2], ARGV[3])
if not doc then return patch end
local dl, dr = as_string(doc.stroke_description_l), as_string(doc.stroke_description_r)
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*',
  'stroke_idx', tostring(patch.stroke_idx), 'pose_idx', tostring(patch.pose_idx),
  'description_l', dl, 'description_r', dr, 'node_id', patch.node_id)
local ev = encode_event({{'type', 'progress_update'}, {'session_id', ARGV[4]},
  {'node_id', patch.node_id}, {'stroke_idx', patch.stroke_idx}, {'pose_idx', patch.pose_idx},
  {'total_strokes', doc.total_strokes or 0}, {'stroke_length', doc.stroke_length or 0},
  {'description_l', dl}, {'description_r', dr}, {'timestamp', patch.timestamp}})
redis.call('PUBLISH', ARGV[7], ev)
append_log(KEYS[3], '~', ARGV[6], ARGV[7], ev)
return {id, stored}
"#;

/// Changes a session's run state (end, pause, resume) and publishes the matching event.
///
/// An abort's patch carries `abort_reason`, which its event repeats as `reason`.
///
/// KEYS: progress hash, history stream, event log, session index, stale claim.
/// ARGV: rev key, seq, patch JSON (timestamp, node_id and the flags), session id, retention
/// seconds (0 keeps the keys), event log maxlen, session channel, event type, prune-before ms.
const SET_RUN_STATE: &str = r#"
local doc, patch = merge_progress(KEYS[1], ARGV[4], ARGV[1], ARGV[2], ARGV[3])
if not doc then return patch end
local retention = tonumber(ARGV[5])
if retention > 0 then
  redis.call('EXPIRE', KEYS[1], retention)
  redis.call('EXPIRE', KEYS[2], retention)
  redis.call('EXPIRE', KEYS[5], retention)
  shared_write('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[9])
end
local fields = {{'type', ARGV[8]}, {'session_id', ARGV[4]}, {'node_id', patch.node_id}}
if type(patch.abort_reason) == 'string' then fields[#fields + 1] = {'reason', patch.abort_reason} end
fields[#fields + 1] = {'timestamp', patch.timestamp}
local ev = encode_event(fields)
redis.call('PUBLISH', ARGV[7], ev)
append_log(KEYS[3], '~', ARGV[6], ARGV[7], ev)
return 1
"#;

/// Renews the lease of a session its owner still runs: sets `lease_renewed` in the progress
/// document. Nothing happens when the session is gone, ended, or owned by another instance.
///
/// KEYS: progress hash.
/// ARGV: owner instance, timestamp.
/// Returns 1 when renewed, 0 otherwise.
const RENEW_LEASE: &str = r#"
local raw = redis.call('HGET', KEYS[1], 'progress')
if not raw then return 0 end
local doc = decode_doc(KEYS[1], 'progress', raw)
if not doc or doc.is_executing ~= true or doc.owner_instance ~= ARGV[1] then return 0 end
doc.lease_renewed = ARGV[2]
redis.call('HSET', KEYS[1], 'progress', encode_ordered(doc, PROGRESS_ORDER))
return 1
"#;

/// Announces a stale session, once: when the document is still the one the caller judged stale
/// (executing, same `timestamp` and `lease_renewed`), claims the session with `SET NX` and, only
/// when the claim is new, publishes `session_stale` and logs it.
///
/// KEYS: progress hash, stale claim, event log.
/// ARGV: timestamp seen, lease_renewed seen ('' for none), event JSON, claim TTL seconds,
/// event log maxlen, session channel.
/// Returns 1 when this call announced it, 0 otherwise.
const CLAIM_STALE: &str = r#"
local raw = redis.call('HGET', KEYS[1], 'progress')
if not raw then return 0 end
local doc = decode_doc(KEYS[1], 'progress', raw)
if not doc or doc.is_executing ~= true then return 0 end
if doc.timestamp ~= ARGV[1] then return 0 end
local renewed = doc.lease_renewed
if type(renewed) ~= 'string' then renewed = '' end
if renewed ~= ARGV[2] then return 0 end
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[4]) then return 0 end
redis.call('PUBLISH', ARGV[6], ARGV[3])
append_log(KEYS[3], '~', ARGV[5], ARGV[6], ARGV[3])
return 1
"#;

/// Stores a robot state snapshot and publishes `state_update`.
///
/// KEYS: robot state hash, event log.
/// ARGV: rev key, seq, state JSON, last_updated, event JSON, event log maxlen, channel.
const ROBOT_STATE: &str = r#"
local skipped = applied(ARGV[1], ARGV[2])
if skipped then return skipped end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'last_updated', ARGV[4])
redis.call('PUBLISH', ARGV[7], ARGV[5])
append_log(KEYS[2], '~', ARGV[6], ARGV[7], ARGV[5])
return 1
"#;

/// Stores a heartbeat with its TTL and records the node in the registry.
///
/// KEYS: health hash, node registry.
/// ARGV: rev key, seq, health JSON, TTL seconds, node id, heartbeat ms.
const HEALTH: &str = r#"
local skipped = applied(ARGV[1], ARGV[2])
if skipped then return skipped end
redis.call('HSET', KEYS[1], 'health', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
shared_write('ZADD', KEYS[2], ARGV[6], ARGV[5])
return 1
"#;

/// Publishes an error event, stores it in the error log (trimmed exactly by count and age) and
/// in the event log.
///
/// KEYS: error log, event log.
/// ARGV: rev key, seq, channel, event JSON, error log maxlen, error log min id, event log maxlen.
const REPORT_ERROR: &str = r#"
local skipped = applied(ARGV[1], ARGV[2])
if skipped then return skipped end
-- The logs first: a master that refuses writes (NOREPLICAS, READONLY) fails the script before
-- anything is published, so a retry publishes once.
if append_log(KEYS[1], '=', ARGV[5], ARGV[3], ARGV[4]) then
  redis.call('XTRIM', KEYS[1], 'MINID', ARGV[6])
end
append_log(KEYS[2], '~', ARGV[7], ARGV[3], ARGV[4])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"#;

/// Deletes a session's progress and history and takes it out of the session index.
///
/// KEYS: progress hash, history stream, session index.
/// ARGV: session id.
/// Returns how many of the two keys existed.
const CLEAR_SESSION: &str = r#"
local deleted = redis.call('DEL', KEYS[1], KEYS[2])
shared_write('ZREM', KEYS[3], ARGV[1])
return deleted
"#;

/// Publishes an event and logs it.
///
/// KEYS: event log.
/// ARGV: channel, event JSON, event log maxlen.
/// Returns the number of subscribers that received it.
const PUBLISH_EVENT: &str = r#"
-- The log first: a master that refuses writes fails the script before anything is published.
append_log(KEYS[1], '~', ARGV[3], ARGV[1], ARGV[2])
return redis.call('PUBLISH', ARGV[1], ARGV[2])
"#;

/// Sets a writer's revision key back to `seq` when it records more: the writer found a number
/// there above any it sent (`Writer::broken_revisions`). It only ever lowers: a key that is
/// missing (a restarted server lost it) or records `seq` or less is left as it is, and so is one
/// that holds something no writer wrote, which counts as nothing recorded anyway.
///
/// KEYS: revision key.
/// ARGV: seq.
/// Returns 1 when it set the key back, 0 otherwise.
const LOWER_REVISION: &str = r#"
if recorded(KEYS[1]) <= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', REVISION_TTL)
return 1
"#;

/// Takes records out of the producers' hash that still hold what the caller read: a record its
/// producer wrote again since (a failure to report) stays.
///
/// KEYS: producers hash.
/// ARGV: field, value read, field, value read, ...
/// Returns how many it took out.
const PRUNE_RECORDS: &str = r#"
local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    removed = removed + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return removed
"#;

fn with_prelude(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

/// [`START_SESSION`], compiled once.
pub(crate) static START: LazyLock<Script> = LazyLock::new(|| with_prelude(START_SESSION));
/// [`ENSURE_SESSION`], compiled once.
pub(crate) static ENSURE: LazyLock<Script> = LazyLock::new(|| with_prelude(ENSURE_SESSION));
/// [`UPDATE_PROGRESS`], compiled once.
pub(crate) static UPDATE: LazyLock<Script> = LazyLock::new(|| with_prelude(UPDATE_PROGRESS));
/// [`SET_RUN_STATE`], compiled once.
pub(crate) static RUN_STATE: LazyLock<Script> = LazyLock::new(|| with_prelude(SET_RUN_STATE));
/// [`RENEW_LEASE`], compiled once.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| with_prelude(RENEW_LEASE));
/// [`CLAIM_STALE`], compiled once.
pub(crate) static STALE: LazyLock<Script> = LazyLock::new(|| with_prelude(CLAIM_STALE));
/// [`ROBOT_STATE`], compiled once.
pub(crate) static ROBOT: LazyLock<Script> = LazyLock::new(|| with_prelude(ROBOT_STATE));
/// [`HEALTH`], compiled once.
pub(crate) static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| with_prelude(HEALTH));
/// [`REPORT_ERROR`], compiled once.
pub(crate) static ERROR: LazyLock<Script> = LazyLock::new(|| with_prelude(REPORT_ERROR));
/// [`CLEAR_SESSION`], compiled once.
pub(crate) static CLEAR: LazyLock<Script> = LazyLock::new(|| with_prelude(CLEAR_SESSION));
/// [`PUBLISH_EVENT`], compiled once.
pub(crate) static PUBLISH: LazyLock<Script> = LazyLock::new(|| with_prelude(PUBLISH_EVENT));
/// [`LOWER_REVISION`], compiled once.
pub(crate) static LOWER: LazyLock<Script> = LazyLock::new(|| with_prelude(LOWER_REVISION));
/// [`PRUNE_RECORDS`], compiled once.
pub(crate) static PRUNE: LazyLock<Script> = LazyLock::new(|| Script::new(PRUNE_RECORDS));

/// Every write script a [`crate::Producer`] pipelines; loaded after a reconnect, since
/// `EVALSHA` inside a pipeline does not fall back to `EVAL`.
pub(crate) fn pipelined() -> [&'static Script; 6] {
    [&ENSURE, &UPDATE, &RUN_STATE, &ROBOT, &HEARTBEAT, &ERROR]
}
