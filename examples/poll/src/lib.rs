//! An example store type written from scratch with the Lattice SDK: polls.
//!
//! - `open {poll, options}` opens a poll with a list of options (first opener wins on races).
//! - `vote {poll, option}` records the caller's vote; voting again replaces it. Each author's
//!   vote lives in a last-writer-wins table keyed by (poll, author), so concurrent re-votes by
//!   the same author on two devices resolve the same way everywhere.
//! - `tally {poll}` counts the current votes.
//!
//! Build, install and use it: see `examples/README.md`.

use lattice_sdk::{
    Args, Descriptor, Host, Intention, LwwTable, MethodKind, ParamKind, Prepared, StoreError,
    StoreType, method, param,
};
use serde_json::{Value, json};

/// The poll store type.
pub struct Poll;

const POLLS: &[u8] = b"poll/";
const VOTES: &[u8] = b"vote/";

fn vote_key(poll: &str, author: &[u8]) -> Vec<u8> {
    [poll.as_bytes(), b"\0", author].concat()
}

fn options(host: &dyn Host, poll: &str) -> Result<Vec<String>, StoreError> {
    let raw = LwwTable::new(POLLS)
        .get(host, poll.as_bytes())?
        .and_then(|r| r.value)
        .ok_or_else(|| StoreError::InvalidArgument(format!("no poll `{poll}`")))?;
    serde_json::from_slice(&raw).map_err(|_| StoreError::Internal("bad poll record".into()))
}

impl StoreType for Poll {
    fn describe() -> Descriptor {
        use MethodKind::{Command, Query};
        use ParamKind::{Text, TextList};
        Descriptor {
            name: "poll".into(),
            version: "0.1.0".into(),
            description: "polls with one changeable vote per author".into(),
            methods: vec![
                method(
                    "open",
                    Command,
                    "open a poll",
                    vec![
                        param("poll", Text, "poll name"),
                        param("options", TextList, "the choices"),
                    ],
                    "{}",
                ),
                method(
                    "vote",
                    Command,
                    "vote (again)",
                    vec![
                        param("poll", Text, "poll name"),
                        param("option", Text, "your choice"),
                    ],
                    "{}",
                ),
                method(
                    "tally",
                    Query,
                    "count the votes",
                    vec![param("poll", Text, "poll name")],
                    "{\"option\": count, …}",
                ),
            ],
        }
    }

    fn prepare(host: &dyn Host, method: &str, args: &Args) -> Result<Prepared, StoreError> {
        let poll = args.text("poll")?;
        match method {
            "open" => {
                let opts: Vec<String> = match args.get("options") {
                    Some(Value::Array(a)) => a
                        .iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect(),
                    _ => {
                        return Err(StoreError::InvalidArgument(
                            "`options` must be a list".into(),
                        ));
                    }
                };
                if opts.len() < 2 {
                    return Err(StoreError::InvalidArgument(
                        "a poll needs at least two options".into(),
                    ));
                }
                let op = json!({"open": poll, "options": opts});
                Ok(Prepared::ops(op.to_string().into_bytes()))
            }
            "vote" => {
                let option = args.text("option")?;
                if !options(host, &poll)?.contains(&option) {
                    return Err(StoreError::InvalidArgument(format!(
                        "`{option}` is not an option of `{poll}`"
                    )));
                }
                let op = json!({"vote": poll, "option": option});
                Ok(Prepared::ops(op.to_string().into_bytes()))
            }
            other => Err(StoreError::UnknownMethod(other.into())),
        }
    }

    fn apply(host: &mut dyn Host, op: &Intention) -> Result<(), StoreError> {
        let v: Value =
            serde_json::from_slice(&op.ops).map_err(|_| StoreError::Rejected("not JSON".into()))?;
        if let (Some(poll), Some(opts)) = (v["open"].as_str(), v.get("options")) {
            let polls = LwwTable::new(POLLS);
            // The first opening wins: later ones are ignored everywhere alike.
            if polls.heads(host, poll.as_bytes())?.is_empty() {
                polls.write(host, poll.as_bytes(), Some(opts.to_string().as_bytes()), op)?;
            }
            return Ok(());
        }
        if let (Some(poll), Some(option)) = (v["vote"].as_str(), v["option"].as_str()) {
            LwwTable::new(VOTES).write(
                host,
                &vote_key(poll, &op.author),
                Some(option.as_bytes()),
                op,
            )?;
            host.emit("vote", poll.as_bytes());
            return Ok(());
        }
        Err(StoreError::Rejected("unknown poll op".into()))
    }

    fn query(host: &dyn Host, method: &str, args: &Args) -> Result<Value, StoreError> {
        if method != "tally" {
            return Err(StoreError::UnknownMethod(method.into()));
        }
        let poll = args.text("poll")?;
        let mut counts = serde_json::Map::new();
        for o in options(host, &poll)? {
            counts.insert(o, json!(0));
        }
        let prefix = [poll.as_bytes(), b"\0"].concat();
        for (_, read) in LwwTable::new(VOTES).list(host, &prefix, usize::MAX)? {
            if let Some(choice) = read.value.and_then(|v| String::from_utf8(v).ok())
                && let Some(n) = counts.get_mut(&choice)
            {
                *n = json!(n.as_u64().unwrap_or(0) + 1);
            }
        }
        Ok(Value::Object(counts))
    }
}

lattice_sdk::export_store!(Poll);

#[cfg(test)]
mod tests {
    use lattice_sdk::{Hlc, MemoryHost};

    use super::*;

    fn run(
        host: &mut MemoryHost,
        author: u8,
        n: u8,
        method: &str,
        args: Value,
    ) -> Result<(), StoreError> {
        let p = Poll::prepare(host, method, &Args::from_json(args))?;
        Poll::apply(
            host,
            &Intention {
                hash: vec![n; 32],
                author: vec![author; 32],
                hlc: Hlc {
                    wall_ms: n as u64,
                    counter: 0,
                },
                deps: p.deps,
                ops: p.ops,
            },
        )
    }

    #[test]
    fn votes_count_once_per_author_and_can_change() -> Result<(), StoreError> {
        let mut host = MemoryHost::new();
        run(
            &mut host,
            1,
            1,
            "open",
            json!({"poll": "lunch", "options": ["pizza", "soup"]}),
        )?;
        run(
            &mut host,
            1,
            2,
            "vote",
            json!({"poll": "lunch", "option": "pizza"}),
        )?;
        run(
            &mut host,
            2,
            3,
            "vote",
            json!({"poll": "lunch", "option": "pizza"}),
        )?;
        run(
            &mut host,
            2,
            4,
            "vote",
            json!({"poll": "lunch", "option": "soup"}),
        )?;
        let tally = Poll::query(&host, "tally", &Args::from_json(json!({"poll": "lunch"})))?;
        assert_eq!(tally, json!({"pizza": 1, "soup": 1}));
        assert!(
            run(
                &mut host,
                3,
                5,
                "vote",
                json!({"poll": "lunch", "option": "tacos"})
            )
            .is_err()
        );
        Ok(())
    }
}
