//! `lattice module …`, `lattice store …` and the kv shortcuts (embedded mode).

use anyhow::{Context as _, bail};
use lattice_node::{DataDir, Node};
use lattice_runtime::{BUILTIN_MODULES, ModuleHash, StoreRuntime};
use serde_json::{Map, Value, json};

use crate::cli::{ModuleCommand, StoreCommand};
use crate::output::Output;

pub(crate) fn module(cmd: ModuleCommand, dir: &DataDir, out: &Output) -> anyhow::Result<()> {
    let node = Node::open(dir.clone())?;
    match cmd {
        ModuleCommand::Install { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let module = node.install_module(&bytes)?;
            let descriptor = describe(&node, module.hash())?;
            out.record(
                &format!(
                    "installed {} ({} {})",
                    module.hash(),
                    descriptor["name"].as_str().unwrap_or("?"),
                    descriptor["version"].as_str().unwrap_or("?")
                ),
                json!({"module": module.hash().to_string(), "descriptor": descriptor}),
            );
        }
        ModuleCommand::List => {
            let builtin: Vec<(ModuleHash, &str)> = BUILTIN_MODULES
                .iter()
                .map(|(n, b)| (ModuleHash::of(b), *n))
                .collect();
            let list = node.runtime().list()?;
            if list.is_empty() && !out_is_json(out) {
                out.record(
                    "no modules installed (built-in types install on first use: kvstore, counter)",
                    json!({}),
                );
            }
            for (hash, size) in list {
                let name = builtin.iter().find(|(h, _)| *h == hash).map(|(_, n)| *n);
                out.record(
                    &format!(
                        "{}  {:>8} B  {}",
                        hash,
                        size,
                        name.map(|n| format!("built-in {n}")).unwrap_or_default()
                    ),
                    json!({"module": hash.to_string(), "bytes": size, "builtin": name}),
                );
            }
        }
        ModuleCommand::Inspect { module } => {
            let hash = node.resolve_type(&module)?;
            let d = describe(&node, hash)?;
            let mut text = format!(
                "{} {} — {}\nmodule {}\nmethods:",
                d["name"].as_str().unwrap_or(""),
                d["version"].as_str().unwrap_or(""),
                d["description"].as_str().unwrap_or(""),
                hash
            );
            for m in d["methods"].as_array().into_iter().flatten() {
                let params: Vec<String> = m["params"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        let w = format!(
                            "{}=<{}>",
                            p["name"].as_str().unwrap_or(""),
                            p["kind"].as_str().unwrap_or("")
                        );
                        if p["optional"] == true {
                            format!("[{w}]")
                        } else {
                            w
                        }
                    })
                    .collect();
                text.push_str(&format!(
                    "\n  {:<8} {} {}  — {}",
                    m["kind"].as_str().unwrap_or(""),
                    m["name"].as_str().unwrap_or(""),
                    params.join(" "),
                    m["description"].as_str().unwrap_or("")
                ));
            }
            out.record(&text, json!({"module": hash.to_string(), "descriptor": d}));
        }
    }
    Ok(())
}

fn out_is_json(out: &Output) -> bool {
    out.json()
}

/// Describes a module by instantiating it against a scratch state.
fn describe(node: &Node, hash: ModuleHash) -> anyhow::Result<Value> {
    let scratch = tempfile::tempdir()?;
    let mut rt = StoreRuntime::open(
        node.runtime(),
        &scratch.path().join("state.db"),
        lattice_model::StoreId([0xEE; 32]),
        hash,
    )?;
    Ok(rt.describe()?.to_json())
}

pub(crate) fn store(cmd: StoreCommand, dir: &DataDir, out: &Output) -> anyhow::Result<()> {
    let node = Node::open(dir.clone())?;
    match cmd {
        StoreCommand::Create { store_type, name } => {
            let module = node.resolve_type(&store_type)?;
            let mut store = node.create_store(module, &name)?;
            let status = store.status()?;
            out.record(
                &format!("created store {} (module {}{})", store.id(), module.short(), if status.headless { ", headless: module not installed" } else { "" }),
                json!({"store": store.id().to_string(), "module": module.to_string(), "headless": status.headless}),
            );
            store.close()?;
        }
        StoreCommand::List => {
            let stores = node.list_stores()?;
            if stores.is_empty() && !out.json() {
                out.record(
                    "no stores; create one with `lattice store create --type kv`",
                    json!({}),
                );
            }
            for s in stores {
                let (name, module) = s
                    .genesis
                    .as_ref()
                    .map_or((String::new(), String::new()), |g| {
                        (g.name.clone(), g.module.to_string())
                    });
                out.record(
                    &format!(
                        "{}  {:<20} module {}",
                        s.id,
                        name,
                        &module.get(..8).unwrap_or("")
                    ),
                    json!({"store": s.id.to_string(), "name": name, "module": module}),
                );
            }
        }
        StoreCommand::Status { store } => {
            let mut store = node.open_store(node.find_store(&store)?)?;
            let status = store.status()?.to_json();
            out.record(
                &format!(
                    "store      {}\nname       {}\nmodule     {}\nstate      {}\nwitnessed  {}\nprojected  {}\nfloating   {}\nrejected   {}",
                    status["store"].as_str().unwrap_or(""), status["name"].as_str().unwrap_or(""), status["module"].as_str().unwrap_or(""),
                    status["state"].as_str().unwrap_or(""), status["witnessed"], status["projected"], status["floating"], status["rejected"]
                ),
                status,
            );
            store.close()?;
        }
        StoreCommand::Call {
            store,
            method,
            args,
            json_args,
        } => {
            let mut st = node.open_store(node.find_store(&store)?)?;
            let descriptor = st.describe()?;
            let info = descriptor.method(&method).with_context(|| {
                let names: Vec<&str> = descriptor.methods.iter().map(|m| m.name.as_str()).collect();
                format!(
                    "{} has no method `{method}`; it offers: {}",
                    descriptor.name,
                    names.join(", ")
                )
            })?;
            let value = match json_args {
                Some(text) => {
                    serde_json::from_str(&text).context("--json-args is not valid JSON")?
                }
                None => {
                    let mut map = Map::new();
                    for word in &args {
                        let (name, raw) = word.split_once('=').with_context(|| {
                            format!(
                                "argument `{word}` is not name=value; usage: {}",
                                info.usage()
                            )
                        })?;
                        let param =
                            info.params
                                .iter()
                                .find(|p| p.name == name)
                                .with_context(|| {
                                    format!("unknown argument `{name}`; usage: {}", info.usage())
                                })?;
                        let v = param
                            .kind
                            .parse_word(raw)
                            .map_err(|e| anyhow::anyhow!("argument `{name}`: {e}"))?;
                        map.insert(name.to_string(), v);
                    }
                    Value::Object(map)
                }
            };
            let result = st.call(&method, &value)?;
            out.record(&serde_json::to_string_pretty(&result)?, result);
            st.close()?;
        }
        StoreCommand::Rebuild { store } => {
            let mut st = node.open_store(node.find_store(&store)?)?;
            out.progress("rebuilding state from the log…");
            let report = st.rebuild()?;
            out.record(
                &format!("rebuilt: {} applied, {} rejected, projected up to {}", report.applied, report.rejected, report.cursor),
                json!({"applied": report.applied, "rejected": report.rejected, "cursor": report.cursor}),
            );
            st.close()?;
        }
    }
    Ok(())
}

pub(crate) fn call_kv(
    dir: &DataDir,
    out: &Output,
    store: &str,
    method: &str,
    args: Value,
) -> anyhow::Result<()> {
    let node = Node::open(dir.clone())?;
    let mut st = node.open_store(node.find_store(store)?)?;
    let descriptor = st.describe()?;
    if descriptor.name != "kvstore" {
        bail!(
            "store {} is a {} store; `{method}` is a kvstore shortcut — use `lattice store call`",
            st.id().short(),
            descriptor.name
        );
    }
    let args = match args {
        Value::Object(map) => {
            Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        other => other,
    };
    let result = st.call(method, &args)?;
    let text = match method {
        "get" => match (&result["value"], result["conflicted"] == true) {
            (Value::Null, _) => "(not set)".to_string(),
            (v, conflicted) => format!(
                "{}{}",
                show(v),
                if conflicted {
                    "  (conflicted: `lattice inspect` shows every head)"
                } else {
                    ""
                }
            ),
        },
        "list" => result["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                format!(
                    "{} = {}{}",
                    show(&i["key"]),
                    show(&i["value"]),
                    if i["conflicted"] == true {
                        "  (conflicted)"
                    } else {
                        ""
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        "put" | "delete" => format!(
            "ok {} (seq {})",
            result["hash"].as_str().map(|h| &h[..8]).unwrap_or(""),
            result["seq"]
        ),
        _ => serde_json::to_string_pretty(&result)?,
    };
    out.record(&text, result);
    st.close()?;
    Ok(())
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
