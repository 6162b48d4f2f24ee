//! Parameter names, types, values and descriptors, and every validation rule; no Redis here.
//!
//! A [`ParamName`] is a dotted path (`arms.goal_time_slow`) checked where it is made, so a name
//! can never widen a pattern or reach into another key: segments of `[A-Za-z0-9_-]`, dots
//! between them, at most [`MAX_NAME_LEN`] bytes. A dot never appears inside a segment, which is
//! what lets a YAML tree and a dotted name map onto each other one to one.
//!
//! A [`ParamValue`] is always of one [`ParamType`]; values coming from outside (JSON, YAML, the
//! command line, a caller's [`ParamValue`] of a neighbouring type) are *coerced* to the declared
//! type first, which accepts only the lossless cases (an int where a float is declared, an
//! empty list for any list type), and then *checked* against the [`Descriptor`]: finite, within
//! the size limits, `min`, `max`, `step`. Every rule that fails is reported as one line that
//! names the parameter and the rule (`arms.goal_time_slow: 9.5 is above the maximum 5.0`).
//!
//! Numeric bounds are `f64`. For int parameters they must be integers within ±2^53, where
//! `f64` is exact, and are compared as `i64`, so a large int is never rounded past a bound.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
#[cfg(feature = "yaml")]
pub(crate) use crate::ids::is_segment;
pub use crate::ids::{MAX_NAME_LEN, ParamName};

/// The longest string value (or list element) we accept, in bytes.
pub const MAX_STRING_LEN: usize = 4096;
/// The most elements a list value may hold.
pub const MAX_LIST_LEN: usize = 1024;
/// 2^53: every integer up to this magnitude is exact in an `f64`.
const MAX_EXACT_INT: f64 = 9_007_199_254_740_992.0;
/// Relative tolerance of the float step grid, for decimal steps such as 0.1 that `f64` rounds.
const STEP_TOLERANCE: f64 = 1e-9;

/// Which parameters a listing, dump, watch or history covers: all, or one name and everything
/// under it (`arms` covers `arms` and `arms.goal_time_slow`, not `arms2`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Prefix(Option<ParamName>);

impl Prefix {
    /// Every parameter.
    pub fn all() -> Prefix {
        Prefix(None)
    }

    /// The parameters at or under `text`; an empty `text` means all, a trailing dot is ignored.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidId`] when `text` is not a valid parameter name.
    pub fn new(text: &str) -> Result<Prefix> {
        let text = text.strip_suffix('.').unwrap_or(text);
        if text.is_empty() {
            return Ok(Prefix::all());
        }
        Ok(Prefix(Some(ParamName::new(text)?)))
    }

    /// The name at the top of the prefix, `None` for all.
    pub fn name(&self) -> Option<&ParamName> {
        self.0.as_ref()
    }

    /// True when `name` is the prefix itself or lies under it.
    pub fn matches(&self, name: &ParamName) -> bool {
        match &self.0 {
            None => true,
            Some(prefix) => name == prefix || name.is_under(prefix),
        }
    }
}

impl From<ParamName> for Prefix {
    fn from(name: ParamName) -> Prefix {
        Prefix(Some(name))
    }
}

/// The prefix's name, or nothing for all.
impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => Ok(()),
            Some(name) => f.write_str(name.as_str()),
        }
    }
}

/// The type of a parameter: a scalar, or a list of one scalar type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ParamType {
    /// `true` or `false`.
    #[serde(rename = "bool")]
    Bool,
    /// A 64-bit signed integer.
    #[serde(rename = "int")]
    Int,
    /// A finite 64-bit float.
    #[serde(rename = "float")]
    Float,
    /// UTF-8 text.
    #[serde(rename = "string")]
    String,
    /// A list of bools.
    #[serde(rename = "bool[]")]
    BoolList,
    /// A list of ints.
    #[serde(rename = "int[]")]
    IntList,
    /// A list of floats.
    #[serde(rename = "float[]")]
    FloatList,
    /// A list of strings.
    #[serde(rename = "string[]")]
    StringList,
}

impl ParamType {
    /// The name used on the wire and in the CLI: `bool`, `int`, `float`, `string`, `int[]`...
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::Bool => "bool",
            ParamType::Int => "int",
            ParamType::Float => "float",
            ParamType::String => "string",
            ParamType::BoolList => "bool[]",
            ParamType::IntList => "int[]",
            ParamType::FloatList => "float[]",
            ParamType::StringList => "string[]",
        }
    }

    /// The type of one element: the type itself for scalars.
    pub fn element(self) -> ParamType {
        match self {
            ParamType::BoolList => ParamType::Bool,
            ParamType::IntList => ParamType::Int,
            ParamType::FloatList => ParamType::Float,
            ParamType::StringList => ParamType::String,
            scalar => scalar,
        }
    }

    /// True for the list types.
    pub fn is_list(self) -> bool {
        self.element() != self
    }

    /// True when `min`, `max` and `step` apply (ints, floats and lists of them).
    pub fn is_numeric(self) -> bool {
        matches!(self.element(), ParamType::Int | ParamType::Float)
    }

    /// "a float", "a list of ints": for messages.
    fn described(self) -> &'static str {
        match self {
            ParamType::Bool => "a bool",
            ParamType::Int => "an int",
            ParamType::Float => "a float",
            ParamType::String => "a string",
            ParamType::BoolList => "a list of bools",
            ParamType::IntList => "a list of ints",
            ParamType::FloatList => "a list of floats",
            ParamType::StringList => "a list of strings",
        }
    }

    #[cfg(feature = "yaml")]
    /// The list type of a scalar type (the list type itself for lists).
    fn list_of(self) -> ParamType {
        match self {
            ParamType::Bool => ParamType::BoolList,
            ParamType::Int => ParamType::IntList,
            ParamType::Float => ParamType::FloatList,
            ParamType::String => ParamType::StringList,
            list => list,
        }
    }
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ParamType {
    type Err = Error;
    fn from_str(text: &str) -> Result<ParamType> {
        let all = [
            ParamType::Bool,
            ParamType::Int,
            ParamType::Float,
            ParamType::String,
            ParamType::BoolList,
            ParamType::IntList,
            ParamType::FloatList,
            ParamType::StringList,
        ];
        match all.into_iter().find(|param_type| param_type.as_str() == text) {
            Some(param_type) => Ok(param_type),
            None => Err(Error::InvalidInput(format!(
                "unknown parameter type {text:?}: use bool, int, float, string, or one of those with []"
            ))),
        }
    }
}

/// A parameter value; it serializes as plain JSON or YAML (`2.0`, `[1, 2]`, `"fast"`).
///
/// Deserializing guesses the variant from the data (`2` is an int, `2.0` a float, `[]` a list
/// of bools); stored values are instead coerced to their declared type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// A bool.
    Bool(bool),
    /// An int.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    String(String),
    /// A list of bools.
    BoolList(Vec<bool>),
    /// A list of ints.
    IntList(Vec<i64>),
    /// A list of floats.
    FloatList(Vec<f64>),
    /// A list of strings.
    StringList(Vec<String>),
}

impl ParamValue {
    /// The type of this value.
    pub fn param_type(&self) -> ParamType {
        match self {
            ParamValue::Bool(_) => ParamType::Bool,
            ParamValue::Int(_) => ParamType::Int,
            ParamValue::Float(_) => ParamType::Float,
            ParamValue::String(_) => ParamType::String,
            ParamValue::BoolList(_) => ParamType::BoolList,
            ParamValue::IntList(_) => ParamType::IntList,
            ParamValue::FloatList(_) => ParamType::FloatList,
            ParamValue::StringList(_) => ParamType::StringList,
        }
    }

    /// The bool, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            ParamValue::Bool(value) => Some(*value),
            _ => None,
        }
    }

    /// The int, if this is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            ParamValue::Int(value) => Some(*value),
            _ => None,
        }
    }

    /// The float, if this is a float (or an int, converted).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            ParamValue::Float(value) => Some(*value),
            // Ints above 2^53 round here, as any int-to-float conversion does.
            ParamValue::Int(value) => Some(int_to_float(*value)),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            ParamValue::String(value) => Some(value),
            _ => None,
        }
    }

    /// The value as JSON text, compact (`2.0`, `[1,2]`, `"fast"`): the stored form.
    pub fn to_json(&self) -> String {
        // Serializing these variants cannot fail; a non-finite float (never stored, since
        // checking rejects it) becomes `null`.
        serde_json::to_string(self).unwrap_or_else(|_| "null".to_owned())
    }

    /// "the float 2.5", "a list of ints": for messages.
    fn described(&self) -> String {
        match self {
            ParamValue::Bool(value) => format!("the bool {value}"),
            ParamValue::Int(value) => format!("the int {value}"),
            ParamValue::Float(value) => format!("the float {}", float_text(*value)),
            ParamValue::String(value) => format!("the string {}", quoted(value)),
            list => list.param_type().described().to_owned(),
        }
    }
}

/// Compact JSON, as stored (`2.0`, `[1,2]`, `"fast"`).
impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

impl From<bool> for ParamValue {
    fn from(value: bool) -> ParamValue {
        ParamValue::Bool(value)
    }
}

impl From<i64> for ParamValue {
    fn from(value: i64) -> ParamValue {
        ParamValue::Int(value)
    }
}

impl From<f64> for ParamValue {
    fn from(value: f64) -> ParamValue {
        ParamValue::Float(value)
    }
}

impl From<&str> for ParamValue {
    fn from(value: &str) -> ParamValue {
        ParamValue::String(value.to_owned())
    }
}

impl From<String> for ParamValue {
    fn from(value: String) -> ParamValue {
        ParamValue::String(value)
    }
}

impl From<Vec<bool>> for ParamValue {
    fn from(value: Vec<bool>) -> ParamValue {
        ParamValue::BoolList(value)
    }
}

impl From<Vec<i64>> for ParamValue {
    fn from(value: Vec<i64>) -> ParamValue {
        ParamValue::IntList(value)
    }
}

impl From<Vec<f64>> for ParamValue {
    fn from(value: Vec<f64>) -> ParamValue {
        ParamValue::FloatList(value)
    }
}

impl From<Vec<String>> for ParamValue {
    fn from(value: Vec<String>) -> ParamValue {
        ParamValue::StringList(value)
    }
}

/// A rule a value or a descriptor broke: the message, and the list element it is about.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Violation {
    /// The list element, when the rule is about one.
    pub(crate) index: Option<usize>,
    /// The rule, as a sentence fragment: `9.5 is above the maximum 5.0`.
    pub(crate) rule: String,
}

impl Violation {
    pub(crate) fn new(rule: impl Into<String>) -> Violation {
        Violation {
            index: None,
            rule: rule.into(),
        }
    }

    fn at(mut self, index: usize) -> Violation {
        self.index = Some(index);
        self
    }

    /// The one-line message: `{name}: {rule}` or `{name}[{index}]: {rule}`.
    pub(crate) fn message(&self, name: &ParamName) -> String {
        match self.index {
            Some(index) => format!("{name}[{index}]: {}", self.rule),
            None => format!("{name}: {}", self.rule),
        }
    }

    /// The message as an [`Error::InvalidInput`].
    pub(crate) fn into_error(self, name: &ParamName) -> Error {
        Error::InvalidInput(self.message(name))
    }
}

/// The declaration of a parameter: its type, description, bounds, read-only flag and default.
///
/// Build one with [`Descriptor::new`] and the chained setters:
/// `Descriptor::new(2.0).description("slow move time, s").range(0.1, 5.0)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawDescriptor")]
pub struct Descriptor {
    /// The type every value must have.
    #[serde(rename = "type")]
    pub param_type: ParamType,
    /// What the parameter does, for people.
    pub description: String,
    /// Smallest allowed number (each element, for lists); numeric types only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest allowed number (each element, for lists); numeric types only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Allowed numbers are `min + k * step` (or `k * step` without a min), and `max` itself;
    /// numeric types only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<f64>,
    /// Only a new declaration changes the value; `set` and `load` refuse to.
    pub read_only: bool,
    /// The value a new parameter starts with (and a read-only one always has).
    pub default: ParamValue,
}

/// What a stored or received descriptor looks like before its default is coerced to its type.
#[derive(Deserialize)]
struct RawDescriptor {
    #[serde(rename = "type")]
    param_type: ParamType,
    #[serde(default)]
    description: String,
    #[serde(default)]
    min: Option<f64>,
    #[serde(default)]
    max: Option<f64>,
    #[serde(default)]
    step: Option<f64>,
    #[serde(default)]
    read_only: bool,
    default: Value,
}

impl TryFrom<RawDescriptor> for Descriptor {
    type Error = String;
    fn try_from(raw: RawDescriptor) -> std::result::Result<Descriptor, String> {
        let default = from_json(&raw.default, raw.param_type).map_err(|violation| match violation.index {
            Some(index) => format!("default[{index}]: {}", violation.rule),
            None => format!("default: {}", violation.rule),
        })?;
        Ok(Descriptor {
            param_type: raw.param_type,
            description: raw.description,
            min: raw.min,
            max: raw.max,
            step: raw.step,
            read_only: raw.read_only,
            default,
        })
    }
}

impl Descriptor {
    /// A writable parameter of `default`'s type, starting at `default`, with no description or
    /// bounds.
    pub fn new(default: impl Into<ParamValue>) -> Descriptor {
        let default = default.into();
        Descriptor {
            param_type: default.param_type(),
            description: String::new(),
            min: None,
            max: None,
            step: None,
            read_only: false,
            default,
        }
    }

    /// Sets the description.
    #[must_use]
    pub fn description(mut self, text: impl Into<String>) -> Descriptor {
        self.description = text.into();
        self
    }

    /// Sets the minimum.
    #[must_use]
    pub fn min(mut self, min: f64) -> Descriptor {
        self.min = Some(min);
        self
    }

    /// Sets the maximum.
    #[must_use]
    pub fn max(mut self, max: f64) -> Descriptor {
        self.max = Some(max);
        self
    }

    /// Sets the minimum and the maximum.
    #[must_use]
    pub fn range(self, min: f64, max: f64) -> Descriptor {
        self.min(min).max(max)
    }

    /// Sets the step.
    #[must_use]
    pub fn step(mut self, step: f64) -> Descriptor {
        self.step = Some(step);
        self
    }

    /// Makes the parameter read-only.
    #[must_use]
    pub fn read_only(mut self) -> Descriptor {
        self.read_only = true;
        self
    }

    /// Checks the declaration itself: bounds only on numbers, finite, `min <= max`, a positive
    /// step, integral bounds for ints, and a default that passes every rule.
    ///
    /// Returns the descriptor with its default coerced to the type (an int default of a float
    /// parameter becomes a float).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming `name` and the first rule broken.
    pub fn validated(&self, name: &ParamName) -> Result<Descriptor> {
        self.check_bounds().map_err(|violation| violation.into_error(name))?;
        let default = self
            .check(&self.default)
            .map_err(|violation| Violation::new(format!("default {}", violation.rule)).into_error(name))?;
        Ok(Descriptor {
            default,
            ..self.clone()
        })
    }

    fn check_bounds(&self) -> std::result::Result<(), Violation> {
        let bounds = [("min", self.min), ("max", self.max), ("step", self.step)];
        for (what, bound) in bounds {
            let Some(bound) = bound else { continue };
            if !self.param_type.is_numeric() {
                return Err(Violation::new(format!(
                    "{what} applies only to numbers, and this parameter is {}",
                    self.param_type.described()
                )));
            }
            if !bound.is_finite() {
                return Err(Violation::new(format!(
                    "{what} {} is not a finite number",
                    float_text(bound)
                )));
            }
            if self.param_type.element() == ParamType::Int && (bound.fract() != 0.0 || bound.abs() > MAX_EXACT_INT) {
                return Err(Violation::new(format!(
                    "{what} {} of an int parameter must be an integer within ±2^53",
                    float_text(bound)
                )));
            }
        }
        if let (Some(min), Some(max)) = (self.min, self.max)
            && min > max
        {
            return Err(Violation::new(format!(
                "min {} is above max {}",
                self.bound_text(min),
                self.bound_text(max)
            )));
        }
        if let Some(step) = self.step
            && step <= 0.0
        {
            return Err(Violation::new(format!(
                "step {} is not positive",
                self.bound_text(step)
            )));
        }
        Ok(())
    }

    /// Coerces `value` to the declared type and checks it against every rule except read-only.
    pub(crate) fn check(&self, value: &ParamValue) -> std::result::Result<ParamValue, Violation> {
        let value = coerce(value, self.param_type)?;
        self.check_coerced(&value)?;
        Ok(value)
    }

    #[cfg(feature = "yaml")]
    /// Coerces JSON to the declared type and checks it against every rule except read-only.
    pub(crate) fn check_json(&self, json: &Value) -> std::result::Result<ParamValue, Violation> {
        let value = from_json(json, self.param_type)?;
        self.check_coerced(&value)?;
        Ok(value)
    }

    /// Checks a value already of the declared type: sizes, then each number's bounds.
    fn check_coerced(&self, value: &ParamValue) -> std::result::Result<(), Violation> {
        match value {
            ParamValue::Bool(_) => Ok(()),
            ParamValue::Int(number) => self.check_int(*number),
            ParamValue::Float(number) => self.check_float(*number),
            ParamValue::String(text) => check_string(text),
            ParamValue::BoolList(items) => check_len(items.len()),
            ParamValue::IntList(items) => {
                check_len(items.len())?;
                each(items, |number| self.check_int(*number))
            }
            ParamValue::FloatList(items) => {
                check_len(items.len())?;
                each(items, |number| self.check_float(*number))
            }
            ParamValue::StringList(items) => {
                check_len(items.len())?;
                each(items, |text| check_string(text))
            }
        }
    }

    fn check_int(&self, number: i64) -> std::result::Result<(), Violation> {
        // Bounds of int parameters are integers within ±2^53 (checked at declaration), so the
        // conversions are exact; an unchecked out-of-range bound saturates, which is still safe.
        let as_int = |bound: f64| bound as i64;
        if let Some(min) = self.min
            && number < as_int(min)
        {
            return Err(Violation::new(format!("{number} is below the minimum {}", as_int(min))));
        }
        if let Some(max) = self.max
            && number > as_int(max)
        {
            return Err(Violation::new(format!("{number} is above the maximum {}", as_int(max))));
        }
        if let Some(step) = self.step {
            let (base, step) = (as_int(self.min.unwrap_or(0.0)), as_int(step));
            let on_grid = step <= 0 || (i128::from(number) - i128::from(base)) % i128::from(step) == 0;
            if !on_grid && self.max.map(as_int) != Some(number) {
                return Err(Violation::new(format!(
                    "{number} is off the step grid {base} + k * {step}"
                )));
            }
        }
        Ok(())
    }

    fn check_float(&self, number: f64) -> std::result::Result<(), Violation> {
        if !number.is_finite() {
            return Err(Violation::new(format!("{} is not a finite number", float_text(number))));
        }
        if let Some(min) = self.min
            && number < min
        {
            return Err(Violation::new(format!(
                "{} is below the minimum {}",
                float_text(number),
                float_text(min)
            )));
        }
        if let Some(max) = self.max
            && number > max
        {
            return Err(Violation::new(format!(
                "{} is above the maximum {}",
                float_text(number),
                float_text(max)
            )));
        }
        if let Some(step) = self.step {
            let base = self.min.unwrap_or(0.0);
            let steps = (number - base) / step;
            let on_grid = (steps - steps.round()).abs() <= STEP_TOLERANCE * steps.abs().max(1.0);
            if !on_grid && self.max != Some(number) {
                return Err(Violation::new(format!(
                    "{} is off the step grid {} + k * {}",
                    float_text(number),
                    float_text(base),
                    float_text(step)
                )));
            }
        }
        Ok(())
    }

    /// A bound as the parameter's type prints it: `5` for ints, `5.0` for floats.
    fn bound_text(&self, bound: f64) -> String {
        if self.param_type.element() == ParamType::Int && bound.fract() == 0.0 {
            format!("{bound:.0}")
        } else {
            float_text(bound)
        }
    }
}

fn each<T>(
    items: &[T],
    mut check: impl FnMut(&T) -> std::result::Result<(), Violation>,
) -> std::result::Result<(), Violation> {
    for (index, item) in items.iter().enumerate() {
        check(item).map_err(|violation| violation.at(index))?;
    }
    Ok(())
}

fn check_string(text: &str) -> std::result::Result<(), Violation> {
    if text.len() > MAX_STRING_LEN {
        return Err(Violation::new(format!(
            "a string of {} bytes is longer than the limit of {MAX_STRING_LEN}",
            text.len()
        )));
    }
    Ok(())
}

fn check_len(len: usize) -> std::result::Result<(), Violation> {
    if len > MAX_LIST_LEN {
        return Err(Violation::new(format!(
            "a list of {len} elements is longer than the limit of {MAX_LIST_LEN}"
        )));
    }
    Ok(())
}

/// Converts `value` to `target` where that loses nothing: ints to floats, an empty list to any
/// list type; anything else must already have the type.
fn coerce(value: &ParamValue, target: ParamType) -> std::result::Result<ParamValue, Violation> {
    let converted = match (target, value) {
        (ParamType::Float, ParamValue::Int(number)) => Some(ParamValue::Float(int_to_float(*number))),
        (ParamType::FloatList, ParamValue::IntList(items)) => {
            Some(ParamValue::FloatList(items.iter().copied().map(int_to_float).collect()))
        }
        (target, value) if value.param_type() == target => Some(value.clone()),
        (target, value) if target.is_list() && value.param_type().is_list() && is_empty_list(value) => {
            Some(empty_list(target))
        }
        _ => None,
    };
    converted.ok_or_else(|| Violation::new(format!("expected {}, got {}", target.described(), value.described())))
}

/// An int given for a float converts as `as f64` does (exact up to 2^53).
fn int_to_float(number: i64) -> f64 {
    number as f64
}

fn is_empty_list(value: &ParamValue) -> bool {
    match value {
        ParamValue::BoolList(items) => items.is_empty(),
        ParamValue::IntList(items) => items.is_empty(),
        ParamValue::FloatList(items) => items.is_empty(),
        ParamValue::StringList(items) => items.is_empty(),
        _ => false,
    }
}

fn empty_list(list_type: ParamType) -> ParamValue {
    match list_type {
        ParamType::IntList => ParamValue::IntList(Vec::new()),
        ParamType::FloatList => ParamValue::FloatList(Vec::new()),
        ParamType::StringList => ParamValue::StringList(Vec::new()),
        _ => ParamValue::BoolList(Vec::new()),
    }
}

/// Reads JSON as a value of `target`: the same lossless conversions as [`coerce`].
pub(crate) fn from_json(json: &Value, target: ParamType) -> std::result::Result<ParamValue, Violation> {
    if !target.is_list() {
        return scalar_from_json(json, target);
    }
    let Value::Array(items) = json else {
        return Err(mismatch(target, json));
    };
    let element = target.element();
    let scalars = items
        .iter()
        .enumerate()
        .map(|(index, item)| scalar_from_json(item, element).map_err(|violation| violation.at(index)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let value = match element {
        ParamType::Bool => ParamValue::BoolList(scalars.iter().filter_map(ParamValue::as_bool).collect()),
        ParamType::Int => ParamValue::IntList(scalars.iter().filter_map(ParamValue::as_i64).collect()),
        ParamType::Float => ParamValue::FloatList(scalars.iter().filter_map(ParamValue::as_f64).collect()),
        _ => ParamValue::StringList(
            scalars
                .into_iter()
                .filter_map(|scalar| match scalar {
                    ParamValue::String(text) => Some(text),
                    _ => None,
                })
                .collect(),
        ),
    };
    Ok(value)
}

fn scalar_from_json(json: &Value, target: ParamType) -> std::result::Result<ParamValue, Violation> {
    let value = match (target, json) {
        (ParamType::Bool, Value::Bool(value)) => Some(ParamValue::Bool(*value)),
        (ParamType::Int, Value::Number(number)) if number.is_u64() && number.as_i64().is_none() => {
            return Err(Violation::new(format!("{number} is beyond the int range")));
        }
        (ParamType::Int, Value::Number(number)) => number.as_i64().map(ParamValue::Int),
        (ParamType::Float, Value::Number(number)) => number.as_f64().map(ParamValue::Float),
        (ParamType::String, Value::String(text)) => Some(ParamValue::String(text.clone())),
        _ => None,
    };
    value.ok_or_else(|| mismatch(target, json))
}

fn mismatch(target: ParamType, json: &Value) -> Violation {
    let got = match json {
        Value::Null => "null".to_owned(),
        Value::Bool(value) => format!("the bool {value}"),
        Value::Number(number) => format!("the number {number}"),
        Value::String(text) => format!("the string {}", quoted(text)),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a map".to_owned(),
    };
    Violation::new(format!("expected {}, got {got}", target.described()))
}

#[cfg(feature = "yaml")]
/// The type a value found in a config file most likely has: `None` for null, an empty list,
/// maps, and lists that mix kinds (ints and floats make a list of floats).
pub(crate) fn infer_type(json: &Value) -> std::result::Result<ParamType, &'static str> {
    let scalar = |item: &Value| match item {
        Value::Bool(_) => Ok(ParamType::Bool),
        Value::Number(number) if number.as_i64().is_some() => Ok(ParamType::Int),
        Value::Number(number) if number.is_u64() => Err("the number is beyond the int range"),
        Value::Number(_) => Ok(ParamType::Float),
        Value::String(_) => Ok(ParamType::String),
        Value::Null => Err("null has no type to infer"),
        Value::Array(_) => Err("a list of lists has no parameter type"),
        Value::Object(_) => Err("a list of maps has no parameter type"),
    };
    let Value::Array(items) = json else {
        return scalar(json);
    };
    let mut element: Option<ParamType> = None;
    for item in items {
        let found = scalar(item)?;
        element = Some(match (element, found) {
            (None, found) => found,
            (Some(known), found) if known == found => known,
            (Some(ParamType::Int | ParamType::Float), ParamType::Int | ParamType::Float) => ParamType::Float,
            _ => return Err("a list that mixes kinds of values has no parameter type"),
        });
    }
    match element {
        Some(element) => Ok(element.list_of()),
        None => Err("an empty list has no element type to infer"),
    }
}

/// A float as Rust's `Debug` writes it: always with a fraction or exponent (`5.0`, `1e-7`).
pub(crate) fn float_text(number: f64) -> String {
    format!("{number:?}")
}

/// A string quoted for a message, cut to 40 characters.
fn quoted(text: &str) -> String {
    const SHOWN: usize = 40;
    if text.chars().count() <= SHOWN {
        return format!("{text:?}");
    }
    let cut: String = text.chars().take(SHOWN).collect();
    format!("{cut:?}...")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn name(text: &str) -> ParamName {
        ParamName::new(text).unwrap()
    }

    fn rule(descriptor: &Descriptor, value: impl Into<ParamValue>) -> String {
        descriptor.check(&value.into()).unwrap_err().message(&name("arms.x"))
    }

    /// Names: dotted segments of the allowed characters, bounded; every rule has its reason.
    #[test]
    fn name_rules() {
        for good in ["arms", "arms.goal_time_slow", "a-b.c_d.0", &"a".repeat(128)] {
            assert!(ParamName::new(good).is_ok(), "{good}");
        }
        for (bad, reason) in [
            ("", "empty"),
            ("arms..x", "empty segment"),
            (".arms", "empty segment"),
            ("arms.", "empty segment"),
            ("arms:x", "only letters"),
            ("arms.x*", "only letters"),
            ("ärm", "only letters"),
            (&"a".repeat(129), "longer than 128"),
        ] {
            let err = ParamName::new(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid parameter name"), "{err}");
            assert!(err.contains(reason), "{bad:?}: {err}");
        }
    }

    /// A prefix covers itself and what lies under it, never a sibling that shares letters.
    #[test]
    fn prefix_matching() {
        let arms = Prefix::new("arms.").unwrap();
        assert!(arms.matches(&name("arms")));
        assert!(arms.matches(&name("arms.goal.slow")));
        assert!(!arms.matches(&name("arms2")));
        assert!(!arms.matches(&name("arms-x.y")));
        assert!(Prefix::new("").unwrap().matches(&name("x")));
        assert_eq!(name("a.b.c").ancestors().collect::<Vec<_>>(), ["a", "a.b"]);
    }

    /// Type, range, step and size rules each name the parameter and the rule.
    #[test]
    fn value_rules() {
        let float = Descriptor::new(2.0).range(0.1, 5.0);
        assert_eq!(rule(&float, 9.5), "arms.x: 9.5 is above the maximum 5.0");
        assert_eq!(rule(&float, 0.01), "arms.x: 0.01 is below the minimum 0.1");
        assert_eq!(
            rule(&float, "fast"),
            "arms.x: expected a float, got the string \"fast\""
        );
        assert_eq!(rule(&float, f64::NAN), "arms.x: NaN is not a finite number");
        assert_eq!(float.check(&ParamValue::Int(3)).unwrap(), ParamValue::Float(3.0));

        let int = Descriptor::new(4_i64).range(0.0, 10.0).step(2.0);
        assert_eq!(rule(&int, 7_i64), "arms.x: 7 is off the step grid 0 + k * 2");
        assert_eq!(rule(&int, 12_i64), "arms.x: 12 is above the maximum 10");
        assert_eq!(rule(&int, 2.0), "arms.x: expected an int, got the float 2.0");

        let tenths = Descriptor::new(0.5).step(0.1);
        assert!(tenths.check(&ParamValue::Float(0.7)).is_ok());
        assert_eq!(rule(&tenths, 0.75), "arms.x: 0.75 is off the step grid 0.0 + k * 0.1");

        let list = Descriptor::new(vec![1.0, 2.0]).max(3.0);
        assert_eq!(rule(&list, vec![1.0, 4.0]), "arms.x[1]: 4.0 is above the maximum 3.0");
        assert_eq!(
            list.check(&ParamValue::IntList(vec![])).unwrap(),
            ParamValue::FloatList(vec![])
        );
        assert!(rule(&list, vec![0.0; MAX_LIST_LEN + 1]).contains("longer than the limit of 1024"));
        assert!(rule(&Descriptor::new(""), "x".repeat(MAX_STRING_LEN + 1)).contains("longer than the limit"));
    }

    /// A descriptor's own rules: bounds only on numbers, ordered, integral for ints, valid default.
    #[test]
    fn descriptor_rules() {
        let arms = name("arms.x");
        let message = |descriptor: Descriptor| descriptor.validated(&arms).unwrap_err().to_string();
        assert_eq!(
            message(Descriptor::new(1.0).range(3.0, 2.0)),
            "arms.x: min 3.0 is above max 2.0"
        );
        assert_eq!(
            message(Descriptor::new(1_i64).step(0.0)),
            "arms.x: step 0 is not positive"
        );
        assert_eq!(
            message(Descriptor::new(1_i64).min(0.5)),
            "arms.x: min 0.5 of an int parameter must be an integer within ±2^53"
        );
        assert_eq!(
            message(Descriptor::new(true).max(1.0)),
            "arms.x: max applies only to numbers, and this parameter is a bool"
        );
        assert_eq!(
            message(Descriptor::new(9.0).max(5.0)),
            "arms.x: default 9.0 is above the maximum 5.0"
        );
    }

    /// Stored JSON reads back as the declared type, and bad JSON names what it got.
    #[test]
    fn json_coercion() {
        assert_eq!(from_json(&json!(2), ParamType::Float).unwrap(), ParamValue::Float(2.0));
        assert_eq!(
            from_json(&json!([]), ParamType::IntList).unwrap(),
            ParamValue::IntList(vec![])
        );
        let violation = from_json(&json!([1, "x"]), ParamType::IntList).unwrap_err();
        assert_eq!(
            violation.message(&name("a")),
            "a[1]: expected an int, got the string \"x\""
        );
        let violation = from_json(&json!(u64::MAX), ParamType::Int).unwrap_err();
        assert!(violation.rule.contains("beyond the int range"));
        let descriptor: Descriptor =
            serde_json::from_str(r#"{"type":"float[]","description":"","read_only":false,"default":[1,2]}"#).unwrap();
        assert_eq!(descriptor.default, ParamValue::FloatList(vec![1.0, 2.0]));
    }

    #[cfg(feature = "yaml")]
    /// Types are inferred from config values; what has no single type is refused with a reason.
    #[test]
    fn inference() {
        assert_eq!(infer_type(&json!(true)), Ok(ParamType::Bool));
        assert_eq!(infer_type(&json!(3)), Ok(ParamType::Int));
        assert_eq!(infer_type(&json!(3.0)), Ok(ParamType::Float));
        assert_eq!(infer_type(&json!("x")), Ok(ParamType::String));
        assert_eq!(infer_type(&json!([1, 2.5])), Ok(ParamType::FloatList));
        assert_eq!(infer_type(&json!(["a"])), Ok(ParamType::StringList));
        assert!(infer_type(&json!([])).unwrap_err().contains("empty list"));
        assert!(infer_type(&json!(null)).unwrap_err().contains("null"));
        assert!(infer_type(&json!([1, "a"])).unwrap_err().contains("mixes"));
    }

    /// Values serialize as plain JSON, floats keeping their fraction.
    #[test]
    fn value_json() {
        assert_eq!(ParamValue::Float(2.0).to_json(), "2.0");
        assert_eq!(ParamValue::IntList(vec![1, 2]).to_json(), "[1,2]");
        assert_eq!(ParamValue::from("fast").to_string(), "\"fast\"");
        assert_eq!("float[]".parse::<ParamType>().unwrap(), ParamType::FloatList);
    }
}
