//! Inode numbers for paths: the kernel names entries by number, the store by path. Numbers
//! are handed out as paths are looked up and follow renames; 1 is the root.

use std::collections::HashMap;

/// The root's inode number.
pub(crate) const ROOT: u64 = 1;

/// Paths and their inode numbers, both ways.
#[derive(Debug)]
pub(crate) struct Inodes {
    paths: HashMap<u64, String>,
    numbers: HashMap<String, u64>,
    next: u64,
}

impl Inodes {
    pub(crate) fn new() -> Inodes {
        let mut inodes = Inodes {
            paths: HashMap::new(),
            numbers: HashMap::new(),
            next: ROOT + 1,
        };
        inodes.paths.insert(ROOT, String::new());
        inodes.numbers.insert(String::new(), ROOT);
        inodes
    }

    /// The path of inode `ino` (`""` for the root).
    pub(crate) fn path(&self, ino: u64) -> Option<String> {
        self.paths.get(&ino).cloned()
    }

    /// The inode number of `path`, handing out a new one the first time.
    pub(crate) fn number(&mut self, path: &str) -> u64 {
        if let Some(n) = self.numbers.get(path) {
            return *n;
        }
        let n = self.next;
        self.next += 1;
        self.paths.insert(n, path.to_string());
        self.numbers.insert(path.to_string(), n);
        n
    }

    /// Moves `from` and everything under it to `to` (a rename).
    pub(crate) fn rename(&mut self, from: &str, to: &str) {
        self.forget_path(to);
        let prefix = format!("{from}/");
        let moved: Vec<(String, u64)> = self
            .numbers
            .iter()
            .filter(|(p, _)| p.as_str() == from || p.starts_with(&prefix))
            .map(|(p, n)| (p.clone(), *n))
            .collect();
        for (old, n) in moved {
            let new = format!("{to}{}", &old[from.len()..]);
            self.numbers.remove(&old);
            self.numbers.insert(new.clone(), n);
            self.paths.insert(n, new);
        }
    }

    /// Forgets `path` (removed): a new entry there gets a new number.
    pub(crate) fn forget_path(&mut self, path: &str) {
        if let Some(n) = self.numbers.remove(path) {
            self.paths.remove(&n);
        }
    }
}

/// `dir/name` (`name` alone in the root).
pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_renames_of_whole_subtrees() {
        let mut i = Inodes::new();
        let a = i.number("a");
        let ab = i.number("a/b");
        let ac = i.number("a/b/c");
        let other = i.number("ab");
        assert_eq!(i.number("a"), a);
        i.rename("a", "z");
        assert_eq!(i.path(a).as_deref(), Some("z"));
        assert_eq!(i.path(ab).as_deref(), Some("z/b"));
        assert_eq!(i.path(ac).as_deref(), Some("z/b/c"));
        assert_eq!(i.path(other).as_deref(), Some("ab"));
        i.forget_path("z/b/c");
        assert_ne!(i.number("z/b/c"), ac);
        assert_eq!(i.path(ROOT).as_deref(), Some(""));
        assert_eq!(join("", "x"), "x");
        assert_eq!(join("d", "x"), "d/x");
    }
}
