//! Canonical JSON and SHA-256 digests.
//!
//! A digest must be the same on every machine for the same content: objects are written with their
//! keys sorted (by UTF-8 bytes), without whitespace, numbers as `serde_json` writes them. Policy
//! digests and audit-record digests both use this form.

use std::fmt;
use std::io;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// A SHA-256 content digest, written `sha256:<64 lowercase hex digits>`.
// Shared text: cloning is a reference count (every call's result carries its policy's digest).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct ContentDigest(Arc<str>);

impl ContentDigest {
    /// The digest of raw bytes.
    #[must_use]
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self::from_hash(&Sha256::digest(bytes))
    }

    fn from_hash(hash: &[u8]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = Vec::with_capacity(7 + 2 * hash.len());
        s.extend_from_slice(b"sha256:");
        for &b in hash {
            s.push(HEX[usize::from(b >> 4)]);
            s.push(HEX[usize::from(b & 0xf)]);
        }
        // Only ASCII was written.
        ContentDigest(String::from_utf8(s).unwrap_or_default().into())
    }

    /// The digest of a value's canonical JSON form.
    ///
    /// # Errors
    /// When the value cannot be represented as JSON (e.g. a map with non-string keys).
    pub fn of_json<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        let v = serde_json::to_value(value)?;
        Ok(Self::of_value(&v))
    }

    /// The digest of a JSON value's canonical form (streamed into the hash, never built as
    /// text).
    #[must_use]
    pub fn of_value(value: &Value) -> Self {
        let mut h = HashWriter(Sha256::new());
        write_canonical(value, &mut h);
        Self::from_hash(&h.0.finalize())
    }

    /// Parses `sha256:<64 hex>`.
    ///
    /// # Errors
    /// A message when the string is not of that form.
    pub fn parse(s: &str) -> Result<Self, String> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("`{s}` is not a digest: expected `sha256:<64 hex digits>`"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(format!(
                "`{s}` is not a digest: expected `sha256:` then 64 lowercase hex digits"
            ));
        }
        Ok(ContentDigest(s.into()))
    }

    /// SHA-256 over `parts`, each prefixed by its length (so the parts cannot run into each
    /// other): for digests over a few fields that are not worth building JSON for.
    pub(crate) fn of_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut h = Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        Self::from_hash(&h.finalize())
    }

    /// The digest as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for display.
    #[must_use]
    pub fn short(&self) -> &str {
        self.0.get(7..19).unwrap_or(&self.0)
    }
}

impl fmt::Display for ContentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ContentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentDigest({})", self.0)
    }
}

/// Writes `value` in canonical form: sorted keys, no insignificant whitespace.
#[must_use]
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    // serde_json writes valid UTF-8 only.
    String::from_utf8(out).unwrap_or_default()
}

/// Feeds what it is given to a SHA-256 hasher.
struct HashWriter(Sha256);

impl io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the canonical form of `value` to `out`. Keys and scalars are written by serde_json
/// straight into `out` (no string per key or number); objects whose keys are already in order
/// (serde_json's default map is sorted) are not sorted again.
fn write_canonical<W: io::Write>(value: &Value, out: &mut W) {
    // Writing to a Vec or a hasher cannot fail, and serializing a string or a scalar cannot
    // either: the results are ignored.
    match value {
        Value::Object(map) => {
            let _ = out.write_all(b"{");
            let mut first = true;
            let mut entry = |k: &String, v: &Value, out: &mut W| {
                if !first {
                    let _ = out.write_all(b",");
                }
                first = false;
                let _ = serde_json::to_writer(&mut *out, k);
                let _ = out.write_all(b":");
                write_canonical(v, out);
            };
            if map.keys().is_sorted() {
                for (k, v) in map {
                    entry(k, v, out);
                }
            } else {
                let mut keys: Vec<(&String, &Value)> = map.iter().collect();
                keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
                for (k, v) in keys {
                    entry(k, v, out);
                }
            }
            let _ = out.write_all(b"}");
        }
        Value::Array(items) => {
            let _ = out.write_all(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    let _ = out.write_all(b",");
                }
                write_canonical(item, out);
            }
            let _ = out.write_all(b"]");
        }
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": "s"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":"s","y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), r#"{"a":{"x":"s","y":[1,2]},"b":1}"#);
        assert_eq!(
            ContentDigest::of_json(&a).unwrap(),
            ContentDigest::of_json(&b).unwrap()
        );
    }

    #[test]
    fn streaming_the_canonical_form_into_the_hash_gives_the_same_digest() {
        let v: Value = serde_json::from_str(
            r#"{"z": [1, 2.5, -3e-7, null, true], "a\"b": {"\u00e9": "x\ny", "k": {}}, "m": []}"#,
        )
        .unwrap();
        assert_eq!(
            canonical_json(&v),
            r#"{"a\"b":{"k":{},"é":"x\ny"},"m":[],"z":[1,2.5,-3e-7,null,true]}"#
        );
        assert_eq!(
            ContentDigest::of_value(&v),
            ContentDigest::of_bytes(canonical_json(&v).as_bytes())
        );
        assert_eq!(
            ContentDigest::of_json(&v).unwrap(),
            ContentDigest::of_value(&v)
        );
    }

    #[test]
    fn known_vector_and_parse() {
        let d = ContentDigest::of_bytes(b"abc");
        assert_eq!(
            d.as_str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(ContentDigest::parse(d.as_str()).unwrap(), d);
        assert!(ContentDigest::parse("sha256:xyz").is_err());
        assert!(ContentDigest::parse("md5:abc").is_err());
        assert_eq!(d.short(), "ba7816bf8f01");
    }
}
