//! YAML in and out: a (Hydra) config tree flattened into dotted parameters, and parameters
//! dumped back as a tree.
//!
//! A nested map becomes dotted names (`arms: {goal_time_slow: 2.0}` is `arms.goal_time_slow`),
//! and a key that holds dots is split at them, so a flat file (`arms.goal_time_slow: 2.0`) reads
//! the same; that is what makes a dump load back, whichever shape it has. Hydra's own entries
//! are not parameters and are skipped with a reason: the top-level `defaults` list and `hydra`
//! section, keys written `_like_this_` (`_target_`, `_partial_`...), unfilled mandatory values
//! (`???`) and interpolations (`${...}`).
//!
//! Before parsing, [`bounds::check`] refuses oversized text, deep nesting and unknown tags.
//!
//! Flattening never fails half way on a bad entry: it collects every problem as one line, so a
//! load can report them all at once and apply nothing.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::Value as Json;
use serde_yaml_ng::{Mapping, Value as Yaml};

use crate::error::{Error, Result};
use crate::params::bounds;
use crate::params::value::{ParamName, ParamValue, Prefix, float_text, is_segment};

/// Top-level keys that are Hydra directives, not configuration.
const HYDRA_TOP_LEVEL: [&str; 2] = ["defaults", "hydra"];

/// One value of the file and the parameter name it maps to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Leaf {
    pub(crate) name: ParamName,
    pub(crate) value: Json,
}

/// A config entry that a load leaves alone, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The entry's dotted path (with the load's prefix).
    pub path: String,
    /// Why it is not a parameter value.
    pub reason: String,
}

/// A file read as parameters.
#[derive(Debug, Default)]
pub(crate) struct Flattened {
    /// Values, in file order.
    pub(crate) leaves: Vec<Leaf>,
    /// Entries that are not parameter values.
    pub(crate) skipped: Vec<Skipped>,
    /// Problems, one line each; a load with any applies nothing.
    pub(crate) errors: Vec<String>,
}

/// Reads `text` as a config tree and places it under `prefix`.
///
/// # Errors
///
/// [`Error::InvalidInput`] when `text` breaks a bound of [`bounds::check`] (size, nesting,
/// tags), is not YAML, or its top level is not a map; problems
/// with single entries are collected in [`Flattened::errors`] instead.
pub(crate) fn flatten(text: &str, prefix: &Prefix) -> Result<Flattened> {
    bounds::check(text).map_err(Error::InvalidInput)?;
    let document: Yaml =
        serde_yaml_ng::from_str(text).map_err(|err| Error::InvalidInput(format!("not valid YAML: {err}")))?;
    let mut flattened = Flattened::default();
    let root: Vec<String> = prefix
        .name()
        .map(|name| name.as_str().split('.').map(str::to_owned).collect())
        .unwrap_or_default();
    if let (Some(first), Yaml::Mapping(map)) = (root.first(), &document) {
        refuse_double_prefix(map, first, prefix)?;
    }
    match document {
        Yaml::Null => {}
        Yaml::Mapping(map) => walk(&map, &root, true, &mut flattened),
        _ => {
            return Err(Error::InvalidInput(
                "the YAML document is not a map of parameter names to values".to_owned(),
            ));
        }
    }
    check_duplicates_and_tree(&mut flattened);
    Ok(flattened)
}

/// Refuses to load a file that is already under `prefix` (every top-level key, Hydra's aside,
/// starts with the prefix's first segment, as a `param dump arms` does) with that prefix: it
/// would create `arms.arms.*`, which nobody wants.
fn refuse_double_prefix(map: &Mapping, first: &str, prefix: &Prefix) -> Result<()> {
    let keys: Vec<&str> = map
        .keys()
        .filter_map(Yaml::as_str)
        .filter(|key| !HYDRA_TOP_LEVEL.contains(key))
        .collect();
    let under = |key: &&str| key.split('.').next() == Some(first);
    let all_text = map.keys().all(|key| key.as_str().is_some());
    if keys.is_empty() || !all_text || !keys.iter().all(under) {
        return Ok(());
    }
    Err(Error::InvalidInput(format!(
        "the file is already under {prefix} (its top-level key is {first}); load it without --prefix, which would create {prefix}.{first}.*"
    )))
}

fn walk(map: &Mapping, path: &[String], top_level: bool, out: &mut Flattened) {
    for (key, value) in map {
        let key = match key {
            Yaml::String(text) => text.clone(),
            Yaml::Number(number) => number.to_string(),
            Yaml::Bool(flag) => flag.to_string(),
            _ => {
                out.errors.push(format!("{}: a key that is not text", shown(path)));
                continue;
            }
        };
        let here = joined(path, &key);
        if top_level && HYDRA_TOP_LEVEL.contains(&key.as_str()) {
            out.skip(here, "Hydra directive");
            continue;
        }
        if key.len() >= 2 && key.starts_with('_') && key.ends_with('_') {
            out.skip(here, "Hydra special key");
            continue;
        }
        if !key.split('.').all(is_segment) {
            out.errors.push(format!(
                "{here}: the key {key:?} is not a name segment (letters, digits, '_' and '-')"
            ));
            continue;
        }
        let mut segments = path.to_vec();
        segments.extend(key.split('.').map(str::to_owned));
        match value {
            Yaml::Mapping(inner) if inner.is_empty() => out.skip(here, "an empty map"),
            Yaml::Mapping(inner) => walk(inner, &segments, false, out),
            Yaml::String(text) if text == "???" => out.skip(here, "Hydra mandatory value (???) not filled in"),
            Yaml::String(text) if text.contains("${") => out.skip(here, "Hydra interpolation"),
            value => {
                let name = match ParamName::new(segments.join(".")) {
                    Ok(name) => name,
                    Err(err) => {
                        out.errors.push(err.to_string());
                        continue;
                    }
                };
                match to_json(value) {
                    Ok(value) => out.leaves.push(Leaf { name, value }),
                    Err(rule) => out.errors.push(format!("{name}: {rule}")),
                }
            }
        }
    }
}

impl Flattened {
    fn skip(&mut self, path: String, reason: &str) {
        self.skipped.push(Skipped {
            path,
            reason: reason.to_owned(),
        });
    }
}

/// Rejects a name given twice (nested and flat), and a name under another one (`a` and `a.b`):
/// a parameter is a leaf, so the tree of names always dumps back to YAML.
fn check_duplicates_and_tree(flattened: &mut Flattened) {
    let mut seen = BTreeSet::new();
    let mut unique = Vec::with_capacity(flattened.leaves.len());
    for leaf in flattened.leaves.drain(..) {
        if seen.insert(leaf.name.clone()) {
            unique.push(leaf);
        } else {
            flattened.errors.push(format!("{}: given twice", leaf.name));
        }
    }
    for leaf in &unique {
        if let Some(ancestor) = leaf
            .name
            .ancestors()
            .find(|ancestor| ParamName::new(*ancestor).is_ok_and(|ancestor| seen.contains(&ancestor)))
        {
            flattened.errors.push(format!(
                "{}: cannot be a parameter under the parameter {ancestor}",
                leaf.name
            ));
        }
    }
    flattened.leaves = unique;
}

/// One value written as YAML (`2.5`, `true`, `[1, 2]`) as JSON.
pub(crate) fn parse_scalar(text: &str) -> std::result::Result<Json, String> {
    bounds::check(text)?;
    let value: Yaml = serde_yaml_ng::from_str(text).map_err(|err| format!("{text:?} is not a YAML value: {err}"))?;
    to_json(&value)
}

/// A YAML value as JSON; non-finite floats have no JSON form and are refused.
fn to_json(value: &Yaml) -> std::result::Result<Json, String> {
    Ok(match value {
        Yaml::Null => Json::Null,
        Yaml::Bool(flag) => Json::Bool(*flag),
        Yaml::Number(number) => {
            if let Some(int) = number.as_i64() {
                Json::from(int)
            } else if let Some(unsigned) = number.as_u64() {
                Json::from(unsigned)
            } else {
                let float = number.as_f64().unwrap_or(f64::NAN);
                match serde_json::Number::from_f64(float) {
                    Some(float) => Json::Number(float),
                    None => return Err(format!("{} is not a finite number", float_text(float))),
                }
            }
        }
        Yaml::String(text) => Json::String(text.clone()),
        Yaml::Sequence(items) => Json::Array(items.iter().map(to_json).collect::<std::result::Result<_, _>>()?),
        Yaml::Mapping(map) => {
            let mut object = serde_json::Map::new();
            for (key, value) in map {
                let key = match key {
                    Yaml::String(text) => text.clone(),
                    other => serde_yaml_ng::to_string(other).unwrap_or_default().trim().to_owned(),
                };
                object.insert(key, to_json(value)?);
            }
            Json::Object(object)
        }
        // `bounds::check` refuses these first, with a line number; this keeps a tag from ever
        // being dropped silently.
        Yaml::Tagged(tagged) => return Err(format!("unknown YAML tag {}", tagged.tag)),
    })
}

fn joined(path: &[String], key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{}.{key}", path.join("."))
    }
}

fn shown(path: &[String]) -> String {
    if path.is_empty() {
        "(top level)".to_owned()
    } else {
        path.join(".")
    }
}

/// Parameters as one YAML tree, names split at their dots, in the order given.
///
/// # Errors
///
/// [`Error::Encode`] if the YAML writer fails, which it does not for these values.
pub(crate) fn dump<'a>(params: impl IntoIterator<Item = (&'a ParamName, &'a ParamValue)>) -> Result<String> {
    let mut root = Mapping::new();
    for (name, value) in params {
        let value = serde_yaml_ng::to_value(value).map_err(|err| Error::Encode {
            what: name.to_string(),
            format: "YAML",
            detail: err.to_string(),
        })?;
        insert(&mut root, name.as_str(), value);
    }
    serde_yaml_ng::to_string(&Yaml::Mapping(root)).map_err(|err| Error::Encode {
        what: "parameters".to_owned(),
        format: "YAML",
        detail: err.to_string(),
    })
}

/// Inserts `value` at the dotted `path`, making maps on the way. Should a stored name sit under
/// another one (only a raw write can do that), the rest of the path is kept as one dotted key,
/// which loads back the same.
fn insert(map: &mut Mapping, path: &str, value: Yaml) {
    let Some((head, rest)) = path.split_once('.') else {
        map.insert(Yaml::String(path.to_owned()), value);
        return;
    };
    let slot = map
        .entry(Yaml::String(head.to_owned()))
        .or_insert_with(|| Yaml::Mapping(Mapping::new()));
    match slot {
        Yaml::Mapping(inner) => insert(inner, rest, value),
        _ => {
            map.insert(Yaml::String(path.to_owned()), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn names(flattened: &Flattened) -> Vec<(&str, &Json)> {
        flattened
            .leaves
            .iter()
            .map(|leaf| (leaf.name.as_str(), &leaf.value))
            .collect()
    }

    /// Nested maps become dotted names under the prefix; Hydra's entries are skipped with a reason.
    #[test]
    fn hydra_file() {
        let text = "\
# @package _global_
defaults:
  - base
  - _self_
_target_: tatbot.arms.Arms
goal_time_slow: 2.0
offsets:
  num: 3
  names: [a, b]
ip: ${oc.env:HOST}
needed: ???
nothing: null
";
        let flattened = flatten(text, &Prefix::new("arms").unwrap()).unwrap();
        assert_eq!(
            names(&flattened),
            [
                ("arms.goal_time_slow", &json!(2.0)),
                ("arms.offsets.num", &json!(3)),
                ("arms.offsets.names", &json!(["a", "b"])),
                ("arms.nothing", &json!(null)),
            ]
        );
        let skipped: Vec<(&str, &str)> = flattened
            .skipped
            .iter()
            .map(|skip| (skip.path.as_str(), skip.reason.as_str()))
            .collect();
        assert_eq!(
            skipped,
            [
                ("arms.defaults", "Hydra directive"),
                ("arms._target_", "Hydra special key"),
                ("arms.ip", "Hydra interpolation"),
                ("arms.needed", "Hydra mandatory value (???) not filled in"),
            ]
        );
        assert!(flattened.errors.is_empty(), "{:?}", flattened.errors);
    }

    /// Flat dotted keys read like nested ones; duplicates, bad keys and leaves under leaves are errors.
    #[test]
    fn flat_keys_and_errors() {
        let flattened = flatten("a.b: 1\na:\n  c: 2\n", &Prefix::all()).unwrap();
        assert_eq!(names(&flattened), [("a.b", &json!(1)), ("a.c", &json!(2))]);

        let flattened = flatten(
            "a.b: 1\na:\n  b: 2\nx: 1\nx.y: 2\n\"bad key\": 3\nf: .nan\n",
            &Prefix::all(),
        )
        .unwrap();
        assert_eq!(
            flattened.errors,
            [
                "bad key: the key \"bad key\" is not a name segment (letters, digits, '_' and '-')",
                "f: NaN is not a finite number",
                "a.b: given twice",
                "x.y: cannot be a parameter under the parameter x",
            ]
        );
        assert!(flatten("[1, 2]", &Prefix::all()).is_err());
        assert!(
            flatten("a: [", &Prefix::all())
                .unwrap_err()
                .to_string()
                .contains("not valid YAML")
        );
    }

    /// A dump is a nested tree that flattens back to the same names and values.
    #[test]
    fn dump_round_trip() {
        let params = [
            (ParamName::new("arms.goal_time_slow").unwrap(), ParamValue::Float(2.0)),
            (
                ParamName::new("arms.offsets.names").unwrap(),
                ParamValue::from(vec!["42".to_owned()]),
            ),
            (ParamName::new("arms.tag").unwrap(), ParamValue::from("true")),
        ];
        let text = dump(params.iter().map(|(name, value)| (name, value))).unwrap();
        assert!(text.starts_with("arms:\n  goal_time_slow: 2.0\n"), "{text}");
        let flattened = flatten(&text, &Prefix::all()).unwrap();
        assert_eq!(
            names(&flattened),
            [
                ("arms.goal_time_slow", &json!(2.0)),
                ("arms.offsets.names", &json!(["42"])),
                ("arms.tag", &json!("true")),
            ]
        );
    }
}
