//! The filesystem's records and ops payload: entry ids, locations, contents, and their
//! byte encodings (all little-endian, version 1).

use lattice_sdk::{Head, StoreError};

/// Bytes of an entry id.
pub const ID_LEN: usize = 16;
/// An entry's id: the first 14 bytes of the intention that created it and the op's index
/// in that intention (u16).
pub type Id = [u8; ID_LEN];
/// The root directory's id (all zero; never created, always there).
pub const ROOT: Id = [0; ID_LEN];
/// Longest name of one entry (bytes), as Linux allows.
pub const MAX_NAME: usize = 255;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file: its bytes are its content.
    File,
    /// A directory.
    Dir,
    /// A symbolic link: its content is the target path.
    Symlink,
}

impl Kind {
    fn to_byte(self) -> u8 {
        match self {
            Kind::File => 1,
            Kind::Dir => 2,
            Kind::Symlink => 3,
        }
    }

    fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::File),
            2 => Some(Kind::Dir),
            3 => Some(Kind::Symlink),
            _ => None,
        }
    }

    /// The name queries use: `file`, `dir`, `symlink`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
        }
    }
}

/// Where an entry is and what it is: one head of its location register. A removal is a
/// location too (`removed`), so the place a removed directory had is still known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    /// The directory it is in.
    pub parent: Id,
    /// What it is (never changes for an entry).
    pub kind: Kind,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Removed by `unlink`/`rmdir` (or replaced by a rename onto its name).
    pub removed: bool,
    /// Its name in `parent`.
    pub name: Vec<u8>,
}

impl Loc {
    /// `parent [16] | kind u8 | flags u8 (bit 0 removed) | mode u32 | name_len u16 | name`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.name.len());
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.parent);
        out.push(self.kind.to_byte());
        out.push(u8::from(self.removed));
        out.extend_from_slice(&self.mode.to_le_bytes());
        out.extend_from_slice(&(self.name.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.name);
    }

    fn decode_from(bytes: &mut &[u8]) -> Result<Loc, StoreError> {
        let parent = id_from(take(bytes, ID_LEN)?)?;
        let kind = Kind::from_byte(take(bytes, 1)?[0]).ok_or_else(|| reject("unknown kind"))?;
        let removed = match take(bytes, 1)?[0] {
            0 => false,
            1 => true,
            _ => return Err(reject("unknown location flags")),
        };
        let mode = take_u32(bytes)?;
        if mode > 0o7777 {
            return Err(reject("mode out of range"));
        }
        let len = take_u16(bytes)? as usize;
        let name = take(bytes, len)?.to_vec();
        check_name(&name).map_err(|_| reject("bad name"))?;
        Ok(Loc {
            parent,
            kind,
            mode,
            removed,
            name,
        })
    }

    /// Decodes a stored location.
    ///
    /// # Errors
    /// [`StoreError::Internal`] when malformed.
    pub fn decode(mut bytes: &[u8]) -> Result<Loc, StoreError> {
        let loc = Loc::decode_from(&mut bytes)
            .map_err(|_| StoreError::Internal("a stored location is malformed".into()))?;
        if !bytes.is_empty() {
            return Err(StoreError::Internal(
                "a stored location is malformed".into(),
            ));
        }
        Ok(loc)
    }
}

/// A file's bytes (or a symlink's target): inline, or a blob of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Small content, kept in the state.
    Inline(Vec<u8>),
    /// Content kept as blob `hash` of `size` bytes.
    Blob([u8; 32], u64),
}

impl Content {
    /// `0u8 | len u32 | bytes` or `1u8 | hash [32] | size u64`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Content::Inline(bytes) => {
                out.push(0);
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(bytes);
            }
            Content::Blob(hash, size) => {
                out.push(1);
                out.extend_from_slice(hash);
                out.extend_from_slice(&size.to_le_bytes());
            }
        }
    }

    fn decode_from(bytes: &mut &[u8]) -> Result<Content, StoreError> {
        match take(bytes, 1)?[0] {
            0 => {
                let len = take_u32(bytes)? as usize;
                if len > crate::MAX_INLINE {
                    return Err(reject("inline content over the limit"));
                }
                Ok(Content::Inline(take(bytes, len)?.to_vec()))
            }
            1 => {
                let mut hash = [0u8; 32];
                hash.copy_from_slice(take(bytes, 32)?);
                let size = take_u64(bytes)?;
                Ok(Content::Blob(hash, size))
            }
            _ => Err(reject("unknown content tag")),
        }
    }

    /// Decodes stored content.
    ///
    /// # Errors
    /// [`StoreError::Internal`] when malformed.
    pub fn decode(mut bytes: &[u8]) -> Result<Content, StoreError> {
        let content = Content::decode_from(&mut bytes)
            .map_err(|_| StoreError::Internal("stored content is malformed".into()))?;
        if !bytes.is_empty() {
            return Err(StoreError::Internal("stored content is malformed".into()));
        }
        Ok(content)
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            Content::Inline(bytes) => bytes.len() as u64,
            Content::Blob(_, size) => *size,
        }
    }

    /// The blob it is, if it is one.
    pub fn blob(&self) -> Option<&[u8; 32]> {
        match self {
            Content::Blob(hash, _) => Some(hash),
            Content::Inline(_) => None,
        }
    }
}

/// One change in an intention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsOp {
    /// A new entry at `loc` (its id comes from the intention), with `content` for a file or
    /// symlink.
    Create {
        /// Where, and what.
        loc: Loc,
        /// A file's bytes or a symlink's target.
        content: Option<Content>,
    },
    /// New content for file `id`; `loc` is where its writer saw it (written again, so an
    /// edit concurrent with a removal keeps the file).
    Write {
        /// The file.
        id: Id,
        /// Its location as the writer saw it.
        loc: Loc,
        /// Its new bytes.
        content: Content,
    },
    /// A new location for `id`: a rename, a mode change or a removal.
    Place {
        /// The entry.
        id: Id,
        /// Where it is now.
        loc: Loc,
    },
}

/// Encodes ops as the ops payload: `1u8 | count u16 | op*`, op = `1 | loc | has u8 |
/// content?` (create), `2 | id | loc | content` (write), `3 | id | loc` (place).
pub fn encode_ops(ops: &[FsOp]) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend_from_slice(&(ops.len() as u16).to_le_bytes());
    for op in ops {
        match op {
            FsOp::Create { loc, content } => {
                out.push(1);
                loc.encode_into(&mut out);
                match content {
                    Some(c) => {
                        out.push(1);
                        c.encode_into(&mut out);
                    }
                    None => out.push(0),
                }
            }
            FsOp::Write { id, loc, content } => {
                out.push(2);
                out.extend_from_slice(id);
                loc.encode_into(&mut out);
                content.encode_into(&mut out);
            }
            FsOp::Place { id, loc } => {
                out.push(3);
                out.extend_from_slice(id);
                loc.encode_into(&mut out);
            }
        }
    }
    out
}

/// Decodes the ops payload.
///
/// # Errors
/// [`StoreError::Rejected`] when malformed.
pub fn decode_ops(mut bytes: &[u8]) -> Result<Vec<FsOp>, StoreError> {
    if take(&mut bytes, 1)? != [1] {
        return Err(reject("unknown version"));
    }
    let count = take_u16(&mut bytes)? as usize;
    if count == 0 || count > crate::MAX_OPS {
        return Err(reject("op count out of range"));
    }
    let mut ops = Vec::with_capacity(count);
    for _ in 0..count {
        ops.push(match take(&mut bytes, 1)?[0] {
            1 => {
                let loc = Loc::decode_from(&mut bytes)?;
                let content = match take(&mut bytes, 1)?[0] {
                    0 => None,
                    1 => Some(Content::decode_from(&mut bytes)?),
                    _ => return Err(reject("unknown content flag")),
                };
                if loc.removed || (content.is_some() == (loc.kind == Kind::Dir)) {
                    return Err(reject(
                        "a create must be live, with content unless a directory",
                    ));
                }
                FsOp::Create { loc, content }
            }
            2 => {
                let id = id_from(take(&mut bytes, ID_LEN)?)?;
                let loc = Loc::decode_from(&mut bytes)?;
                let content = Content::decode_from(&mut bytes)?;
                if loc.removed || loc.kind == Kind::Dir {
                    return Err(reject("a write is to a live file or symlink"));
                }
                FsOp::Write { id, loc, content }
            }
            3 => {
                let id = id_from(take(&mut bytes, ID_LEN)?)?;
                if id == ROOT {
                    return Err(reject("the root cannot move"));
                }
                FsOp::Place {
                    id,
                    loc: Loc::decode_from(&mut bytes)?,
                }
            }
            _ => return Err(reject("unknown op tag")),
        });
    }
    if !bytes.is_empty() {
        return Err(reject("trailing bytes"));
    }
    Ok(ops)
}

/// The id of the entry op `index` of intention `hash` creates.
pub fn created_id(hash: &[u8], index: usize) -> Id {
    let mut id = [0u8; ID_LEN];
    for (slot, byte) in id.iter_mut().zip(hash.iter().take(14)) {
        *slot = *byte;
    }
    id[14..].copy_from_slice(&(index as u16).to_le_bytes());
    id
}

/// Checks one name: 1–255 bytes, no `/` or NUL, not `.` or `..`.
///
/// # Errors
/// [`StoreError::InvalidArgument`] saying what is wrong.
pub fn check_name(name: &[u8]) -> Result<(), StoreError> {
    let bad = |why: &str| {
        Err(StoreError::InvalidArgument(format!(
            "name {:?} {why}",
            String::from_utf8_lossy(name)
        )))
    };
    if name.is_empty() || name == b"." || name == b".." {
        return bad("is not a name");
    }
    if name.len() > MAX_NAME {
        return bad("is over 255 bytes");
    }
    if name.iter().any(|b| *b == b'/' || *b == 0) {
        return bad("holds '/' or NUL");
    }
    Ok(())
}

/// The rank of a head: later wins (HLC, then author, then hash).
pub fn rank(head: &Head) -> (u64, u32, &[u8], &[u8]) {
    (head.hlc.wall_ms, head.hlc.counter, &head.author, &head.hash)
}

/// An id as hex (32 characters).
pub fn id_hex(id: &Id) -> String {
    hex(id)
}

/// Bytes in lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn id_from(bytes: &[u8]) -> Result<Id, StoreError> {
    bytes.try_into().map_err(|_| reject("bad id"))
}

fn reject(what: &str) -> StoreError {
    StoreError::Rejected(format!("malformed fs ops: {what}"))
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], StoreError> {
    if bytes.len() < n {
        return Err(reject("truncated"));
    }
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    Ok(head)
}

fn take_u16(bytes: &mut &[u8]) -> Result<u16, StoreError> {
    let mut raw = [0u8; 2];
    raw.copy_from_slice(take(bytes, 2)?);
    Ok(u16::from_le_bytes(raw))
}

fn take_u32(bytes: &mut &[u8]) -> Result<u32, StoreError> {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(take(bytes, 4)?);
    Ok(u32::from_le_bytes(raw))
}

fn take_u64(bytes: &mut &[u8]) -> Result<u64, StoreError> {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(take(bytes, 8)?);
    Ok(u64::from_le_bytes(raw))
}
