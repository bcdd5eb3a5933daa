//! The mounts of a node: started and stopped on request, recorded in a file so that mounts
//! a crash left behind are taken down when the node starts again, and all unmounted when
//! the node stops.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use lattice_model::StoreId;
use lattice_node::StoreManager;
use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::error::MountError;
use crate::mount::{FsMount, MountInfo};

/// A node's mounts.
pub struct Mounts {
    manager: StoreManager,
    rt: Handle,
    record: PathBuf,
    spool: PathBuf,
    active: Mutex<BTreeMap<PathBuf, FsMount>>,
}

impl std::fmt::Debug for Mounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounts")
            .field("record", &self.record)
            .finish()
    }
}

impl Mounts {
    /// The mounts of the node whose data directory is `data_dir` (record `mounts`, spool
    /// `spool/`). Mounts recorded by an earlier run that did not stop cleanly are taken down
    /// first (lazily, so a busy folder does not block the start).
    pub fn new(manager: StoreManager, rt: Handle, data_dir: &Path) -> Mounts {
        let record = data_dir.join("mounts");
        let spool = data_dir.join("spool");
        if let Ok(text) = std::fs::read_to_string(&record) {
            for dir in text.lines().filter(|l| !l.is_empty()) {
                detach(Path::new(dir));
                info!(dir, "took down a mount the last run left behind");
            }
        }
        let _ = std::fs::remove_file(&record);
        let _ = std::fs::remove_dir_all(&spool);
        Mounts {
            manager,
            rt,
            record,
            spool,
            active: Mutex::new(BTreeMap::new()),
        }
    }

    fn active(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, FsMount>> {
        self.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the record of what is mounted.
    fn save(&self, active: &BTreeMap<PathBuf, FsMount>) -> Result<(), MountError> {
        let text: String = active
            .keys()
            .map(|d| format!("{}\n", d.display()))
            .collect();
        std::fs::write(&self.record, text).map_err(|source| MountError::Record {
            path: self.record.clone(),
            source,
        })
    }

    /// Mounts filesystem store `store` on folder `dir`. Blocking: call it off the async
    /// threads.
    ///
    /// # Errors
    /// See [`FsMount::start`]; [`MountError::AlreadyMounted`].
    pub fn mount(&self, store: StoreId, dir: &Path) -> Result<MountInfo, MountError> {
        let dir = dir.canonicalize().map_err(|e| MountError::Mount {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        if self.active().contains_key(&dir) {
            return Err(MountError::AlreadyMounted(dir));
        }
        let spool = self.spool.join(store.short());
        let mounted = FsMount::start(self.manager.clone(), self.rt.clone(), store, &dir, spool)?;
        let info = mounted.info().clone();
        let mut active = self.active();
        active.insert(dir, mounted);
        self.save(&active)?;
        Ok(info)
    }

    /// Unmounts folder `dir`. Blocking.
    ///
    /// # Errors
    /// [`MountError::NotMounted`]; [`MountError::Mount`] when the kernel refuses.
    pub fn unmount(&self, dir: &Path) -> Result<MountInfo, MountError> {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let mounted = self
            .active()
            .remove(&dir)
            .ok_or_else(|| MountError::NotMounted(dir.clone()))?;
        let info = mounted.info().clone();
        let unmounted = mounted.unmount();
        let active = self.active();
        self.save(&active)?;
        unmounted.map(|()| info)
    }

    /// What is mounted where.
    pub fn list(&self) -> Vec<MountInfo> {
        self.active().values().map(|m| m.info().clone()).collect()
    }

    /// Unmounts everything (the node is stopping). Blocking.
    pub fn unmount_all(&self) {
        let all = std::mem::take(&mut *self.active());
        for (dir, mounted) in all {
            if let Err(e) = mounted.unmount() {
                warn!(dir = %dir.display(), "unmounting failed ({e}); detaching it");
                detach(&dir);
            }
        }
        let _ = std::fs::remove_file(&self.record);
    }
}

/// Takes a mount down even while busy (`fusermount3 -u -z`, else `umount -l`).
fn detach(dir: &Path) {
    for (tool, args) in [("fusermount3", ["-u", "-z"]), ("umount", ["-l", "--"])] {
        let done = std::process::Command::new(tool)
            .args(args)
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if done {
            return;
        }
    }
}
