//! Typed documents on the [`LwwTable`]: an intention's ops are a list of `(text key, JSON value
//! or delete)` entries, each written last-writer-wins. The system table and the root store are
//! built on this; a store type validates each entry's key and value in its own `apply`.
//!
//! Ops payload: the UTF-8 JSON `{"v": 1, "set": [[key, value-or-null], …]}`.

use serde_json::{Value, json};

use crate::{Host, Intention, LwwTable, Prepared, StoreError};

/// Most entries in one intention.
pub const MAX_ENTRIES: usize = 256;

/// One write of an entries payload: a key and its new value (`None` deletes it).
pub type Entry = (String, Option<Value>);

/// Encodes entries as an ops payload.
pub fn encode_entries(entries: &[Entry]) -> Vec<u8> {
    let set: Vec<Value> = entries
        .iter()
        .map(|(k, v)| json!([k, v.clone().unwrap_or(Value::Null)]))
        .collect();
    json!({ "v": 1, "set": set }).to_string().into_bytes()
}

fn reject(what: &str) -> StoreError {
    StoreError::Rejected(format!("malformed entries: {what}"))
}

/// Decodes an entries payload.
///
/// # Errors
/// [`StoreError::Rejected`] when the payload is not a version-1 entries object, has more than
/// [`MAX_ENTRIES`] entries, or repeats a key.
pub fn decode_entries(ops: &[u8]) -> Result<Vec<Entry>, StoreError> {
    let value: Value = serde_json::from_slice(ops).map_err(|_| reject("not JSON"))?;
    if value.get("v") != Some(&json!(1)) {
        return Err(reject("unknown version"));
    }
    let Some(Value::Array(set)) = value.get("set") else {
        return Err(reject("`set` must be an array"));
    };
    if set.is_empty() || set.len() > MAX_ENTRIES {
        return Err(reject("1 to 256 entries"));
    }
    let mut out: Vec<Entry> = Vec::with_capacity(set.len());
    for item in set {
        let Some([Value::String(key), value]) = item.as_array().map(Vec::as_slice) else {
            return Err(reject("each entry is [key, value]"));
        };
        if out.iter().any(|(k, _)| k == key) {
            return Err(reject("a key appears twice"));
        }
        let value = (!value.is_null()).then(|| value.clone());
        out.push((key.clone(), value));
    }
    Ok(out)
}

impl LwwTable {
    /// Prepares an intention writing `entries`: the ops payload plus the current heads of every
    /// key written as causal deps (so the write supersedes what this node has seen).
    ///
    /// # Errors
    /// [`StoreError::InvalidArgument`] for an empty or oversized list; [`StoreError::Internal`]
    /// for a malformed stored entry.
    pub fn prepare_entries(
        &self,
        host: &dyn Host,
        entries: &[Entry],
    ) -> Result<Prepared, StoreError> {
        if entries.is_empty() || entries.len() > MAX_ENTRIES {
            return Err(StoreError::InvalidArgument(format!(
                "a write holds 1 to {MAX_ENTRIES} entries"
            )));
        }
        let keys: Vec<&[u8]> = entries.iter().map(|(k, _)| k.as_bytes()).collect();
        let deps = self.deps_for(host, &keys)?;
        Ok(Prepared {
            deps,
            ..Prepared::ops(encode_entries(entries))
        })
    }

    /// Applies one decoded entry written by `op`. Returns the key's new winning value when
    /// the write changed the table (`Some(None)` when the winner is now a delete).
    ///
    /// # Errors
    /// [`StoreError::Internal`] for a malformed stored entry.
    pub fn apply_entry(
        &self,
        host: &mut dyn Host,
        entry: &Entry,
        op: &Intention,
    ) -> Result<Option<Option<Value>>, StoreError> {
        let bytes = entry.1.as_ref().map(|v| v.to_string().into_bytes());
        let Some(read) = self.write(host, entry.0.as_bytes(), bytes.as_deref(), op)? else {
            return Ok(None);
        };
        Ok(Some(match read.value {
            Some(v) => Some(serde_json::from_slice(&v).map_err(|_| {
                StoreError::Internal(format!("stored value of `{}` is not JSON", entry.0))
            })?),
            None => None,
        }))
    }

    /// Reads a JSON value: the winner (`None` when deleted or never written) and whether the
    /// key is conflicted.
    ///
    /// # Errors
    /// [`StoreError::Internal`] for a malformed stored entry.
    pub fn get_json(
        &self,
        host: &dyn Host,
        key: &str,
    ) -> Result<(Option<Value>, bool), StoreError> {
        let Some(read) = self.get(host, key.as_bytes())? else {
            return Ok((None, false));
        };
        let value = match read.value {
            Some(v) => Some(serde_json::from_slice(&v).map_err(|_| {
                StoreError::Internal(format!("stored value of `{key}` is not JSON"))
            })?),
            None => None,
        };
        Ok((value, read.conflicted))
    }

    /// Lists live JSON values under a text prefix, in key order: `(key, value, conflicted)`.
    ///
    /// # Errors
    /// [`StoreError::Internal`] for a malformed stored entry.
    pub fn list_json(
        &self,
        host: &dyn Host,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Value, bool)>, StoreError> {
        let mut out = Vec::new();
        for (key, read) in self.list(host, prefix.as_bytes(), limit)? {
            let Some(bytes) = read.value else { continue };
            let key = String::from_utf8(key)
                .map_err(|_| StoreError::Internal("stored key is not UTF-8".into()))?;
            let value = serde_json::from_slice(&bytes).map_err(|_| {
                StoreError::Internal(format!("stored value of `{key}` is not JSON"))
            })?;
            out.push((key, value, read.conflicted));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_bad_payloads_are_rejected() {
        let entries = vec![
            ("a".to_string(), Some(json!({"x": 1}))),
            ("b".to_string(), None),
        ];
        assert_eq!(
            decode_entries(&encode_entries(&entries)).ok(),
            Some(entries)
        );
        for bad in [
            &b"nope"[..],
            br#"{"v":2,"set":[["a",1]]}"#,
            br#"{"v":1,"set":[]}"#,
            br#"{"v":1,"set":[["a",1],["a",2]]}"#,
            br#"{"v":1,"set":[[1,1]]}"#,
        ] {
            assert!(
                decode_entries(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
