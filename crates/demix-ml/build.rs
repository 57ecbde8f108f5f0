//! Links libtorch (see demix-build) and compiles the C++ shim in csrc/ (ATen's
//! fused optimizer and foreach ops) against libtorch's headers, with the flags
//! torch-sys uses for its own wrapper. Where libtorch has CUDA and the wheel's
//! NCCL library is beside it, links NCCL too (then `cfg(demix_nccl)`); its C
//! API is declared in src/ffi.rs, as the wheel lacks the CUDA headers nccl.h needs.
use std::path::PathBuf;

fn main() {
    demix_build::link_libtorch();
    println!("cargo:rustc-check-cfg=cfg(demix_nccl)");
    println!("cargo:rerun-if-changed=csrc");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("DEP_TCH_LIBTORCH_LIB is not set: torch-sys did not find libtorch");
    };
    let lib = PathBuf::from(lib);
    let root = lib.parent().expect("libtorch's lib dir has a parent");
    let includes = [
        root.join("include"),
        root.join("include/torch/csrc/api/include"),
    ];
    let mut build = shim(&includes);
    build.file("csrc/ops.cpp");
    if let Some(dir) = demix_build::nccl_dir(&lib) {
        println!("cargo:rustc-link-search=native={}", dir.display());
        println!("cargo:rustc-link-lib=dylib:+verbatim=libnccl.so.2");
        println!("cargo:rustc-cfg=demix_nccl");
    }
    build.compile("demix_shim");
}

fn shim(includes: &[PathBuf]) -> cc::Build {
    let mut b = cc::Build::new();
    b.cpp(true)
        .includes(includes)
        .flag("-std=c++17")
        .flag(format!(
            "-D_GLIBCXX_USE_CXX11_ABI={}",
            std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into())
        ))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .warnings(false);
    b
}
