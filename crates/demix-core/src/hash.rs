//! Content hashing: streaming blake3 of files and trees, with a stat cache so a file
//! is re-hashed only when its size, mtime or inode changed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Files at least this big are hashed with memory mapping on all cores.
const MMAP_THRESHOLD: u64 = 16 << 20;
/// Files at least this big report progress while they are hashed.
pub const PROGRESS_THRESHOLD: u64 = 256 << 20;
const CHUNK: usize = 64 << 20;

pub fn hex(h: &blake3::Hash) -> String {
    h.to_hex().to_string()
}

/// Hashes a file without reading it into memory. `progress(done, total)` is called
/// as large files advance.
pub fn hash_file(path: &Path, progress: &dyn Fn(u64, u64)) -> io::Result<String> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut hasher = blake3::Hasher::new();
    if len >= MMAP_THRESHOLD {
        // SAFETY: the map is read-only; a file changed while it is hashed gives a
        // wrong hash, which the re-stat after hashing keeps out of the cache.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        let mut done = 0u64;
        for chunk in map.chunks(CHUNK) {
            hasher.update_rayon(chunk);
            done += chunk.len() as u64;
            if len >= PROGRESS_THRESHOLD {
                progress(done, len);
            }
        }
    } else {
        let mut f = file;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(hex(&hasher.finalize()))
}

/// The hash of a directory: its files' relative paths and content hashes, sorted.
pub fn tree_hash<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut v: Vec<(&str, &str)> = entries.into_iter().collect();
    v.sort();
    let mut h = blake3::Hasher::new();
    h.update(b"demix-tree-v1\n");
    for (path, hash) in v {
        h.update(path.as_bytes());
        h.update(b"\0");
        h.update(hash.as_bytes());
        h.update(b"\n");
    }
    hex(&h.finalize())
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    /// The inode change time: a write whose mtime was put back (bit rot made
    /// by hand, `touch -r`) still moves it.
    ctime_ns: i128,
    ino: u64,
    dev: u64,
    hash: String,
}

type Stat = (u64, i128, i128, u64, u64);

fn stamp_of(md: &std::fs::Metadata) -> Stat {
    let mtime = md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128;
    let ctime = md.ctime() as i128 * 1_000_000_000 + md.ctime_nsec() as i128;
    (md.len(), mtime, ctime, md.ino(), md.dev())
}

impl Stamp {
    fn stat(&self) -> Stat {
        (self.size, self.mtime_ns, self.ctime_ns, self.ino, self.dev)
    }
}

/// Remembers file hashes by (size, mtime, ctime, inode, device). Shared by all steps of a run;
/// saved to the store so the next run skips unchanged files.
#[derive(Default)]
pub struct StatCache {
    /// Read from `path` on first use, so opening a store to name paths costs nothing.
    loaded: std::sync::OnceLock<Mutex<HashMap<PathBuf, Stamp>>>,
    dirty: Mutex<bool>,
    path: Option<PathBuf>,
}

/// 2: stamps hold the ctime.
const STAT_VERSION: u32 = 2;

#[derive(Serialize, Deserialize)]
struct StatFile {
    version: u32,
    entries: Vec<(PathBuf, Stamp)>,
}

impl StatCache {
    pub fn load(path: PathBuf) -> StatCache {
        StatCache {
            loaded: std::sync::OnceLock::new(),
            dirty: Mutex::new(false),
            path: Some(path),
        }
    }

    fn entries(&self) -> &Mutex<HashMap<PathBuf, Stamp>> {
        self.loaded.get_or_init(|| {
            let map = self
                .path
                .as_ref()
                .and_then(|p| std::fs::read(p).ok())
                .and_then(|b| serde_json::from_slice::<StatFile>(&b).ok())
                .filter(|f| f.version == STAT_VERSION)
                .map(|f| f.entries.into_iter().collect())
                .unwrap_or_default();
            Mutex::new(map)
        })
    }

    /// Hash of `path`, from the cache when its stat is unchanged.
    pub fn hash(&self, path: &Path, progress: &dyn Fn(u64, u64)) -> io::Result<String> {
        let md = std::fs::metadata(path)?;
        let stat = stamp_of(&md);
        if let Some(s) = self.entries().lock().expect("stat cache lock").get(path)
            && s.stat() == stat
        {
            return Ok(s.hash.clone());
        }
        let hash = hash_file(path, progress)?;
        // Re-stat: a file that changed while it was hashed is not cached.
        let md2 = std::fs::metadata(path)?;
        if stamp_of(&md2) == stat {
            self.remember(path, &md2, hash.clone());
        }
        Ok(hash)
    }

    /// Records a hash we know (we just wrote the file).
    pub fn remember(&self, path: &Path, md: &std::fs::Metadata, hash: String) {
        let (size, mtime_ns, ctime_ns, ino, dev) = stamp_of(md);
        self.entries().lock().expect("stat cache lock").insert(
            path.to_path_buf(),
            Stamp {
                size,
                mtime_ns,
                ctime_ns,
                ino,
                dev,
                hash,
            },
        );
        *self.dirty.lock().expect("stat cache lock") = true;
    }

    /// True when `path` still has the stat recorded with `hash`.
    pub fn unchanged(&self, path: &Path, hash: &str) -> bool {
        let Ok(md) = std::fs::symlink_metadata(path) else {
            return false;
        };
        let stat = stamp_of(&md);
        self.entries()
            .lock()
            .expect("stat cache lock")
            .get(path)
            .is_some_and(|s| s.stat() == stat && s.hash == hash)
    }

    pub fn forget(&self, path: &Path) {
        self.entries().lock().expect("stat cache lock").remove(path);
        *self.dirty.lock().expect("stat cache lock") = true;
    }

    /// Writes the cache atomically; concurrent runs may overwrite each other, which
    /// only costs a re-hash.
    pub fn save(&self) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !*self.dirty.lock().expect("stat cache lock") {
            return Ok(());
        }
        let entries = self.entries().lock().expect("stat cache lock");
        // Forget files that are gone so the cache does not grow without bound.
        let file = StatFile {
            version: STAT_VERSION,
            entries: entries
                .iter()
                .filter(|(p, _)| p.exists())
                .map(|(p, s)| (p.clone(), s.clone()))
                .collect(),
        };
        crate::store::write_atomic(path, &serde_json::to_vec(&file)?)
    }
}
