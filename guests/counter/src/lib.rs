//! The counter store type (`counter`): named counters that converge under concurrency.
//!
//! Each author's contribution to a counter is kept separately (a PN-counter: one running sum
//! per author) and a read sums them, so concurrent increments on different peers all count
//! and the order they arrive in does not matter.
//!
//! Ops payload: `name_len u16 | name | delta i64`, little-endian.
#![deny(missing_docs)]

use lattice_sdk::{
    Args, Descriptor, Host, Intention, MethodKind, ParamKind, Prepared, StoreError, StoreType,
    method, optional_param,
};
use serde_json::{Value, json};

/// The counter store type.
#[derive(Debug)]
pub struct Counter;

const DEFAULT: &str = "default";

fn key(name: &str, author: &[u8]) -> Vec<u8> {
    [b"c/".as_slice(), name.as_bytes(), b"/", author].concat()
}

fn read_i64(bytes: Option<Vec<u8>>) -> Result<i64, StoreError> {
    match bytes {
        None => Ok(0),
        Some(b) => <[u8; 8]>::try_from(b.as_slice())
            .map(i64::from_le_bytes)
            .map_err(|_| StoreError::Internal("counter entry is malformed".into())),
    }
}

fn total(host: &dyn Host, name: &str) -> Result<(i64, usize), StoreError> {
    let prefix = [b"c/".as_slice(), name.as_bytes(), b"/"].concat();
    let mut end = prefix.clone();
    if let Some(last) = end.last_mut() {
        *last += 1; // '/' + 1 = '0'
    }
    let mut sum = 0i64;
    let mut authors = 0;
    let mut start = prefix;
    loop {
        let page = host.scan(&start, Some(&end), 1000);
        for (_, v) in &page {
            sum = sum.wrapping_add(read_i64(Some(v.clone()))?);
            authors += 1;
        }
        match page.last() {
            Some((k, _)) if page.len() == 1000 => {
                start = k.clone();
                start.push(0);
            }
            _ => break,
        }
    }
    Ok((sum, authors))
}

fn prepare_delta(args: &Args, sign: i64) -> Result<Prepared, StoreError> {
    let name = args.opt_text("name")?.unwrap_or_else(|| DEFAULT.into());
    if name.is_empty() || name.len() > 256 || name.contains('/') {
        return Err(StoreError::InvalidArgument(
            "counter name must be 1–256 bytes without '/'".into(),
        ));
    }
    let by = args.opt_integer("by")?.unwrap_or(1);
    if by < 0 {
        return Err(StoreError::InvalidArgument(
            "`by` must not be negative".into(),
        ));
    }
    let mut ops = (name.len() as u16).to_le_bytes().to_vec();
    ops.extend_from_slice(name.as_bytes());
    ops.extend_from_slice(&(sign * by).to_le_bytes());
    Ok(Prepared::ops(ops))
}

impl StoreType for Counter {
    fn describe() -> Descriptor {
        use MethodKind::{Command, Query};
        use ParamKind::{Integer, Text};
        let name = || optional_param("name", Text, "counter name (default \"default\")");
        Descriptor {
            name: "counter".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "named counters; concurrent increments all count".into(),
            methods: vec![
                method(
                    "increment",
                    Command,
                    "add to a counter",
                    vec![name(), optional_param("by", Integer, "amount, default 1")],
                    "{}",
                ),
                method(
                    "decrement",
                    Command,
                    "subtract from a counter",
                    vec![name(), optional_param("by", Integer, "amount, default 1")],
                    "{}",
                ),
                method(
                    "get",
                    Query,
                    "read a counter",
                    vec![name()],
                    "{\"value\": integer, \"authors\": integer}",
                ),
            ],
        }
    }

    fn prepare(_: &dyn Host, method: &str, args: &Args) -> Result<Prepared, StoreError> {
        match method {
            "increment" => prepare_delta(args, 1),
            "decrement" => prepare_delta(args, -1),
            other => Err(StoreError::UnknownMethod(other.into())),
        }
    }

    fn apply(host: &mut dyn Host, op: &Intention) -> Result<(), StoreError> {
        let bad = || StoreError::Rejected("malformed counter op".into());
        let ops = &op.ops;
        let len = u16::from_le_bytes(
            ops.get(..2)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        ) as usize;
        let name = std::str::from_utf8(ops.get(2..2 + len).ok_or_else(bad)?).map_err(|_| bad())?;
        let delta = i64::from_le_bytes(
            ops.get(2 + len..)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        );
        let k = key(name, &op.author);
        let mine = read_i64(host.get(&k))?.wrapping_add(delta);
        host.set(&k, &mine.to_le_bytes());
        let (value, _) = total(host, name)?;
        host.emit(
            "counter",
            json!({"name": name, "value": value}).to_string().as_bytes(),
        );
        Ok(())
    }

    fn query(host: &dyn Host, method: &str, args: &Args) -> Result<Value, StoreError> {
        match method {
            "get" => {
                let name = args.opt_text("name")?.unwrap_or_else(|| DEFAULT.into());
                let (value, authors) = total(host, &name)?;
                Ok(json!({"value": value, "authors": authors}))
            }
            other => Err(StoreError::UnknownMethod(other.into())),
        }
    }
}

lattice_sdk::export_store!(Counter);

#[cfg(test)]
mod tests {
    use lattice_sdk::{Hlc, MemoryHost};

    use super::*;

    fn op(author: u8, n: u8, prepared: Prepared) -> Intention {
        Intention {
            hash: vec![n; 32],
            author: vec![author; 32],
            hlc: Hlc {
                wall_ms: 1,
                counter: 0,
            },
            deps: vec![],
            ops: prepared.ops,
        }
    }

    #[test]
    fn concurrent_increments_from_several_authors_all_count_in_any_order() -> Result<(), StoreError>
    {
        let inc = |by: i64| {
            Counter::prepare(
                &MemoryHost::new(),
                "increment",
                &Args::from_json(json!({"by": by})),
            )
        };
        let dec = Counter::prepare(
            &MemoryHost::new(),
            "decrement",
            &Args::from_json(json!({"by": 2})),
        )?;
        let ops = [
            op(1, 1, inc(5)?),
            op(2, 2, inc(3)?),
            op(1, 3, dec),
            op(3, 4, inc(1)?),
        ];
        let mut states = Vec::new();
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]] {
            let mut host = MemoryHost::new();
            for i in order {
                Counter::apply(&mut host, &ops[i])?;
            }
            assert_eq!(
                Counter::query(&host, "get", &Args::default())?,
                json!({"value": 7, "authors": 3})
            );
            states.push(host.state_bytes());
        }
        assert!(states.windows(2).all(|w| w[0] == w[1]));
        Ok(())
    }

    #[test]
    fn bad_arguments_and_ops_are_refused() {
        let host = MemoryHost::new();
        assert!(Counter::prepare(&host, "increment", &Args::from_json(json!({"by": -1}))).is_err());
        assert!(
            Counter::prepare(&host, "increment", &Args::from_json(json!({"name": "a/b"}))).is_err()
        );
        let mut host = MemoryHost::new();
        let bad = Intention {
            hash: vec![1; 32],
            author: vec![1; 32],
            hlc: Hlc {
                wall_ms: 1,
                counter: 0,
            },
            deps: vec![],
            ops: vec![5, 0, b'a'],
        };
        assert!(matches!(
            Counter::apply(&mut host, &bad),
            Err(StoreError::Rejected(_))
        ));
    }
}
