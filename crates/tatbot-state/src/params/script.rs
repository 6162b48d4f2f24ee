//! The Lua scripts parameter writes go through: [`REMOVE`] for an undeclare, and for every
//! other write the one script [`WRITE`], a batch of compare-and-set writes,
//! applied all or nothing, each recorded in the audit log.
//!
//! Rust validates first (for good messages) and hands the script the version each parameter
//! had when it was read. The script checks every item before it changes anything: the stored
//! version must still be the expected one (`0` for "not declared yet"), or, for an item that
//! carries a guard, the stored descriptor must still be the guard (a plain set was validated
//! against the descriptor, not the value, so a value others set meanwhile does not void it and
//! racing plain sets never starve each other); the stored type must be
//! the item's, and a new name must not sit under a parameter or have parameters under it. One
//! failed check fails the whole batch with a typed error reply and nothing is written; a
//! caller that lost a race reads again and re-validates. Redis runs a script alone, so no
//! other write can land between the checks and the writes.
//!
//! Each applied item bumps the parameter's version by one and appends one entry to the audit
//! log, numbered by the `seq` counter, so per parameter the versions in the log are contiguous
//! and over all parameters the `seq` numbers are: a watcher can tell when it missed one.
//! Values are passed as JSON text and stored as given; the script never decodes them, so no
//! float goes through `cjson`'s 14 digits.

use std::sync::LazyLock;

use redis::Script;

use crate::error::{Error, Result};
use crate::keys;
use crate::params::value::{ParamName, ParamType};
use crate::params::{ChangeOp, Params};
use crate::timestamp::Timestamp;

/// Refuses, before anything is written, a change that could not be audited or indexed: the
/// index, the audit log or the seq counter holds another client's value of another type, the
/// audit log is at the last possible millisecond of ids, or the counter is not a whole number
/// `INCR` takes (audit entries number from 1).
/// KEYS[1..3]: parameter index, audit log, seq counter.
const CHECK_SHARED: &str = r#"
for _, shared in ipairs({{KEYS[1], 'zset', 'sorted set'}, {KEYS[2], 'stream', 'stream'}}) do
  local found = redis.call('TYPE', shared[1]).ok
  if found ~= shared[2] and found ~= 'none' then
    return redis.error_reply('TATBOT_CORRUPT ' .. shared[1] .. ' the key is not a ' .. shared[3])
  end
end
local info = redis.pcall('XINFO', 'STREAM', KEYS[2])
if type(info) == 'table' and not info.err then
  for i = 1, #info - 1, 2 do
    -- Entries at the last millisecond are the last a batch could add: refused before one fails.
    if info[i] == 'last-generated-id' and string.sub(info[i + 1], 1, 21) == '18446744073709551615-' then
      return redis.error_reply('TATBOT_CORRUPT ' .. KEYS[2] .. ' the stream has used up its last possible id')
    end
  end
end
local counter = redis.pcall('GET', KEYS[3])
if type(counter) == 'table' or (counter and not (counter == '0' or
    (string.match(counter, '^[1-9]%d*$') and #counter <= 18))) then
  return redis.error_reply('TATBOT_CORRUPT ' .. KEYS[3] .. ' the key is not a counter')
end
"#;

/// KEYS: parameter index, audit log, seq counter, then one parameter hash per item.
/// ARGV: audit log maxlen, actor, time, item count, then per item: name, expected version,
/// type, descriptor JSON (`''` keeps it), value JSON (`''` keeps it), op, guard (the
/// descriptor JSON that lets the item land at any version; `''` for none).
/// Returns the new versions, in item order.
const WRITE: &str = r#"
local n = tonumber(ARGV[4])
local function arg(i, j) return ARGV[4 + (i - 1) * 7 + j] end

-- The first parameter above or below `name`, if any: parameters are leaves of the name tree.
local function tree_conflict(name)
  local from = 1
  while true do
    local dot = string.find(name, '.', from, true)
    if not dot then break end
    local above = string.sub(name, 1, dot - 1)
    if redis.call('ZSCORE', KEYS[1], above) then return above end
    from = dot + 1
  end
  local below = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. name .. '.', '(' .. name .. '/', 'LIMIT', 0, 1)
  if #below > 0 then return below[1] end
  return nil
end

for i = 1, n do
  local name, expected, ty, guard = arg(i, 1), arg(i, 2), arg(i, 3), arg(i, 7)
  local stored = redis.call('HMGET', KEYS[3 + i], 'version', 'type', 'descriptor')
  local version = stored[1] or '0'
  local guarded = guard ~= '' and stored[1] and stored[3] == guard
  if version ~= expected and not guarded then
    return redis.error_reply('TATBOT_PARAM_CONFLICT ' .. name .. ' ' .. version)
  end
  if stored[2] and stored[2] ~= ty then
    return redis.error_reply('TATBOT_PARAM_TYPE ' .. name .. ' ' .. stored[2])
  end
  if expected == '0' then
    local other = tree_conflict(name)
    if other then return redis.error_reply('TATBOT_PARAM_TREE ' .. name .. ' ' .. other) end
  end
end

local versions = {}
for i = 1, n do
  local key = KEYS[3 + i]
  local name, expected, ty = arg(i, 1), arg(i, 2), arg(i, 3)
  local descriptor, value, op = arg(i, 4), arg(i, 5), arg(i, 6)
  local stored = redis.call('HMGET', key, 'version', 'value')
  local version = tonumber(stored[1] or '0') + 1
  local old = stored[2]
  local fields = {'type', ty, 'version', version, 'actor', ARGV[2], 'updated', ARGV[3]}
  if descriptor ~= '' then
    fields[#fields + 1] = 'descriptor'
    fields[#fields + 1] = descriptor
  end
  if value ~= '' then
    fields[#fields + 1] = 'value'
    fields[#fields + 1] = value
  end
  redis.call('HSET', key, unpack(fields))
  if expected == '0' then redis.call('ZADD', KEYS[1], 0, name) end
  local seq = redis.call('INCR', KEYS[3])
  local entry = {'seq', seq, 'name', name, 'type', ty, 'version', version, 'op', op,
    'actor', ARGV[2], 'time', ARGV[3]}
  if old then
    entry[#entry + 1] = 'old'
    entry[#entry + 1] = old
  end
  entry[#entry + 1] = 'new'
  if value ~= '' then entry[#entry + 1] = value else entry[#entry + 1] = old end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(entry))
  versions[i] = version
end
return versions
"#;

/// [`WRITE`], compiled once.
static WRITE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{CHECK_SHARED}\n{WRITE}")));

/// KEYS: parameter index, audit log, seq counter, the parameter's hash.
/// ARGV: audit log maxlen, actor, time, name, expected version.
/// Removes the parameter if it still has the expected version, and logs it.
const REMOVE: &str = r#"
local stored = redis.call('HMGET', KEYS[4], 'version', 'type', 'value')
local version = stored[1] or '0'
if version ~= ARGV[5] then
  return redis.error_reply('TATBOT_PARAM_CONFLICT ' .. ARGV[4] .. ' ' .. version)
end
redis.call('DEL', KEYS[4])
redis.call('ZREM', KEYS[1], ARGV[4])
local seq = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'seq', seq, 'name', ARGV[4],
  'type', stored[2], 'version', tonumber(version) + 1, 'op', 'undeclare', 'actor', ARGV[2],
  'time', ARGV[3], 'old', stored[3], 'new', stored[3])
return 1
"#;

/// [`REMOVE`], compiled once.
static REMOVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{CHECK_SHARED}\n{REMOVE}")));

/// One compare-and-set write of a batch.
#[derive(Debug, Clone)]
pub(crate) struct Write {
    pub(crate) name: ParamName,
    /// The version the parameter must still have; 0 for one that must not exist yet.
    pub(crate) expected: u64,
    pub(crate) param_type: ParamType,
    /// The new descriptor JSON, or `None` to keep the stored one.
    pub(crate) descriptor: Option<String>,
    /// The new value JSON, or `None` to keep the stored one.
    pub(crate) value: Option<String>,
    pub(crate) op: ChangeOp,
    /// The descriptor JSON the value was validated against: while it is still the stored
    /// one, the write lands whatever the version (a plain set); `None` for a strict
    /// compare-and-set on `expected`.
    pub(crate) guard: Option<String>,
}

/// Why the script refused a batch; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A parameter's version is no longer the expected one.
    Conflict {
        /// The parameter.
        name: String,
        /// Its version now (0: not declared).
        version: u64,
    },
    /// A new name sits under a parameter, or parameters sit under it.
    Tree {
        /// The new name.
        name: String,
        /// The parameter in the way.
        other: String,
    },
}

/// The outcome of a batch: the new versions, or why nothing was written.
pub(crate) type Outcome = std::result::Result<Vec<u64>, Refusal>;

impl Params {
    /// Runs a batch of writes atomically, as this manager's node, stamped now.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] when a stored type differs from the one read (a raw write), or a
    /// Redis failure; refusals the caller handles are in the [`Outcome`].
    pub(crate) async fn write(&self, writes: &[Write], operation: &'static str) -> Result<(Outcome, Timestamp)> {
        let now = Timestamp::now();
        let mut invocation = WRITE_SCRIPT.prepare_invoke();
        invocation
            .key(keys::PARAM_INDEX)
            .key(keys::PARAM_LOG)
            .key(keys::PARAM_SEQ)
            .arg(super::AUDIT_LOG_MAXLEN)
            .arg(self.state.node_id().as_str())
            .arg(now.to_string())
            .arg(writes.len());
        for write in writes {
            invocation
                .key(keys::param(&write.name))
                .arg(write.name.as_str())
                .arg(write.expected)
                .arg(write.param_type.as_str())
                .arg(write.descriptor.as_deref().unwrap_or(""))
                .arg(write.value.as_deref().unwrap_or(""))
                .arg(write.op.as_str())
                .arg(write.guard.as_deref().unwrap_or(""));
        }
        let mark = self.state.switch_mark(operation)?;
        let reply: redis::RedisResult<Vec<u64>> = invocation.invoke_async(&mut self.state.connection()).await;
        match reply {
            Ok(versions) => {
                self.state.no_switch_since(mark, operation)?;
                Ok((Ok(versions), now))
            }
            Err(err) => match refusal(&err)? {
                Some(refusal) => Ok((Err(refusal), now)),
                None => Err(self.state.redis_error(operation, err)),
            },
        }
    }
}

impl Params {
    /// Removes `current` if it still has its version, logging the removal.
    ///
    /// # Errors
    ///
    /// A Redis failure; a version that moved on is the [`Refusal`].
    pub(crate) async fn remove(&self, current: &super::Param) -> Result<std::result::Result<(), Refusal>> {
        let mark = self.state.switch_mark("undeclare_param")?;
        let reply: redis::RedisResult<i64> = REMOVE_SCRIPT
            .key(keys::PARAM_INDEX)
            .key(keys::PARAM_LOG)
            .key(keys::PARAM_SEQ)
            .key(keys::param(&current.name))
            .arg(super::AUDIT_LOG_MAXLEN)
            .arg(self.state.node_id().as_str())
            .arg(Timestamp::now().to_string())
            .arg(current.name.as_str())
            .arg(current.version)
            .invoke_async(&mut self.state.connection())
            .await;
        match reply {
            Ok(_) => {
                self.state.no_switch_since(mark, "undeclare_param")?;
                Ok(Ok(()))
            }
            Err(err) => match refusal(&err)? {
                Some(refusal) => Ok(Err(refusal)),
                None => Err(self.state.redis_error("undeclare_param", err)),
            },
        }
    }
}

/// The refusal an error reply carries, if it is one of ours.
fn refusal(err: &redis::RedisError) -> Result<Option<Refusal>> {
    let detail = err.detail().unwrap_or_default();
    let (name, other) = detail.split_once(' ').unwrap_or((detail, ""));
    match err.code() {
        Some("TATBOT_PARAM_CONFLICT") => Ok(Some(Refusal::Conflict {
            name: name.to_owned(),
            version: other.parse().unwrap_or(0),
        })),
        Some("TATBOT_PARAM_TREE") => Ok(Some(Refusal::Tree {
            name: name.to_owned(),
            other: other.to_owned(),
        })),
        Some("TATBOT_PARAM_TYPE") => Err(Error::Corrupt {
            key: ParamName::new(name).map_or_else(|_| name.to_owned(), |name| keys::param(&name)),
            detail: format!("its stored type {other} differs from its descriptor's"),
        }),
        _ => Ok(None),
    }
}
