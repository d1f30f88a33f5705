//! Where things are in a YAML file: line and column of a key or value found by its path.
//!
//! `yaml_serde::Value` keeps no positions, but yaml_serde attaches the position of the YAML event
//! being read to any error a visitor raises there. So to find `parameters.learning_rate.min` we
//! deserialize the document once more with a visitor that walks down that path and raises an
//! error on arrival; the error's location is the answer. One walk per reported problem, on a
//! document that already parsed: cheap, exact, and no second YAML parser to keep in step.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step of a path into a YAML document.
#[derive(Debug, Clone, PartialEq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl Seg {
    /// A dotted field path (`parameters.lr.values[1]`) as segments.
    pub fn parse_path(path: &str) -> Vec<Seg> {
        let mut out = Vec::new();
        for part in path.split('.').filter(|p| !p.is_empty()) {
            let (key, mut rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if !key.is_empty() {
                out.push(Seg::Key(key.to_string()));
            }
            while let Some(close) = rest.find(']') {
                if let Some(Ok(i)) = rest.get(1..close).map(str::parse) {
                    out.push(Seg::Index(i));
                }
                rest = &rest[close + 1..];
            }
        }
        out
    }
}

/// Whether to point at a mapping key itself or at the value it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Key,
    Value,
}

/// 1-based (line, column) of the key or value at `path` in `text`, if it is there.
pub fn locate(text: &str, path: &[Seg], target: Target) -> Option<(usize, usize)> {
    let target = match path.last() {
        Some(Seg::Key(_)) => target,
        _ => Target::Value,
    };
    let mut de = yaml_serde::Deserializer::from_str(text);
    let first = de.next()?;
    match (Walk { rest: path, target }).deserialize(first) {
        Ok(()) => None,
        Err(e) => e.location().map(|l| (l.line(), l.column())),
    }
}

/// A yaml_serde message without its first ` at line N column M` (the position we print in
/// front); later positions stay, as they point elsewhere (`while parsing a mapping at line 2`).
pub fn strip_position(message: &str) -> String {
    let mut search = 0;
    while let Some(found) = message[search..].find(" at line ") {
        let i = search + found;
        let after = &message[i + " at line ".len()..];
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        if let Some(tail) = after[digits..].strip_prefix(" column ") {
            let digits2 = tail.chars().take_while(char::is_ascii_digit).count();
            if digits > 0 && digits2 > 0 {
                return format!("{}{}", &message[..i], &tail[digits2..]);
            }
        }
        search = i + 1;
    }
    message.to_string()
}

/// Walks down `rest`; raises an error at the target so yaml_serde records its position.
struct Walk<'a> {
    rest: &'a [Seg],
    target: Target,
}

const FOUND: &str = "found";

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.rest.is_empty() {
            d.deserialize_any(Hit)
        } else {
            d.deserialize_any(WalkVisitor(self))
        }
    }
}

/// Fails on whatever value it is given: the value at the end of the path.
struct Hit;

impl<'de> Visitor<'de> for Hit {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(FOUND)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
}

struct WalkVisitor<'a>(Walk<'a>);

impl<'de> Visitor<'de> for WalkVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    // Scalars have nothing inside: the path does not exist.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        Ok(())
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // A tagged value (`!tag x`): consumed whole, the path does not go into tags.
        let (IgnoredAny, variant) = data.variant::<IgnoredAny>()?;
        de::VariantAccess::newtype_variant::<IgnoredAny>(variant)?;
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Walk { rest, target } = self.0;
        let wanted = match rest.first() {
            Some(Seg::Index(i)) => Some(*i),
            _ => None,
        };
        let mut index = 0;
        loop {
            let more = if Some(index) == wanted {
                seq.next_element_seed(Walk {
                    rest: &rest[1..],
                    target,
                })?
                .is_some()
            } else {
                seq.next_element::<IgnoredAny>()?.is_some()
            };
            if !more {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Walk { rest, target } = self.0;
        let wanted = match rest.first() {
            Some(Seg::Key(k)) => Some(k.as_str()),
            _ => None,
        };
        let fail_on_key = rest.len() == 1 && target == Target::Key;
        while let Some(matched) = map.next_key_seed(KeySeed {
            wanted,
            fail: fail_on_key,
        })? {
            if matched {
                map.next_value_seed(Walk {
                    rest: &rest[1..],
                    target,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// Reads one mapping key: true when it is the wanted one (or fails there, to point at it).
struct KeySeed<'a> {
    wanted: Option<&'a str>,
    fail: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        let matched = self.wanted == Some(key);
        if matched && self.fail {
            return Err(E::custom(FOUND));
        }
        Ok(matched)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<bool, A::Error> {
        let (IgnoredAny, variant) = data.variant::<IgnoredAny>()?;
        de::VariantAccess::newtype_variant::<IgnoredAny>(variant)?;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "name: t\nparameters:\n  lr: {values: [0.1, 0.0]}\n  epochs:\n    value: 2\nlist:\n  - a\n  - b: 3\n";

    #[test]
    fn finds_keys_and_values_by_path() {
        let at = |p: &str, t| locate(DOC, &Seg::parse_path(p), t);
        assert_eq!(at("name", Target::Key), Some((1, 1)));
        assert_eq!(at("name", Target::Value), Some((1, 7)));
        assert_eq!(at("parameters.lr", Target::Key), Some((3, 3)));
        assert_eq!(at("parameters.lr.values[1]", Target::Value), Some((3, 22)));
        assert_eq!(at("parameters.epochs.value", Target::Value), Some((5, 12)));
        assert_eq!(at("list[1].b", Target::Key), Some((8, 5)));
        assert_eq!(at("parameters.nothing", Target::Key), None);
        assert_eq!(at("name.deeper", Target::Key), None);
        assert_eq!(Seg::parse_path("a]]b[x].c[2]").len(), 3);
    }

    #[test]
    fn positions_are_stripped_from_messages() {
        assert_eq!(
            strip_position("did not find expected key at line 3 column 5, while parsing a block mapping at line 2 column 3"),
            "did not find expected key, while parsing a block mapping at line 2 column 3"
        );
        assert_eq!(strip_position("look at line one"), "look at line one");
    }
}
