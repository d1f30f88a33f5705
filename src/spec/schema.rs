//! The sweep file's schema, read from the spec's own serde types: every block's keys, which are
//! required, which may be `~`, what kind of value each holds, and the words an enum accepts.
//!
//! The checker walks a sweep file with this schema to report every unknown key and wrong type
//! with its position before the typed parse, so a field added to `SweepSpec` (or a variant added
//! to an enum) is known to the checker the moment it is declared: nothing restates the schema.
//!
//! How: serde's derived `Deserialize` tells the deserializer what it wants: `deserialize_struct`
//! with the struct's field names, `deserialize_enum` with the variant names (renames applied),
//! `deserialize_option`, `deserialize_u64`, ... A `Probe` deserializer follows a route of keys
//! down the type, answers that request at the end of it, and stops; the answers make the
//! `Kind` tree. Required fields are the ones the derived code reports as missing when a map
//! without them is offered. Only types, no values: nothing here reads a file.

use std::fmt;

use serde::de::{
    self, value::StrDeserializer, DeserializeOwned, DeserializeSeed, Deserializer,
    IntoDeserializer, MapAccess, SeqAccess, Visitor,
};

/// What a key of the sweep file holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A mapping with these keys (a struct).
    Block(Vec<Field>),
    /// One of these words (an enum of unit variants).
    OneOf(&'static [&'static str]),
    /// A whole number >= 0.
    Count,
    /// A whole number that may be negative.
    Integer,
    Number,
    Flag,
    Text,
    List(Box<Kind>),
    /// A mapping from names the user chooses to values of one kind.
    Named(Box<Kind>),
    /// Anything: the type decides by looking at the value (an untagged enum, a JSON value).
    Any,
}

/// One key of a block.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: &'static str,
    /// Parsing fails without it (no `#[serde(default)]`).
    pub required: bool,
    /// `~` means "not given" (an `Option`).
    pub nullable: bool,
    pub kind: Kind,
}

impl Kind {
    /// The kind of a type's values, as its `Deserialize` asks for them.
    pub fn of<T: DeserializeOwned>() -> Kind {
        kind_at::<T>(&mut Vec::new())
    }

    /// The fields of a block; empty for any other kind.
    pub fn fields(&self) -> &[Field] {
        match self {
            Kind::Block(fields) => fields,
            _ => &[],
        }
    }

    /// The field `name` of a block.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields().iter().find(|f| f.name == name)
    }
}

/// The words an enum of unit variants accepts (`SearchMethod`: grid, random, bayes), as serde
/// reads them. Empty for a type that is not such an enum.
pub fn variants<T: DeserializeOwned>() -> &'static [&'static str] {
    match Kind::of::<T>() {
        Kind::OneOf(words) => words,
        _ => &[],
    }
}

/// Deeper than any spec type; a guard against a recursive type.
const MAX_DEPTH: usize = 16;

fn kind_at<T: DeserializeOwned>(route: &mut Vec<Step>) -> Kind {
    if route.len() > MAX_DEPTH {
        return Kind::Any;
    }
    match request_at::<T>(route) {
        Request::Struct(names) => {
            let required = required_at::<T>(route);
            let fields = names
                .iter()
                .map(|&name| {
                    route.push(Step::Field(name));
                    let (nullable, kind) = match request_at::<T>(route) {
                        Request::Option => {
                            route.push(Step::Some);
                            let kind = kind_at::<T>(route);
                            route.pop();
                            (true, kind)
                        }
                        _ => (false, kind_at::<T>(route)),
                    };
                    route.pop();
                    Field {
                        name,
                        required: required.contains(&name),
                        nullable,
                        kind,
                    }
                })
                .collect();
            Kind::Block(fields)
        }
        Request::Enum(words) => Kind::OneOf(words),
        Request::Option => {
            route.push(Step::Some);
            let kind = kind_at::<T>(route);
            route.pop();
            kind
        }
        request @ (Request::Seq | Request::Map) => {
            route.push(Step::Item);
            let item = Box::new(kind_at::<T>(route));
            route.pop();
            match request {
                Request::Seq => Kind::List(item),
                _ => Kind::Named(item),
            }
        }
        Request::Unsigned => Kind::Count,
        Request::Signed => Kind::Integer,
        Request::Float => Kind::Number,
        Request::Bool => Kind::Flag,
        Request::Str => Kind::Text,
        Request::Any => Kind::Any,
    }
}

/// What the type at the end of `route` asks of its deserializer.
fn request_at<T: DeserializeOwned>(route: &[Step]) -> Request {
    let probe = Probe {
        route,
        goal: Goal::Describe,
    };
    match T::deserialize(probe) {
        Err(Stop::Asked(request)) => request,
        // Only reached for a type that asks for nothing the probe follows.
        _ => Request::Any,
    }
}

/// The fields of the struct at the end of `route` that parsing cannot do without: offer a map
/// of the ones found so far until the derived code stops reporting one missing.
fn required_at<T: DeserializeOwned>(route: &[Step]) -> Vec<&'static str> {
    let mut required: Vec<&'static str> = Vec::new();
    loop {
        let probe = Probe {
            route,
            goal: Goal::Required(&required),
        };
        match T::deserialize(probe) {
            Err(Stop::Missing(name)) if !required.contains(&name) => required.push(name),
            _ => return required,
        }
    }
}

/// One step down a type: into a struct's field, an option's value, a list's or map's item.
#[derive(Debug, Clone, Copy)]
enum Step {
    Field(&'static str),
    Some,
    Item,
}

/// What a `Deserialize` asked for.
#[derive(Debug)]
enum Request {
    Struct(&'static [&'static str]),
    Enum(&'static [&'static str]),
    Option,
    Seq,
    Map,
    Unsigned,
    Signed,
    Float,
    Bool,
    Str,
    Any,
}

/// How a probe run ends: always with an error, which carries the answer out through the derived
/// code unchanged.
#[derive(Debug)]
enum Stop {
    Asked(Request),
    Missing(&'static str),
    /// The struct at the end of the route parsed: nothing more is required.
    Complete,
    Other(String),
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Other(message) => f.write_str(message),
            other => write!(f, "{other:?}"),
        }
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<M: fmt::Display>(message: M) -> Self {
        Stop::Other(message.to_string())
    }
    fn missing_field(field: &'static str) -> Self {
        Stop::Missing(field)
    }
}

#[derive(Clone, Copy)]
enum Goal<'a> {
    /// Say what the type at the end of the route asks for.
    Describe,
    /// Offer the struct at the end of the route these keys (with the least values that parse).
    Required(&'a [&'static str]),
}

/// Follows `route` down a type, then does `goal`.
struct Probe<'a> {
    route: &'a [Step],
    goal: Goal<'a>,
}

impl<'a> Probe<'a> {
    fn next(&self) -> Probe<'a> {
        Probe {
            route: &self.route[1..],
            goal: self.goal,
        }
    }

    /// At the end of the route: the answer; on the way: a wrong turn, the route does not exist.
    fn arrive(&self, request: Request) -> Result<(), Stop> {
        match (self.route.is_empty(), self.goal) {
            (true, Goal::Describe) => Err(Stop::Asked(request)),
            (true, Goal::Required(_)) => Err(Stop::Other("not a struct".into())),
            (false, _) => Err(Stop::Other("no such route".into())),
        }
    }
}

macro_rules! probe_scalars {
    ($($method:ident => $request:ident),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            self.arrive(Request::$request)?;
            Err(Stop::Other("unreachable".into()))
        })*
    };
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = Stop;

    probe_scalars! {
        deserialize_any => Any,
        deserialize_bool => Bool,
        deserialize_i8 => Signed, deserialize_i16 => Signed, deserialize_i32 => Signed,
        deserialize_i64 => Signed, deserialize_i128 => Signed,
        deserialize_u8 => Unsigned, deserialize_u16 => Unsigned, deserialize_u32 => Unsigned,
        deserialize_u64 => Unsigned, deserialize_u128 => Unsigned,
        deserialize_f32 => Float, deserialize_f64 => Float,
        deserialize_char => Str, deserialize_str => Str, deserialize_string => Str,
        deserialize_bytes => Str, deserialize_byte_buf => Str,
        deserialize_unit => Any, deserialize_identifier => Str, deserialize_ignored_any => Any,
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: V,
    ) -> Result<V::Value, Stop> {
        self.arrive(Request::Any)?;
        Err(Stop::Other("unreachable".into()))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        match self.route.first() {
            Some(Step::Some) => visitor.visit_some(self.next()),
            _ => {
                self.arrive(Request::Option)?;
                Err(Stop::Other("unreachable".into()))
            }
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        match self.route.first() {
            Some(Step::Item) => visitor.visit_seq(OneItem(Some(self.next()))),
            _ => {
                self.arrive(Request::Seq)?;
                Err(Stop::Other("unreachable".into()))
            }
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, Stop> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        match self.route.first() {
            Some(Step::Item) => visitor.visit_map(Entries::one("name", self.next())),
            _ => {
                self.arrive(Request::Map)?;
                Err(Stop::Other("unreachable".into()))
            }
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        match (self.route.first(), self.goal) {
            (Some(Step::Field(name)), _) => visitor.visit_map(Entries::one(name, self.next())),
            (None, Goal::Required(keys)) => {
                visitor.visit_map(Entries::least(keys))?;
                Err(Stop::Complete)
            }
            _ => {
                self.arrive(Request::Struct(fields))?;
                Err(Stop::Other("unreachable".into()))
            }
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        self.arrive(Request::Enum(variants))?;
        Err(Stop::Other("unreachable".into()))
    }
}

/// A list of one item, the probe going on.
struct OneItem<'a>(Option<Probe<'a>>);

impl<'de> SeqAccess<'de> for OneItem<'_> {
    type Error = Stop;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Stop> {
        self.0
            .take()
            .map(|probe| seed.deserialize(probe))
            .transpose()
    }
}

/// A mapping offered to a struct or map: either one key whose value the probe goes into, or
/// keys whose values are the least that parse.
struct Entries<'a> {
    keys: Vec<&'static str>,
    probe: Option<Probe<'a>>,
}

impl<'a> Entries<'a> {
    fn one(key: &'static str, probe: Probe<'a>) -> Self {
        Self {
            keys: vec![key],
            probe: Some(probe),
        }
    }

    fn least(keys: &[&'static str]) -> Self {
        Self {
            keys: keys.iter().rev().copied().collect(),
            probe: None,
        }
    }
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Stop> {
        // `keys` is a stack; `last` is the next key.
        match self.keys.last() {
            Some(key) => {
                let key: StrDeserializer<Stop> = key.into_deserializer();
                seed.deserialize(key).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Stop> {
        self.keys.pop();
        match self.probe.take() {
            Some(probe) => seed.deserialize(probe),
            None => seed.deserialize(Least),
        }
    }
}

/// The least value of whatever type asks: 0, "", false, nothing, an empty list, a struct with
/// every field at its least, an enum's first variant. What a required field is given while
/// the others are looked for.
struct Least;

macro_rules! least_values {
    ($($method:ident => $visit:ident($($value:expr)?)),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
            visitor.$visit($($value)?)
        })*
    };
}

impl<'de> Deserializer<'de> for Least {
    type Error = Stop;

    least_values! {
        deserialize_any => visit_unit(),
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i64(0), deserialize_i16 => visit_i64(0),
        deserialize_i32 => visit_i64(0), deserialize_i64 => visit_i64(0),
        deserialize_u8 => visit_u64(0), deserialize_u16 => visit_u64(0),
        deserialize_u32 => visit_u64(0), deserialize_u64 => visit_u64(0),
        deserialize_f32 => visit_f64(0.0), deserialize_f64 => visit_f64(0.0),
        deserialize_char => visit_char('x'),
        deserialize_str => visit_str(""), deserialize_string => visit_str(""),
        deserialize_bytes => visit_bytes(&[]), deserialize_byte_buf => visit_bytes(&[]),
        deserialize_option => visit_none(),
        deserialize_unit => visit_unit(),
        deserialize_identifier => visit_str(""),
        deserialize_ignored_any => visit_unit(),
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_seq(OneItem(None))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_seq(OneItem(None))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        visitor.visit_seq(OneItem(None))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_map(Entries::least(&[]))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        visitor.visit_map(Entries::least(fields))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        let first: StrDeserializer<Stop> =
            variants.first().copied().unwrap_or("").into_deserializer();
        visitor.visit_enum(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{OnOom, SearchMethod, SweepSpec};

    #[test]
    fn enums_give_their_words_as_serde_reads_them() {
        assert_eq!(variants::<SearchMethod>(), ["grid", "random", "bayes"]);
        assert_eq!(variants::<OnOom>(), ["halve_batch", "skip", "fail"]);
        assert!(variants::<SweepSpec>().is_empty());
    }

    #[test]
    fn blocks_give_their_keys_required_nullable_and_kinds() {
        let top = Kind::of::<SweepSpec>();
        let field = |path: &[&str]| -> Field {
            let mut kind = &top;
            let mut found = None;
            for name in path {
                let f = kind.field(name).unwrap_or_else(|| panic!("{path:?}"));
                kind = &f.kind;
                found = Some(f.clone());
            }
            found.unwrap()
        };
        let required: Vec<&str> = top
            .fields()
            .iter()
            .filter(|f| f.required)
            .map(|f| f.name)
            .collect();
        // `name` defaults to the file's name, `data` is the built-in trainer's only.
        assert_eq!(required, ["parameters"]);
        let run_cap = field(&["run_cap"]);
        assert!(run_cap.nullable && !run_cap.required);
        assert_eq!(run_cap.kind, Kind::Count);
        assert_eq!(field(&["seed"]).kind, Kind::Count);
        assert_eq!(
            field(&["method"]).kind,
            Kind::OneOf(&["grid", "random", "bayes"])
        );
        assert!(field(&["data", "train"]).required);
        assert_eq!(field(&["data", "train"]).kind, Kind::Text);
        assert!(!field(&["data", "conflicts"]).nullable);
        assert_eq!(
            field(&["early_terminate", "type"]).kind,
            Kind::OneOf(&["hyperband"])
        );
        assert!(field(&["early_terminate", "type"]).required);
        assert_eq!(field(&["early_terminate", "eta"]).kind, Kind::Number);
        assert_eq!(field(&["early_terminate", "strict"]).kind, Kind::Flag);
        assert_eq!(field(&["resources", "devices"]).kind, Kind::Any);
        assert_eq!(
            field(&["resources", "sbatch_args"]).kind,
            Kind::List(Box::new(Kind::Text))
        );
        let Kind::Named(param) = field(&["parameters"]).kind else {
            panic!("parameters is a mapping of names");
        };
        let keys: Vec<&str> = param.fields().iter().map(|f| f.name).collect();
        assert_eq!(
            keys,
            [
                "value",
                "values",
                "distribution",
                "min",
                "max",
                "q",
                "probabilities",
                "parameters"
            ]
        );
        assert_eq!(param.field("value").map(|f| &f.kind), Some(&Kind::Any));
    }
}
