//! The test binary itself must depend on libtorch_cuda.so (build.rs passes
//! --no-as-needed) and resolve it without LD_LIBRARY_PATH (rpath).
use std::process::Command;

#[test]
fn links_libtorch_cuda_and_resolves_it() {
    // The demix binary itself and this test binary.
    for exe in [
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_demix")),
        std::env::current_exe().unwrap(),
    ] {
        check(&exe);
    }
}

fn check(exe: &std::path::Path) {
    let lib = env!("DEMIX_LIBTORCH_LIB");
    if !std::path::Path::new(lib).join("libtorch_cuda.so").exists() {
        println!("skipped: {lib} has no libtorch_cuda.so (CPU-only libtorch)");
        return;
    }
    let out = Command::new("readelf")
        .arg("-d")
        .arg(exe)
        .output()
        .expect("readelf runs");
    let dynamic = String::from_utf8_lossy(&out.stdout);
    assert!(
        dynamic.contains("[libtorch_cuda.so]"),
        "no NEEDED libtorch_cuda.so:\n{dynamic}"
    );
    assert!(
        dynamic.contains(lib),
        "no rpath/runpath to {lib}:\n{dynamic}"
    );
    let out = Command::new("ldd")
        .arg(exe)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("ldd runs");
    let ldd = String::from_utf8_lossy(&out.stdout);
    let line = ldd
        .lines()
        .find(|l| l.contains("libtorch_cuda.so"))
        .expect("ldd lists libtorch_cuda.so");
    assert!(
        line.contains("=> /"),
        "libtorch_cuda.so does not resolve: {line}"
    );
    assert!(!ldd.contains("not found"), "unresolved libraries:\n{ldd}");
}
