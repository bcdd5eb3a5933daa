//! The root store type (`rootstore`): mesh-level metadata, last-writer-wins per key.
//!
//! | key | value |
//! |---|---|
//! | `mesh/name` | `{"name"}`: the mesh's name |
//! | `dir/<store id>` | `{"name", "module"}`: a store directory entry |
//! | `app/<app id>` | `{"store"}`: which store serves an app |
//!
//! Ops are entries payloads ([`lattice_sdk::encode_entries`]). Every applied change emits an
//! event on the topic `mesh`, `dir` or `app` with payload `{"key", "value"}`.
#![deny(missing_docs)]

use lattice_sdk::{
    Args, Descriptor, Entry, Host, Intention, LwwTable, MethodKind, ParamKind, Prepared,
    StoreError, StoreType, decode_entries, method, param,
};
use serde_json::{Value, json};

const TABLE: &[u8] = b"root/";
/// Longest name (bytes).
pub const MAX_NAME: usize = 256;

/// The root store type.
#[derive(Debug)]
pub struct RootStore;

fn is_id(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_app_id(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

fn id_arg(args: &Args, name: &str) -> Result<String, StoreError> {
    let text = args.text(name)?.to_ascii_lowercase();
    if !is_id(&text) {
        return Err(StoreError::InvalidArgument(format!(
            "`{name}` must be 64 hex digits"
        )));
    }
    Ok(text)
}

fn text_ok(value: &Value, field: &str) -> bool {
    value
        .get(field)
        .and_then(Value::as_str)
        .is_some_and(|t| t.len() <= MAX_NAME)
}

fn id_ok(value: &Value, field: &str) -> bool {
    value.get(field).and_then(Value::as_str).is_some_and(is_id)
}

/// Checks an entry's key and value shape.
fn validate(key: &str, value: Option<&Value>) -> Result<(), StoreError> {
    let ok = match (key.split_once('/'), value) {
        (Some(("mesh", "name")), Some(v)) => text_ok(v, "name"),
        (Some(("dir", id)), None) => is_id(id),
        (Some(("dir", id)), Some(v)) => is_id(id) && text_ok(v, "name") && id_ok(v, "module"),
        (Some(("app", app)), None) => is_app_id(app),
        (Some(("app", app)), Some(v)) => is_app_id(app) && id_ok(v, "store"),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(StoreError::Rejected(format!(
            "root store entry `{key}` is not valid"
        )))
    }
}

fn entries_for(method: &str, args: &Args) -> Result<Vec<Entry>, StoreError> {
    let name = |field: &str| -> Result<String, StoreError> {
        let text = args.text(field)?;
        if text.len() > MAX_NAME {
            return Err(StoreError::InvalidArgument(format!(
                "`{field}` is longer than {MAX_NAME} bytes"
            )));
        }
        Ok(text)
    };
    let app = || -> Result<String, StoreError> {
        let app = args.text("app_id")?;
        if !is_app_id(&app) {
            return Err(StoreError::InvalidArgument(
                "`app_id` is 1-64 of a-z 0-9 - .".into(),
            ));
        }
        Ok(app)
    };
    Ok(match method {
        "set-mesh-name" => vec![("mesh/name".into(), Some(json!({"name": name("name")?})))],
        "add-entry" => vec![(
            format!("dir/{}", id_arg(args, "id")?),
            Some(json!({"name": name("name")?, "module": id_arg(args, "module")?})),
        )],
        "remove-entry" => vec![(format!("dir/{}", id_arg(args, "id")?), None)],
        "bind-app" => vec![(
            format!("app/{}", app()?),
            Some(json!({"store": id_arg(args, "store")?})),
        )],
        "unbind-app" => vec![(format!("app/{}", app()?), None)],
        other => return Err(StoreError::UnknownMethod(other.into())),
    })
}

impl StoreType for RootStore {
    fn describe() -> Descriptor {
        use MethodKind::{Command, Query};
        use ParamKind::Text;
        Descriptor {
            name: "rootstore".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "mesh-level metadata: mesh name, store directory, app bindings".into(),
            methods: vec![
                method(
                    "set-mesh-name",
                    Command,
                    "name the mesh",
                    vec![param("name", Text, "the name")],
                    "{}",
                ),
                method(
                    "add-entry",
                    Command,
                    "list a store in the directory",
                    vec![
                        param("id", Text, "store id"),
                        param("name", Text, "its name"),
                        param("module", Text, "its module hash"),
                    ],
                    "{}",
                ),
                method(
                    "remove-entry",
                    Command,
                    "drop a directory entry",
                    vec![param("id", Text, "store id")],
                    "{}",
                ),
                method(
                    "bind-app",
                    Command,
                    "serve an app from a store",
                    vec![
                        param("app_id", Text, "the app id"),
                        param("store", Text, "store id"),
                    ],
                    "{}",
                ),
                method(
                    "unbind-app",
                    Command,
                    "drop an app binding",
                    vec![param("app_id", Text, "the app id")],
                    "{}",
                ),
                method("mesh", Query, "the mesh name", vec![], "{\"name\"}"),
                method(
                    "entries",
                    Query,
                    "the store directory",
                    vec![],
                    "{\"items\": [{\"id\", \"name\", \"module\", \"conflicted\"}]}",
                ),
                method(
                    "apps",
                    Query,
                    "app bindings",
                    vec![],
                    "{\"items\": [{\"app_id\", \"store\"}]}",
                ),
            ],
        }
    }

    fn prepare(host: &dyn Host, method: &str, args: &Args) -> Result<Prepared, StoreError> {
        let entries = entries_for(method, args)?;
        LwwTable::new(TABLE).prepare_entries(host, &entries)
    }

    fn apply(host: &mut dyn Host, op: &Intention) -> Result<(), StoreError> {
        let entries = decode_entries(&op.ops)?;
        for (key, value) in &entries {
            validate(key, value.as_ref())?;
        }
        let table = LwwTable::new(TABLE);
        for entry in &entries {
            if let Some(now) = table.apply_entry(host, entry, op)? {
                let topic = entry.0.split('/').next().unwrap_or("mesh");
                host.emit(
                    topic,
                    json!({"key": entry.0, "value": now}).to_string().as_bytes(),
                );
            }
        }
        Ok(())
    }

    fn query(host: &dyn Host, method: &str, _args: &Args) -> Result<Value, StoreError> {
        let table = LwwTable::new(TABLE);
        match method {
            "mesh" => Ok(
                json!({"name": table.get_json(host, "mesh/name")?.0.and_then(|v| v.get("name").cloned())}),
            ),
            "entries" => Ok(
                json!({"items": table.list_json(host, "dir/", usize::MAX)?.into_iter().map(|(k, mut v, c)| {
                v["id"] = json!(k.trim_start_matches("dir/"));
                v["conflicted"] = json!(c);
                v
            }).collect::<Vec<_>>()}),
            ),
            "apps" => Ok(
                json!({"items": table.list_json(host, "app/", usize::MAX)?.into_iter().map(|(k, v, _)| {
                json!({"app_id": k.trim_start_matches("app/"), "store": v["store"]})
            }).collect::<Vec<_>>()}),
            ),
            other => Err(StoreError::UnknownMethod(other.into())),
        }
    }
}

lattice_sdk::export_store!(RootStore);

#[cfg(test)]
mod tests {
    use lattice_sdk::{Hlc, MemoryHost};

    use super::*;

    #[test]
    fn directory_entries_and_bad_keys() -> Result<(), StoreError> {
        let mut host = MemoryHost::new();
        let id = "ab".repeat(32);
        let prepared = RootStore::prepare(
            &host,
            "add-entry",
            &Args::from_json(json!({"id": id, "name": "notes", "module": id})),
        )?;
        let op = Intention {
            hash: vec![1; 32],
            author: vec![1; 32],
            hlc: Hlc {
                wall_ms: 1,
                counter: 0,
            },
            deps: prepared.deps,
            ops: prepared.ops,
        };
        RootStore::apply(&mut host, &op)?;
        let entries = RootStore::query(&host, "entries", &Args::from_json(json!({})))?;
        assert_eq!(entries["items"][0]["name"], "notes");
        assert!(validate("dir/xyz", None).is_err());
        assert!(validate("mesh/name", None).is_err());
        Ok(())
    }
}
