//! Deep merge of layer documents: objects key by key, everything else replaced.

use serde_json::Value;

/// Keys that belong to a file, never inherited.
const OWN_KEYS: [&str; 2] = ["$schema", "description"];

/// Merges `child` over `parent`. A `null` in the child inherits the parent's value.
pub(crate) fn merge(parent: &Value, child: &Value) -> Value {
    match (parent, child) {
        (Value::Object(p), Value::Object(c)) => {
            let mut out = p.clone();
            for k in OWN_KEYS {
                out.remove(k);
            }
            for (k, v) in c {
                if v.is_null() {
                    continue;
                }
                let merged = match out.get(k) {
                    Some(pv) => merge(pv, v),
                    None => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (_, c) if c.is_null() => parent.clone(),
        (_, c) => c.clone(),
    }
}

/// Whether `doc` holds a value at the `.`-separated object path.
pub(crate) fn has_path(doc: &Value, path: &[&str]) -> bool {
    let mut cur = doc;
    for seg in path {
        match cur.get(seg) {
            Some(v) if !v.is_null() => cur = v,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_merge_and_scalars_replace() {
        let p = json!({"a": {"x": 1, "y": [1, 2]}, "b": 1, "description": "parent"});
        let c = json!({"a": {"y": [3], "z": null}, "c": true});
        assert_eq!(
            merge(&p, &c),
            json!({"a": {"x": 1, "y": [3]}, "b": 1, "c": true})
        );
        assert!(has_path(&p, &["a", "x"]));
        assert!(!has_path(&c, &["a", "z"]));
    }
}
