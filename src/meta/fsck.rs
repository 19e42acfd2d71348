//! The namespace half of `slicefs fsck`: checks metadata against itself
//! and, with `repair`, fixes what can be fixed without guessing, in one
//! transaction. The store half (objects referenced but missing, objects
//! nobody references) is the caller's: it gets the referenced keys from
//! [`NamespaceCheck::referenced`].
//!
//! Checks and repairs (the repair in brackets):
//! - a dentry naming an inode that does not exist [the dentry is
//!   removed];
//! - block map rows of an inode that does not exist [removed; their
//!   objects go on the doomed list];
//! - an inode with links but no dentry, other than the root [linked into
//!   `/lost+found` as `#<ino>`, as e2fsck does];
//! - a directory with more than one dentry (not repaired: which name is
//!   the real one is a guess), or whose parent field disagrees with its
//!   dentry [set to the dentry's directory];
//! - a link count that differs from the dentries (files) or from 2 plus
//!   the subdirectories (directories) [set to the count]. An inode with
//!   no link left is an orphan, freed by the next start;
//! - allocated bytes (`alloc`, what `st_blocks` shows) that differ from
//!   the sum of the file's block lengths [set to the sum].
//!
//! Inodes with link count 0 and no dentry are orphans (open when their
//! last name went, or freed at the next start): not a problem.

use std::collections::HashMap;

use super::ops::Tx;
use super::types::{FileKind, Ino, Inode, NewNode, Timespec};
use super::{BlockAddr, BlockRef, MetaStore};
use crate::blockstore::BlockKey;
use crate::error::FsError;

type Result<T> = std::result::Result<T, FsError>;

/// The name of the directory unreachable inodes are linked into.
pub const LOST_AND_FOUND: &[u8] = b"lost+found";

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong, one line, naming the inode and path.
    pub what: String,
    /// Whether this run repaired it.
    pub repaired: bool,
}

/// What [`MetaStore::check_namespace`] found.
#[derive(Clone, Debug, Default)]
pub struct NamespaceCheck {
    /// Inodes, dentries and block map rows read.
    pub inodes: u64,
    /// Dentries read.
    pub dentries: u64,
    /// Every referenced object, with the file's path where it has one
    /// (after repairs).
    pub referenced: Vec<(BlockKey, String)>,
    /// Problems, in the order found.
    pub problems: Vec<Problem>,
}

/// The namespace as read, indexed.
struct Dump {
    inodes: HashMap<Ino, Inode>,
    /// ino -> its dentries as (parent, name).
    names: HashMap<Ino, Vec<(Ino, Vec<u8>)>>,
    dentries: Vec<(Ino, Vec<u8>, Ino, FileKind)>,
    blocks: Vec<(BlockAddr, BlockRef)>,
}

impl Dump {
    fn read(tx: &mut dyn Tx) -> Result<Dump> {
        let inodes: HashMap<Ino, Inode> =
            tx.all_inodes()?.into_iter().map(|i| (i.ino, i)).collect();
        let mut names: HashMap<Ino, Vec<(Ino, Vec<u8>)>> = HashMap::new();
        let mut dentries = Vec::new();
        for (parent, e) in tx.all_dentries()? {
            names
                .entry(e.ino)
                .or_default()
                .push((parent, e.name.clone()));
            dentries.push((parent, e.name, e.ino, e.kind));
        }
        Ok(Dump {
            inodes,
            names,
            dentries,
            blocks: tx.all_blocks()?,
        })
    }

    /// A path of `ino` (its first dentry, up to the root), or
    /// `<inode N>` if it has none.
    fn path(&self, ino: Ino) -> String {
        let mut parts = Vec::new();
        let mut at = ino;
        // Bounded: a cycle in a damaged namespace must not hang fsck.
        for _ in 0..4096 {
            if at == Ino::ROOT {
                parts.reverse();
                return format!("/{}", parts.join("/"));
            }
            match self.names.get(&at).and_then(|n| n.first()) {
                Some((parent, name)) => {
                    parts.push(String::from_utf8_lossy(name).into_owned());
                    at = *parent;
                }
                None => break,
            }
        }
        format!("<inode {}>", ino.0)
    }
}

impl MetaStore {
    /// Checks the namespace (see the module doc) and, with `repair`,
    /// repairs it in one durable transaction (creating `/lost+found`
    /// first if an unreachable inode needs it). Meant for a file system
    /// that nothing else uses (`slicefs fsck` holds the data directory).
    ///
    /// # Errors
    /// [`FsError::Io`] (nothing repaired).
    pub fn check_namespace(&self, repair: bool) -> Result<NamespaceCheck> {
        let mut lost_found = None;
        if repair {
            let dump = self.read(Dump::read)?;
            if unreachable(&dump).next().is_some() {
                lost_found = Some(self.lost_and_found()?);
            }
        }
        let mut out = NamespaceCheck::default();
        self.write(super::store::TxMode::Durable, |tx| {
            out = check(tx, repair, lost_found)?;
            Ok(())
        })?;
        Ok(out)
    }

    /// `/lost+found`, created (root's, mode 700) if missing.
    fn lost_and_found(&self) -> Result<Ino> {
        match self.lookup(Ino::ROOT, LOST_AND_FOUND) {
            Ok(a) if a.kind == FileKind::Directory => Ok(a.ino),
            Ok(_) => Err(FsError::io(
                "fsck",
                "/lost+found exists and is not a directory: rename it and run again",
            )),
            Err(FsError::NotFound) => {
                let node = NewNode {
                    kind: FileKind::Directory,
                    perm: 0o700,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    target: None,
                };
                Ok(self
                    .create(Ino::ROOT, LOST_AND_FOUND, &node, Timespec::now())?
                    .ino)
            }
            Err(e) => Err(e),
        }
    }
}

/// Inodes with links and no dentry, other than the root.
fn unreachable(d: &Dump) -> impl Iterator<Item = &Inode> {
    d.inodes
        .values()
        .filter(|i| i.ino != Ino::ROOT && i.nlink > 0 && !d.names.contains_key(&i.ino))
}

fn check(tx: &mut dyn Tx, repair: bool, lost_found: Option<Ino>) -> Result<NamespaceCheck> {
    let mut d = Dump::read(tx)?;
    let mut problems = Vec::new();
    let mut note = |what: String, repaired: bool| problems.push(Problem { what, repaired });

    // Dentries naming no inode.
    for (parent, name, ino, _) in d.dentries.clone() {
        if d.inodes.contains_key(&ino) {
            continue;
        }
        let what = format!(
            "{}/{}: names inode {}, which does not exist",
            d.path(parent).trim_end_matches('/'),
            String::from_utf8_lossy(&name),
            ino.0
        );
        if repair {
            tx.delete_dentry(parent, &name)?;
            d.dentries
                .retain(|(p, n, i, _)| !(*p == parent && *n == name && *i == ino));
            if let Some(v) = d.names.get_mut(&ino) {
                v.retain(|(p, n)| !(*p == parent && *n == name));
            }
        }
        note(what, repair);
    }

    // Block map rows of no inode.
    let mut stray: HashMap<Ino, u64> = HashMap::new();
    for (a, _) in &d.blocks {
        let ino = Ino(a.file.0);
        if !d.inodes.contains_key(&ino) {
            *stray.entry(ino).or_default() += 1;
        }
    }
    for (ino, n) in stray {
        if repair {
            for (a, r) in d.blocks.iter().filter(|(a, _)| a.file.0 == ino.0) {
                tx.delete_block(*a)?;
                super::ops::released(tx, *a, *r)?;
            }
        }
        note(
            format!("inode {}: {n} block map rows, but no such inode", ino.0),
            repair,
        );
    }
    if repair {
        d.blocks
            .retain(|(a, _)| d.inodes.contains_key(&Ino(a.file.0)));
    }

    // Unreachable inodes.
    let mut lost: Vec<Ino> = unreachable(&d).map(|i| i.ino).collect();
    lost.sort();
    for ino in lost {
        let kind = d.inodes[&ino].kind;
        let mut what = format!("inode {} ({kind:?}): has links but no name", ino.0);
        let repaired = match (repair, lost_found) {
            (true, Some(lf)) => {
                let name = format!("#{}", ino.0).into_bytes();
                let cookie = tx.next("cookie")?;
                tx.put_dentry(lf, &name, ino, kind, cookie)?;
                d.names.entry(ino).or_default().push((lf, name.clone()));
                d.dentries.push((lf, name, ino, kind));
                what.push_str(&format!("; linked as /lost+found/#{}", ino.0));
                true
            }
            _ => false,
        };
        note(what, repaired);
    }

    // Directories: one name, and a parent field that agrees with it.
    let mut dirs: Vec<Ino> = d
        .inodes
        .values()
        .filter(|i| i.kind == FileKind::Directory && i.ino != Ino::ROOT)
        .map(|i| i.ino)
        .collect();
    dirs.sort();
    for ino in dirs {
        let names = d.names.get(&ino).cloned().unwrap_or_default();
        if names.len() > 1 {
            note(
                format!(
                    "{}: a directory with {} names (not repaired: which one is real is a guess)",
                    d.path(ino),
                    names.len()
                ),
                false,
            );
        }
        if let Some((parent, _)) = names.first() {
            let cur = d.inodes[&ino].parent;
            if cur != *parent {
                if repair {
                    let i = d.inodes.get_mut(&ino).expect("listed above");
                    i.parent = *parent;
                    tx.put_inode(i)?;
                }
                note(
                    format!(
                        "{}: parent recorded as inode {}, named in inode {}",
                        d.path(ino),
                        cur.0,
                        parent.0
                    ),
                    repair,
                );
            }
        }
    }

    // Link counts.
    let mut subdirs: HashMap<Ino, u32> = HashMap::new();
    let mut links: HashMap<Ino, u32> = HashMap::new();
    for (parent, _, ino, kind) in &d.dentries {
        *links.entry(*ino).or_default() += 1;
        if *kind == FileKind::Directory {
            *subdirs.entry(*parent).or_default() += 1;
        }
    }
    let mut inos: Vec<Ino> = d.inodes.keys().copied().collect();
    inos.sort();
    for ino in inos {
        let i = &d.inodes[&ino];
        let want = if i.kind == FileKind::Directory {
            2 + subdirs.get(&ino).copied().unwrap_or(0)
        } else {
            links.get(&ino).copied().unwrap_or(0)
        };
        // An orphan (no name, no link) is fine; a directory orphan too.
        let orphan = i.nlink == 0 && !links.contains_key(&ino);
        if i.nlink == want || orphan {
            continue;
        }
        let what = format!("{}: link count {}, counted {want}", d.path(ino), i.nlink);
        if repair {
            let mut f = i.clone();
            f.nlink = want;
            tx.put_inode(&f)?;
        }
        note(what, repair);
    }

    // Allocated bytes against the block map.
    let mut held: HashMap<Ino, u64> = HashMap::new();
    for (a, r) in &d.blocks {
        *held.entry(Ino(a.file.0)).or_default() += u64::from(r.len);
    }
    let mut inos: Vec<Ino> = d.inodes.keys().copied().collect();
    inos.sort();
    for ino in inos {
        let want = held.get(&ino).copied().unwrap_or(0);
        // Read again: a link count repair above may have changed it.
        let Some(mut f) = tx.inode(ino)? else {
            continue;
        };
        if f.alloc == want {
            continue;
        }
        note(
            format!(
                "{}: {} bytes allocated recorded, its blocks hold {want}",
                d.path(ino),
                f.alloc
            ),
            repair,
        );
        if repair {
            f.alloc = want;
            tx.put_inode(&f)?;
        }
    }

    let referenced = d
        .blocks
        .iter()
        .map(|(a, r)| (r.key(*a), d.path(Ino(a.file.0))))
        .collect();
    Ok(NamespaceCheck {
        inodes: d.inodes.len() as u64,
        dentries: d.dentries.len() as u64,
        referenced,
        problems,
    })
}
