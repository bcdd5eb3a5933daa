//! One mounted store: the FUSE filesystem that turns kernel requests into the store's
//! methods (see the crate docs).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use lattice_model::{Hash, StoreId};
use lattice_node::{NodeError, StoreManager};
use serde_json::{Value, json};
use tempfile::NamedTempFile;
use tokio::runtime::Handle;
use tracing::{debug, warn};

use crate::error::MountError;
use crate::inodes::{Inodes, ROOT, join};

/// How long the kernel may keep a name's lookup (a peer's rename shows after it).
const TTL: Duration = Duration::from_secs(1);
/// How long the kernel may keep attributes: not at all, so a file written on close (here or
/// by a peer) never shows its old size or time to the next `stat`.
const ATTR_TTL: Duration = Duration::ZERO;
/// Content up to this size travels inside the write; larger content goes into the blobs.
const INLINE: u64 = 64 << 10;

/// Bytes of a blob verified and kept per read step of an open file.
const WINDOW: u64 = 1 << 20;

/// Request threads of a mount.
const THREADS: usize = 8;

/// A mounted store and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// The store.
    pub store: StoreId,
    /// The folder it is mounted on.
    pub dir: PathBuf,
}

/// A store mounted as a folder; unmounted when dropped.
pub struct FsMount {
    info: MountInfo,
    session: Option<BackgroundSession>,
}

impl std::fmt::Debug for FsMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsMount").field("info", &self.info).finish()
    }
}

impl FsMount {
    /// Mounts filesystem store `store` of the node on `dir` (an existing empty folder),
    /// keeping open files' unsaved bytes in `spool`. Requests are served on a thread of their
    /// own; `rt` runs the node's work.
    ///
    /// # Errors
    /// [`MountError::NotFs`] for another store type, [`MountError::Mount`] when FUSE refuses.
    pub fn start(
        manager: StoreManager,
        rt: Handle,
        store: StoreId,
        dir: &Path,
        spool: PathBuf,
    ) -> Result<FsMount, MountError> {
        let kind = rt.block_on(manager.describe(&store))?.name;
        if kind != "fs" {
            return Err(MountError::NotFs {
                store: store.short(),
                kind,
            });
        }
        let mount_error = |reason: String| MountError::Mount {
            path: dir.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(&spool).map_err(|e| mount_error(e.to_string()))?;
        // Entries belong to whoever runs the node: the owner of the spool it just made.
        let owner = std::fs::metadata(&spool).map_err(|e| mount_error(e.to_string()))?;
        let fs = Fs {
            cas: manager.node().cas().cloned(),
            manager,
            rt,
            store,
            uid: owner.uid(),
            gid: owner.gid(),
            spool,
            inodes: Mutex::new(Inodes::new()),
            files: Mutex::new(HashMap::new()),
            listings: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        };
        let mut config = fuser::Config::default();
        // Several request threads, each with its own channel: closes of different files are
        // written to the store together (one durable commit for many), and reads of
        // different windows are verified side by side.
        config.n_threads = Some(THREADS);
        config.clone_fd = true;
        config.mount_options = vec![
            fuser::MountOption::FSName(format!("lattice-{}", store.short())),
            fuser::MountOption::Subtype("lattice".into()),
        ];
        let session =
            fuser::spawn_mount(fs, dir, &config).map_err(|e| mount_error(e.to_string()))?;
        Ok(FsMount {
            info: MountInfo {
                store,
                dir: dir.to_path_buf(),
            },
            session: Some(session),
        })
    }

    /// What is mounted where.
    pub fn info(&self) -> &MountInfo {
        &self.info
    }

    /// Unmounts and waits for the request thread to end.
    ///
    /// # Errors
    /// [`MountError::Mount`] when the kernel refuses (for example, the folder is busy).
    pub fn unmount(mut self) -> Result<(), MountError> {
        match self.session.take() {
            Some(session) => session.umount_and_join().map_err(|e| MountError::Mount {
                path: self.info.dir.clone(),
                reason: format!("unmounting: {e}"),
            }),
            None => Ok(()),
        }
    }
}

/// Where an open file's bytes come from until it is written.
#[derive(Debug, Clone)]
enum Source {
    Inline(Vec<u8>),
    Blob(Hash, u64),
    /// A spool a commit is moving into the blob store (its bytes no longer change): what
    /// the handle holds until the commit ends.
    Taken(Arc<File>, u64),
}

impl Source {
    fn size(&self) -> u64 {
        match self {
            Source::Inline(bytes) => bytes.len() as u64,
            Source::Blob(_, size) | Source::Taken(_, size) => *size,
        }
    }
}

/// An open file.
struct Open {
    path: String,
    ino: u64,
    source: Source,
    /// Opened for writing.
    writable: bool,
    /// A writable handle's bytes as it writes them (a named file in the spool folder, so a
    /// commit can move it into the blob store instead of copying it). `None` after a commit
    /// took it: the next write copies `source` into a new one.
    spool: Option<NamedTempFile>,
    /// Counts writes and truncations (a new or truncated file starts at 1).
    version: u64,
    /// The version the last commit wrote: the handle is dirty while the two differ, so a
    /// write racing a commit is written by the next one.
    committed: u64,
    /// The last window of a blob read through this handle (start, verified bytes): the
    /// kernel's reads are smaller than a verified window.
    window: Option<(u64, Arc<Vec<u8>>)>,
    /// Created through the mount and not yet written to the store: it exists only here
    /// until its first commit (so a new file costs one store write, not two).
    pending: Option<u32>,
}

impl Open {
    /// Written (or truncated) since the last commit.
    fn dirty(&self) -> bool {
        self.version != self.committed
    }

    /// The handle's size: its spool's, else its source's.
    fn size(&self) -> u64 {
        match &self.spool {
            Some(spool) => spool.as_file().metadata().map_or(0, |m| m.len()),
            None => self.source.size(),
        }
    }
}

struct Fs {
    manager: StoreManager,
    /// The node's blob store: reads of large files go straight to it.
    cas: Option<std::sync::Arc<lattice_cas::Cas>>,
    rt: Handle,
    store: StoreId,
    uid: u32,
    gid: u32,
    spool: PathBuf,
    inodes: Mutex<Inodes>,
    files: Mutex<HashMap<u64, Open>>,
    /// Open directories' listings, taken when a listing starts (offset 0): the kernel asks
    /// for a long listing in pieces, and each piece is served from the same snapshot.
    listings: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_fh: AtomicU64,
}

/// One entry of a listing: inode, kind, name.
type DirEntry = (u64, FileType, String);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The errno a failed store call answers with: the guest's POSIX name, else `EIO`.
fn errno_of(e: &NodeError) -> Errno {
    let text = e.to_string();
    for (name, errno) in [
        ("ENOENT", Errno::ENOENT),
        ("EEXIST", Errno::EEXIST),
        ("ENOTDIR", Errno::ENOTDIR),
        ("EISDIR", Errno::EISDIR),
        ("ENOTEMPTY", Errno::ENOTEMPTY),
        ("EINVAL", Errno::EINVAL),
        ("EROFS", Errno::EROFS),
    ] {
        if text.contains(&format!("{name}:")) {
            return errno;
        }
    }
    warn!("a mount request failed: {text}");
    Errno::EIO
}

/// Bytes as the store's JSON arguments carry them.
fn bytes_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => json!({ "hex": hex::encode(bytes) }),
    }
}

/// Bytes from the store's JSON (a string, or `{"hex": …}`).
fn json_bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Object(map) => hex::decode(map.get("hex")?.as_str()?).ok(),
        _ => None,
    }
}

fn name_of(name: &OsStr) -> Result<&str, Errno> {
    name.to_str().ok_or(Errno::EINVAL)
}

impl Fs {
    fn call(&self, method: &str, args: Value) -> Result<Value, Errno> {
        self.rt
            .block_on(self.manager.call(&self.store, method, &args))
            .map_err(|e| errno_of(&e))
    }

    fn path(&self, ino: INodeNo) -> Result<String, Errno> {
        lock(&self.inodes).path(ino.0).ok_or(Errno::ENOENT)
    }

    fn stat(&self, path: &str) -> Result<Value, Errno> {
        self.call("stat", json!({ "path": path }))
    }

    /// The attributes of `path` as `stat` described it, with the size an open dirty handle
    /// holds.
    fn attr(&self, path: &str, stat: &Value) -> FileAttr {
        let ino = lock(&self.inodes).number(path);
        let kind = match stat["kind"].as_str() {
            Some("dir") => FileType::Directory,
            Some("symlink") => FileType::Symlink,
            _ => FileType::RegularFile,
        };
        let mut size = stat["size"].as_u64().unwrap_or(0);
        for open in lock(&self.files).values() {
            if open.ino == ino && open.dirty() {
                size = open.size();
            }
        }
        let mtime = UNIX_EPOCH + Duration::from_millis(stat["mtime_ms"].as_u64().unwrap_or(0));
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm: stat["mode"].as_u64().unwrap_or(0o644) as u16,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn lookup_path(&self, path: &str) -> Result<FileAttr, Errno> {
        if let Some(attr) = self.pending_attr(path) {
            return Ok(attr);
        }
        let stat = self.stat(path)?;
        Ok(self.attr(path, &stat))
    }

    /// The attributes of a file created through the mount and not written to the store yet.
    fn pending_attr(&self, path: &str) -> Option<FileAttr> {
        let (mode, size) = {
            let files = lock(&self.files);
            let open = files
                .values()
                .find(|o| o.pending.is_some() && o.path == path)?;
            (open.pending.unwrap_or(0o644), open.size())
        };
        let mtime = SystemTime::now();
        let stat = json!({"kind": "file", "size": size, "mode": mode,
            "mtime_ms": mtime.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)});
        Some(self.attr(path, &stat))
    }

    /// Writes every file created through the mount under `path` (or at it) that is not in
    /// the store yet, so a rename or removal finds it there.
    fn materialize(&self, path: &str) -> Result<(), Errno> {
        let prefix = format!("{path}/");
        let pending: Vec<u64> = lock(&self.files)
            .iter()
            .filter(|(_, o)| o.pending.is_some() && (o.path == path || o.path.starts_with(&prefix)))
            .map(|(fh, _)| *fh)
            .collect();
        for fh in pending {
            self.commit(fh)?;
        }
        Ok(())
    }

    /// The content source `stat` names (inline content is read now: at most 64 KiB).
    fn source(&self, path: &str, stat: &Value) -> Result<Source, Errno> {
        if let Some(hex) = stat["blob"].as_str() {
            let hash = Hash::from_hex(hex).map_err(|_| Errno::EIO)?;
            return Ok(Source::Blob(hash, stat["size"].as_u64().unwrap_or(0)));
        }
        let read = self.call("read", json!({ "path": path }))?;
        Ok(Source::Inline(json_bytes(&read["data"]).ok_or(Errno::EIO)?))
    }

    /// Bytes `offset..offset + size` of `source` (blobs fetched from the store's peers when
    /// not here).
    fn read_source(&self, source: &Source, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        match source {
            Source::Inline(bytes) => {
                let start = (offset as usize).min(bytes.len());
                let end = (start + size as usize).min(bytes.len());
                Ok(bytes[start..end].to_vec())
            }
            Source::Blob(hash, total) => {
                let end = (offset + u64::from(size)).min(*total);
                if offset >= end {
                    return Ok(Vec::new());
                }
                let cas = self.cas.as_ref().ok_or(Errno::EIO)?;
                let mut out = Vec::with_capacity((end - offset) as usize);
                let mut read = cas.read(&self.store, hash, offset..end, &mut out);
                if let Err(lattice_cas::CasError::NotFound { .. }) = read {
                    // Not here yet: from the store's peers first.
                    self.rt
                        .block_on(self.manager.fetch_blob(&self.store, hash))
                        .map_err(|e| errno_of(&e))?;
                    out.clear();
                    read = cas.read(&self.store, hash, offset..end, &mut out);
                }
                read.map_err(|e| {
                    warn!("reading a blob for the mount failed: {e}");
                    Errno::EIO
                })?;
                Ok(out)
            }
            Source::Taken(file, total) => {
                let end = (offset + u64::from(size)).min(*total);
                let mut out = vec![0; end.saturating_sub(offset) as usize];
                file.read_exact_at(&mut out, offset)
                    .map_err(|_| Errno::EIO)?;
                Ok(out)
            }
        }
    }

    /// Bytes `offset..offset + size` of blob `hash` (`total` bytes) for handle `fh`, by
    /// verified windows of [`WINDOW`] bytes, the last of which the handle keeps.
    fn read_blob(
        &self,
        fh: u64,
        hash: &Hash,
        total: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, Errno> {
        let end = (offset + u64::from(size)).min(total);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let start = at - at % WINDOW;
            let cached = lock(&self.files)
                .get(&fh)
                .and_then(|o| o.window.clone())
                .filter(|(s, _)| *s == start);
            let bytes = match cached {
                Some((_, bytes)) => bytes,
                None => {
                    let source = Source::Blob(*hash, total);
                    let len = WINDOW.min(total - start) as u32;
                    let bytes = Arc::new(self.read_source(&source, start, len)?);
                    if let Some(open) = lock(&self.files).get_mut(&fh) {
                        open.window = Some((start, bytes.clone()));
                    }
                    bytes
                }
            };
            let from = (at - start) as usize;
            let to = ((end - start) as usize).min(bytes.len());
            if from >= to {
                return Err(Errno::EIO);
            }
            out.extend_from_slice(&bytes[from..to]);
            at = start + to as u64;
        }
        Ok(out)
    }

    /// A spool file holding `source`'s bytes (empty with `truncate`).
    fn spool_of(&self, source: &Source, truncate: bool) -> Result<NamedTempFile, Errno> {
        let spool = NamedTempFile::new_in(&self.spool).map_err(|_| Errno::EIO)?;
        let file = spool.as_file();
        if !truncate {
            let total = source.size();
            let mut at = 0;
            while at < total {
                let part = self.read_source(source, at, 4 << 20)?;
                if part.is_empty() {
                    return Err(Errno::EIO);
                }
                file.write_all_at(&part, at).map_err(|_| Errno::EIO)?;
                at += part.len() as u64;
            }
        }
        Ok(spool)
    }

    /// Runs `f` on handle `fh` with its spool, made again from the handle's source when the
    /// last commit took it.
    fn with_spool<T>(
        &self,
        fh: u64,
        f: impl FnOnce(&mut Open, &File) -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let source = {
            let mut files = lock(&self.files);
            let open = files.get_mut(&fh).ok_or(Errno::EBADF)?;
            if !open.writable {
                return Err(Errno::EBADF);
            }
            if let Some(spool) = open.spool.take() {
                let done = f(open, spool.as_file());
                open.spool = Some(spool);
                return done;
            }
            open.source.clone()
        };
        let fresh = self.spool_of(&source, false)?;
        let mut files = lock(&self.files);
        let open = files.get_mut(&fh).ok_or(Errno::EBADF)?;
        // Another request may have made one meanwhile: the first stays.
        let spool = open.spool.take().unwrap_or(fresh);
        let done = f(open, spool.as_file());
        open.spool = Some(spool);
        done
    }

    /// Writes handle `fh`'s bytes to the store when they changed: one write of the store.
    fn commit(&self, fh: u64) -> Result<(), Errno> {
        let needs_spool = match lock(&self.files).get(&fh) {
            Some(open) => open.dirty() && open.spool.is_none(),
            None => return Ok(()),
        };
        if needs_spool {
            // The last commit took the spool and failed: write the bytes it left again.
            self.with_spool(fh, |_, _| Ok(()))?;
        }
        let with_mode = |mut args: Value, mode: Option<u32>| {
            if let Some(mode) = mode {
                args["mode"] = json!(mode);
            }
            args
        };
        // What to write: small content is read now; a large spool is taken from the handle
        // (it moves into the blob store as it is) and the handle reads it until the commit
        // ends.
        let (path, mode, version, taken) = {
            let mut files = lock(&self.files);
            let Some(open) = files.get_mut(&fh) else {
                return Ok(());
            };
            if !open.dirty() {
                return Ok(());
            }
            let Some(spool) = open.spool.as_ref() else {
                return Err(Errno::EIO);
            };
            let size = spool.as_file().metadata().map_err(|_| Errno::EIO)?.len();
            let taken = if size <= INLINE {
                let mut bytes = vec![0; size as usize];
                spool
                    .as_file()
                    .read_exact_at(&mut bytes, 0)
                    .map_err(|_| Errno::EIO)?;
                Err(bytes)
            } else {
                let spool = open.spool.take().ok_or(Errno::EIO)?;
                let frozen = spool.as_file().try_clone().map_err(|_| Errno::EIO)?;
                open.source = Source::Taken(Arc::new(frozen), size);
                open.window = None;
                Ok(spool.into_temp_path())
            };
            (open.path.clone(), open.pending, open.version, taken)
        };
        let source = match taken {
            Err(bytes) => {
                self.call(
                    "write",
                    with_mode(json!({ "path": path, "data": bytes_json(&bytes) }), mode),
                )?;
                Source::Inline(bytes)
            }
            Ok(spool) => {
                let cas = self.cas.as_ref().ok_or(Errno::EIO)?;
                // The file is gone from the spool folder whatever happens; on failure the
                // handle keeps its bytes (the taken file stays open) for the next commit.
                let blob = cas.put_file(&self.store, &spool).map_err(|e| {
                    warn!("moving a file into the blob store failed: {e}");
                    Errno::EIO
                })?;
                let _ = spool.keep();
                self.call(
                    "write",
                    with_mode(
                        json!({ "path": path, "blob": blob.hash.to_string(), "size": blob.size }),
                        mode,
                    ),
                )?;
                Source::Blob(blob.hash, blob.size)
            }
        };
        if let Some(open) = lock(&self.files).get_mut(&fh) {
            // Written again while this commit ran: the next flush writes that too.
            open.committed = version;
            open.pending = None;
            open.source = source;
            open.window = None;
        }
        debug!(path, "committed a file");
        Ok(())
    }

    /// Directory `ino`'s entries as the store lists them, with `.`, `..` and the files
    /// created here and not closed yet.
    fn list(&self, ino: INodeNo) -> Result<Vec<DirEntry>, Errno> {
        let path = self.path(ino)?;
        let items = self.call("readdir", json!({ "path": path }))?;
        let mut entries = vec![
            (ino.0, FileType::Directory, ".".to_string()),
            (ROOT, FileType::Directory, "..".to_string()),
        ];
        let mut listed = std::collections::HashSet::new();
        for item in items["items"].as_array().into_iter().flatten() {
            let name = item["name"].as_str().unwrap_or_default().to_string();
            let kind = match item["kind"].as_str() {
                Some("dir") => FileType::Directory,
                Some("symlink") => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            let child = lock(&self.inodes).number(&join(&path, &name));
            listed.insert(name.clone());
            entries.push((child, kind, name));
        }
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        let mut pending: Vec<(u64, String)> = lock(&self.files)
            .values()
            .filter(|o| o.pending.is_some())
            .filter_map(|o| {
                let name = o.path.strip_prefix(&prefix)?;
                (!name.contains('/') && !listed.contains(name)).then(|| (o.ino, name.to_string()))
            })
            .collect();
        pending.sort_by(|a, b| a.1.cmp(&b.1));
        entries.extend(
            pending
                .into_iter()
                .map(|(child, name)| (child, FileType::RegularFile, name)),
        );
        Ok(entries)
    }

    fn new_handle(&self, open: Open) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.files).insert(fh, open);
        fh
    }

    fn open_file(&self, ino: INodeNo, flags: i32) -> Result<u64, Errno> {
        let path = self.path(ino)?;
        // A file created through the mount and still open elsewhere: into the store first.
        self.materialize(&path)?;
        let stat = self.stat(&path)?;
        if stat["kind"] == "dir" {
            return Err(Errno::EISDIR);
        }
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        if stat["conflict_copy"] == true && writable {
            return Err(Errno::EROFS);
        }
        let source = self.source(&path, &stat)?;
        let truncate = flags & libc::O_TRUNC != 0;
        let spool = if writable {
            Some(self.spool_of(&source, truncate)?)
        } else {
            None
        };
        Ok(self.new_handle(Open {
            path,
            ino: ino.0,
            source,
            writable,
            spool,
            version: u64::from(truncate),
            committed: 0,
            window: None,
            pending: None,
        }))
    }
}

impl Filesystem for Fs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // Requests of up to 1 MiB (the kernel's default is 128 KiB): fewer round trips for
        // large files. When the kernel allows less, take what it allows.
        const LARGE: u32 = 1 << 20;
        if let Err(most) = config.set_max_write(LARGE) {
            let _ = config.set_max_write(most);
        }
        if let Err(most) = config.set_max_readahead(LARGE) {
            let _ = config.set_max_readahead(most);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = (|| {
            let path = join(&self.path(parent)?, name_of(name)?);
            self.lookup_path(&path)
        })();
        match found {
            Ok(attr) => reply.entry_with_ttls(&ATTR_TTL, &TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.path(ino).and_then(|p| self.lookup_path(&p)) {
            Ok(attr) => reply.attr(&ATTR_TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let done = (|| {
            let path = self.path(ino)?;
            self.materialize(&path)?;
            if let Some(mode) = mode {
                self.call("chmod", json!({ "path": path, "mode": mode & 0o7777 }))?;
            }
            if let Some(size) = size {
                // Through the open handle when there is one; else a handle of our own.
                let (fh, own) = match fh {
                    Some(fh) if lock(&self.files).get(&fh.0).is_some_and(|o| o.writable) => {
                        (fh.0, false)
                    }
                    _ => (self.open_file(ino, libc::O_RDWR)?, true),
                };
                let truncated = self.with_spool(fh, |open, spool| {
                    spool.set_len(size).map_err(|_| Errno::EIO)?;
                    open.version += 1;
                    Ok(())
                });
                if own && truncated.is_err() {
                    lock(&self.files).remove(&fh);
                }
                truncated?;
                if own {
                    let committed = self.commit(fh);
                    lock(&self.files).remove(&fh);
                    committed?;
                }
            }
            self.lookup_path(&path)
        })();
        match done {
            Ok(attr) => reply.attr(&ATTR_TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let target = self
            .path(ino)
            .and_then(|path| self.call("readlink", json!({ "path": path })))
            .and_then(|v| json_bytes(&v["target"]).ok_or(Errno::EIO));
        match target {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let made = (|| {
            let path = join(&self.path(parent)?, name_of(name)?);
            self.call(
                "mkdir",
                json!({ "path": path, "mode": mode & !umask & 0o7777 }),
            )?;
            self.lookup_path(&path)
        })();
        match made {
            Ok(attr) => reply.entry_with_ttls(&ATTR_TTL, &TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let done = (|| {
            let path = join(&self.path(parent)?, name_of(name)?);
            self.materialize(&path)?;
            self.call("unlink", json!({ "path": path }))?;
            lock(&self.inodes).forget_path(&path);
            Ok(())
        })();
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let done = (|| {
            let path = join(&self.path(parent)?, name_of(name)?);
            self.call("rmdir", json!({ "path": path }))?;
            lock(&self.inodes).forget_path(&path);
            Ok(())
        })();
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let made = (|| {
            let path = join(&self.path(parent)?, name_of(link_name)?);
            let target = target.to_str().ok_or(Errno::EINVAL)?;
            self.call("symlink", json!({ "path": path, "target": target }))?;
            self.lookup_path(&path)
        })();
        match made {
            Ok(attr) => reply.entry_with_ttls(&ATTR_TTL, &TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let done = (|| {
            let from = join(&self.path(parent)?, name_of(name)?);
            let to = join(&self.path(newparent)?, name_of(newname)?);
            self.materialize(&from)?;
            if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                return Err(Errno::EINVAL);
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) && self.stat(&to).is_ok() {
                return Err(Errno::EEXIST);
            }
            self.call("rename", json!({ "from": from, "to": to }))?;
            lock(&self.inodes).rename(&from, &to);
            for open in lock(&self.files).values_mut() {
                if open.path == from {
                    open.path.clone_from(&to);
                } else if let Some(rest) = open.path.strip_prefix(&format!("{from}/")) {
                    open.path = format!("{to}/{rest}");
                }
            }
            Ok(())
        })();
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.open_file(ino, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let made = (|| {
            let path = join(&self.path(parent)?, name_of(name)?);
            // The kernel calls this after its lookup found no such entry (holding the
            // folder's lock since), so the store is not asked again. A peer's file of the same
            // name written meanwhile meets this one as a concurrent write: the later stays
            // under the name, the other as a conflict copy.
            if self.pending_attr(&path).is_some() {
                return Err(Errno::EEXIST);
            }
            let ino = lock(&self.inodes).number(&path);
            let spool = NamedTempFile::new_in(&self.spool).map_err(|_| Errno::EIO)?;
            let fh = self.new_handle(Open {
                path: path.clone(),
                ino,
                source: Source::Inline(Vec::new()),
                writable: true,
                spool: Some(spool),
                version: 1,
                committed: 0,
                window: None,
                pending: Some(mode & !umask & 0o7777),
            });
            let _ = flags;
            let attr = self.pending_attr(&path).ok_or(Errno::EIO)?;
            Ok((attr, fh))
        })();
        match made {
            Ok((attr, fh)) => reply.created(
                &ATTR_TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let got = (|| {
            let (spool, source) = {
                let files = lock(&self.files);
                let open = files.get(&fh.0).ok_or(Errno::EBADF)?;
                let spool = match &open.spool {
                    Some(s) => Some(s.as_file().try_clone().map_err(|_| Errno::EIO)?),
                    None => None,
                };
                (spool, open.source.clone())
            };
            match spool {
                Some(file) => {
                    let mut buf = vec![0; size as usize];
                    let n = file.read_at(&mut buf, offset).map_err(|_| Errno::EIO)?;
                    buf.truncate(n);
                    Ok(buf)
                }
                None => match source {
                    Source::Blob(hash, total) => self.read_blob(fh.0, &hash, total, offset, size),
                    inline => self.read_source(&inline, offset, size),
                },
            }
        })();
        match got {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let written = self.with_spool(fh.0, |open, spool| {
            spool.write_all_at(data, offset).map_err(|_| Errno::EIO)?;
            open.version += 1;
            Ok(())
        });
        match written {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.commit(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let committed = self.commit(fh.0);
        lock(&self.files).remove(&fh.0);
        match committed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.commit(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let kept = match offset {
            0 => None,
            _ => lock(&self.listings).get(&fh.0).cloned(),
        };
        let listed = match kept {
            Some(entries) => Ok(entries),
            None => self.list(ino).map(|entries| {
                let entries = Arc::new(entries);
                lock(&self.listings).insert(fh.0, entries.clone());
                entries
            }),
        };
        match listed {
            Ok(entries) => {
                for (i, (child, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*child), (i + 1) as u64, *kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.listings).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Every store write is durable when it returns.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let free = 1 << 30;
        reply.statfs(1 << 31, free, free, 1 << 20, 1 << 19, 4096, 255, 4096);
    }
}
