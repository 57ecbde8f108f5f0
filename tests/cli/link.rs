//! Only demix-worker maps libtorch. The engine binary links none of it, so
//! `demix status` and every engine step start in milliseconds; the worker links
//! libtorch (libtorch_cuda.so where the libtorch has it, held by
//! --no-as-needed) and resolves it without LD_LIBRARY_PATH (rpath).

use std::path::Path;
use std::process::Command;

use crate::harness::{exe, worker, worker_exe};

fn readelf(exe: &Path) -> String {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(exe)
        .output()
        .expect("readelf runs");
    assert!(out.status.success(), "readelf -d {}", exe.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn engine_links_no_libtorch() {
    let dynamic = readelf(&exe());
    for lib in ["libtorch", "libc10", "libgomp"] {
        assert!(
            !dynamic.contains(lib),
            "demix links {lib}; only demix-worker may:\n{dynamic}"
        );
    }
}

#[test]
fn worker_links_libtorch_and_resolves_it() {
    if !worker() {
        return;
    }
    let w = worker_exe();
    let dynamic = readelf(&w);
    assert!(
        dynamic.contains("[libtorch_cpu.so]"),
        "no NEEDED libtorch_cpu.so:\n{dynamic}"
    );
    let out = Command::new("ldd")
        .arg(&w)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("ldd runs");
    let ldd = String::from_utf8_lossy(&out.stdout);
    assert!(!ldd.contains("not found"), "unresolved libraries:\n{ldd}");
    let cpu = ldd
        .lines()
        .find(|l| l.contains("libtorch_cpu.so"))
        .expect("ldd lists libtorch_cpu.so");
    // The libtorch it resolves: where libtorch_cuda.so must be linked too, if it exists.
    let lib = cpu
        .split("=> ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .map(|p| Path::new(p).parent().unwrap().to_path_buf())
        .expect("libtorch_cpu.so resolves to a path");
    if lib.join("libtorch_cuda.so").exists() {
        assert!(
            dynamic.contains("[libtorch_cuda.so]"),
            "{} has libtorch_cuda.so but the worker does not link it:\n{dynamic}",
            lib.display()
        );
    }
}
