//! The tree as readers see it, derived from the location registers and kept up to date in
//! `apply`, always a function of the registers alone (so every peer holds the same bytes):
//!
//! - `fs/d/ ‖ parent ‖ name ‖ 0 ‖ id`: the directory index, one key per entry under its
//!   *effective* parent (its placement, or the root for an entry caught in a rename cycle);
//! - `fs/n/ ‖ id → u64`: how many present entries the entry's subtree holds (itself
//!   included); an entry is visible when this is above 0, so a removed directory that a peer
//!   added files to meanwhile stays visible;
//! - `fs/y/ ‖ id`: the entries caught in a rename cycle (two directories moved into each
//!   other concurrently), shown at the root instead.
//!
//! A location change moves the entry's count off its old chain of parents and onto its new
//! one (cost: the depth). Forming or breaking a rename cycle — rare, only from concurrent
//! moves — rebuilds the derived tables from the registers.

use lattice_sdk::{Head, Host, Intention, LwwTable, StoreError};

use crate::model::{Content, ID_LEN, Id, Kind, Loc, ROOT, id_hex, rank};

/// Location registers, by id.
pub const LOC: &[u8] = b"fs/l/";
/// Content registers (files, symlinks), by id.
pub const CONTENT: &[u8] = b"fs/c/";
const INDEX: &[u8] = b"fs/d/";
const COUNT: &[u8] = b"fs/n/";
const CYCLE: &[u8] = b"fs/y/";
/// Deepest tree walked (a guard; deeper trees are refused when written).
pub const MAX_DEPTH: usize = 4096;

/// The location registers.
pub fn locs() -> LwwTable {
    LwwTable::new(LOC)
}

/// The content registers.
pub fn contents() -> LwwTable {
    LwwTable::new(CONTENT)
}

/// An entry's placement: its winning location (among the heads that are not removals when
/// there are any), whether it is present, and the head that placed it.
#[derive(Debug, Clone)]
pub struct Placed {
    /// Where it is.
    pub loc: Loc,
    /// Some head of its location is not a removal.
    pub present: bool,
    /// The head that placed it there.
    pub head: Head,
}

/// Places an entry from its location heads (`None` when it has none: never created here).
///
/// # Errors
/// A malformed stored head.
pub fn placed_from(heads: &[Head]) -> Result<Option<Placed>, StoreError> {
    let mut best: Option<(Loc, &Head)> = None;
    let mut present = false;
    for head in heads {
        let Some(value) = &head.value else { continue };
        let loc = Loc::decode(value)?;
        let better = match &best {
            None => true,
            Some((b, bh)) => (!loc.removed, rank(head)) > (!b.removed, rank(bh)),
        };
        present |= !loc.removed;
        if better {
            best = Some((loc, head));
        }
    }
    Ok(best.map(|(loc, head)| Placed {
        loc,
        present,
        head: head.clone(),
    }))
}

/// Places entry `id` (`None`: unknown here).
///
/// # Errors
/// A malformed stored head.
pub fn placed(host: &dyn Host, id: &Id) -> Result<Option<Placed>, StoreError> {
    placed_from(&locs().heads(host, id)?)
}

fn key(prefix: &[u8], id: &Id) -> Vec<u8> {
    [prefix, id].concat()
}

fn index_key(parent: &Id, name: &[u8], id: &Id) -> Vec<u8> {
    [INDEX, parent, name, &[0], id].concat()
}

/// Present entries in `id`'s subtree, itself included.
pub fn count(host: &dyn Host, id: &Id) -> u64 {
    host.get(&key(COUNT, id))
        .and_then(|v| v.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn add_count(host: &mut dyn Host, id: &Id, delta: i64) {
    let now = count(host, id).saturating_add_signed(delta);
    if now == 0 {
        host.delete(&key(COUNT, id));
    } else {
        host.set(&key(COUNT, id), &now.to_le_bytes());
    }
}

/// Whether `id` is shown: the root, or an entry whose subtree holds a present entry.
pub fn visible(host: &dyn Host, id: &Id) -> bool {
    *id == ROOT || count(host, id) > 0
}

fn in_cycle(host: &dyn Host, id: &Id) -> bool {
    host.get(&key(CYCLE, id)).is_some()
}

/// The directory `id` is listed in (`None` for the root or an unknown entry).
///
/// # Errors
/// A malformed stored head.
pub fn parent_of(host: &dyn Host, id: &Id) -> Result<Option<Id>, StoreError> {
    if *id == ROOT {
        return Ok(None);
    }
    if in_cycle(host, id) {
        return Ok(Some(ROOT));
    }
    Ok(placed(host, id)?.map(|p| p.loc.parent))
}

/// Adds `delta` to the counts of `from` and every directory above it.
fn add_up(host: &mut dyn Host, from: Id, delta: i64) -> Result<(), StoreError> {
    if delta == 0 {
        return Ok(());
    }
    let mut at = Some(from);
    for _ in 0..=MAX_DEPTH {
        let Some(dir) = at else { return Ok(()) };
        add_count(host, &dir, delta);
        at = parent_of(host, &dir)?;
    }
    Err(StoreError::Internal(
        "the tree is deeper than allowed".into(),
    ))
}

/// Whether `ancestor` is `from` or lies above it.
///
/// # Errors
/// A malformed stored head.
pub fn is_within(host: &dyn Host, from: &Id, ancestor: &Id) -> Result<bool, StoreError> {
    let mut at = Some(*from);
    for _ in 0..=MAX_DEPTH {
        match at {
            Some(dir) if dir == *ancestor => return Ok(true),
            Some(dir) => at = parent_of(host, &dir)?,
            None => return Ok(false),
        }
    }
    Ok(true)
}

/// Writes location `loc` of entry `id` by intention `op`, keeping the derived tables.
///
/// # Errors
/// A malformed stored head.
pub fn relocate(host: &mut dyn Host, id: &Id, loc: &Loc, op: &Intention) -> Result<(), StoreError> {
    let heads = locs().heads(host, id)?;
    if heads.iter().any(|h| h.hash == op.hash) {
        return Ok(());
    }
    if in_cycle(host, id) {
        locs().write(host, id, Some(&loc.encode()), op)?;
        return rebuild(host);
    }
    let before = placed_from(&heads)?;
    let mine = count(host, id) as i64;
    if let Some(b) = &before {
        add_up(host, b.loc.parent, -mine)?;
        host.delete(&index_key(&b.loc.parent, &b.loc.name, id));
    }
    locs().write(host, id, Some(&loc.encode()), op)?;
    let Some(after) = placed(host, id)? else {
        return Err(StoreError::Internal(
            "a location just written is missing".into(),
        ));
    };
    let was_present = before.as_ref().is_some_and(|b| b.present);
    add_count(host, id, i64::from(after.present) - i64::from(was_present));
    if is_within(host, &after.loc.parent, id)? {
        // A rename cycle: moved into its own subtree by a concurrent move.
        return rebuild(host);
    }
    host.set(&index_key(&after.loc.parent, &after.loc.name, id), &[]);
    let mine = count(host, id) as i64;
    add_up(host, after.loc.parent, mine)
}

/// Rebuilds the index, the counts and the cycle marks from the location registers.
fn rebuild(host: &mut dyn Host) -> Result<(), StoreError> {
    for prefix in [INDEX, COUNT, CYCLE] {
        for (k, _) in scan_prefix(host, prefix) {
            host.delete(&k);
        }
    }
    let mut entries: std::collections::BTreeMap<Id, Placed> = std::collections::BTreeMap::new();
    for (k, _) in scan_prefix(host, LOC) {
        let Ok(id) = Id::try_from(&k[LOC.len()..]) else {
            continue;
        };
        if let Some(p) = placed(host, &id)? {
            entries.insert(id, p);
        }
    }
    // Cycles: follow each entry's parents; a walk that comes back onto itself found one.
    let mut done: std::collections::BTreeSet<Id> = std::collections::BTreeSet::new();
    let mut cyclic: std::collections::BTreeSet<Id> = std::collections::BTreeSet::new();
    for start in entries.keys() {
        let mut path: Vec<Id> = Vec::new();
        let mut at = *start;
        while at != ROOT && !done.contains(&at) {
            if let Some(i) = path.iter().position(|p| *p == at) {
                cyclic.extend(path[i..].iter().copied());
                break;
            }
            path.push(at);
            match entries.get(&at) {
                Some(p) => at = p.loc.parent,
                None => break,
            }
        }
        done.extend(path);
    }
    let parent = |id: &Id| -> Option<Id> {
        if cyclic.contains(id) {
            Some(ROOT)
        } else {
            entries.get(id).map(|p| p.loc.parent)
        }
    };
    let mut counts: std::collections::BTreeMap<Id, u64> = std::collections::BTreeMap::new();
    for (id, p) in &entries {
        if !p.present {
            continue;
        }
        let mut at = Some(*id);
        for _ in 0..=MAX_DEPTH {
            let Some(dir) = at else { break };
            *counts.entry(dir).or_default() += 1;
            if dir == ROOT {
                break;
            }
            at = parent(&dir);
        }
    }
    for (id, p) in &entries {
        let Some(dir) = parent(id) else { continue };
        host.set(&index_key(&dir, &p.loc.name, id), &[]);
    }
    for (id, n) in counts {
        host.set(&key(COUNT, &id), &n.to_le_bytes());
    }
    for id in cyclic {
        host.set(&key(CYCLE, &id), &[1]);
    }
    Ok(())
}

/// What a name in a directory stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An entry.
    Entry(Id),
    /// A losing head of a file's concurrent writes, shown read-only beside it.
    Copy(Id, Vec<u8>),
}

/// One name in a directory listing.
#[derive(Debug, Clone)]
pub struct Item {
    /// The name shown.
    pub name: Vec<u8>,
    /// What it stands for.
    pub target: Target,
    /// Where the entry is.
    pub placed: Placed,
}

/// The name a losing head is shown under: `name.conflict-<author, 8 hex>-<wall ms>`.
pub fn conflict_name(name: &[u8], head: &Head) -> Vec<u8> {
    let author = crate::model::hex(&head.author[..head.author.len().min(4)]);
    let mut out = name.to_vec();
    out.extend_from_slice(format!(".conflict-{author}-{}", head.hlc.wall_ms).as_bytes());
    out
}

/// The entries keyed under `dir` with name `name` (`None`: any name), visible only, as
/// `(name, id, placement)`.
fn indexed(
    host: &dyn Host,
    dir: &Id,
    name: Option<&[u8]>,
) -> Result<Vec<(Vec<u8>, Id, Placed)>, StoreError> {
    let prefix = match name {
        Some(n) => [INDEX, dir, n, &[0]].concat(),
        None => [INDEX, dir].concat(),
    };
    let mut out = Vec::new();
    for (k, _) in scan_prefix(host, &prefix) {
        let rest = &k[INDEX.len() + ID_LEN..];
        if rest.len() < ID_LEN + 2 {
            return Err(StoreError::Internal(
                "a directory index key is malformed".into(),
            ));
        }
        let (name, id) = rest.split_at(rest.len() - ID_LEN);
        let Ok(id) = Id::try_from(id) else { continue };
        if !visible(host, &id) {
            continue;
        }
        if let Some(p) = placed(host, &id)? {
            out.push((name[..name.len() - 1].to_vec(), id, p));
        }
    }
    Ok(out)
}

/// Orders entries sharing one name: the latest placement keeps the name.
fn by_rank_desc(group: &mut [(Vec<u8>, Id, Placed)]) {
    group.sort_by(|a, b| rank(&b.2.head).cmp(&rank(&a.2.head)));
}

/// Lists directory `dir`: every visible entry under its name (entries sharing a name: the
/// latest placement keeps it, the others show as conflict names), and beside each file with
/// concurrent writes, its losing heads as read-only conflict copies. Sorted by name.
///
/// # Errors
/// A malformed stored record.
pub fn list(host: &dyn Host, dir: &Id) -> Result<Vec<Item>, StoreError> {
    let mut all = indexed(host, dir, None)?;
    let mut out = Vec::new();
    let mut at = 0;
    while at < all.len() {
        let end = all[at..]
            .iter()
            .position(|e| e.0 != all[at].0)
            .map_or(all.len(), |n| at + n);
        let group = &mut all[at..end];
        by_rank_desc(group);
        for (i, (name, id, p)) in group.iter().enumerate() {
            let shown = if i == 0 {
                name.clone()
            } else {
                conflict_name(name, &p.head)
            };
            if p.loc.kind != Kind::Dir {
                let mut heads = contents().heads(host, id)?;
                if heads.len() > 1 {
                    heads.sort_by(|a, b| rank(b).cmp(&rank(a)));
                    for loser in &heads[1..] {
                        out.push(Item {
                            name: conflict_name(&shown, loser),
                            target: Target::Copy(*id, loser.hash.clone()),
                            placed: p.clone(),
                        });
                    }
                }
            }
            out.push(Item {
                name: shown,
                target: Target::Entry(*id),
                placed: p.clone(),
            });
        }
        at = end;
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Finds `name` in directory `dir`.
///
/// # Errors
/// A malformed stored record.
pub fn lookup(host: &dyn Host, dir: &Id, name: &[u8]) -> Result<Option<Item>, StoreError> {
    let mut exact = indexed(host, dir, Some(name))?;
    if !exact.is_empty() {
        by_rank_desc(&mut exact);
        let (name, id, placed) = exact.swap_remove(0);
        return Ok(Some(Item {
            name,
            target: Target::Entry(id),
            placed,
        }));
    }
    if !name.windows(10).any(|w| w == b".conflict-") {
        return Ok(None);
    }
    Ok(list(host, dir)?.into_iter().find(|i| i.name == name))
}

/// The content an item shows (`None` for a directory).
///
/// # Errors
/// A malformed stored record.
pub fn content_of(host: &dyn Host, item: &Item) -> Result<Option<(Content, Head)>, StoreError> {
    let (id, chosen) = match &item.target {
        Target::Entry(id) => (id, None),
        Target::Copy(id, hash) => (id, Some(hash)),
    };
    let heads = contents().heads(host, id)?;
    let head = match chosen {
        Some(hash) => heads.iter().find(|h| &h.hash == hash),
        None => heads.iter().max_by(|a, b| rank(a).cmp(&rank(b))),
    };
    match head {
        Some(h) => match &h.value {
            Some(v) => Ok(Some((Content::decode(v)?, h.clone()))),
            None => Ok(None),
        },
        None => Ok(None),
    }
}

/// An id for error messages and queries.
pub fn describe(id: &Id) -> String {
    id_hex(id)
}

/// [`rebuild`], for tests comparing the incremental tables with a rebuild.
///
/// # Errors
/// A malformed stored head.
#[cfg(test)]
pub fn rebuild_for_test(host: &mut dyn Host) -> Result<(), StoreError> {
    rebuild(host)
}

/// Every entry whose key starts with `prefix`, page by page.
pub fn scan_prefix(host: &dyn Host, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut end = prefix.to_vec();
    while end.last() == Some(&0xFF) {
        end.pop();
    }
    let end = end.last_mut().map(|last| *last += 1).map(|()| end.clone());
    let mut out = Vec::new();
    let mut start = prefix.to_vec();
    loop {
        let page = host.scan(&start, end.as_deref(), 1000);
        let done = page.len() < 1000;
        if let Some((last, _)) = page.last() {
            start = last.clone();
            start.push(0);
        }
        out.extend(page);
        if done {
            return out;
        }
    }
}
