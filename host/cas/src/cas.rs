//! [`Cas`]: the blob store of one node.
//!
//! Layout under its directory: `cas.db` (the index, see `index.rs`), `blobs/<first two hex
//! digits>/<hash>.data` and `.obao` (the bytes and their hash tree), `tmp/` (puts under way;
//! emptied at open). A put streams the bytes to `tmp/`, computes the hash tree, moves both
//! files into place (made durable first) and then records the store's entry; so an entry
//! always has its files, and files without an entry are only ever a put's leftovers.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use lattice_model::{Hash, StoreId};
use redb::{Database, ReadableDatabase, ReadableTable};
use tracing::warn;

use crate::error::CasError;
use crate::index::{
    self, BLOBS, BlobRow, ENTRIES, EntryRow, INLINE, INLINE_MAX, WANTED, entry_key, split_entry_key,
};
use crate::verify::{self, ReadFailure};

/// A blob as a store sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobInfo {
    /// Its BLAKE3 hash (its name).
    pub hash: Hash,
    /// Its size in bytes.
    pub size: u64,
    /// How many times the store pinned it (kept while above 0).
    pub pins: u32,
    /// How many references the store's state declares to it (kept while above 0).
    pub refs: u32,
    /// When the store first held it (ms since the Unix epoch).
    pub added_ms: u64,
}

/// What a garbage collection removed ([`Cas::collect`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CollectReport {
    /// Stores' holds on blobs that nothing kept, dropped.
    pub released: u64,
    /// Blobs no store held any more, deleted from disk.
    pub deleted: u64,
    /// Bytes of blob data deleted.
    pub bytes: u64,
}

/// The blob store of one node: BLAKE3-addressed blobs on disk, each reachable only by the
/// stores that hold it.
#[derive(Debug)]
pub struct Cas {
    dir: PathBuf,
    db: Database,
    next_tmp: AtomicU64,
    receiving: std::sync::Arc<crate::transfer::Receiving>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn not_found(store: &StoreId, hash: &Hash) -> CasError {
    CasError::NotFound {
        hash: hash.short(),
        store: store.short(),
    }
}

fn sync_dir(dir: &Path) -> Result<(), CasError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(CasError::io(dir))
}

impl Cas {
    /// Opens (or creates) the blob store in `dir`; leftovers of interrupted puts go.
    ///
    /// # Errors
    /// [`CasError::Io`] for the directories, [`CasError::Index`] for `cas.db`.
    pub fn open(dir: &Path) -> Result<Cas, CasError> {
        std::fs::create_dir_all(dir.join("blobs")).map_err(CasError::io(dir))?;
        let tmp = dir.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(CasError::io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(CasError::io(&tmp))?;
        let db = Database::create(dir.join("cas.db"))?;
        let txn = db.begin_write()?;
        txn.open_table(BLOBS)?;
        txn.open_table(ENTRIES)?;
        txn.open_table(INLINE)?;
        txn.commit()?;
        Ok(Cas {
            dir: dir.to_path_buf(),
            db,
            next_tmp: AtomicU64::new(0),
            receiving: std::sync::Arc::default(),
        })
    }

    fn paths(&self, hash: &Hash) -> (PathBuf, PathBuf, PathBuf) {
        let hex = hash.to_string();
        let shard = self.dir.join("blobs").join(&hex[..2]);
        (
            shard.join(format!("{hex}.data")),
            shard.join(format!("{hex}.obao")),
            shard,
        )
    }

    /// Puts the bytes `data` yields as a blob of `store`, streaming them to disk (never held
    /// whole in memory). Putting a blob the node has already costs the read and the hash.
    ///
    /// # Errors
    /// [`CasError::Input`] when `data` fails; file and index errors.
    pub fn put(&self, store: &StoreId, mut data: impl Read) -> Result<BlobInfo, CasError> {
        let mut writer = self.writer(store);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CasError::Input(e)),
            };
            writer.write(&buf[..n])?;
        }
        writer.finish(self)
    }

    /// Moves the file at `path` into the store as a blob of `store` and returns it: the bytes
    /// are hashed and made durable where they are, not copied (when `path` is on another
    /// filesystem than the store they are copied). Nothing may write to the file meanwhile.
    /// Afterwards `path` is gone, whatever the outcome.
    ///
    /// # Errors
    /// File and index errors.
    pub fn put_file(&self, store: &StoreId, path: &Path) -> Result<BlobInfo, CasError> {
        let size = std::fs::metadata(path).map_err(CasError::io(path))?.len();
        let mut writer = self.writer(store);
        if size <= INLINE_MAX {
            let bytes = std::fs::read(path).map_err(CasError::io(path))?;
            remove_quietly(path);
            writer.write(&bytes)?;
            return writer.finish(self);
        }
        // Into the store's temporary folder first (the writer removes it there on failure;
        // the folder is emptied when the store opens, after a crash).
        match std::fs::rename(path, &writer.tmp_data) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
                let file = File::open(path).map_err(CasError::io(path))?;
                let put = self.put(store, file);
                remove_quietly(path);
                return put;
            }
            Err(e) => {
                remove_quietly(path);
                return Err(CasError::io(path)(e));
            }
        }
        writer.size = size;
        writer.place(self)
    }

    /// Starts a blob of `store` written in pieces ([`BlobWriter::write`], then
    /// [`BlobWriter::finish`]); dropped unfinished, it leaves nothing.
    pub fn writer(&self, store: &StoreId) -> BlobWriter {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        BlobWriter {
            store: *store,
            head: Vec::new(),
            file: None,
            size: 0,
            tmp_data: self.dir.join("tmp").join(format!("{n}.data")),
            tmp_obao: self.dir.join("tmp").join(format!("{n}.obao")),
        }
    }

    /// Records `store`'s hold on `hash` (`size` bytes, files in place).
    fn hold(&self, store: &StoreId, hash: &Hash, size: u64) -> Result<BlobInfo, CasError> {
        let txn = self.db.begin_write()?;
        let entry = hold_in(&txn, store, hash, size)?;
        txn.commit()?;
        Ok(info(*hash, size, entry))
    }

    /// Keeps `bytes` (at most [`INLINE_MAX`]) inline as blob `hash` and records `store`'s
    /// hold on it, in one commit.
    pub(crate) fn hold_inline(
        &self,
        store: &StoreId,
        hash: &Hash,
        bytes: &[u8],
    ) -> Result<BlobInfo, CasError> {
        let blob = crate::SmallBlob {
            hash: *hash,
            bytes: bytes.to_vec(),
        };
        self.hold_inline_many(store, std::slice::from_ref(&blob))?
            .pop()
            .ok_or(CasError::Stopped)
    }

    /// Keeps verified small blobs inline and records `store`'s hold on each, in one commit.
    ///
    /// # Errors
    /// [`CasError::Damaged`] for a blob over the inline size or whose bytes do not hash to
    /// its name (nothing is committed then); [`CasError::Index`].
    pub fn hold_inline_many(
        &self,
        store: &StoreId,
        blobs: &[crate::SmallBlob],
    ) -> Result<Vec<BlobInfo>, CasError> {
        for blob in blobs {
            if blob.bytes.len() as u64 > INLINE_MAX
                || blake3::hash(&blob.bytes).as_bytes() != blob.hash.as_bytes()
            {
                return Err(CasError::Damaged {
                    hash: blob.hash.short(),
                    reason: "it is not a small blob with that hash".into(),
                });
            }
        }
        let txn = self.db.begin_write()?;
        let mut out = Vec::with_capacity(blobs.len());
        {
            let mut inline = txn.open_table(INLINE)?;
            for blob in blobs {
                if inline.get(blob.hash.as_bytes())?.is_none() {
                    inline.insert(blob.hash.as_bytes(), blob.bytes.as_slice())?;
                }
            }
        }
        for blob in blobs {
            let size = blob.bytes.len() as u64;
            let entry = hold_in(&txn, store, &blob.hash, size)?;
            out.push(info(blob.hash, size, entry));
        }
        txn.commit()?;
        Ok(out)
    }

    /// The bytes of blob `hash` of `store` (one index lookup): inline ones read and checked
    /// against the hash, the files of a bigger one opened (the tree checks them as they are
    /// read).
    pub(crate) fn held(&self, store: &StoreId, hash: &Hash) -> Result<Held, CasError> {
        let (_, blob) =
            index::lookup(&self.db, store, hash)?.ok_or_else(|| not_found(store, hash))?;
        if blob.size <= INLINE_MAX {
            return self.inline_of(hash).map(Held::Inline);
        }
        self.files_of(hash, blob.size)
    }

    /// The bytes of inline blob `hash`, checked against the hash.
    fn inline_of(&self, hash: &Hash) -> Result<Vec<u8>, CasError> {
        let txn = self.db.begin_read()?;
        let bytes = txn
            .open_table(INLINE)?
            .get(hash.as_bytes())?
            .map(|v| v.value().to_vec())
            .ok_or_else(|| CasError::Damaged {
                hash: hash.short(),
                reason: "its bytes are missing from the index".into(),
            })?;
        if blake3::hash(&bytes).as_bytes() != hash.as_bytes() {
            return Err(CasError::Damaged {
                hash: hash.short(),
                reason: "its bytes in the index do not hash to its name".into(),
            });
        }
        Ok(bytes)
    }

    /// The blob `hash` as `store` holds it, or `None`.
    ///
    /// # Errors
    /// [`CasError::Index`].
    pub fn stat(&self, store: &StoreId, hash: &Hash) -> Result<Option<BlobInfo>, CasError> {
        Ok(
            index::lookup(&self.db, store, hash)?
                .map(|(entry, blob)| info(*hash, blob.size, entry)),
        )
    }

    /// Writes bytes `range` of blob `hash` of `store` to `out`, every byte checked against
    /// the hash first. Returns the bytes written.
    ///
    /// # Errors
    /// [`CasError::NotFound`] when `store` does not hold it; [`CasError::OutOfRange`];
    /// [`CasError::Damaged`] when the bytes on disk do not match (nothing damaged is
    /// written; what came before the damaged window was); [`CasError::Output`].
    pub fn read(
        &self,
        store: &StoreId,
        hash: &Hash,
        range: Range<u64>,
        out: &mut impl Write,
    ) -> Result<u64, CasError> {
        let held = self.held(store, hash)?;
        let size = held.size();
        if range.start > range.end || range.end > size {
            return Err(CasError::OutOfRange {
                hash: hash.short(),
                start: range.start,
                end: range.end,
                size,
            });
        }
        let (data, obao) = match held {
            Held::Inline(bytes) => {
                let slice = &bytes[range.start as usize..range.end as usize];
                out.write_all(slice).map_err(CasError::Output)?;
                return Ok(slice.len() as u64);
            }
            Held::Files { data, obao, .. } => (data, obao),
        };
        let root = blake3::Hash::from_bytes(hash.0);
        verify::read_verified(&data, &obao, root, size, range, out).map_err(|f| match f {
            ReadFailure::Damaged(reason) => CasError::Damaged {
                hash: hash.short(),
                reason,
            },
            ReadFailure::Output(e) => CasError::Output(e),
        })
    }

    /// Who is receiving which blob.
    pub(crate) fn receiving(&self) -> &std::sync::Arc<crate::transfer::Receiving> {
        &self.receiving
    }

    /// The directory the store keeps its files in.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data and hash-tree files of blob `hash` (`size` bytes).
    fn files_of(&self, hash: &Hash, size: u64) -> Result<Held, CasError> {
        let (data_path, obao_path, _) = self.paths(hash);
        let damaged = |reason: String| CasError::Damaged {
            hash: hash.short(),
            reason,
        };
        let data = File::open(&data_path).map_err(|e| damaged(format!("its data: {e}")))?;
        let obao = File::open(&obao_path).map_err(|e| damaged(format!("its hash tree: {e}")))?;
        let len = data.metadata().map_err(CasError::io(&data_path))?.len();
        if len != size {
            return Err(damaged(format!(
                "its data file has {len} bytes, not {size}"
            )));
        }
        Ok(Held::Files { data, obao, size })
    }

    /// Moves a blob's files (durable, verified) into place, unless they are there already,
    /// and records `store`'s hold on it.
    pub(crate) fn adopt(
        &self,
        store: &StoreId,
        hash: &Hash,
        size: u64,
        data: &Path,
        obao: &Path,
    ) -> Result<BlobInfo, CasError> {
        let (data_path, obao_path, shard) = self.paths(hash);
        let on_disk = {
            let txn = self.db.begin_read()?;
            txn.open_table(BLOBS)?.get(hash.as_bytes())?.is_some()
        };
        if on_disk {
            for path in [data, obao] {
                std::fs::remove_file(path).map_err(CasError::io(path))?;
            }
        } else {
            std::fs::create_dir_all(&shard).map_err(CasError::io(&shard))?;
            // The hash tree first: a data file is never in place without its tree.
            std::fs::rename(obao, &obao_path).map_err(CasError::io(&obao_path))?;
            std::fs::rename(data, &data_path).map_err(CasError::io(&data_path))?;
            sync_dir(&shard)?;
        }
        self.hold(store, hash, size)
    }

    /// Checks every byte of blob `hash` of `store` against its hash.
    ///
    /// # Errors
    /// As [`Cas::read`].
    pub fn verify(&self, store: &StoreId, hash: &Hash) -> Result<(), CasError> {
        let size = self
            .stat(store, hash)?
            .ok_or_else(|| not_found(store, hash))?
            .size;
        self.read(store, hash, 0..size, &mut std::io::sink())?;
        Ok(())
    }

    /// Changes `store`'s pins on `hash` by `delta` (never below 0); returns the blob.
    ///
    /// # Errors
    /// [`CasError::NotFound`]; [`CasError::Index`].
    pub fn pin(&self, store: &StoreId, hash: &Hash, delta: i32) -> Result<BlobInfo, CasError> {
        self.adjust(store, hash, |e| {
            e.pins = e.pins.saturating_add_signed(delta)
        })
    }

    /// Changes the count of references `store`'s state declares to `hash` by `delta` (never
    /// below 0); returns the blob.
    ///
    /// # Errors
    /// [`CasError::NotFound`]; [`CasError::Index`].
    pub fn reference(
        &self,
        store: &StoreId,
        hash: &Hash,
        delta: i32,
    ) -> Result<BlobInfo, CasError> {
        self.adjust(store, hash, |e| {
            e.refs = e.refs.saturating_add_signed(delta)
        })
    }

    /// Sets how many references `store`'s state declares to `hash` (the state is the source
    /// of truth; this is idempotent). For a blob the store does not hold, the count is kept
    /// until it does, and the blob is among [`Cas::wanted`] meanwhile. Returns true when the
    /// blob is wanted (referenced, not held).
    ///
    /// # Errors
    /// [`CasError::Index`].
    pub fn set_refs(&self, store: &StoreId, hash: &Hash, refs: u32) -> Result<bool, CasError> {
        Ok(!self.set_refs_many(store, &[(*hash, refs)])?.is_empty())
    }

    /// As [`Cas::set_refs`] for several blobs, in one commit; returns those wanted.
    ///
    /// # Errors
    /// [`CasError::Index`].
    pub fn set_refs_many(
        &self,
        store: &StoreId,
        counts: &[(Hash, u32)],
    ) -> Result<Vec<Hash>, CasError> {
        if counts.is_empty() {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_write()?;
        let mut is_wanted = Vec::new();
        {
            let mut entries = txn.open_table(ENTRIES)?;
            let mut wanted = txn.open_table(WANTED)?;
            for (hash, refs) in counts {
                let key = entry_key(store, hash);
                let entry = entries.get(&key)?.map(|v| EntryRow::decode(v.value()));
                match entry {
                    Some(mut entry) => {
                        entry.refs = *refs;
                        entries.insert(&key, &entry.encode())?;
                    }
                    None if *refs > 0 => {
                        wanted.insert(&key, *refs)?;
                        is_wanted.push(*hash);
                    }
                    None => {
                        wanted.remove(&key)?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(is_wanted)
    }

    /// Blobs `store`'s state references that it does not hold here (to fetch), in hash
    /// order, at most `limit`.
    ///
    /// # Errors
    /// [`CasError::Index`].
    pub fn wanted(&self, store: &StoreId, limit: usize) -> Result<Vec<Hash>, CasError> {
        let txn = self.db.begin_read()?;
        let wanted = match txn.open_table(WANTED) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let from = entry_key(store, &Hash([0; 32]));
        let to = entry_key(store, &Hash([0xff; 32]));
        let mut out = Vec::new();
        for row in wanted.range::<&[u8; 64]>(&from..=&to)?.take(limit) {
            out.push(split_entry_key(row?.0.value()).1);
        }
        Ok(out)
    }

    fn adjust(
        &self,
        store: &StoreId,
        hash: &Hash,
        change: impl FnOnce(&mut EntryRow),
    ) -> Result<BlobInfo, CasError> {
        let txn = self.db.begin_write()?;
        let result = {
            let mut entries = txn.open_table(ENTRIES)?;
            let blobs = txn.open_table(BLOBS)?;
            let key = entry_key(store, hash);
            let mut entry = entries
                .get(&key)?
                .map(|v| EntryRow::decode(v.value()))
                .ok_or_else(|| not_found(store, hash))?;
            let size = blobs
                .get(hash.as_bytes())?
                .map_or(0, |v| BlobRow::decode(v.value()).size);
            change(&mut entry);
            entries.insert(&key, &entry.encode())?;
            info(*hash, size, entry)
        };
        txn.commit()?;
        Ok(result)
    }

    /// The blobs `store` holds, in hash order.
    ///
    /// # Errors
    /// [`CasError::Index`].
    pub fn list(&self, store: &StoreId) -> Result<Vec<BlobInfo>, CasError> {
        let txn = self.db.begin_read()?;
        let entries = txn.open_table(ENTRIES)?;
        let blobs = txn.open_table(BLOBS)?;
        let from = entry_key(store, &Hash([0; 32]));
        let to = entry_key(store, &Hash([0xff; 32]));
        let mut out = Vec::new();
        for row in entries.range::<&[u8; 64]>(&from..=&to)? {
            let (k, v) = row?;
            let (_, hash) = split_entry_key(k.value());
            let size = blobs
                .get(hash.as_bytes())?
                .map_or(0, |v| BlobRow::decode(v.value()).size);
            out.push(info(hash, size, EntryRow::decode(v.value())));
        }
        Ok(out)
    }

    /// Drops every store's hold on a blob that nothing keeps (no pin, no reference) and
    /// that it has held for at least `grace_ms`, and deletes blobs no store holds any more.
    ///
    /// # Errors
    /// [`CasError::Index`]; a blob file that cannot be deleted.
    pub fn collect(&self, grace_ms: u64) -> Result<CollectReport, CasError> {
        let now = now_ms();
        self.release(|txn| {
            let entries = txn.open_table(ENTRIES)?;
            entries
                .iter()?
                .filter_map(|row| match row {
                    Ok((k, v)) => {
                        let entry = EntryRow::decode(v.value());
                        (entry.is_loose() && entry.added_ms.saturating_add(grace_ms) <= now)
                            .then(|| Ok(*k.value()))
                    }
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<_, redb::StorageError>>()
                .map_err(CasError::from)
        })
    }

    /// Drops every hold `store` has (pins and references too) and what it still wanted,
    /// and deletes blobs no store holds any more: the store's local data was deleted.
    ///
    /// # Errors
    /// [`CasError::Index`]; a blob file that cannot be deleted.
    pub fn release_store(&self, store: &StoreId) -> Result<CollectReport, CasError> {
        let from = entry_key(store, &Hash([0; 32]));
        let to = entry_key(store, &Hash([0xff; 32]));
        self.release(|txn| {
            let mut wanted = txn.open_table(WANTED)?;
            let doomed: Vec<[u8; 64]> = wanted
                .range::<&[u8; 64]>(&from..=&to)?
                .map(|row| row.map(|(k, _)| *k.value()))
                .collect::<Result<_, _>>()?;
            for key in &doomed {
                wanted.remove(key)?;
            }
            let entries = txn.open_table(ENTRIES)?;
            entries
                .range::<&[u8; 64]>(&from..=&to)?
                .map(|row| row.map(|(k, _)| *k.value()))
                .collect::<Result<_, redb::StorageError>>()
                .map_err(CasError::from)
        })
    }

    /// Drops the holds (entry keys) `choose` names, in one commit, and deletes blobs no
    /// store holds any more.
    fn release(
        &self,
        choose: impl FnOnce(&redb::WriteTransaction) -> Result<Vec<[u8; 64]>, CasError>,
    ) -> Result<CollectReport, CasError> {
        let mut report = CollectReport::default();
        let mut gone = Vec::new();
        let txn = self.db.begin_write()?;
        let keys = choose(&txn)?;
        {
            let mut entries = txn.open_table(ENTRIES)?;
            let mut blobs = txn.open_table(BLOBS)?;
            let mut inline = txn.open_table(INLINE)?;
            for key in keys {
                entries.remove(&key)?;
                report.released += 1;
                let (_, hash) = split_entry_key(&key);
                let Some(row) = blobs
                    .get(hash.as_bytes())?
                    .map(|v| BlobRow::decode(v.value()))
                else {
                    continue;
                };
                if row.holders <= 1 {
                    blobs.remove(hash.as_bytes())?;
                    report.deleted += 1;
                    report.bytes += row.size;
                    if row.size <= INLINE_MAX {
                        inline.remove(hash.as_bytes())?;
                    } else {
                        gone.push(hash);
                    }
                } else {
                    let row = BlobRow {
                        holders: row.holders - 1,
                        ..row
                    };
                    blobs.insert(hash.as_bytes(), &row.encode())?;
                }
            }
        }
        txn.commit()?;
        // The index no longer names them; their files go after (a crash in between leaves
        // files nothing names, which a later put of the same bytes reuses or replaces).
        for hash in gone {
            let (data, obao, _) = self.paths(&hash);
            for path in [data, obao] {
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(CasError::io(&path)(e));
                    }
                    _ => {}
                }
            }
        }
        Ok(report)
    }
}

/// Records `store`'s hold on `hash` (`size` bytes) in `txn`: a new hold counts one more
/// holder of the blob.
fn hold_in(
    txn: &redb::WriteTransaction,
    store: &StoreId,
    hash: &Hash,
    size: u64,
) -> Result<EntryRow, CasError> {
    let mut entries = txn.open_table(ENTRIES)?;
    let mut blobs = txn.open_table(BLOBS)?;
    let key = entry_key(store, hash);
    if let Some(entry) = entries.get(&key)?.map(|v| EntryRow::decode(v.value())) {
        return Ok(entry);
    }
    // References the store's state declared before the blob came.
    let refs = txn
        .open_table(WANTED)?
        .remove(&key)?
        .map_or(0, |v| v.value());
    let entry = EntryRow {
        pins: 0,
        refs,
        added_ms: now_ms(),
    };
    entries.insert(&key, &entry.encode())?;
    let holders = blobs
        .get(hash.as_bytes())?
        .map_or(0, |v| BlobRow::decode(v.value()).holders);
    let row = BlobRow {
        size,
        holders: holders + 1,
    };
    blobs.insert(hash.as_bytes(), &row.encode())?;
    Ok(entry)
}

/// A held blob's bytes, ready to read ([`Cas::held`]).
pub(crate) enum Held {
    /// A small blob's bytes, checked against its hash.
    Inline(Vec<u8>),
    /// A bigger blob's data and hash-tree files.
    Files {
        /// The data.
        data: File,
        /// The hash tree.
        obao: File,
        /// The size.
        size: u64,
    },
}

impl Held {
    /// The blob's size.
    pub(crate) fn size(&self) -> u64 {
        match self {
            Held::Inline(bytes) => bytes.len() as u64,
            Held::Files { size, .. } => *size,
        }
    }
}

fn info(hash: Hash, size: u64, entry: EntryRow) -> BlobInfo {
    BlobInfo {
        hash,
        size,
        pins: entry.pins,
        refs: entry.refs,
        added_ms: entry.added_ms,
    }
}

/// A blob being written in pieces ([`Cas::writer`]): up to the inline size it stays in
/// memory, past it the bytes stream to a temporary file; [`BlobWriter::finish`] hashes it
/// and records the store's hold. Dropped unfinished, its temporary files are removed.
#[derive(Debug)]
pub struct BlobWriter {
    store: StoreId,
    head: Vec<u8>,
    file: Option<BufWriter<File>>,
    size: u64,
    tmp_data: PathBuf,
    tmp_obao: PathBuf,
}

impl BlobWriter {
    /// Appends `bytes`.
    ///
    /// # Errors
    /// [`CasError::Io`] when the temporary file cannot be written.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), CasError> {
        self.size += bytes.len() as u64;
        match &mut self.file {
            Some(file) => file.write_all(bytes).map_err(CasError::io(&self.tmp_data)),
            None if self.head.len() + bytes.len() <= INLINE_MAX as usize => {
                self.head.extend_from_slice(bytes);
                Ok(())
            }
            None => {
                let file = File::create(&self.tmp_data).map_err(CasError::io(&self.tmp_data))?;
                let mut file = BufWriter::with_capacity(1 << 20, file);
                file.write_all(&self.head)
                    .and_then(|()| file.write_all(bytes))
                    .map_err(CasError::io(&self.tmp_data))?;
                self.head = Vec::new();
                self.file = Some(file);
                Ok(())
            }
        }
    }

    /// Stores the blob in `cas` (the store this writer was made by) and returns it.
    ///
    /// # Errors
    /// File and index errors.
    pub fn finish(mut self, cas: &Cas) -> Result<BlobInfo, CasError> {
        let Some(writer) = self.file.take() else {
            let hash = Hash(*blake3::hash(&self.head).as_bytes());
            return cas.hold_inline(&self.store, &hash, &self.head);
        };
        writer
            .into_inner()
            .map_err(|e| CasError::io(&self.tmp_data)(e.into_error()))?;
        self.place(cas)
    }

    /// Makes the temporary data file durable and builds its hash tree (side by side: the
    /// flush waits on the disk, the hashing on the CPU), then moves both into place.
    fn place(&self, cas: &Cas) -> Result<BlobInfo, CasError> {
        let (tmp_data, tmp_obao) = (&self.tmp_data, &self.tmp_obao);
        let data = File::open(tmp_data).map_err(CasError::io(tmp_data))?;
        let obao = File::create(tmp_obao).map_err(CasError::io(tmp_obao))?;
        let (synced, root) = std::thread::scope(|scope| {
            let synced = scope.spawn(|| data.sync_all());
            let root = obao
                .try_clone()
                .and_then(|tree| verify::make_outboard(&data, self.size, tree))
                .and_then(|root| obao.sync_all().map(|()| root));
            (synced.join(), root)
        });
        match synced {
            Ok(done) => done.map_err(CasError::io(tmp_data))?,
            Err(_) => {
                return Err(CasError::io(tmp_data)(std::io::Error::other(
                    "flushing the data panicked",
                )));
            }
        }
        let hash = Hash(*root.map_err(CasError::io(tmp_obao))?.as_bytes());
        cas.adopt(&self.store, &hash, self.size, tmp_data, tmp_obao)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        self.file = None;
        for path in [&self.tmp_data, &self.tmp_obao] {
            remove_quietly(path);
        }
    }
}

/// Removes a temporary file; one already gone is fine, another failure is logged.
fn remove_quietly(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(path = %path.display(), "could not remove a temporary file: {e}");
    }
}
