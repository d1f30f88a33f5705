//! Only for `--features cuda`: where the linker finds CUDA's runtime.
//!
//! candle-kernels' `moe` kernels (a static library nvcc builds) ask the linker for `-lcudart`.
//! cudarc opens every other CUDA library at first use (vendor/candle-core/PATCH.md), so nothing
//! else names the runtime, and a shared libcudart would be the one library the binary needs at
//! start, on machines without CUDA too. The static runtime (`libcudart_static.a`, which opens the
//! driver itself when first used) is linked instead: offered to the linker as `libcudart.a` in a
//! folder of its own, where no `libcudart.so` stands beside it.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=CUDA_PATH");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let home = std::env::var_os("CUDA_HOME")
        .or_else(|| std::env::var_os("CUDA_PATH"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/cuda"));
    let Some(static_runtime) = ["lib64", "lib", "targets/x86_64-linux/lib"]
        .iter()
        .map(|dir| home.join(dir).join("libcudart_static.a"))
        .find(|path| path.is_file())
    else {
        panic!(
            "--features cuda: no libcudart_static.a under {} (lib64, lib, targets/x86_64-linux/lib); \
             set CUDA_HOME to a CUDA 13 toolkit, or build with scripts/build-cuda.sh",
            home.display()
        );
    };
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("cudart-static");
    std::fs::create_dir_all(&out).expect("creating OUT_DIR/cudart-static");
    let link = out.join("libcudart.a");
    let _ = std::fs::remove_file(&link);
    std::fs::copy(&static_runtime, &link).expect("copying libcudart_static.a");
    println!("cargo:rerun-if-changed={}", static_runtime.display());
    println!("cargo:rustc-link-search=native={}", out.display());
}
