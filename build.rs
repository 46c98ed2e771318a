//! Build script: finds the MLX install (the pinned `mlx-cpu` / `mlx-metal` /
//! `mlx-cuda-13` wheel), compiles the C++ shim in `src/mlx/` with `cxx`, and
//! links `libmlx` (with an rpath to the wheel's `lib/`). On Linux it links
//! OpenBLAS ahead of libmlx so MLX's BLAS calls land there, not in the wheel's
//! bundled reference BLAS (~35x slower for GEMM).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The MLX version the shim is written against. MLX's C++ API has no stable
/// ABI, so building against another version is refused.
const MLX_VERSION: &str = "0.32.4";

fn main() {
    println!("cargo:rerun-if-env-changed=MLX_DIR");
    println!("cargo:rerun-if-env-changed=PYTHON");
    for f in [
        "src/mlx/ffi.rs",
        "src/mlx/shim.h",
        "src/mlx/shim.cc",
        "src/mlx/cpu/kernels.h",
        "src/mlx/cpu/kernels_simd.cc",
        "src/mlx/cpu/primitives.cc",
        "src/mlx/gpu/kernels.cc",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }

    let mlx_dir = find_mlx().unwrap_or_else(|msg| {
        panic!(
            "\n\nMLX not found: {msg}\n\
             Install it with `pip install mlx-cpu=={MLX_VERSION}` (Linux; plus \
             `apt-get install libopenblas-dev`) or `pip install mlx-metal=={MLX_VERSION}` \
             (macOS), or run scripts/install-mlx.sh, or set MLX_DIR to the wheel's \
             `mlx/` directory (the one holding include/ and lib/).\n\n"
        )
    });
    let include = mlx_dir.join("include");
    let lib = mlx_dir.join("lib");
    check_version(&include);
    println!(
        "cargo:rerun-if-changed={}",
        include.join("mlx/version.h").display()
    );

    cxx_build::CFG.include_prefix = "xtr_mlx";
    cxx_build::bridge("src/mlx/ffi.rs")
        .file("src/mlx/shim.cc")
        .file("src/mlx/cpu/primitives.cc")
        .file("src/mlx/gpu/kernels.cc")
        .std("c++20")
        .include(&include)
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .opt_level(2)
        .compile("xtr_mlx_shim");

    build_cpu_kernels();

    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    println!("cargo:rustc-link-search=native={}", lib.display());
    match target_os.as_str() {
        "linux" => {
            // One argument, so that --no-as-needed applies to -lopenblas itself
            // (a bare --no-as-needed lands after the libraries and does nothing).
            // The executable then lists libopenblas as a direct dependency, and
            // the dynamic linker resolves MLX's cblas_* calls there before it
            // reaches libmlx's own dependency on the wheel's reference libblas.
            println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,-lopenblas,--pop-state");
            println!("cargo:rustc-link-lib=dylib=mlx");
            println!("cargo:rustc-link-lib=dylib=sleef");
            println!("cargo:rustc-link-lib=dylib=dl");
        }
        "macos" => {
            // libmlx from the macOS wheel already links Metal and Accelerate.
            println!("cargo:rustc-link-lib=dylib=mlx");
            println!("cargo:rustc-link-lib=dylib=sleef");
        }
        other => panic!("the MLX binding supports Linux and macOS, not `{other}`"),
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}

/// Compiles src/mlx/cpu/kernels_simd.cc once per instruction set: AVX-512 and
/// AVX2+FMA builds on x86_64 (picked at run time by CPUID), and a portable
/// scalar build everywhere. The vector math comes from SLEEF (Debian/Ubuntu
/// `libsleef-dev`, Homebrew `sleef`).
fn build_cpu_kernels() {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let x86 = arch == "x86_64";
    let mut builds: Vec<(&str, &str, Vec<&str>)> = vec![("scalar", "XTR_ISA_SCALAR", vec![])];
    if x86 {
        builds.push(("avx2", "XTR_ISA_AVX2", vec!["-mavx2", "-mfma"]));
        builds.push((
            "avx512",
            "XTR_ISA_AVX512",
            vec!["-mavx512f", "-mavx512dq", "-mavx2", "-mfma"],
        ));
    }
    for (name, define, flags) in builds {
        let mut b = cc::Build::new();
        b.cpp(true)
            .file("src/mlx/cpu/kernels_simd.cc")
            .std("c++17")
            .opt_level(3)
            .define(define, None)
            .flag_if_supported("-fno-math-errno")
            .warnings(true);
        if name == "scalar" && !x86 {
            b.define("XTR_STUB_X86", None);
        }
        for f in flags {
            b.flag(f);
        }
        b.compile(&format!("xtr_kernels_{name}"));
    }
}

/// MLX_DIR if set, else the `mlx` namespace package that python3 can import.
fn find_mlx() -> Result<PathBuf, String> {
    if let Some(dir) = env::var_os("MLX_DIR") {
        let dir = PathBuf::from(dir);
        return validate(&dir).map(|()| dir);
    }
    let python = env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    // Run from the filesystem root so that no local `mlx/` folder shadows the
    // namespace package.
    let out = Command::new(&python)
        .current_dir("/")
        .args(["-c", "import mlx; print(list(mlx.__path__)[0])"])
        .output()
        .map_err(|e| format!("MLX_DIR is unset and `{python}` could not run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "MLX_DIR is unset and `{python} -c 'import mlx'` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    validate(&dir).map(|()| dir)
}

fn validate(dir: &Path) -> Result<(), String> {
    let header = dir.join("include/mlx/mlx.h");
    if !header.is_file() {
        return Err(format!("{} is missing", header.display()));
    }
    let has_lib = ["libmlx.so", "libmlx.dylib"]
        .iter()
        .any(|l| dir.join("lib").join(l).is_file());
    if !has_lib {
        return Err(format!("no libmlx in {}", dir.join("lib").display()));
    }
    Ok(())
}

/// Refuses a wheel whose version differs from the one the shim targets.
fn check_version(include: &Path) {
    let path = include.join("mlx/version.h");
    let Ok(text) = std::fs::read_to_string(&path) else {
        println!(
            "cargo:warning=cannot read {}; MLX version unchecked",
            path.display()
        );
        return;
    };
    let num = |name: &str| -> Option<String> {
        text.lines()
            .find(|l| l.contains("#define") && l.contains(name))
            .and_then(|l| l.split_whitespace().nth(2))
            .map(str::to_string)
    };
    let found = match (
        num("MLX_VERSION_MAJOR"),
        num("MLX_VERSION_MINOR"),
        num("MLX_VERSION_PATCH"),
    ) {
        (Some(a), Some(b), Some(c)) => format!("{a}.{b}.{c}"),
        _ => {
            println!(
                "cargo:warning=cannot parse {}; MLX version unchecked",
                path.display()
            );
            return;
        }
    };
    if found != MLX_VERSION {
        panic!(
            "MLX {found} found but the binding is pinned to {MLX_VERSION} (no stable C++ ABI): \
             `pip install mlx-cpu=={MLX_VERSION}` or point MLX_DIR at a {MLX_VERSION} install"
        );
    }
}
