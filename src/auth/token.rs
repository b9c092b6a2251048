//! Strict parsing of a compact JWS: three base64url segments, a header that is a JSON object
//! with a string `alg` and no `crit`, a payload that is a JSON object without duplicate keys.
//! Header parameters that point at keys (`jku`, `x5u`, `x5c`, `jwk`) are never read.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

use super::reasons::{CRIT, MALFORMED};
use super::Rejection;

/// The three segments of a token, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segments<'a> {
    pub header: &'a str,
    pub payload: &'a str,
    pub signature: &'a str,
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a str,
}

/// The header parameters we act on; everything else is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoseHeader {
    pub alg: String,
    /// Opaque: only ever a map key.
    pub kid: Option<String>,
}

const fn malformed(description: &'static str) -> Rejection {
    Rejection::new(MALFORMED, description)
}

/// Checks the character set and splits into exactly three segments. Whitespace, padding and
/// anything after the token are rejected here, before any decoding.
pub(crate) fn split(token: &str) -> Result<Segments<'_>, Rejection> {
    let valid = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
    if !token.bytes().all(valid) {
        return Err(malformed("token contains invalid characters"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("token must have three segments"));
    };
    // An empty signature is left to the algorithm check (`alg: none` tokens end in a dot).
    if header.is_empty() || payload.is_empty() {
        return Err(malformed("empty token segment"));
    }
    // A base64 text of length 4n+1 can never decode.
    if [header, payload, signature]
        .iter()
        .any(|s| s.len() % 4 == 1)
    {
        return Err(malformed("token segment is not base64url"));
    }
    let signing_input = &token[..header.len() + 1 + payload.len()];
    Ok(Segments {
        header,
        payload,
        signature,
        signing_input,
    })
}

/// Decodes unpadded base64url strictly (no padding, no whitespace, canonical trailing bits).
///
/// jsonwebtoken exposes its decoder only through key constructors: `from_ed_components` does
/// nothing but decode its argument, so it serves as one. Swap for `base64::URL_SAFE_NO_PAD`
/// if that crate becomes a direct dependency.
pub(crate) fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    let key = jsonwebtoken::DecodingKey::from_ed_components(text).ok()?;
    key.try_get_as_bytes().ok().map(<[u8]>::to_vec)
}

/// Parses the header segment; `crit` in any form is refused (we implement no extensions).
pub(crate) fn parse_header(segment: &str) -> Result<JoseHeader, Rejection> {
    let bytes = b64url_decode(segment).ok_or(malformed("token header is not base64url"))?;
    let mut header = strict_object(&bytes).ok_or(malformed("token header is not a JSON object"))?;
    if header.contains_key("crit") {
        return Err(Rejection::new(
            CRIT,
            "critical header parameters are not supported",
        ));
    }
    if header.contains_key("enc") {
        return Err(malformed("encrypted tokens are not supported"));
    }
    let alg = match header.remove("alg") {
        Some(Value::String(alg)) => alg,
        _ => return Err(malformed("token header has no alg")),
    };
    let kid = match header.remove("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid),
        Some(_) => return Err(malformed("token kid must be a string")),
    };
    Ok(JoseHeader { alg, kid })
}

/// Parses the payload segment into its claims.
pub(crate) fn parse_payload(segment: &str) -> Result<Map<String, Value>, Rejection> {
    let bytes = b64url_decode(segment).ok_or(malformed("token payload is not base64url"))?;
    strict_object(&bytes).ok_or(malformed("token payload is not a JSON object"))
}

/// A JSON object with no duplicate key at any depth (serde_json would keep the last one
/// silently, so two parsers could disagree on what a token says).
pub(crate) fn strict_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Strict>(bytes) {
        Ok(Strict(Value::Object(map))) => Some(map),
        _ => None,
    }
}

/// A `serde_json::Value` whose deserialisation fails on a repeated object key.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(Value::Number(v.into())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(Value::Number(v.into())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Strict, E> {
        Number::from_f64(v)
            .map(|n| Strict(Value::Number(n)))
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Value::String(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Strict(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom("duplicate key"));
            }
            let Strict(value) = map.next_value()?;
            out.insert(key, value);
        }
        Ok(Strict(Value::Object(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rules() {
        assert!(split("aaaa.bbbb.cccc").is_ok());
        assert!(split("aaaa.bbbb.").is_ok());
        for bad in [
            "aaaa.bbbb",
            "aaaa.bbbb.cccc.dddd",
            ".bbbb.cccc",
            "aaaa..cccc",
            "aaaa.bbbb.cccc junk",
            "aaaa.bb bb.cccc",
            "aaaa.bbbb.cc==",
            "aaaa.bbbbb.cccc",
            "aaaa.bbbb.cccc\n",
        ] {
            assert_eq!(split(bad).unwrap_err().reason, MALFORMED, "{bad:?}");
        }
        let s = split("aaaa.bbbb.cccc").unwrap();
        assert_eq!(s.signing_input, "aaaa.bbbb");
        assert_eq!(s.signature, "cccc");
    }

    #[test]
    fn base64url_is_strict() {
        assert_eq!(b64url_decode("aGk").as_deref(), Some(&b"hi"[..]));
        assert_eq!(b64url_decode("_-8").as_deref(), Some(&[0xff, 0xef][..]));
        assert!(b64url_decode("aGk=").is_none());
        assert!(
            b64url_decode("aGl").is_none(),
            "non-canonical trailing bits"
        );
        assert!(b64url_decode("a+k").is_none());
    }

    #[test]
    fn duplicate_keys_at_any_depth_are_refused() {
        assert!(strict_object(br#"{"a":1,"b":{"c":[1,{"d":2}]}}"#).is_some());
        assert!(strict_object(br#"{"a":1,"a":2}"#).is_none());
        assert!(strict_object(br#"{"a":{"b":1,"b":1}}"#).is_none());
        assert!(strict_object(br#"{"a":[{"b":1,"b":1}]}"#).is_none());
        assert!(strict_object(br#"[1]"#).is_none());
        assert!(strict_object(br#""x""#).is_none());
        assert!(strict_object(br#"{"a":1} x"#).is_none());
        let big = strict_object(br#"{"n":18446744073709551615,"f":1.5,"z":null}"#).unwrap();
        assert_eq!(big["n"], serde_json::json!(u64::MAX));
        assert_eq!(big["f"], serde_json::json!(1.5));
        assert_eq!(big["z"], Value::Null);
    }
}
