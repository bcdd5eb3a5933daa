//! A log.db damaged in any bytes: opening it (and, if it opens, verifying it) is a typed error
//! or a working log, never a panic that escapes or an abort. The input is a list of
//! (offset, xor) edits applied to a small real log.
#![no_main]

use std::sync::OnceLock;

use lattice_log::{Draft, Incoming, Log, LogConfig, build_genesis, system_now_ms};
use lattice_model::{NodeKey, StoreId};
use libfuzzer_sys::fuzz_target;

struct Template {
    bytes: Vec<u8>,
    store: StoreId,
    key: NodeKey,
}

fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("log.db");
        let key = NodeKey::from_seed([9; 32]);
        let genesis = build_genesis(&key, b"fuzz".to_vec(), system_now_ms()).expect("genesis");
        let store = StoreId::from(genesis.hash());
        let log = Log::open(&path, store, key.clone(), LogConfig::default()).expect("open");
        log.ingest(vec![Incoming::new(genesis.as_bytes().to_vec())])
            .expect("ingest");
        for i in 0..20u32 {
            log.author(Draft {
                ops: i.to_le_bytes().to_vec(),
                ..Draft::default()
            })
            .expect("author");
        }
        log.close().expect("close");
        Template {
            bytes: std::fs::read(&path).expect("read"),
            store,
            key,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    // Contained panics are the expected outcome for some damage: keep libFuzzer's hook from
    // turning a caught panic into an abort.
    static QUIET: OnceLock<()> = OnceLock::new();
    QUIET.get_or_init(|| std::panic::set_hook(Box::new(|_| {})));
    let t = template();
    let mut bytes = t.bytes.clone();
    for edit in data.chunks_exact(5) {
        let at = u32::from_le_bytes([edit[0], edit[1], edit[2], edit[3]]) as usize % bytes.len();
        bytes[at] ^= edit[4];
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("log.db");
    std::fs::write(&path, &bytes).expect("write");
    if let Ok(log) = Log::open(&path, t.store, t.key.clone(), LogConfig::default()) {
        let _ = log.reader().verify(|_, _| {});
        let _ = log.close();
    }
    // Salvage reads raw bytes: never panics either.
    let _ = lattice_log::file::salvage(&path, t.store);
});
