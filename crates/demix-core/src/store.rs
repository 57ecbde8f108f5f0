//! The content-addressed artifact store.
//!
//! Layout under the store root:
//! - `objects/ab/<hash>`: file contents by blake3 hash, read-only.
//! - `trees/ab/<hash>/`: a step's output directory, its files hard links to objects;
//!   `trees/ab/<hash>.json` lists the files.
//! - `results/ab/<key>.json`: the completion record of a step run, by cache key.
//!   Writing it is the commit point: a result exists only if its outputs do.
//! - `state/<manifest>/<step>.json`: the key record of each step's latest run, so
//!   `status` can say why a step is stale.
//! - `runs/`: run history. `logs/`: step logs. `locks/`: per-key locks. `tmp/`: work
//!   in progress (removed by `gc`).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use demix_fs::{human_bytes, unique_name, write_atomic, write_json_atomic};

use crate::hash::{self, StatCache};
use crate::key::KeyRecord;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("declared output `{name}` ({path}) was not produced by the step")]
    MissingOutput { name: String, path: String },
    #[error("output path {0} is a symbolic link or special file; steps must write plain files")]
    Special(PathBuf),
    #[error("corrupt record {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "{0} is not a demix store (it has no {MARKER}): demix creates and deletes only in its own stores; pass another --cache, or an empty or missing folder"
    )]
    NotAStore(PathBuf),
    #[error("{0} is a symbolic link; demix does not follow links out of its store")]
    Link(PathBuf),
}

/// The file that marks a folder as a demix store, written when demix creates it.
pub const MARKER: &str = "demix-store.json";

/// Top-level names demix writes in a store (an older store without a marker
/// holds only these, and is adopted).
const STORE_NAMES: &[&str] = &[
    MARKER,
    "objects",
    "trees",
    "results",
    "state",
    "runs",
    "logs",
    "locks",
    "tmp",
    "resume",
    "shards",
    "stat-cache.json",
    "usage.lock",
];

pub type Result<T> = std::result::Result<T, StoreError>;

pub trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// One file of an output tree.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    pub hash: String,
    pub size: u64,
}

/// What one declared output resolved to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutputRecord {
    /// Path inside the step's output tree.
    pub path: String,
    /// File hash, or the tree hash of the files under a directory output.
    pub hash: String,
    pub dir: bool,
    pub size: u64,
}

/// The completion record of a successful step run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResultRecord {
    pub key: String,
    pub manifest: String,
    pub manifest_path: PathBuf,
    pub step: String,
    pub kind: String,
    pub record: KeyRecord,
    pub tree: String,
    pub outputs: BTreeMap<String, OutputRecord>,
    pub files: Vec<FileEntry>,
    pub started: jiff::Timestamp,
    pub finished: jiff::Timestamp,
    pub duration_s: f64,
    pub host: String,
    pub engine_version: String,
    /// What the step found out as it ran that is no output of its own, e.g.
    /// `device`: the device a training actually used (`auto` resolved).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, serde_json::Value>,
}

/// Whether a committed result's files are still intact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Ok,
    Missing(String),
    Corrupt(String),
}

pub struct Store {
    pub root: PathBuf,
    pub stat: StatCache,
}

fn shard(hash: &str) -> (&str, &str) {
    (&hash[..2.min(hash.len())], hash)
}

impl Store {
    /// Opens (creating if needed) a store. Nothing is created until it is asked to
    /// write, so commands that only read work on a read-only store.
    pub fn open(root: &Path) -> Store {
        let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        let stat = StatCache::load(root.join("stat-cache.json"));
        Store { root, stat }
    }

    pub fn object_path(&self, hash: &str) -> PathBuf {
        let (a, b) = shard(hash);
        self.root.join("objects").join(a).join(b)
    }

    pub fn tree_dir(&self, hash: &str) -> PathBuf {
        let (a, b) = shard(hash);
        self.root.join("trees").join(a).join(b)
    }

    fn tree_list(&self, hash: &str) -> PathBuf {
        let (a, b) = shard(hash);
        self.root.join("trees").join(a).join(format!("{b}.json"))
    }

    pub fn result_path(&self, key: &str) -> PathBuf {
        let (a, b) = shard(key);
        self.root.join("results").join(a).join(format!("{b}.json"))
    }

    pub fn state_dir(&self, manifest: &str) -> PathBuf {
        self.root.join("state").join(manifest)
    }

    pub fn state_path(&self, manifest: &str, step: &str) -> PathBuf {
        self.state_dir(manifest).join(format!("{step}.json"))
    }

    pub fn log_path(&self, key: &str) -> PathBuf {
        self.root.join("logs").join(format!("{key}.log"))
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A fresh work directory under `tmp/`.
    pub fn new_tmp(&self, prefix: &str) -> Result<PathBuf> {
        let p = self.tmp_dir().join(unique_name(prefix));
        fs::create_dir_all(&p).at(&p)?;
        Ok(p)
    }

    /// Takes the per-key lock, waiting while another process holds it. The lock is
    /// released when the returned file is dropped or the process dies.
    pub fn lock(&self, key: &str, on_wait: &dyn Fn()) -> Result<File> {
        let dir = self.root.join("locks");
        fs::create_dir_all(&dir).at(&dir)?;
        let path = dir.join(format!("{key}.lock"));
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .at(&path)?;
        match f.try_lock() {
            Ok(()) => Ok(f),
            Err(fs::TryLockError::WouldBlock) => {
                on_wait();
                f.lock().at(&path)?;
                Ok(f)
            }
            Err(fs::TryLockError::Error(e)) => Err(e).at(&path),
        }
    }

    pub fn read_result(&self, key: &str) -> Option<ResultRecord> {
        let bytes = fs::read(self.result_path(key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Why the result record of `key` cannot be read, when one is there.
    pub fn result_damage(&self, key: &str) -> Option<String> {
        let bytes = fs::read(self.result_path(key)).ok()?;
        serde_json::from_slice::<ResultRecord>(&bytes)
            .err()
            .map(|e| e.to_string())
    }

    pub fn write_result(&self, r: &ResultRecord) -> Result<()> {
        let p = self.result_path(&r.key);
        write_json_atomic(&p, r).at(&p)
    }

    pub fn read_state(&self, manifest: &str, step: &str) -> Option<ResultRecord> {
        let bytes = fs::read(self.state_path(manifest, step)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn write_state(&self, r: &ResultRecord) -> Result<()> {
        let p = self.state_path(&r.manifest, &r.step);
        write_json_atomic(&p, r).at(&p)
    }

    /// Checks a result's files cheaply: each tree file must still have the stat it
    /// had when it was hashed; a changed one is re-hashed.
    pub fn health(&self, r: &ResultRecord) -> Health {
        let dir = self.tree_dir(&r.tree);
        for f in &r.files {
            let p = dir.join(&f.path);
            if !p.exists() {
                return Health::Missing(f.path.clone());
            }
            if self.stat.unchanged(&p, &f.hash) {
                continue;
            }
            match self.stat.hash(&p, &|_, _| {}) {
                Ok(h) if h == f.hash => {}
                Ok(_) => return Health::Corrupt(f.path.clone()),
                Err(_) => return Health::Missing(f.path.clone()),
            }
        }
        Health::Ok
    }

    /// Moves a finished output directory into the store and returns the files, the
    /// tree hash and each declared output's record. `outputs` maps names to paths
    /// inside `dir` (directories end with `/`).
    pub fn commit_tree(
        &self,
        dir: &Path,
        outputs: &BTreeMap<String, String>,
    ) -> Result<(String, Vec<FileEntry>, BTreeMap<String, OutputRecord>)> {
        for (name, rel) in outputs {
            let p = dir.join(rel.trim_end_matches('/'));
            let ok = if rel.ends_with('/') {
                p.is_dir()
            } else {
                p.is_file()
            };
            if !ok {
                return Err(StoreError::MissingOutput {
                    name: name.clone(),
                    path: rel.clone(),
                });
            }
        }
        let mut files = Vec::new();
        walk_files(dir, dir, &mut files)?;
        let mut entries = Vec::new();
        for rel in &files {
            let src = dir.join(rel);
            let mut md = fs::metadata(&src).at(&src)?;
            if md.nlink() > 1 {
                // A hard link to a file outside (`ln /data/x $DEMIX_OUT/x`): the
                // store takes a copy, never the outside file's inode.
                let tmp = src.with_file_name(unique_name(".copy-"));
                fs::copy(&src, &tmp).at(&tmp)?;
                fs::rename(&tmp, &src).at(&src)?;
                md = fs::metadata(&src).at(&src)?;
            }
            let h = self.stat.hash(&src, &|_, _| {}).at(&src)?;
            self.put_object(&src, &h)?;
            entries.push(FileEntry {
                path: rel.clone(),
                hash: h,
                size: md.len(),
            });
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let tree = hash::tree_hash(entries.iter().map(|e| (e.path.as_str(), e.hash.as_str())));
        self.link_tree(&tree, &entries)?;
        let mut recs = BTreeMap::new();
        for (name, rel) in outputs {
            let r = rel.trim_end_matches('/');
            let is_dir = rel.ends_with('/');
            let (h, size) = if is_dir {
                let prefix = format!("{r}/");
                let sub: Vec<(String, &FileEntry)> = entries
                    .iter()
                    .filter_map(|e| e.path.strip_prefix(&prefix).map(|p| (p.to_string(), e)))
                    .collect();
                let size = sub.iter().map(|(_, e)| e.size).sum();
                (
                    hash::tree_hash(sub.iter().map(|(p, e)| (p.as_str(), e.hash.as_str()))),
                    size,
                )
            } else {
                let e = entries
                    .iter()
                    .find(|e| e.path == r)
                    .expect("checked above that the file exists");
                (e.hash.clone(), e.size)
            };
            recs.insert(
                name.clone(),
                OutputRecord {
                    path: r.to_string(),
                    hash: h,
                    dir: is_dir,
                    size,
                },
            );
        }
        Ok((tree, entries, recs))
    }

    /// Moves `src` into `objects/` unless an intact object is already there.
    fn put_object(&self, src: &Path, hash: &str) -> Result<()> {
        let dst = self.object_path(hash);
        if dst.exists() {
            if self.stat.unchanged(&dst, hash)
                || self.stat.hash(&dst, &|_, _| {}).ok().as_deref() == Some(hash)
            {
                return Ok(());
            }
            // A corrupt object is replaced by the good bytes we have now.
            let _ = fs::set_permissions(&dst, fs::Permissions::from_mode(0o644));
        }
        let parent = dst.parent().expect("objects have a parent");
        fs::create_dir_all(parent).at(parent)?;
        fs::set_permissions(src, fs::Permissions::from_mode(0o444)).at(src)?;
        fs::rename(src, &dst).at(&dst)?;
        let md = fs::metadata(&dst).at(&dst)?;
        self.stat.remember(&dst, &md, hash.to_string());
        Ok(())
    }

    /// Makes `trees/<hash>/` hold hard links to the objects of `entries`, repairing any
    /// link that no longer points at its object.
    fn link_tree(&self, tree: &str, entries: &[FileEntry]) -> Result<()> {
        let dir = self.tree_dir(tree);
        for e in entries {
            let obj = self.object_path(&e.hash);
            let dst = dir.join(&e.path);
            let obj_md = fs::metadata(&obj).at(&obj)?;
            if let Ok(md) = fs::metadata(&dst)
                && md.ino() == obj_md.ino()
                && md.dev() == obj_md.dev()
            {
                continue;
            }
            let parent = dst.parent().expect("tree files have a parent");
            fs::create_dir_all(parent).at(parent)?;
            let tmp = parent.join(unique_name(".link-"));
            if fs::hard_link(&obj, &tmp).is_err() {
                fs::copy(&obj, &tmp).at(&tmp)?;
            }
            fs::rename(&tmp, &dst).at(&dst)?;
            let md = fs::metadata(&dst).at(&dst)?;
            self.stat.remember(&dst, &md, e.hash.clone());
            // A new link changes the inode's ctime: the object's stamp too.
            self.stat.remember(&obj, &md, e.hash.clone());
        }
        let list = self.tree_list(tree);
        if !list.exists() {
            write_json_atomic(&list, &entries).at(&list)?;
        }
        Ok(())
    }

    /// The content hash of a step output as the store records it: a file's
    /// hash, or the tree hash of the files under a folder. Unchanged files come
    /// from the stat cache; changed ones are hashed again.
    pub fn content_hash(&self, path: &Path) -> Result<String> {
        let md = fs::metadata(path).at(path)?;
        if !md.is_dir() {
            return self.stat.hash(path, &|_, _| {}).at(path);
        }
        let mut files = Vec::new();
        walk_files(path, path, &mut files)?;
        let mut hashes = Vec::with_capacity(files.len());
        for f in &files {
            let p = path.join(f);
            hashes.push(self.stat.hash(&p, &|_, _| {}).at(&p)?);
        }
        Ok(hash::tree_hash(
            files
                .iter()
                .map(String::as_str)
                .zip(hashes.iter().map(String::as_str)),
        ))
    }

    /// Every result record in the store.
    pub fn all_results(&self) -> Vec<ResultRecord> {
        let mut out = Vec::new();
        let base = self.root.join("results");
        for shard in read_dir_sorted(&base) {
            for f in read_dir_sorted(&shard) {
                if let Ok(b) = fs::read(&f)
                    && let Ok(r) = serde_json::from_slice::<ResultRecord>(&b)
                {
                    out.push(r);
                }
            }
        }
        out
    }

    /// Every latest-state record, by manifest name.
    pub fn all_states(&self) -> Vec<ResultRecord> {
        let mut out = Vec::new();
        for m in read_dir_sorted(&self.root.join("state")) {
            for f in read_dir_sorted(&m) {
                if let Ok(b) = fs::read(&f)
                    && let Ok(r) = serde_json::from_slice::<ResultRecord>(&b)
                {
                    out.push(r);
                }
            }
        }
        out
    }

    /// The `<2 hex>/<hash>` entries under a store folder that demix names by
    /// hash, with their names; anything else (and any link) is not demix's and
    /// is left alone.
    fn hashed_entries(&self, folder: &str) -> Vec<(String, PathBuf)> {
        let Ok(Some(dir)) = self.own_dir(folder) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for shard in read_dir_sorted(&dir) {
            let shard_name = shard.file_name().map(|n| n.to_string_lossy().into_owned());
            let real_dir = fs::symlink_metadata(&shard).is_ok_and(|m| m.is_dir());
            if !real_dir
                || !shard_name
                    .as_deref()
                    .is_some_and(|n| n.len() == 2 && is_hex(n))
            {
                continue;
            }
            for f in read_dir_sorted(&shard) {
                let Some(name) = f.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                    continue;
                };
                if is_hash(&name)
                    && fs::symlink_metadata(&f).is_ok_and(|m| !m.file_type().is_symlink())
                {
                    out.push((name, f));
                }
            }
        }
        out
    }

    /// Every object hash in the store with its path.
    pub fn all_objects(&self) -> Vec<(String, PathBuf)> {
        self.hashed_entries("objects")
            .into_iter()
            .filter(|(_, p)| p.is_file())
            .collect()
    }

    /// Every tree hash in the store.
    pub fn all_trees(&self) -> Vec<String> {
        self.hashed_entries("trees")
            .into_iter()
            .filter(|(_, p)| p.is_dir())
            .map(|(n, _)| n)
            .collect()
    }
}

fn is_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A blake3 hash as demix names files by it: 64 lowercase hex digits.
pub fn is_hash(s: &str) -> bool {
    s.len() == 64 && is_hex(s)
}

/// Whether `name` is one `unique_name` made: `<prefix><pid>-<n>-<8 hex>`,
/// returning the pid.
pub fn unique_name_pid(name: &str) -> Option<i32> {
    let mut parts = name.rsplitn(3, '-');
    let t = parts.next()?;
    let n = parts.next()?;
    let head = parts.next()?;
    if t.len() != 8 || !is_hex(t) || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = head.len() - head.bytes().rev().take_while(u8::is_ascii_digit).count();
    head[digits..].parse().ok()
}

pub fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Relative paths of all plain files under `dir`, sorted. Links and special files
/// are refused: a step's outputs are plain files.
pub fn walk_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for p in read_dir_sorted(dir) {
        let md = fs::symlink_metadata(&p).at(&p)?;
        if md.is_dir() {
            walk_files(root, &p, out)?;
        } else if md.is_file() {
            let rel = p
                .strip_prefix(root)
                .expect("walk stays under its root")
                .to_string_lossy()
                .into_owned();
            out.push(rel);
        } else {
            return Err(StoreError::Special(p));
        }
    }
    Ok(())
}

/// Total size of the files under a path.
pub fn du(path: &Path) -> u64 {
    let Ok(md) = fs::symlink_metadata(path) else {
        return 0;
    };
    if md.is_dir() {
        read_dir_sorted(path).iter().map(|p| du(p)).sum()
    } else {
        md.len()
    }
}

/// Removes a directory tree, making read-only entries writable first.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o755));
            fs::remove_dir_all(path)
        }
    }
}

impl Store {
    /// Makes `root` a store: creates it with its marker when it is missing or
    /// empty (hidden files such as `.gitkeep` aside), adopts a store an older
    /// demix made without a marker, and refuses any other folder.
    pub fn create(&self) -> Result<()> {
        let marker = self.root.join(MARKER);
        if marker.is_file() {
            return Ok(());
        }
        if let Ok(md) = fs::symlink_metadata(&self.root)
            && md.file_type().is_symlink()
            && !self.root.is_dir()
        {
            return Err(StoreError::Link(self.root.clone()));
        }
        let names: Vec<String> = match fs::read_dir(&self.root) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).at(&self.root),
        };
        // Empty, or a store an older demix made: only its names, and the lock
        // every run of it took.
        let adopt = names.iter().all(|n| STORE_NAMES.contains(&n.as_str()))
            && names.iter().any(|n| n == "usage.lock");
        if !names.is_empty() && !adopt {
            return Err(StoreError::NotAStore(self.root.clone()));
        }
        fs::create_dir_all(&self.root).at(&self.root)?;
        let body = serde_json::json!({
            "format": "demix-store-v1",
            "created_by": format!("demix {}", crate::VERSION),
        });
        write_json_atomic(&marker, &body).at(&marker)
    }

    /// Errors unless `root` holds a store marker: what destroys (gc, verify)
    /// works only in a folder demix made.
    pub fn check_marker(&self) -> Result<()> {
        if self.root.join(MARKER).is_file() {
            Ok(())
        } else {
            Err(StoreError::NotAStore(self.root.clone()))
        }
    }

    /// A store subfolder to walk for deletion: a real folder inside the store
    /// (None when missing), never a link that leads out of it.
    pub fn own_dir(&self, name: &str) -> Result<Option<PathBuf>> {
        let p = self.root.join(name);
        match fs::symlink_metadata(&p) {
            Ok(md) if md.file_type().is_symlink() => Err(StoreError::Link(p)),
            Ok(md) if md.is_dir() => Ok(Some(p)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at(&p),
        }
    }

    /// Runs hold this shared; `gc` takes it exclusively, so it never deletes what a
    /// running step is about to reference.
    pub fn usage_lock(&self, exclusive: bool) -> Result<Option<File>> {
        if exclusive {
            self.check_marker()?;
        } else {
            self.create()?;
        }
        let path = self.root.join("usage.lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .at(&path)?;
        let got = if exclusive {
            f.try_lock()
        } else {
            f.try_lock_shared()
        };
        match got {
            Ok(()) => Ok(Some(f)),
            Err(fs::TryLockError::WouldBlock) if exclusive => Ok(None),
            Err(fs::TryLockError::WouldBlock) => {
                // A gc is running: wait for it rather than fail.
                f.lock_shared().at(&path)?;
                Ok(Some(f))
            }
            Err(fs::TryLockError::Error(e)) => Err(e).at(&path),
        }
    }
}
