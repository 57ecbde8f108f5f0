//! Link flags for libtorch, for the build scripts of the crates whose targets
//! link it (demix-ml's tests, the worker). torch-sys (links = "tch") exports its
//! lib dir as DEP_TCH_LIBTORCH_LIB to packages that depend on it directly. Two
//! fixes over what torch-sys emits:
//! * `--no-as-needed`: the linker's default `--as-needed` drops
//!   libtorch_cuda.so because no symbol of it is referenced directly, and then
//!   CUDA is silently unavailable at run time (tch's known pitfall).
//! * an rpath to the lib dir, so binaries run without LD_LIBRARY_PATH.
use std::path::Path;

/// Emits the link flags (and `DEMIX_LIBTORCH_VERSION`, `DEMIX_LIBTORCH_LIB` for
/// `demix doctor`). Call it from a build script.
pub fn link_libtorch() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=DEP_TCH_LIBTORCH_LIB not set; libtorch link fixes skipped");
        println!("cargo:rustc-env=DEMIX_LIBTORCH_VERSION=unknown");
        println!("cargo:rustc-env=DEMIX_LIBTORCH_LIB=");
        return;
    };
    let lib = Path::new(&lib);
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // demix-ml links the wheel's NCCL where libtorch has CUDA (see its build.rs).
    if let Some(nccl) = nccl_dir(lib) {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", nccl.display());
    }
    println!("cargo:rustc-env=DEMIX_LIBTORCH_LIB={}", lib.display());

    // The version for `demix doctor`: pip's torch ships version.py, a libtorch
    // zip ships build-version.
    let root = lib.parent().unwrap_or(lib);
    let version = std::fs::read_to_string(root.join("version.py"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("__version__ = "))
                .map(|v| v.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
        })
        .or_else(|| {
            std::fs::read_to_string(root.join("build-version"))
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=DEMIX_LIBTORCH_VERSION={version}");
}

/// The wheel's NCCL beside torch/ (site-packages/nvidia/nccl/lib), when
/// libtorch has CUDA: what demix-ml links for data-parallel training on GPUs.
pub fn nccl_dir(libtorch_lib: &Path) -> Option<std::path::PathBuf> {
    let dir = libtorch_lib.parent()?.parent()?.join("nvidia/nccl/lib");
    (libtorch_lib.join("libtorch_cuda.so").exists() && dir.join("libnccl.so.2").exists())
        .then_some(dir)
}
