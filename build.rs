//! Build script: records what `tandem --version` and `tandem_build_info` report (the git commit,
//! the build profile, the Rust version: see [`build_info`]), and links the release binary's functions in the order `build/symbol-order.txt`
//! gives (the code tandem runs at start and on the request path first, packed together), so
//! that the pages of code a running tandem keeps resident are few. See `build/README.md`.
//!
//! Only for release builds for x86_64 Linux, and only where the linker takes
//! `--symbol-ordering-file`: rust-lld does (the default linker there since Rust 1.90), the GNU
//! `ld` that older compilers link with through `cc` does not and would fail the link. So the
//! script first links an empty program with the same compiler, target, flags and linker, passing
//! the file; only if that succeeds does the binary get it (otherwise it is linked in the default
//! order, with a cargo warning saying so). Symbols the file names that the link does not have
//! (another compiler or dependency version) are skipped without a warning;
//! `build/symbol-order.py check` says how much of the file a build still matches.
//! `TANDEM_SYMBOL_ORDER=off` links in the default order; `TANDEM_LINK_MAP=PATH` writes the
//! linker's map to PATH (which the generator reads).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    build_info();
    println!("cargo:rerun-if-changed=build/symbol-order.txt");
    for var in [
        "TANDEM_SYMBOL_ORDER",
        "TANDEM_LINK_MAP",
        // What decides which linker the probe below (and the real link) uses.
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    let target = env::var("TARGET").unwrap_or_default();
    if !release || target != "x86_64-unknown-linux-gnu" {
        return;
    }
    if let Ok(map) = env::var("TANDEM_LINK_MAP") {
        println!("cargo:rustc-link-arg-bin=tandem=-Wl,-Map={map}");
    }
    if env::var("TANDEM_SYMBOL_ORDER").is_ok_and(|v| v == "off") {
        return;
    }
    let manifest = env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let order = Path::new(&manifest).join("build").join("symbol-order.txt");
    if !order.is_file() {
        return;
    }
    let args = order_args(&order);
    match linker_takes(&target, &args) {
        Ok(()) => {
            for arg in &args {
                println!("cargo:rustc-link-arg-bin=tandem={arg}");
            }
        }
        Err(why) => println!(
            "cargo:warning=a test link with --symbol-ordering-file failed ({why}): the release \
             binary is linked in the default order, which keeps more code resident (Rust 1.90 or \
             later links with rust-lld, which takes the option)"
        ),
    }
}

/// Sets `BUILD_GIT_COMMIT` (short hash, "unknown" outside a git checkout or without git),
/// `BUILD_PROFILE_NAME` (the cargo profile's name: debug, release, profiling, ...) and
/// `BUILD_RUSTC_VERSION` (the compiler cargo runs, from `RUSTC`) for the crate to read with
/// `env!`. Not TANDEM_*: cargo also sets these when it runs the binary (cargo run, cargo test), and
/// tandem warns about a TANDEM_ variable that names no key. Re-run when HEAD moves, so a new
/// commit is not reported with the old hash.
fn build_info() {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    if commit.is_some() {
        // HEAD names the branch; the branch's ref (or packed-refs) moves on a commit.
        let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(git(&["rev-parse", "--git-path", &branch]));
        }
        watched.push(git(&["rev-parse", "--git-path", "packed-refs"]));
        for path in watched.into_iter().flatten() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rustc-env=BUILD_GIT_COMMIT={}", commit.as_deref().unwrap_or("unknown"));

    // OUT_DIR is <target>/[<triple>/]<profile>/build/<pkg>-<hash>/out: the profile's own name,
    // where PROFILE says only debug or release.
    let out_dir = env::var("OUT_DIR").unwrap_or_default();
    let profile = Path::new(&out_dir)
        .ancestors()
        .nth(3)
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .unwrap_or_else(|| env::var("PROFILE").unwrap_or_else(|_| "unknown".into()));
    println!("cargo:rustc-env=BUILD_PROFILE_NAME={profile}");

    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let version = Command::new(&rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        // "rustc 1.91.0 (f8297e351 2025-10-28)": the version number.
        .and_then(|s| s.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BUILD_RUSTC_VERSION={version}");
}

/// The linker arguments that lay the binary out in `order`'s order.
fn order_args(order: &Path) -> Vec<String> {
    vec![format!("-Wl,--symbol-ordering-file={}", order.display()), "-Wl,--no-warn-symbol-ordering".to_string()]
}

/// Links an empty program for `target` with the compiler, flags and linker cargo uses for
/// tandem, plus `args`; `Err` with the reason when that fails.
fn linker_takes(target: &str, args: &[String]) -> Result<(), String> {
    let out_dir = env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?;
    let dir = PathBuf::from(out_dir).join("link-probe");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let src = dir.join("probe.rs");
    fs::write(&src, "fn main() {}\n").map_err(|e| format!("{}: {e}", src.display()))?;
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut cmd = Command::new(&rustc);
    cmd.arg(&src)
        .args(["--crate-type", "bin", "--edition", "2021", "--target", target])
        .arg("-o")
        .arg(dir.join("probe"));
    // The flags cargo gives tandem's own compilation (RUSTFLAGS, build.rustflags, ...): they may
    // pick the linker (-C linker, -C link-arg=-fuse-ld=..., -C linker-features) or make the link
    // static.
    if let Ok(flags) = env::var("CARGO_ENCODED_RUSTFLAGS") {
        cmd.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    }
    // The linker cargo resolved from target.<triple>.linker, if one is set.
    if let Some(linker) = env::var_os("RUSTC_LINKER") {
        cmd.arg("-C").arg(format!("linker={}", linker.to_string_lossy()));
    }
    for arg in args {
        cmd.arg("-C").arg(format!("link-arg={arg}"));
    }
    let out = cmd.output().map_err(|e| format!("running {}: {e}", Path::new(&rustc).display()))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The linker's own complaint ("ld: unrecognized option '--symbol-ordering-file=...'") if it
    // printed one, else rustc's error line.
    let reason = stderr
        .lines()
        .find(|l| ["unrecognized option", "unknown option", "unknown argument"].iter().any(|k| l.contains(k)))
        .map(|l| l.trim_start_matches(|c: char| c.is_whitespace() || c == '=').trim_start_matches("note: "))
        .or_else(|| stderr.lines().find(|l| l.starts_with("error")))
        .map_or_else(|| format!("the probe link exited with {}", out.status), |l| l.trim().to_string());
    Err(reason)
}
