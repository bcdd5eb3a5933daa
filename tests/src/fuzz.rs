//! The bodies of the cargo-fuzz targets in `tests/fuzz`: each takes the raw bytes of one input
//! and panics only on a real failure (a decoder that panics, a value that does not round-trip).
//! `tests/fuzz/fuzz_targets/*` call these under libFuzzer; the `fuzz_corpus` test replays every
//! committed corpus file through them on each `cargo test`, so a found input stays fixed
//! without the instrumented build.

use std::sync::OnceLock;

use lattice_log::{Draft, Incoming, Log, LogConfig, build_genesis, system_now_ms};
use lattice_model::{HostOp, NodeKey, SignedIntention, StoreId, WitnessRecord};
use lattice_node::InviteToken;
use lattice_runtime::{Limits, Runtime};
use lattice_sync::{GossipMsg, Msg};

/// A fuzz target's body: one input's bytes; panics only on a real failure.
pub type Body = fn(&[u8]);

/// The fuzz targets by name (the file names under `tests/fuzz/fuzz_targets` and the folders
/// under `tests/fuzz/corpus`), each with its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("damaged_log", damaged_log),
    ("host_op", host_op),
    ("intention", intention),
    ("invite_token", invite_token),
    ("module_install", module_install),
    ("sync_frame", sync_frame),
    ("witness_record", witness_record),
];

/// Host ops (epochs, acks, frontiers): decoding never panics, and what decodes is canonical —
/// it encodes back to the same bytes.
pub fn host_op(data: &[u8]) {
    if let Ok(op) = HostOp::decode(data) {
        assert_eq!(op.encode().as_slice(), data);
    }
}

/// Signed intentions from peers: decoding never panics, and what decodes is canonical (its
/// bytes are exactly what was read, and re-encoding the intention gives the same body).
pub fn intention(data: &[u8]) {
    if let Ok(signed) = SignedIntention::decode(data) {
        assert_eq!(signed.as_bytes(), data);
        let body = signed.intention().encode();
        assert_eq!(&data[..body.len()], body.as_slice());
        assert_eq!(signed.hash(), signed.intention().hash());
        // Verifying a forged signature is an error, never a panic.
        let _ = signed.verify();
    }
}

/// Invite tokens pasted by users: decoding never panics, and a decoded token encodes to a
/// token that decodes to the same thing.
pub fn invite_token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(token) = InviteToken::decode(text) {
        assert_eq!(InviteToken::decode(&token.encode()), Ok(token));
    }
}

/// Module bytes from operators and peers: installing any bytes is a typed error or a working
/// module, never a panic.
pub fn module_install(data: &[u8]) {
    static RUNTIME: OnceLock<(tempfile::TempDir, Runtime)> = OnceLock::new();
    let (_, runtime) = RUNTIME.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let runtime = Runtime::new(dir.path(), Limits::default()).expect("a runtime");
        (dir, runtime)
    });
    let _ = runtime.install(data);
}

/// Sync session frames and gossip messages from peers: decoding never panics, and what
/// decodes encodes back to the same message.
pub fn sync_frame(data: &[u8]) {
    if let Ok(msg) = Msg::decode(data) {
        assert_eq!(Msg::decode(&msg.encode()), Ok(msg));
    }
    if let Ok(msg) = GossipMsg::decode(data) {
        assert_eq!(GossipMsg::decode(&msg.encode()), Ok(msg));
    }
}

/// Witness records (read back from disk and compared in verification): decoding never panics
/// and round-trips.
pub fn witness_record(data: &[u8]) {
    if let Ok(record) = WitnessRecord::decode(data) {
        assert_eq!(record.encode().as_slice(), data);
    }
}

/// A small real log.db (genesis and 20 intentions) that [`damaged_log`] damages.
struct LogTemplate {
    bytes: Vec<u8>,
    store: StoreId,
    key: NodeKey,
}

fn log_template() -> &'static LogTemplate {
    static TEMPLATE: OnceLock<LogTemplate> = OnceLock::new();
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
        LogTemplate {
            bytes: std::fs::read(&path).expect("read"),
            store,
            key,
        }
    })
}

/// A log.db damaged in any bytes: opening it (and, if it opens, verifying it) is a typed error
/// or a working log, never a panic that escapes or an abort. The input is a list of
/// (offset, xor) edits of five bytes each, applied to a small real log.
pub fn damaged_log(data: &[u8]) {
    let t = log_template();
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
}
