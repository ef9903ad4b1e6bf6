//! Build script: links the release binary's functions in the order `build/symbol-order.txt`
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
