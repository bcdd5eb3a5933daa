//! The node identity key file: exactly 32 bytes (the Ed25519 seed), mode 0600.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use lattice_model::NodeKey;
use tracing::info;

/// The identity key file could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading, writing or creating the file or its directory failed.
    #[error("identity key {path}: {source}")]
    Io {
        /// The file path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not exactly 32 bytes.
    #[error(
        "identity key {path} is {len} bytes, expected 32; restore it from a backup or move it away to create a new identity"
    )]
    Malformed {
        /// The file path.
        path: String,
        /// Its length.
        len: u64,
    },
    /// Other users may read the file.
    #[error(
        "identity key {path} has mode {mode:o}, readable by other users; run `chmod 600 {path}`"
    )]
    TooOpen {
        /// The file path.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The system random source failed.
    #[error("no randomness for a new identity key: {0}")]
    Random(String),
}

pub(crate) fn load_or_create(path: &Path) -> Result<NodeKey, IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    };
    match fs::File::open(path) {
        Ok(mut file) => {
            let meta = file.metadata().map_err(io)?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(IdentityError::TooOpen {
                    path: path.display().to_string(),
                    mode,
                });
            }
            if meta.len() != 32 {
                return Err(IdentityError::Malformed {
                    path: path.display().to_string(),
                    len: meta.len(),
                });
            }
            let mut seed = [0u8; 32];
            file.read_exact(&mut seed).map_err(io)?;
            Ok(NodeKey::from_seed(seed))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| IdentityError::Random(e.to_string()))?;
            create(path, seed)
        }
        Err(e) => Err(io(e)),
    }
}

/// Writes a new identity key file holding `seed` (mode 0600, its directory made when
/// missing); fails when the file exists.
pub(crate) fn create(path: &Path, seed: [u8; 32]) -> Result<NodeKey, IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io)?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(&seed).map_err(io)?;
    file.sync_all().map_err(io)?;
    let key = NodeKey::from_seed(seed);
    info!(node = %key.public().short(), "created node identity");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_private_key_once_and_reloads_it() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sub/identity.key");
        let a = load_or_create(&path)?;
        let mode = fs::metadata(&path)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = load_or_create(&path)?;
        assert_eq!(a.public(), b.public());
        Ok(())
    }

    #[test]
    fn refuses_a_world_readable_or_malformed_key() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("identity.key");
        load_or_create(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        assert!(matches!(
            load_or_create(&path),
            Err(IdentityError::TooOpen { .. })
        ));
        fs::write(&path, b"short")?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        assert!(matches!(
            load_or_create(&path),
            Err(IdentityError::Malformed { len: 5, .. })
        ));
        Ok(())
    }
}
