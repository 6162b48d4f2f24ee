//! Parameters: typed, validated, live runtime settings, the parameter-server half of tatbot-state.
//!
//! Robot developers know the ROS 2 model: a parameter is declared with a type, a description,
//! a range and a read-only flag, then read, set, listed, watched, dumped to YAML and loaded from
//! it. [`Params`] gives tatbot that on Redis, plus what ROS 2 lacks: values survive restarts
//! (they live in Redis, persisted with the AOF), every change is in an audit log with its actor,
//! and a write can be a compare-and-set on the parameter's version.
//!
//! # Layout
//!
//! - `value`: [`ParamName`], [`Prefix`], [`ParamType`], [`ParamValue`], [`Descriptor`] and every
//!   validation rule; pure code.
//! - `script`: the one Lua script all writes go through.
//! - `watch`: [`Watch`], the change stream tailed from the audit log, and [`Change`].
//! - `yaml`: Hydra config trees in, dumps out (feature `yaml`, like everything below that
//!   takes or gives YAML: `Param::parse_value`, `dump`, `plan_load`, `load`, `LoadPlan`).
//! - `bounds`: the size, nesting and tag checks a YAML text passes before it is parsed.
//! - this file: [`Params`], the calls, and the types they answer with.
//!
//! # Storage
//!
//! | key | type | content |
//! |---|---|---|
//! | `tatbot:param:{name}` | hash | `type`, `descriptor` (JSON), `value` (JSON), `version`, `actor` (node id), `updated` (timestamp) |
//! | `tatbot:params` | sorted set | every declared name, all scored 0, so `ZRANGEBYLEX` lists a prefix in name order |
//! | `tatbot:param_log` | stream, `MAXLEN ~ 10000` | one entry per change: `seq`, `name`, `type`, `version`, `op`, `actor`, `time`, `old`, `new` |
//! | `tatbot:param_seq` | string (counter) | the `seq` of the newest audit entry |
//!
//! # Invariants
//!
//! - Every write is one run of the write script, which first checks that each parameter still
//!   has the version Rust validated against, then writes all or nothing. Validation happens in
//!   Rust, where the messages are good; the version check makes it hold at the moment of the
//!   write. `set` and `declare` read again and retry when they lose a race; `set_if_version`
//!   reports the loss as [`CasOutcome::Conflict`].
//! - Every write bumps the version by one and appends one audit entry, so the versions in the
//!   log are consecutive per parameter and the `seq` numbers are consecutive overall.
//! - A parameter is a leaf of the name tree: no parameter sits under another (`arms` and
//!   `arms.x` cannot both exist), so any set of parameters dumps to one YAML tree.
//! - A stored value always passes its descriptor: a re-declaration that would break that fails.
//! - The type of a name never changes while it is declared. Names are removed only by
//!   [`Params::undeclare`], an admin operation; a name declared again starts over at version 1.

#[cfg(feature = "yaml")]
mod bounds;
mod script;
mod value;
mod watch;
#[cfg(feature = "yaml")]
mod yaml;

#[cfg(feature = "yaml")]
use std::collections::BTreeSet;

use serde::Serialize;

use crate::decode;
use crate::error::{Error, Result};
use crate::follow::io::oversized_collection;
use crate::ids::NodeId;
use crate::keys;
use crate::manager::{Entry, Lookup, StateManager};
use crate::params::script::{Refusal, Write};
use crate::params::value::from_json;
#[cfg(feature = "yaml")]
use crate::params::value::{Violation, infer_type};
use crate::timestamp::Timestamp;

#[cfg(feature = "yaml")]
pub use bounds::{MAX_LOAD_BYTES, MAX_NESTING};
pub use value::{Descriptor, MAX_LIST_LEN, MAX_NAME_LEN, MAX_STRING_LEN, ParamName, ParamType, ParamValue, Prefix};
pub use watch::{Change, WATCH_BLOCK, Watch};
#[cfg(feature = "yaml")]
pub use yaml::Skipped;

/// `MAXLEN ~` of the audit log.
pub const AUDIT_LOG_MAXLEN: usize = 10_000;
/// How often `set`, `declare` and `load` read again after losing a race before giving up.
const MAX_ATTEMPTS: usize = 64;
/// Parameters per pipelined read.
const READ_BATCH: usize = 1000;
/// Audit entries per `XREVRANGE` when reading history.
const HISTORY_PAGE: usize = 1000;
/// The hash fields every read asks for, in this order.
const FIELDS: [&str; 6] = ["type", "descriptor", "value", "version", "actor", "updated"];

/// What made a change: a declaration, a `set`, or a `load`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    /// A declaration: a new parameter, or a changed descriptor.
    Declare,
    /// [`Params::set`] or [`Params::set_if_version`].
    Set,
    /// A value from `Params::load` (feature `yaml`).
    Load,
    /// [`Params::undeclare`]: the parameter was removed; `new` is the value it had.
    Undeclare,
}

impl ChangeOp {
    /// `declare`, `set` or `load`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Declare => "declare",
            ChangeOp::Set => "set",
            ChangeOp::Load => "load",
            ChangeOp::Undeclare => "undeclare",
        }
    }
}

impl std::str::FromStr for ChangeOp {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<ChangeOp, String> {
        match text {
            "declare" => Ok(ChangeOp::Declare),
            "set" => Ok(ChangeOp::Set),
            "load" => Ok(ChangeOp::Load),
            "undeclare" => Ok(ChangeOp::Undeclare),
            other => Err(format!("unknown change {other:?}")),
        }
    }
}

/// A declared parameter: its descriptor, its value and who last changed it when.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Param {
    /// The name.
    pub name: ParamName,
    /// The current value; always of the descriptor's type and within its rules.
    pub value: ParamValue,
    /// Bumped by every change (value or declaration); the compare-and-set token.
    pub version: u64,
    /// The node that made the last change.
    pub actor: NodeId,
    /// When the last change was made.
    pub updated: Timestamp,
    /// The declaration.
    pub descriptor: Descriptor,
}

impl Param {
    #[cfg(feature = "yaml")]
    /// Reads `text` as a value of this parameter: strings as they are, anything else as YAML
    /// (`2.5`, `true`, `[1, 2]`), coerced to the type and checked against the descriptor.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the parameter and the rule broken.
    pub fn parse_value(&self, text: &str) -> Result<ParamValue> {
        let descriptor = &self.descriptor;
        if descriptor.param_type == ParamType::String {
            return descriptor
                .check(&ParamValue::from(text))
                .map_err(|violation| violation.into_error(&self.name));
        }
        let parsed = yaml::parse_scalar(text).map_err(|rule| Violation::new(rule).into_error(&self.name))?;
        descriptor
            .check_json(&parsed)
            .map_err(|violation| violation.into_error(&self.name))
    }
}

/// The answer of [`Params::set_if_version`].
#[derive(Debug, Clone, PartialEq)]
pub enum CasOutcome {
    /// The version matched and the value is set (boxed: a `Param` is large, a conflict small).
    Applied(Box<Param>),
    /// The version had moved on; nothing was written.
    Conflict {
        /// The parameter's version now.
        version: u64,
    },
}

#[cfg(feature = "yaml")]
/// What a load changes (or, for a dry run, would change).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadPlan {
    /// New parameters and new values, in file order.
    pub changes: Vec<PlannedChange>,
    /// Parameters the file gives their current value.
    pub unchanged: Vec<ParamName>,
    /// Entries that are not parameter values (Hydra's, and undeclared values with no type).
    pub skipped: Vec<Skipped>,
    /// Rules broken, one line each; a load with any applies nothing.
    pub errors: Vec<String>,
}

#[cfg(feature = "yaml")]
/// One change of a [`LoadPlan`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedChange {
    /// The parameter.
    pub name: ParamName,
    /// [`ChangeOp::Declare`] for a new parameter (type inferred), [`ChangeOp::Load`] for a new
    /// value of a declared one.
    pub op: ChangeOp,
    /// Its type.
    #[serde(rename = "type")]
    pub param_type: ParamType,
    /// The current value; `None` for a new parameter.
    pub old: Option<ParamValue>,
    /// The value loaded.
    pub new: ParamValue,
}

/// The parameter server on one Redis: declare, read, set, list, watch, dump and load.
///
/// Cheap to clone; it shares the [`StateManager`]'s connection, and writes are recorded as made
/// by the manager's node.
#[derive(Clone)]
pub struct Params {
    state: StateManager,
}

impl StateManager {
    /// The runtime parameters on the Redis this manager talks to, written as its node.
    pub fn params(&self) -> Params {
        Params { state: self.clone() }
    }
}

impl Params {
    /// Declares a parameter, or confirms an existing declaration; returns it as stored.
    ///
    /// Idempotent: a new parameter starts at the default; an existing one keeps its value (it
    /// survives restarts, which is the point), takes the new descriptor when it differs, and,
    /// when read-only, takes the new default, since only declarations change read-only values.
    /// Nothing is written when nothing differs.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when the descriptor breaks a rule (bounds, default), the name
    /// is declared with another type, the stored value does not fit the new descriptor, or the
    /// name sits under a parameter or has parameters under it; [`Error::Conflict`] when other
    /// writers kept changing it; or a Redis failure.
    pub async fn declare(&self, name: &ParamName, descriptor: &Descriptor) -> Result<Param> {
        let descriptor = descriptor.validated(name)?;
        let descriptor_json = to_json(name, &descriptor)?;
        for _ in 0..MAX_ATTEMPTS {
            let current = self.get(name).await?;
            let (write, value) = match &current {
                None => {
                    let write = Write {
                        name: name.clone(),
                        expected: 0,
                        param_type: descriptor.param_type,
                        descriptor: Some(descriptor_json.clone()),
                        value: Some(descriptor.default.to_json()),
                        op: ChangeOp::Declare,
                        guard: None,
                    };
                    (write, descriptor.default.clone())
                }
                Some(current) => {
                    let stored_type = current.descriptor.param_type;
                    if stored_type != descriptor.param_type {
                        return Err(Error::InvalidInput(format!(
                            "{name}: already declared as {stored_type}, cannot redeclare it as {}",
                            descriptor.param_type
                        )));
                    }
                    let value = if descriptor.read_only {
                        descriptor.default.clone()
                    } else {
                        current.value.clone()
                    };
                    if current.descriptor == descriptor && current.value == value {
                        return Ok(current.clone());
                    }
                    descriptor.check(&value).map_err(|violation| {
                        Error::InvalidInput(format!(
                            "{}, so the stored value does not fit the new declaration; set one that both allow first",
                            violation.message(name)
                        ))
                    })?;
                    let write = Write {
                        name: name.clone(),
                        expected: current.version,
                        param_type: descriptor.param_type,
                        descriptor: Some(descriptor_json.clone()),
                        value: (value != current.value).then(|| value.to_json()),
                        op: ChangeOp::Declare,
                        guard: None,
                    };
                    (write, value)
                }
            };
            match self.write(std::slice::from_ref(&write), "declare_param").await? {
                (Ok(versions), updated) => {
                    tracing::debug!(param = %name, version = versions.first().copied().unwrap_or(0), "parameter declared");
                    return Ok(self.written(name, value, &versions, updated, descriptor.clone()));
                }
                (Err(Refusal::Conflict { .. }), _) => continue,
                (Err(Refusal::Tree { name, other }), _) => return Err(tree_error(&name, &other)),
            }
        }
        Err(contention(name))
    }

    /// Removes a declared parameter: its hash and its index entry, in one step that the audit
    /// log records (op `undeclare`, with the value it had as `new`); returns it as it was.
    ///
    /// An admin operation: the caller must be a Redis user that may run `ACL WHOAMI` (the
    /// `admin` role of `config/redis/users.acl`, or the default user of a server without
    /// ACLs). The `robot` and `viewer` roles are refused before anything is written. That is a
    /// guard against mistakes, not a boundary: the robot role may write `tatbot:*` keys.
    ///
    /// # Errors
    ///
    /// [`Error::ParamNotFound`] when it is not declared, [`Error::PermissionDenied`] for a
    /// user other than an admin, [`Error::Conflict`] when other writers kept changing it, or
    /// a Redis failure.
    pub async fn undeclare(&self, name: &ParamName) -> Result<Param> {
        let _whoami: String = redis::cmd("ACL")
            .arg("WHOAMI")
            .query_async(&mut self.state.connection())
            .await
            .map_err(|err| self.state.redis_error("undeclare_param", err))?;
        for _ in 0..MAX_ATTEMPTS {
            let current = self.require(name).await?;
            match self.remove(&current).await? {
                Ok(()) => {
                    tracing::info!(param = %name, version = current.version, "parameter undeclared");
                    return Ok(current);
                }
                Err(Refusal::Conflict { version: 0, .. }) => return Err(Error::ParamNotFound(name.to_string())),
                Err(_) => continue,
            }
        }
        Err(contention(name))
    }

    /// One parameter, or `None` when it is not declared.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] or [`Error::Corrupt`] naming the key when the stored hash is not what
    /// this module writes, or a Redis failure.
    pub async fn get(&self, name: &ParamName) -> Result<Option<Param>> {
        let mut found = self.get_many(std::slice::from_ref(name)).await?;
        Ok(found.pop().flatten())
    }

    /// Several parameters in two round trips (per 1,000: their fields' lengths, then the fields),
    /// in the order asked; `None` for a name that is not declared.
    ///
    /// # Errors
    ///
    /// As [`Params::get`]; one bad hash fails the call.
    pub async fn get_many(&self, names: &[ParamName]) -> Result<Vec<Option<Param>>> {
        self.read_many(names)
            .await?
            .into_iter()
            .map(Lookup::into_result)
            .collect()
    }

    /// Several parameters, each decoded or with the reason it did not decode;
    /// [`Lookup::Missing`] for a name that is not declared.
    ///
    /// The fields' lengths come first (`HSTRLEN`): a parameter with a field over the size bound
    /// is that parameter's error and its hash is not read, so that another client's 50 MB
    /// value is not sent with every read.
    async fn read_many(&self, names: &[ParamName]) -> Result<Vec<Lookup<Param>>> {
        let mut params = Vec::with_capacity(names.len());
        let mut connection = self.state.connection();
        for chunk in names.chunks(READ_BATCH) {
            let mut lengths = redis::pipe();
            lengths.ignore_errors();
            for name in chunk {
                for field in FIELDS {
                    lengths.cmd("HSTRLEN").arg(keys::param(name)).arg(field);
                }
            }
            let lengths: Vec<redis::RedisResult<redis::Value>> = lengths
                .query_async(&mut connection)
                .await
                .map_err(|err| self.state.redis_error("get_params", err))?;
            let oversized: Vec<Option<Error>> = chunk
                .iter()
                .zip(lengths.chunks(FIELDS.len()))
                .map(|(name, lengths)| oversized_field(name, lengths))
                .collect();
            let mut pipe = redis::pipe();
            // A key of the wrong type (WRONGTYPE) is that parameter's error, not the call's.
            pipe.ignore_errors();
            for (name, too_large) in chunk.iter().zip(&oversized) {
                if too_large.is_none() {
                    pipe.cmd("HMGET").arg(keys::param(name)).arg(&FIELDS);
                }
            }
            let replies: Vec<redis::RedisResult<redis::Value>> = if oversized.iter().all(Option::is_some) {
                Vec::new()
            } else {
                pipe.query_async(&mut connection)
                    .await
                    .map_err(|err| self.state.redis_error("get_params", err))?
            };
            let mut replies = replies.into_iter();
            for (name, too_large) in chunk.iter().zip(oversized) {
                params.push(match too_large {
                    Some(err) => Lookup::Corrupt(err),
                    None => Lookup::from(
                        read_fields(name, replies.next().unwrap_or(Ok(redis::Value::Nil)))
                            .and_then(|fields| decode(name, fields)),
                    ),
                });
            }
        }
        Ok(params)
    }

    /// Sets a value, validated against the parameter's descriptor; returns the parameter as
    /// stored. A write is made even when the value is unchanged, so it always bumps the version.
    ///
    /// The last writer wins: the write lands as long as the descriptor it was validated against
    /// is still the stored one, whatever others set meanwhile, so racing sets all land. Use
    /// [`Params::set_if_version`] to refuse a write over a value you have not seen.
    ///
    /// # Errors
    ///
    /// [`Error::ParamNotFound`] for an undeclared parameter, [`Error::InvalidInput`] naming the
    /// parameter and the rule broken (read-only, type, min, max, step, size),
    /// [`Error::Conflict`] when other writers kept changing it, or a Redis failure.
    pub async fn set(&self, name: &ParamName, value: &ParamValue) -> Result<Param> {
        for _ in 0..MAX_ATTEMPTS {
            let current = self.require(name).await?;
            if let Ok(param) = self.set_at(&current, value, true).await? {
                return Ok(param);
            }
        }
        Err(contention(name))
    }

    /// Sets a value only if the parameter still has `version` (compare-and-set).
    ///
    /// # Errors
    ///
    /// As [`Params::set`]; a version that moved on is [`CasOutcome::Conflict`], not an error.
    pub async fn set_if_version(&self, name: &ParamName, value: &ParamValue, version: u64) -> Result<CasOutcome> {
        let current = self.require(name).await?;
        if current.version != version {
            return Ok(CasOutcome::Conflict {
                version: current.version,
            });
        }
        Ok(match self.set_at(&current, value, false).await? {
            Ok(param) => CasOutcome::Applied(Box::new(param)),
            Err(version) => CasOutcome::Conflict { version },
        })
    }

    /// Validates `value` against `current` and writes it if the version is still `current`'s,
    /// or, when `guarded`, if the descriptor still is; the inner `Err` is the version found
    /// instead.
    async fn set_at(
        &self,
        current: &Param,
        value: &ParamValue,
        guarded: bool,
    ) -> Result<std::result::Result<Param, u64>> {
        let name = &current.name;
        if current.descriptor.read_only {
            return Err(read_only(name));
        }
        let value = current
            .descriptor
            .check(value)
            .map_err(|violation| violation.into_error(name))?;
        let write = Write {
            name: name.clone(),
            expected: current.version,
            param_type: current.descriptor.param_type,
            descriptor: None,
            value: Some(value.to_json()),
            op: ChangeOp::Set,
            guard: guarded.then(|| to_json(name, &current.descriptor)).transpose()?,
        };
        match self.write(&[write], "set_param").await? {
            (Ok(versions), updated) => {
                tracing::debug!(param = %name, value = %value, "parameter set");
                Ok(Ok(self.written(
                    name,
                    value,
                    &versions,
                    updated,
                    current.descriptor.clone(),
                )))
            }
            (Err(Refusal::Conflict { version, .. }), _) => Ok(Err(version)),
            (Err(Refusal::Tree { name, other }), _) => Err(tree_error(&name, &other)),
        }
    }

    /// Every parameter at or under `prefix`, by name.
    ///
    /// # Errors
    ///
    /// As [`Params::get_many`]: one corrupt parameter fails the call, which is what a dump
    /// wants. Views use [`Params::list_entries`], which reports it in its entry instead.
    pub async fn list(&self, prefix: &Prefix) -> Result<Vec<Param>> {
        self.list_entries(prefix)
            .await?
            .into_iter()
            .map(|entry| entry.value)
            .collect()
    }

    /// Every parameter at or under `prefix`, by name, each decoded or with the reason it did
    /// not decode (wrong type, a field over the size bound, a value not of its type);
    /// [`Entry::id`] is the name.
    ///
    /// # Errors
    ///
    /// A Redis failure, or [`Error::Corrupt`] naming the index when it has more than 20,000
    /// names or takes more than 8 MiB in Redis (asked first, with `ZCARD` and `MEMORY USAGE`;
    /// such an index is not read); a corrupt parameter is reported in its [`Entry`].
    pub async fn list_entries(&self, prefix: &Prefix) -> Result<Vec<Entry<Param>>> {
        let names = self.names(prefix).await?;
        let params = self.read_many(&names).await?;
        Ok(names
            .into_iter()
            .zip(params)
            .filter_map(|(name, param)| {
                let value = match param {
                    Lookup::Found(param) => Ok(param),
                    Lookup::Missing => return None,
                    Lookup::Corrupt(err) => Err(err),
                };
                Some(Entry {
                    key: keys::param(&name),
                    id: name.to_string(),
                    value,
                })
            })
            .collect())
    }

    /// The declared names at or under `prefix`, in name order.
    async fn names(&self, prefix: &Prefix) -> Result<Vec<ParamName>> {
        // Every member scores 0, so the set is ordered by name; a name's descendants lie between
        // "name." and "name/" ('/' follows '.'), and siblings such as "name-x" that fall inside
        // the range are dropped by the filter below.
        let (min, max) = match prefix.name() {
            None => ("-".to_owned(), "+".to_owned()),
            Some(name) => (format!("[{name}"), format!("({name}/")),
        };
        let mut connection = self.state.connection();
        if let Some(detail) = oversized_collection(&mut connection, keys::PARAM_INDEX, "ZCARD")
            .await
            .map_err(|err| self.state.redis_error("list_params", err))?
        {
            return Err(Error::Corrupt {
                key: keys::PARAM_INDEX.to_owned(),
                detail,
            });
        }
        // Bytes: another client's member that is not text must not fail the whole listing.
        let members: Vec<Vec<u8>> = redis::cmd("ZRANGEBYLEX")
            .arg(keys::PARAM_INDEX)
            .arg(min)
            .arg(max)
            .query_async(&mut connection)
            .await
            .map_err(|err| self.state.redis_error("list_params", err))?;
        Ok(members
            .into_iter()
            .filter_map(|member| {
                let member = String::from_utf8_lossy(&member);
                match ParamName::new(member.as_ref()) {
                    Ok(name) => Some(name),
                    Err(err) => {
                        // Debug-quoted: another client's control characters stay escaped.
                        tracing::warn!(key = keys::PARAM_INDEX, member = ?member, error = %err, "skipping a bad name in the parameter index");
                        None
                    }
                }
            })
            .filter(|name| prefix.matches(name))
            .collect())
    }

    #[cfg(feature = "yaml")]
    /// The values at or under `prefix` as one YAML tree (`arms: {goal_time_slow: 2.0}`), which
    /// [`Params::load`] reads back.
    ///
    /// # Errors
    ///
    /// As [`Params::list`].
    pub async fn dump(&self, prefix: &Prefix) -> Result<String> {
        let params = self.list(prefix).await?;
        yaml::dump(params.iter().map(|param| (&param.name, &param.value)))
    }

    #[cfg(feature = "yaml")]
    /// What loading `text` under `prefix` would change, without changing anything (a dry run).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when `text` is not a YAML map, or a Redis failure; broken rules
    /// are listed in [`LoadPlan::errors`].
    pub async fn plan_load(&self, text: &str, prefix: &Prefix) -> Result<LoadPlan> {
        Ok(self.plan(text, prefix).await?.0)
    }

    #[cfg(feature = "yaml")]
    /// Loads a YAML tree (a dump, or a Hydra config) under `prefix`, all or nothing: every value
    /// is validated first and then everything is applied in one atomic script, or nothing is.
    ///
    /// A value of a declared parameter must pass its descriptor; a name that is not declared
    /// is declared with the type of its value (see [`LoadPlan::skipped`] for what has none).
    /// Parameters whose value does not change are not written.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] listing every rule broken, separated by `; `, and nothing is
    /// changed; [`Error::Conflict`] when other writers kept changing the parameters; or a
    /// Redis failure.
    pub async fn load(&self, text: &str, prefix: &Prefix) -> Result<LoadPlan> {
        for _ in 0..MAX_ATTEMPTS {
            let (plan, writes) = self.plan(text, prefix).await?;
            if !plan.errors.is_empty() {
                return Err(Error::InvalidInput(plan.errors.join("; ")));
            }
            if writes.is_empty() {
                return Ok(plan);
            }
            // A refusal means another writer got in between: plan again from what is stored now.
            if let (Ok(_), _) = self.write(&writes, "load_params").await? {
                tracing::debug!(changes = plan.changes.len(), "parameters loaded");
                return Ok(plan);
            }
        }
        Err(Error::Conflict(format!(
            "parameters kept changing while loading ({MAX_ATTEMPTS} attempts); try again"
        )))
    }

    #[cfg(feature = "yaml")]
    async fn plan(&self, text: &str, prefix: &Prefix) -> Result<(LoadPlan, Vec<Write>)> {
        let flattened = yaml::flatten(text, prefix)?;
        let names: Vec<ParamName> = flattened.leaves.iter().map(|leaf| leaf.name.clone()).collect();
        let current = self.get_many(&names).await?;
        let declared: BTreeSet<ParamName> = if current.iter().any(Option::is_none) {
            self.names(&Prefix::all()).await?.into_iter().collect()
        } else {
            BTreeSet::new()
        };
        let mut plan = LoadPlan {
            skipped: flattened.skipped,
            errors: flattened.errors,
            ..LoadPlan::default()
        };
        let mut writes = Vec::new();
        for (leaf, current) in flattened.leaves.into_iter().zip(current) {
            let name = leaf.name;
            match current {
                Some(current) => match current.descriptor.check_json(&leaf.value) {
                    Err(violation) => plan.errors.push(violation.message(&name)),
                    Ok(value) if value == current.value => plan.unchanged.push(name),
                    Ok(_) if current.descriptor.read_only => plan.errors.push(read_only(&name).to_string()),
                    Ok(value) => {
                        writes.push(Write {
                            name: name.clone(),
                            expected: current.version,
                            param_type: current.descriptor.param_type,
                            descriptor: None,
                            value: Some(value.to_json()),
                            op: ChangeOp::Load,
                            guard: None,
                        });
                        plan.changes.push(PlannedChange {
                            name,
                            op: ChangeOp::Load,
                            param_type: current.descriptor.param_type,
                            old: Some(current.value),
                            new: value,
                        });
                    }
                },
                None => {
                    let param_type = match infer_type(&leaf.value) {
                        Ok(param_type) => param_type,
                        Err(reason) => {
                            plan.skipped.push(Skipped {
                                path: name.to_string(),
                                reason: format!("not declared, and {reason}"),
                            });
                            continue;
                        }
                    };
                    let descriptor = match from_json(&leaf.value, param_type)
                        .map_err(|violation| violation.into_error(&name))
                        .and_then(|value| Descriptor::new(value).validated(&name))
                    {
                        Ok(descriptor) => descriptor,
                        Err(err) => {
                            plan.errors.push(err.report().to_string());
                            continue;
                        }
                    };
                    let above = name
                        .ancestors()
                        .find(|ancestor| ParamName::new(*ancestor).is_ok_and(|ancestor| declared.contains(&ancestor)));
                    let below = declared.iter().find(|other| other.is_under(&name));
                    if let Some(other) = above.or(below.map(ParamName::as_str)) {
                        plan.errors.push(tree_error(name.as_str(), other).to_string());
                        continue;
                    }
                    writes.push(Write {
                        name: name.clone(),
                        expected: 0,
                        param_type,
                        descriptor: Some(to_json(&name, &descriptor)?),
                        value: Some(descriptor.default.to_json()),
                        op: ChangeOp::Declare,
                        guard: None,
                    });
                    plan.changes.push(PlannedChange {
                        name,
                        op: ChangeOp::Declare,
                        param_type,
                        old: None,
                        new: descriptor.default,
                    });
                }
            }
        }
        Ok((plan, writes))
    }

    /// The newest `count` changes at or under `prefix` from the audit log, oldest first.
    ///
    /// An entry that does not decode is skipped with a warning.
    ///
    /// # Errors
    ///
    /// A Redis failure.
    pub async fn history(&self, prefix: &Prefix, count: usize) -> Result<Vec<Change>> {
        let mut changes = Vec::new();
        let mut end = "+".to_owned();
        while changes.len() < count {
            let page: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
                .arg(keys::PARAM_LOG)
                .arg(&end)
                .arg("-")
                .arg("COUNT")
                .arg(HISTORY_PAGE)
                .query_async(&mut self.state.connection())
                .await
                .map_err(|err| self.state.redis_error("param_history", err))?;
            for entry in &page.ids {
                match watch::decode(entry) {
                    Ok(change) if prefix.matches(&change.name) => changes.push(change),
                    Ok(_) => {}
                    Err(err) => tracing::warn!(entry = %entry.id, error = %err, "skipping a bad audit entry"),
                }
                if changes.len() == count {
                    break;
                }
            }
            match page.ids.last() {
                Some(last) if page.ids.len() == HISTORY_PAGE => end = format!("({}", last.id),
                _ => break,
            }
        }
        changes.reverse();
        Ok(changes)
    }

    /// Starts watching changes at or under `prefix`: every change committed after this returns
    /// is delivered once, in order (see [`Watch`]).
    ///
    /// # Errors
    ///
    /// Redis could not be reached.
    pub async fn watch(&self, prefix: &Prefix) -> Result<Watch> {
        Watch::open(&self.state, prefix.clone()).await
    }

    /// The parameter, or the "no such parameter" error.
    async fn require(&self, name: &ParamName) -> Result<Param> {
        match self.get(name).await? {
            Some(param) => Ok(param),
            None => Err(Error::ParamNotFound(name.to_string())),
        }
    }

    /// The parameter as a single write just stored it.
    fn written(
        &self,
        name: &ParamName,
        value: ParamValue,
        versions: &[u64],
        updated: Timestamp,
        descriptor: Descriptor,
    ) -> Param {
        Param {
            name: name.clone(),
            value,
            version: versions.first().copied().unwrap_or(0),
            actor: self.state.node_id().clone(),
            updated,
            descriptor,
        }
    }
}

/// The error of the first of `name`'s [`FIELDS`] whose length (from `HSTRLEN`, in order) is
/// over the size bound; `None` when none is (or the key is not a hash: `HMGET` tells).
fn oversized_field(name: &ParamName, lengths: &[redis::RedisResult<redis::Value>]) -> Option<Error> {
    FIELDS.iter().zip(lengths).find_map(|(field, length)| {
        let Ok(redis::Value::Int(length)) = length else {
            return None;
        };
        let length = usize::try_from(*length).ok()?;
        (length > crate::model::MAX_DOCUMENT_BYTES)
            .then(|| decode::too_large(&keys::param(name), &format!("field {field}"), length))
    })
}

/// The fields of one `HMGET` reply (run with `ignore_errors`), each held to the size bound.
fn read_fields(name: &ParamName, reply: redis::RedisResult<redis::Value>) -> Result<Vec<Option<String>>> {
    let key = keys::param(name);
    let values = match reply {
        Ok(redis::Value::Array(values)) => values,
        Ok(_) => {
            return Err(Error::Corrupt {
                key,
                detail: "HMGET answered something other than a list".to_owned(),
            });
        }
        Err(err) if decode::is_wrong_type(&err) => {
            return Err(Error::Corrupt {
                key,
                detail: "the key is not a hash".to_owned(),
            });
        }
        Err(err) => return Err(Error::from_redis("get_params", err)),
    };
    FIELDS
        .iter()
        .zip(values)
        .map(|(field, value)| decode::field_text(&key, field, Ok(value)).transpose())
        .collect()
}

/// Decodes one parameter hash read with [`FIELDS`]; `None` when it has no version (not declared).
fn decode(name: &ParamName, fields: Vec<Option<String>>) -> Result<Option<Param>> {
    let key = keys::param(name);
    let corrupt = |detail: String| Error::Corrupt {
        key: key.clone(),
        detail,
    };
    let Ok([stored_type, descriptor, value, version, actor, updated]) = <[Option<String>; 6]>::try_from(fields) else {
        return Err(corrupt("HMGET answered the wrong number of fields".to_owned()));
    };
    let Some(version) = version else {
        return Ok(None);
    };
    let missing = |field: &str| corrupt(format!("no {field} field"));
    let descriptor: Descriptor =
        serde_json::from_str(&descriptor.ok_or_else(|| missing("descriptor"))?).map_err(|source| Error::Decode {
            key: key.clone(),
            what: "parameter descriptor",
            source,
        })?;
    if stored_type.as_deref() != Some(descriptor.param_type.as_str()) {
        return Err(corrupt(format!(
            "type field {stored_type:?} differs from the descriptor's {}",
            descriptor.param_type
        )));
    }
    let value: serde_json::Value =
        serde_json::from_str(&value.ok_or_else(|| missing("value"))?).map_err(|source| Error::Decode {
            key: key.clone(),
            what: "parameter value",
            source,
        })?;
    let value = from_json(&value, descriptor.param_type).map_err(|violation| corrupt(violation.message(name)))?;
    let updated = updated.ok_or_else(|| missing("updated"))?;
    Ok(Some(Param {
        name: name.clone(),
        value,
        version: version
            .parse()
            .map_err(|_| corrupt(format!("version {version:?} is not a number")))?,
        actor: NodeId::new(actor.ok_or_else(|| missing("actor"))?).map_err(|err| corrupt(err.to_string()))?,
        updated: Timestamp::parse(&updated).map_err(corrupt)?,
        descriptor,
    }))
}

fn to_json(name: &ParamName, descriptor: &Descriptor) -> Result<String> {
    serde_json::to_string(descriptor).map_err(|source| Error::Decode {
        key: keys::param(name),
        what: "parameter descriptor",
        source,
    })
}

fn read_only(name: &ParamName) -> Error {
    Error::InvalidInput(format!("{name}: is read-only; only a new declaration changes it"))
}

fn contention(name: &ParamName) -> Error {
    Error::Conflict(format!(
        "{name}: changed by others {MAX_ATTEMPTS} times while this write was validated; try again"
    ))
}

fn tree_error(name: &str, other: &str) -> Error {
    let message = if name.strip_prefix(other).is_some_and(|rest| rest.starts_with('.')) {
        format!("{name}: cannot be declared under the parameter {other} (a parameter has no parameters under it)")
    } else {
        format!("{name}: cannot be declared because the parameter {other} is under it")
    };
    Error::InvalidInput(message)
}

#[cfg(test)]
mod tests {
    use tatbot_state_testkit::RedisServer;

    use super::*;
    use crate::{Endpoint, ManagerConfig, StateManager};

    async fn params(server: &RedisServer, node: &str) -> Params {
        let config = ManagerConfig::new(Endpoint::new(server.host(), server.port()), NodeId::new(node).unwrap());
        StateManager::connect(config).await.unwrap().params()
    }

    /// A plain set validated against the stored descriptor lands even when others set the
    /// value after it was read; a compare-and-set does not, and neither does a plain set once
    /// the descriptor it was validated against was replaced.
    #[tokio::test]
    async fn a_plain_set_is_voided_by_a_new_descriptor_not_by_a_new_value() {
        let server = RedisServer::start();
        let (hog, eek) = (params(&server, "hog").await, params(&server, "eek").await);
        let goal = ParamName::new("arms.goal_time_slow").unwrap();
        hog.declare(&goal, &Descriptor::new(1.0).range(0.0, 1000.0))
            .await
            .unwrap();
        let stale = hog.require(&goal).await.unwrap();
        eek.set(&goal, &ParamValue::Float(2.0)).await.unwrap();

        assert_eq!(
            hog.set_at(&stale, &ParamValue::Float(3.0), false)
                .await
                .unwrap()
                .unwrap_err(),
            2
        );
        let landed = hog
            .set_at(&stale, &ParamValue::Float(500.0), true)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((landed.version, landed.value.clone()), (3, ParamValue::Float(500.0)));
        assert_eq!(hog.get(&goal).await.unwrap().unwrap().version, 3);

        eek.set(&goal, &ParamValue::Float(5.0)).await.unwrap();
        eek.declare(&goal, &Descriptor::new(1.0).range(0.0, 10.0))
            .await
            .unwrap();
        assert_eq!(
            hog.set_at(&stale, &ParamValue::Float(500.0), true)
                .await
                .unwrap()
                .unwrap_err(),
            5
        );
        let stored = hog.get(&goal).await.unwrap().unwrap();
        assert_eq!((stored.version, stored.value), (5, ParamValue::Float(5.0)));
        let history = hog.history(&Prefix::all(), 100).await.unwrap();
        let versions: Vec<u64> = history.iter().map(|change| change.version).collect();
        assert_eq!(versions, [1, 2, 3, 4, 5]);
    }
}
