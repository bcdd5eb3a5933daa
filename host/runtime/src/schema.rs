//! Store type descriptions (from `describe`) and checking call arguments against them.

use serde_json::{Map, Value, json};

use crate::bindings::lattice::store::types as wit;

/// Whether a method writes or reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    /// Writes: `prepare` then `apply`.
    Command,
    /// Reads: `query`.
    Query,
}

/// The JSON type of a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A string.
    Text,
    /// A string (UTF-8) or `{"hex": "…"}`.
    Bytes,
    /// A 64-bit integer.
    Integer,
    /// A boolean.
    Boolean,
    /// An array of strings.
    TextList,
    /// Any JSON value.
    Json,
}

/// One parameter of a method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    /// Name (the JSON key).
    pub name: String,
    /// Its type.
    pub kind: ParamKind,
    /// May be left out.
    pub optional: bool,
    /// For people.
    pub description: String,
}

/// One method of a store type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodInfo {
    /// Name.
    pub name: String,
    /// Command or query.
    pub kind: MethodKind,
    /// For people.
    pub description: String,
    /// Parameters.
    pub params: Vec<ParamInfo>,
    /// What the result holds.
    pub returns: String,
}

/// What a store type says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreDescriptor {
    /// Short name.
    pub name: String,
    /// Version.
    pub version: String,
    /// For people.
    pub description: String,
    /// Methods.
    pub methods: Vec<MethodInfo>,
}

impl From<wit::Descriptor> for StoreDescriptor {
    fn from(d: wit::Descriptor) -> StoreDescriptor {
        StoreDescriptor {
            name: d.name,
            version: d.version,
            description: d.description,
            methods: d
                .methods
                .into_iter()
                .map(|m| MethodInfo {
                    name: m.name,
                    kind: match m.kind {
                        wit::MethodKind::Command => MethodKind::Command,
                        wit::MethodKind::Query => MethodKind::Query,
                    },
                    description: m.description,
                    params: m
                        .params
                        .into_iter()
                        .map(|p| ParamInfo {
                            name: p.name,
                            kind: match p.kind {
                                wit::ParamKind::Text => ParamKind::Text,
                                wit::ParamKind::Bytes => ParamKind::Bytes,
                                wit::ParamKind::Integer => ParamKind::Integer,
                                wit::ParamKind::Boolean => ParamKind::Boolean,
                                wit::ParamKind::TextList => ParamKind::TextList,
                                wit::ParamKind::Json => ParamKind::Json,
                            },
                            optional: p.optional,
                            description: p.description,
                        })
                        .collect(),
                    returns: m.returns,
                })
                .collect(),
        }
    }
}

impl ParamKind {
    /// The kind's name in `--help`-style output.
    pub fn as_str(self) -> &'static str {
        match self {
            ParamKind::Text => "text",
            ParamKind::Bytes => "bytes",
            ParamKind::Integer => "integer",
            ParamKind::Boolean => "boolean",
            ParamKind::TextList => "text-list",
            ParamKind::Json => "json",
        }
    }

    fn accepts(self, value: &Value) -> bool {
        match self {
            ParamKind::Text => value.is_string(),
            ParamKind::Bytes => {
                value.is_string()
                    || value.get("hex").and_then(Value::as_str).is_some_and(|h| {
                        h.len() % 2 == 0 && h.chars().all(|c| c.is_ascii_hexdigit())
                    })
            }
            ParamKind::Integer => value.is_i64(),
            ParamKind::Boolean => value.is_boolean(),
            ParamKind::TextList => value
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_string)),
            ParamKind::Json => true,
        }
    }

    /// Turns a command-line word into a JSON value of this kind.
    pub fn parse_word(self, word: &str) -> Result<Value, String> {
        match self {
            ParamKind::Text | ParamKind::Bytes => Ok(Value::String(word.to_string())),
            ParamKind::Integer => word
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| format!("`{word}` is not an integer")),
            ParamKind::Boolean => word
                .parse::<bool>()
                .map(Value::from)
                .map_err(|_| format!("`{word}` is not true or false")),
            ParamKind::TextList => Ok(Value::Array(
                word.split(',')
                    .map(|s| Value::String(s.to_string()))
                    .collect(),
            )),
            ParamKind::Json => serde_json::from_str(word).map_err(|e| format!("not JSON: {e}")),
        }
    }
}

impl StoreDescriptor {
    /// Finds a method.
    pub fn method(&self, name: &str) -> Option<&MethodInfo> {
        self.methods.iter().find(|m| m.name == name)
    }

    /// Checks a call against the schema: the method exists, required parameters are given,
    /// every argument has the declared type and no unknown argument is passed.
    ///
    /// # Errors
    /// A message that says what is wrong and what the method takes.
    pub fn check_call(&self, method: &str, args: &Value) -> Result<&MethodInfo, String> {
        let Some(info) = self.method(method) else {
            let names: Vec<&str> = self.methods.iter().map(|m| m.name.as_str()).collect();
            return Err(format!(
                "{} has no method `{method}`; it offers: {}",
                self.name,
                names.join(", ")
            ));
        };
        let empty = Map::new();
        let Some(map) = args.as_object().or(args.is_null().then_some(&empty)) else {
            return Err("arguments must be a JSON object".into());
        };
        let usage = || info.usage();
        for p in &info.params {
            match map.get(&p.name).filter(|v| !v.is_null()) {
                None if !p.optional => {
                    return Err(format!("missing argument `{}`; usage: {}", p.name, usage()));
                }
                Some(v) if !p.kind.accepts(v) => {
                    return Err(format!(
                        "argument `{}` must be {}; usage: {}",
                        p.name,
                        p.kind.as_str(),
                        usage()
                    ));
                }
                _ => {}
            }
        }
        for key in map.keys() {
            if !info.params.iter().any(|p| &p.name == key) {
                return Err(format!("unknown argument `{key}`; usage: {}", usage()));
            }
        }
        Ok(info)
    }

    /// The descriptor as JSON (for `--json` and `module inspect`).
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "methods": self.methods.iter().map(|m| json!({
                "name": m.name,
                "kind": match m.kind { MethodKind::Command => "command", MethodKind::Query => "query" },
                "description": m.description,
                "params": m.params.iter().map(|p| json!({
                    "name": p.name, "kind": p.kind.as_str(), "optional": p.optional, "description": p.description,
                })).collect::<Vec<_>>(),
                "returns": m.returns,
            })).collect::<Vec<_>>(),
        })
    }
}

impl MethodInfo {
    /// A one-line usage string: `put key=<bytes> value=<bytes> [limit=<integer>]`.
    pub fn usage(&self) -> String {
        let mut out = self.name.clone();
        for p in &self.params {
            let part = format!("{}=<{}>", p.name, p.kind.as_str());
            if p.optional {
                out.push_str(&format!(" [{part}]"));
            } else {
                out.push_str(&format!(" {part}"));
            }
        }
        out
    }
}
