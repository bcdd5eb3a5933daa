//! Opening redb files so that damage is an error that names the file, never a panic that takes
//! the process down.
//!
//! A file is integrity-checked (every page checksum, [`redb::Database::check_integrity`]) when
//! it opens, unless its *clean mark* says it is exactly as this process family left it on a
//! clean close: the mark (`<file>.clean`) records the file's length, inode, modification and
//! change times, written by [`CleanMark`] after the database closed. A file written since
//! (a crash, another program, flipped bytes) no longer matches its mark and is checked, so the
//! full read is paid only after an unclean stop or an outside change, never on an ordinary
//! start. Opening and checking run under `catch_unwind`: a storage library that panics on
//! garbage becomes [`FileError::Damaged`].

use std::os::unix::fs::MetadataExt as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use lattice_model::{
    Hash, INTENTION_MAGIC, INTENTION_VERSION, MAX_SIGNED_INTENTION_LEN, MIN_SIGNED_INTENTION_LEN,
    SignedIntention, StoreId,
};
use redb::{Database, DatabaseError, StorageError};

/// Why a redb file did not open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// Another process or handle has the file open.
    #[error("{path} is already open (another node or command is using it)")]
    AlreadyOpen {
        /// The file path.
        path: String,
    },
    /// The file's contents are damaged: it fails redb's checks or makes it panic.
    #[error("{path} is damaged: {reason}")]
    Damaged {
        /// The file path.
        path: String,
        /// What was found.
        reason: String,
    },
    /// The file system failed (permissions, disk full, I/O error).
    #[error("{path}: {source}")]
    Io {
        /// The file path.
        path: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

/// The clean mark's path for the file at `path` (`<file>.clean`).
pub fn clean_mark_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".clean");
    PathBuf::from(name)
}

/// What the clean mark records about a file.
fn fingerprint(path: &Path) -> Option<String> {
    let m = std::fs::metadata(path).ok()?;
    Some(format!(
        "{} {} {}.{} {}.{}",
        m.len(),
        m.ino(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

/// The message a caught panic carried.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "the storage library panicked".to_string())
}

/// Runs `f` (work on one file's bytes) and turns a panic into [`FileError::Damaged`].
///
/// # Errors
/// What `f` returns; [`FileError::Damaged`] (converted) when it panicked.
pub fn contain<T, E: From<FileError>>(
    path: &Path,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(FileError::Damaged {
            path: path.display().to_string(),
            reason: format!("reading it panicked: {}", panic_text(payload.as_ref())),
        }
        .into()),
    }
}

fn classify(path: &Path, err: DatabaseError) -> FileError {
    let path_text = path.display().to_string();
    match err {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            FileError::AlreadyOpen { path: path_text }
        }
        // A failure that is not about the bytes: not damage.
        DatabaseError::Storage(StorageError::PreviousIo) => FileError::Io {
            path: path_text,
            source: std::io::Error::other("an earlier I/O error on this file"),
        },
        // redb reports a file that is not (or no longer) a redb database as invalid data.
        DatabaseError::Storage(StorageError::Io(source))
            if source.kind() != std::io::ErrorKind::InvalidData
                && source.kind() != std::io::ErrorKind::UnexpectedEof =>
        {
            FileError::Io {
                path: path_text,
                source,
            }
        }
        other => FileError::Damaged {
            path: path_text,
            reason: other.to_string(),
        },
    }
}

/// Opens (or creates) the redb file at `path` with `builder`, checking its integrity unless
/// its clean mark matches (see the module docs).
///
/// # Errors
/// [`FileError`]: already open, damaged (including panics while opening or checking), or an
/// I/O failure.
pub fn open_checked(path: &Path, builder: &redb::Builder) -> Result<Database, FileError> {
    let existed = path.exists();
    let marked = std::fs::read_to_string(clean_mark_path(path)).ok();
    let clean = existed && marked.is_some() && marked == fingerprint(path);
    contain(path, || {
        let mut db = builder.create(path).map_err(|e| classify(path, e))?;
        if existed && !clean && !db.check_integrity().map_err(|e| classify(path, e))? {
            tracing::warn!(
                "{} was repaired by the storage engine (rolled back to its last complete commit)",
                path.display()
            );
        }
        Ok(db)
    })
}

/// Finds every intention of store `store` still present in the bytes of the (damaged) log
/// file at `path`, for rebuilding the log. redb keeps each stored value contiguous in the
/// file, so this scans the raw bytes for the intention magic and decodes what follows; it
/// works when redb cannot open the file at all (a damaged header, allocator or index). Stale
/// copies from old pages collapse by hash. Returns the intentions in causal order (genesis
/// first, then by HLC, which every dep precedes). Signatures are not checked here: ingesting
/// into a fresh log verifies each one.
///
/// # Errors
/// [`FileError::Io`] when the file cannot be read.
pub fn salvage(path: &Path, store: StoreId) -> Result<Vec<SignedIntention>, FileError> {
    use std::io::Read as _;
    let io = |source| FileError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut found: HashMap<Hash, SignedIntention> = HashMap::new();
    // Scan in chunks that overlap by the largest intention, so none is cut in two.
    const CHUNK: usize = 8 << 20;
    let mut window: Vec<u8> = Vec::new();
    let mut done = false;
    while !done {
        let mut chunk = vec![0u8; CHUNK];
        let n = file.read(&mut chunk).map_err(io)?;
        chunk.truncate(n);
        done = n == 0;
        window.extend_from_slice(&chunk);
        let scan_to = if done {
            window.len()
        } else {
            window.len().saturating_sub(MAX_SIGNED_INTENTION_LEN)
        };
        for at in 0..scan_to {
            if let Some(signed) = intention_at(&window[at..], store) {
                // Stale or damaged copies share the hash (it covers the body, not the
                // signature): keep one whose signature verifies.
                match found.entry(signed.hash()) {
                    Entry::Vacant(slot) => {
                        slot.insert(signed);
                    }
                    Entry::Occupied(mut slot) => {
                        if slot.get().verify().is_err() && signed.verify().is_ok() {
                            slot.insert(signed);
                        }
                    }
                }
            }
        }
        window.drain(..scan_to);
    }
    let mut out: Vec<SignedIntention> = found.into_values().collect();
    out.sort_by_key(|s| (s.hash() != Hash(store.0), s.intention().hlc()));
    Ok(out)
}

/// The intention of `store` (or its genesis) encoded at the start of `bytes`, if any.
fn intention_at(bytes: &[u8], store: StoreId) -> Option<SignedIntention> {
    const HEADER: usize = 4 + 32 + 32 + 12 + 32;
    if bytes.len() < MIN_SIGNED_INTENTION_LEN
        || bytes[..2] != INTENTION_MAGIC
        || bytes[2] != INTENTION_VERSION
    {
        return None;
    }
    let claimed = &bytes[4..36];
    let genesis = claimed == [0u8; 32];
    if !genesis && claimed != store.as_bytes() {
        return None;
    }
    let deps = u16::from_le_bytes([bytes[HEADER], bytes[HEADER + 1]]) as usize;
    let ops_at = HEADER + 2 + 32 * deps;
    let ops_len = bytes.get(ops_at..ops_at + 4)?;
    let ops_len = u32::from_le_bytes([ops_len[0], ops_len[1], ops_len[2], ops_len[3]]) as usize;
    let total = ops_at + 4 + ops_len + 64;
    let signed = SignedIntention::decode(bytes.get(..total)?).ok()?;
    if genesis && signed.hash() != Hash(store.0) {
        return None;
    }
    Some(signed)
}

/// Writes a file's clean mark when dropped: keep it as the *last* field of the struct that
/// owns the file's [`Database`], so it runs after the database closed. If the database is
/// still open elsewhere at that point, its later close changes the file and the mark simply
/// stops matching (the next open checks the file).
#[derive(Debug)]
pub struct CleanMark {
    path: PathBuf,
    armed: bool,
}

impl CleanMark {
    /// A mark for the file at `path`, written on drop.
    pub fn new(path: &Path) -> CleanMark {
        CleanMark {
            path: path.to_path_buf(),
            armed: true,
        }
    }

    /// Do not write the mark (the file was found damaged while open).
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CleanMark {
    fn drop(&mut self) {
        if !self.armed || std::thread::panicking() {
            return;
        }
        if let Some(print) = fingerprint(&self.path) {
            // Best effort: a missing mark only costs a check at the next open.
            let _ = std::fs::write(clean_mark_path(&self.path), print);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase as _, ReadableTableMetadata as _, TableDefinition};

    use crate::{Draft, Incoming, Log, LogConfig, build_genesis, system_now_ms};
    use lattice_model::NodeKey;

    const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    fn write_rows(path: &Path) {
        let db = open_checked(path, &redb::Builder::new()).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(T).unwrap();
            for i in 0..2_000u64 {
                t.insert(i, [7u8; 100].as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
        drop(db);
        drop(CleanMark::new(path));
    }

    #[test]
    fn a_clean_file_reopens_without_a_check_and_a_changed_one_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        write_rows(&path);
        assert_eq!(
            std::fs::read_to_string(clean_mark_path(&path)).ok(),
            fingerprint(&path)
        );
        let db = open_checked(&path, &redb::Builder::new()).unwrap();
        assert_eq!(
            db.begin_read()
                .unwrap()
                .open_table(T)
                .unwrap()
                .len()
                .unwrap(),
            2_000
        );
        drop(db);
        // Opening without a clean close leaves the mark stale.
        assert_ne!(
            std::fs::read_to_string(clean_mark_path(&path)).ok(),
            fingerprint(&path)
        );
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        write_rows(&path);
        let pristine = std::fs::read(&path).unwrap();
        let mut damaged = 0;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..40 {
            let mut bytes = pristine.clone();
            for _ in 0..16 {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                let at = (state >> 33) as usize % bytes.len();
                bytes[at] ^= 0x5A;
            }
            std::fs::write(&path, &bytes).unwrap();
            match open_checked(&path, &redb::Builder::new()) {
                Ok(db) => {
                    // What opens must read without panicking or be reported damaged.
                    let read: Result<u64, FileError> = contain(&path, || {
                        let txn = db.begin_read().map_err(|e| FileError::Damaged {
                            path: String::new(),
                            reason: e.to_string(),
                        })?;
                        let t = txn.open_table(T).map_err(|e| FileError::Damaged {
                            path: String::new(),
                            reason: e.to_string(),
                        })?;
                        Ok(t.len().unwrap_or(0))
                    });
                    if read.is_err() {
                        damaged += 1;
                    }
                }
                Err(FileError::Damaged { .. }) => damaged += 1,
                Err(other) => panic!("unexpected error: {other}"),
            }
        }
        assert!(damaged > 0, "no damage was ever detected");
    }

    #[test]
    fn salvage_finds_every_intention_when_redb_cannot_open_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let key = NodeKey::from_seed([3; 32]);
        let genesis = build_genesis(&key, b"kv".to_vec(), system_now_ms()).unwrap();
        let store = StoreId::from(genesis.hash());
        let log = Log::open(&path, store, key.clone(), LogConfig::default()).unwrap();
        log.ingest(vec![Incoming::new(genesis.as_bytes().to_vec())])
            .unwrap();
        let mut written = vec![genesis.hash()];
        for i in 0..50u32 {
            let draft = Draft {
                ops: format!("op {i}").into_bytes(),
                ..Draft::default()
            };
            written.push(log.author(draft).unwrap().hash);
        }
        log.close().unwrap();
        // Wipe redb's header: the file no longer opens.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..4096].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        match Log::open(&path, store, key.clone(), LogConfig::default()) {
            Err(crate::OpenError::Damaged { .. }) => {}
            Err(other) => panic!("expected Damaged, got {other}"),
            Ok(_) => panic!("a log without its header opened"),
        }

        let found = salvage(&path, store).unwrap();
        let hashes: Vec<Hash> = found.iter().map(|s| s.hash()).collect();
        assert_eq!(hashes.len(), written.len());
        assert_eq!(hashes[0], genesis.hash(), "the genesis comes first");
        for h in &written {
            assert!(hashes.contains(h));
        }
        // In causal order: a fresh log takes them all in one go.
        let fresh = dir.path().join("fresh.db");
        let log = Log::open(&fresh, store, key, LogConfig::default()).unwrap();
        let results = log
            .ingest(
                found
                    .iter()
                    .map(|s| Incoming::new(s.as_bytes().to_vec()))
                    .collect(),
            )
            .unwrap();
        assert!(results.iter().all(|r| r.is_ok()));
        assert_eq!(log.reader().status().unwrap().floating, 0);
    }
}
