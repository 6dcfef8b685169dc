//! Integer fields that also accept integral JSON numbers written with a fraction (`2.0`,
//! `1e3`).
//!
//! JSON Schema (and so `/openapi.json`) counts `2.0` as an integer, and clients in languages
//! without a separate integer type send it; serde's `i64` refuses it. These deserializers
//! take any number with no fractional part inside `i64`'s range, and refuse the rest with
//! serde's own "invalid type/value" wording (which validation turns into a 400 naming the
//! field). Use with `#[serde(default, deserialize_with = "integer::…")]`.

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::{Deserialize, Serialize};

/// An `i64` that also accepts integral floats (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Integer(pub i64);

struct IntegerVisitor;

impl Visitor<'_> for IntegerVisitor {
    type Value = Integer;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Integer, E> {
        Ok(Integer(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Integer, E> {
        i64::try_from(v)
            .map(Integer)
            .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &"an integer in i64's range"))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Integer, E> {
        // 2^63 is exact as an f64; i64's range is [-2^63, 2^63).
        const LIMIT: f64 = 9_223_372_036_854_775_808.0;
        if v.fract() == 0.0 && (-LIMIT..LIMIT).contains(&v) {
            Ok(Integer(v as i64))
        } else {
            Err(E::invalid_type(Unexpected::Float(v), &"an integer"))
        }
    }
}

impl<'de> Deserialize<'de> for Integer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IntegerVisitor)
    }
}

/// `Option<i64>`: null or absent is `None`.
pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(Option::<Integer>::deserialize(d)?.map(|i| i.0))
}

/// `Vec<i64>`.
pub fn vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    Ok(Vec::<Integer>::deserialize(d)?.into_iter().map(|i| i.0).collect())
}

/// `Option<Vec<i64>>`.
pub fn option_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<i64>>, D::Error> {
    Ok(Option::<Vec<Integer>>::deserialize(d)?.map(|v| v.into_iter().map(|i| i.0).collect()))
}

/// `Vec<Vec<i64>>`.
pub fn vec_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<i64>>, D::Error> {
    Ok(Vec::<Vec<Integer>>::deserialize(d)?.into_iter().map(|v| v.into_iter().map(|i| i.0).collect()).collect())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Fields {
        #[serde(default, deserialize_with = "super::option")]
        n: Option<i64>,
        #[serde(default, deserialize_with = "super::option_vec")]
        ids: Option<Vec<i64>>,
    }

    fn n(json: &str) -> Result<Option<i64>, String> {
        serde_json::from_str::<Fields>(json).map(|f| f.n).map_err(|e| e.to_string())
    }

    #[test]
    fn integral_floats_are_integers() {
        assert_eq!(n(r#"{"n": 2}"#), Ok(Some(2)));
        assert_eq!(n(r#"{"n": -6951.0}"#), Ok(Some(-6951)));
        assert_eq!(n(r#"{"n": 1e3}"#), Ok(Some(1000)));
        assert_eq!(n(r#"{"n": 9223372036854775807}"#), Ok(Some(i64::MAX)));
        assert_eq!(n(r#"{"n": null}"#), Ok(None));
        assert_eq!(n("{}"), Ok(None));
        let ids = serde_json::from_str::<Fields>(r#"{"ids": [1, 2.0]}"#).unwrap().ids;
        assert_eq!(ids, Some(vec![1, 2]));
    }

    #[test]
    fn fractions_and_out_of_range_numbers_are_refused() {
        for json in [r#"{"n": 1.5}"#, r#"{"n": 9223372036854775808}"#, r#"{"n": 1e19}"#, r#"{"n": "1"}"#] {
            assert!(n(json).is_err(), "{json} was accepted");
        }
    }
}
