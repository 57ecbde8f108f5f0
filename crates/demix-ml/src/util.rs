//! File helpers: everything is written to a temporary sibling and renamed, so
//! a crash never leaves a half-written file where the engine expects a result.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{IoContext, MlError, Result};

/// A sibling path for temporary output, unique to this process and call.
pub fn tmp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let parent = path.parent().unwrap_or_else(|| Path::new("."));
    parent.join(demix_fs::unique_name(&format!(".{name}.tmp-")))
}

fn ensure_parent(path: &Path) -> Result<()> {
    if let Some(p) = path.parent()
        && !p.as_os_str().is_empty()
    {
        fs::create_dir_all(p).with_path(p)?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically (the store's write, with our error type).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    demix_fs::write_atomic(path, bytes).with_path(path)
}

pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut s = serde_json::to_string_pretty(value).map_err(|e| MlError::Json {
        path: path.into(),
        msg: e.to_string(),
    })?;
    s.push('\n');
    write_atomic(path, s.as_bytes())
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let s = fs::read_to_string(path).with_path(path)?;
    serde_json::from_str(&s).map_err(|e| MlError::Json {
        path: path.into(),
        msg: e.to_string(),
    })
}

/// Builds a directory via `fill(tmp_dir)` and then renames it to `dir`,
/// replacing any previous `dir`. The old one is moved aside first and removed
/// last, so at every instant either the old or the new directory is complete.
pub fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    ensure_parent(dir)?;
    let tmp = tmp_sibling(dir);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_path(&tmp)?;
    }
    fs::create_dir_all(&tmp).with_path(&tmp)?;
    if let Err(e) = fill(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = dir.with_file_name(format!(
        ".{}.old-{}",
        dir.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let had_old = dir.exists();
    if had_old {
        fs::rename(dir, &old).with_path(dir)?;
    }
    fs::rename(&tmp, dir).with_path(dir)?;
    if had_old {
        fs::remove_dir_all(&old).with_path(&old)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_dir_replaces() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("ck");
        write_dir_atomic(&d, |p| write_atomic(&p.join("a"), b"1")).unwrap();
        write_dir_atomic(&d, |p| write_atomic(&p.join("b"), b"2")).unwrap();
        assert!(!d.join("a").exists());
        assert_eq!(fs::read(d.join("b")).unwrap(), b"2");
        let err = write_dir_atomic(&d, |_| Err(MlError::Cancelled));
        assert!(err.is_err());
        assert!(d.join("b").exists());
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 1);
    }
}
