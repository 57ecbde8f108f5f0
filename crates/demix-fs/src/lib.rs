//! Files that are whole or absent: every demix crate writes through these, so a
//! crash never leaves a half-written file where a reader expects a result.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A name no other process or thread uses: pid, a counter and the time.
pub fn unique_name(prefix: &str) -> String {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}-{n}-{t:08x}", std::process::id())
}

/// Writes a file so readers see either the old or the new content, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(unique_name(".tmp-"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    drop(f);
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// A duration for people: `0.04s`, `1.4s`, `12s`, `20m 0s`, `3h 5m`, `2d 4h`.
pub fn human_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return format!("{secs}s");
    }
    if secs < 0.1 {
        return format!("{secs:.2}s");
    }
    if secs < 9.95 {
        return format!("{secs:.1}s");
    }
    if secs < 59.5 {
        return format!("{}s", secs.round() as u64);
    }
    let s = secs.round() as u64;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else {
        format!("{m}m {s}s")
    }
}

/// A byte count for people: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::{human_bytes, human_duration};

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human_duration(0.0123), "0.01s");
        assert_eq!(human_duration(1.44), "1.4s");
        assert_eq!(human_duration(9.96), "10s");
        assert_eq!(human_duration(12.4), "12s");
        assert_eq!(human_duration(59.6), "1m 0s");
        assert_eq!(human_duration(1199.86), "20m 0s");
        assert_eq!(human_duration(3600.0 + 5.0 * 60.0 + 1.0), "1h 5m");
        assert_eq!(human_duration(2.0 * 86_400.0 + 4.0 * 3600.0), "2d 4h");
    }

    #[test]
    fn bytes_read_as_people_say_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
