//! A serde serializer that writes canonical JSON directly, without building a
//! `serde_json::Value` first.
//!
//! Its output is byte-for-byte `crate::digest::canonical_json(&serde_json::to_value(v)?)`:
//! object keys sorted by their UTF-8 bytes (the last of duplicate keys wins, as in a `Value`
//! map), no whitespace, strings escaped and numbers written exactly as `serde_json` writes them,
//! `f32` widened to `f64`, non-finite floats as `null`. It exists because the audit sinks digest
//! every record on the append path, where building a `Value` tree costs several times more.

use std::borrow::Cow;
use std::fmt::Display;

use serde::ser::{self, Serialize};

type Error = serde_json::Error;

fn custom(msg: impl Display) -> Error {
    <Error as ser::Error>::custom(msg)
}

/// The canonical JSON of `value`.
#[cfg(test)]
pub(crate) fn to_canonical_string<T: Serialize + ?Sized>(value: &T) -> Result<String, Error> {
    let mut out = Vec::with_capacity(512);
    value.serialize(Canon { out: &mut out })?;
    // Every byte written is UTF-8 (escaped strings, ASCII punctuation and numbers).
    String::from_utf8(out).map_err(custom)
}

/// Appends the canonical JSON of `value` to `out`.
pub(crate) fn write_canonical<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> Result<(), Error> {
    value.serialize(Canon { out })
}

/// Runs `f` with an empty buffer taken from this thread's pool (and gives it back after).
pub(crate) fn with_buffer<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    let mut out = pool::take_bytes();
    let r = f(&mut out);
    pool::give_bytes(out);
    r
}

/// Per-thread free lists of the scratch buffers objects are collected in, so a steady stream of
/// records allocates nothing for them.
mod pool {
    use std::borrow::Cow;
    use std::cell::RefCell;

    pub(super) type Entries = Vec<(Cow<'static, str>, usize, usize)>;

    const KEEP: usize = 32;
    const MAX_BYTES: usize = 64 * 1024;

    thread_local! {
        static BYTES: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
        static ENTRIES: RefCell<Vec<Entries>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn take_bytes() -> Vec<u8> {
        BYTES
            .try_with(|p| p.try_borrow_mut().ok().and_then(|mut p| p.pop()))
            .ok()
            .flatten()
            .unwrap_or_else(|| Vec::with_capacity(512))
    }

    pub(super) fn give_bytes(mut b: Vec<u8>) {
        if b.capacity() > MAX_BYTES {
            return;
        }
        b.clear();
        let _ = BYTES.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                if p.len() < KEEP {
                    p.push(b);
                }
            }
        });
    }

    pub(super) fn take_entries() -> Entries {
        ENTRIES
            .try_with(|p| p.try_borrow_mut().ok().and_then(|mut p| p.pop()))
            .ok()
            .flatten()
            .unwrap_or_else(|| Vec::with_capacity(16))
    }

    pub(super) fn give_entries(mut e: Entries) {
        if e.capacity() > 1024 {
            return;
        }
        e.clear();
        let _ = ENTRIES.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                if p.len() < KEEP {
                    p.push(e);
                }
            }
        });
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) -> Result<(), Error> {
    serde_json::to_writer(out, s)
}

struct Canon<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> ser::Serializer for Canon<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Arr<'a>;
    type SerializeTuple = Arr<'a>;
    type SerializeTupleStruct = Arr<'a>;
    type SerializeTupleVariant = Arr<'a>;
    type SerializeMap = Obj<'a>;
    type SerializeStruct = Obj<'a>;
    type SerializeStructVariant = Obj<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        serde_json::to_writer(self.out, &v)
    }
    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        if let Ok(u) = u64::try_from(v) {
            self.serialize_u64(u)
        } else if let Ok(i) = i64::try_from(v) {
            self.serialize_i64(i)
        } else {
            Err(custom("number out of range"))
        }
    }
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        serde_json::to_writer(self.out, &v)
    }
    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        u64::try_from(v)
            .map_err(|_| custom("number out of range"))
            .and_then(|u| self.serialize_u64(u))
    }
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        if v.is_finite() {
            serde_json::to_writer(self.out, &v)
        } else {
            self.out.extend_from_slice(b"null");
            Ok(())
        }
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        let mut b = [0u8; 4];
        write_str(self.out, v.encode_utf8(&mut b))
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        write_str(self.out, v)
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        use ser::SerializeSeq as _;
        let mut seq = self.serialize_seq(Some(v.len()))?;
        for b in v {
            seq.serialize_element(b)?;
        }
        seq.end()
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        write_str(self.out, variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.out.push(b'{');
        write_str(self.out, variant)?;
        self.out.push(b':');
        value.serialize(Canon {
            out: &mut *self.out,
        })?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Arr<'a>, Error> {
        self.out.push(b'[');
        Ok(Arr {
            out: self.out,
            first: true,
            wrapped: false,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Arr<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Arr<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Arr<'a>, Error> {
        self.out.push(b'{');
        write_str(self.out, variant)?;
        self.out.extend_from_slice(b":[");
        Ok(Arr {
            out: self.out,
            first: true,
            wrapped: true,
        })
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Obj<'a>, Error> {
        Ok(Obj::new(self.out, false))
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Obj<'a>, Error> {
        Ok(Obj::new(self.out, false))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Obj<'a>, Error> {
        self.out.push(b'{');
        write_str(self.out, variant)?;
        self.out.push(b':');
        Ok(Obj::new(self.out, true))
    }
}

struct Arr<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    wrapped: bool,
}

impl Arr<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        value.serialize(Canon {
            out: &mut *self.out,
        })
    }

    fn finish(self) -> Result<(), Error> {
        self.out.push(b']');
        if self.wrapped {
            self.out.push(b'}');
        }
        Ok(())
    }
}

impl ser::SerializeSeq for Arr<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }
    fn end(self) -> Result<(), Error> {
        self.finish()
    }
}

impl ser::SerializeTuple for Arr<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }
    fn end(self) -> Result<(), Error> {
        self.finish()
    }
}

impl ser::SerializeTupleStruct for Arr<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }
    fn end(self) -> Result<(), Error> {
        self.finish()
    }
}

impl ser::SerializeTupleVariant for Arr<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }
    fn end(self) -> Result<(), Error> {
        self.finish()
    }
}

/// An object being collected: values are written into `scratch`, then entries are sorted by key
/// and copied out.
struct Obj<'a> {
    out: &'a mut Vec<u8>,
    scratch: Vec<u8>,
    entries: pool::Entries,
    key: Option<String>,
    wrapped: bool,
}

impl<'a> Obj<'a> {
    fn new(out: &'a mut Vec<u8>, wrapped: bool) -> Self {
        Obj {
            out,
            scratch: pool::take_bytes(),
            entries: pool::take_entries(),
            key: None,
            wrapped,
        }
    }

    fn entry<T: Serialize + ?Sized>(
        &mut self,
        key: Cow<'static, str>,
        value: &T,
    ) -> Result<(), Error> {
        let start = self.scratch.len();
        value.serialize(Canon {
            out: &mut self.scratch,
        })?;
        self.entries.push((key, start, self.scratch.len()));
        Ok(())
    }

    fn finish(mut self) -> Result<(), Error> {
        // Stable: among equal keys the last written stays last, and is the one kept.
        self.entries
            .sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        self.out.push(b'{');
        let mut first = true;
        for (i, (key, start, end)) in self.entries.iter().enumerate() {
            if self.entries.get(i + 1).is_some_and(|next| next.0 == *key) {
                continue;
            }
            if !first {
                self.out.push(b',');
            }
            first = false;
            write_str(self.out, key)?;
            self.out.push(b':');
            self.out
                .extend_from_slice(self.scratch.get(*start..*end).unwrap_or_default());
        }
        self.out.push(b'}');
        if self.wrapped {
            self.out.push(b'}');
        }
        pool::give_bytes(std::mem::take(&mut self.scratch));
        pool::give_entries(std::mem::take(&mut self.entries));
        Ok(())
    }
}

impl ser::SerializeMap for Obj<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.key = Some(key.serialize(KeySer)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let key = self
            .key
            .take()
            .ok_or_else(|| custom("serialize_value called before serialize_key"))?;
        self.entry(Cow::Owned(key), value)
    }
    fn end(self) -> Result<(), Error> {
        self.finish()
    }
}

impl ser::SerializeStruct for Obj<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.entry(Cow::Borrowed(key), value)
    }
    fn end(self) -> Result<(), Error> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for Obj<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.entry(Cow::Borrowed(key), value)
    }
    fn end(self) -> Result<(), Error> {
        self.finish()
    }
}

/// Map keys, as `serde_json` accepts them: strings, chars, integers (as their decimal text) and
/// unit variants.
struct KeySer;

fn key_error() -> Error {
    custom("key must be a string")
}

impl ser::Serializer for KeySer {
    type Ok = String;
    type Error = Error;
    type SerializeSeq = ser::Impossible<String, Error>;
    type SerializeTuple = ser::Impossible<String, Error>;
    type SerializeTupleStruct = ser::Impossible<String, Error>;
    type SerializeTupleVariant = ser::Impossible<String, Error>;
    type SerializeMap = ser::Impossible<String, Error>;
    type SerializeStruct = ser::Impossible<String, Error>;
    type SerializeStructVariant = ser::Impossible<String, Error>;

    fn serialize_str(self, v: &str) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_char(self, v: char) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_bool(self, _v: bool) -> Result<String, Error> {
        Err(key_error())
    }
    fn serialize_i8(self, v: i8) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_i16(self, v: i16) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_i32(self, v: i32) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_i64(self, v: i64) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_u8(self, v: u8) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_u16(self, v: u16) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_u32(self, v: u32) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_u64(self, v: u64) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_f32(self, _v: f32) -> Result<String, Error> {
        Err(key_error())
    }
    fn serialize_f64(self, _v: f64) -> Result<String, Error> {
        Err(key_error())
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<String, Error> {
        Err(key_error())
    }
    fn serialize_none(self) -> Result<String, Error> {
        Err(key_error())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<String, Error> {
        Err(key_error())
    }
    fn serialize_unit(self) -> Result<String, Error> {
        Err(key_error())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<String, Error> {
        Err(key_error())
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<String, Error> {
        Ok(variant.to_string())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<String, Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<String, Error> {
        Err(key_error())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(key_error())
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Error> {
        Err(key_error())
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Err(key_error())
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(key_error())
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(key_error())
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, Error> {
        Err(key_error())
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(key_error())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::Serialize;
    use serde_json::{Value, json};

    use super::to_canonical_string;
    use crate::digest::canonical_json;

    fn via_value<T: Serialize>(v: &T) -> String {
        canonical_json(&serde_json::to_value(v).unwrap())
    }

    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Tagged {
        Zeta { b: u8, a: Option<String> },
        Unit,
    }

    #[derive(Serialize)]
    enum External {
        New(f32),
        Tup(u8, i64),
        Rec { z: bool, y: char },
        Plain,
    }

    #[derive(Serialize)]
    struct Inner {
        z: f64,
        a: Vec<External>,
    }

    #[derive(Serialize)]
    struct Outer {
        when: &'static str,
        #[serde(flatten)]
        inner: Inner,
        tagged: Vec<Tagged>,
        map: BTreeMap<u32, &'static str>,
        bytes: &'static [u8],
        unit: (),
        big: u128,
        neg: i128,
        nan: f64,
    }

    #[test]
    fn matches_canonical_json_of_the_value_for_every_shape() {
        let v = Outer {
            when: "é\"\\\n\u{1f}\u{7f}🚀",
            inner: Inner {
                z: -0.0,
                a: vec![
                    External::New(1.1),
                    External::Tup(7, -9),
                    External::Rec { z: true, y: 'ß' },
                    External::Plain,
                ],
            },
            tagged: vec![Tagged::Zeta { b: 1, a: None }, Tagged::Unit],
            map: BTreeMap::from([(10, "ten"), (9, "nine")]),
            bytes: b"\x00\xff",
            unit: (),
            big: 18_446_744_073_709_551_615,
            neg: -5,
            nan: f64::NAN,
        };
        assert_eq!(to_canonical_string(&v).unwrap(), via_value(&v));
    }

    proptest! {
        #[test]
        fn matches_canonical_json_for_arbitrary_values(
            s in any::<String>(),
            f in any::<f64>(),
            i in any::<i64>(),
            keys in proptest::collection::vec(any::<String>(), 0..6),
        ) {
            let mut obj = serde_json::Map::new();
            for (n, k) in keys.iter().enumerate() {
                obj.insert(k.clone(), json!([n, s, f, i, {"k": k}]));
            }
            let v = Value::Object(obj);
            prop_assert_eq!(to_canonical_string(&v).unwrap(), canonical_json(&v));
            let floats = (f, f as f32, s.clone());
            prop_assert_eq!(to_canonical_string(&floats).unwrap(), via_value(&floats));
        }
    }
}
