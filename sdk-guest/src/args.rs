//! Method arguments: one JSON object keyed by parameter name.

use serde_json::{Map, Value, json};

use crate::StoreError;

/// The arguments of one call, with typed accessors that fail with
/// [`StoreError::InvalidArgument`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Args(Map<String, Value>);

impl Args {
    /// Parses the JSON text the host passes (an object; empty text means no arguments).
    ///
    /// # Errors
    /// [`StoreError::InvalidArgument`] when the text is not a JSON object.
    pub fn parse(text: &str) -> Result<Args, StoreError> {
        if text.trim().is_empty() {
            return Ok(Args::default());
        }
        match serde_json::from_str(text) {
            Ok(Value::Object(map)) => Ok(Args(map)),
            Ok(_) => Err(StoreError::InvalidArgument(
                "arguments must be a JSON object".into(),
            )),
            Err(e) => Err(StoreError::InvalidArgument(format!(
                "arguments are not valid JSON: {e}"
            ))),
        }
    }

    /// Builds arguments from a JSON value (tests and native callers).
    pub fn from_json(value: Value) -> Args {
        match value {
            Value::Object(map) => Args(map),
            _ => Args::default(),
        }
    }

    /// The raw value of an argument, if given.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn missing(name: &str) -> StoreError {
        StoreError::InvalidArgument(format!("missing argument `{name}`"))
    }

    fn wrong(name: &str, what: &str) -> StoreError {
        StoreError::InvalidArgument(format!("argument `{name}` must be {what}"))
    }

    /// A required text argument.
    ///
    /// # Errors
    /// [`StoreError::InvalidArgument`] when missing or not a string.
    pub fn text(&self, name: &str) -> Result<String, StoreError> {
        self.opt_text(name)?.ok_or_else(|| Self::missing(name))
    }

    /// An optional text argument.
    ///
    /// # Errors
    /// [`StoreError::InvalidArgument`] when present but not a string.
    pub fn opt_text(&self, name: &str) -> Result<Option<String>, StoreError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Self::wrong(name, "a string")),
        }
    }

    /// A required bytes argument: a string (its UTF-8 bytes) or `{"hex": "…"}`.
    ///
    /// # Errors
    /// [`StoreError::InvalidArgument`] when missing or malformed.
    pub fn bytes(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        self.opt_bytes(name)?.ok_or_else(|| Self::missing(name))
    }

    /// An optional bytes argument.
    ///
    /// # Errors
    /// [`StoreError::InvalidArgument`] when present but malformed.
    pub fn opt_bytes(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => json_bytes(v)
                .map(Some)
                .ok_or_else(|| Self::wrong(name, "a string or {\"hex\": \"…\"}")),
        }
    }

    /// An optional integer argument.
    ///
    /// # Errors
    /// [`StoreError::InvalidArgument`] when present but not a 64-bit integer.
    pub fn opt_integer(&self, name: &str) -> Result<Option<i64>, StoreError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| Self::wrong(name, "an integer")),
        }
    }

    /// An optional boolean argument.
    ///
    /// # Errors
    /// [`StoreError::InvalidArgument`] when present but not a boolean.
    pub fn opt_boolean(&self, name: &str) -> Result<Option<bool>, StoreError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| Self::wrong(name, "true or false")),
        }
    }
}

/// Reads bytes from JSON: a string (UTF-8) or `{"hex": "…"}`.
pub fn json_bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Object(map) => {
            let hex = map.get("hex")?.as_str()?;
            if hex.len() % 2 != 0 {
                return None;
            }
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                .collect()
        }
        _ => None,
    }
}

/// Writes bytes as JSON: a string when they are UTF-8, else `{"hex": "…"}`.
pub fn bytes_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            json!({ "hex": hex })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_objects_and_bytes_in_both_forms() -> Result<(), StoreError> {
        let args = Args::parse(r#"{"a": "x", "b": {"hex": "00ff"}, "n": 3}"#)?;
        assert_eq!(args.bytes("a")?, b"x");
        assert_eq!(args.bytes("b")?, vec![0, 255]);
        assert_eq!(args.opt_integer("n")?, Some(3));
        assert!(args.text("missing").is_err());
        assert!(args.text("n").is_err());
        assert!(Args::parse("[1]").is_err());
        assert!(Args::parse("{").is_err());
        assert_eq!(bytes_json(&[0, 255]), json!({"hex": "00ff"}));
        Ok(())
    }
}
