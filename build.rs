//! Build script: links the release binary's functions in the order `build/symbol-order.txt`
//! gives (the code tandem runs at start and on the request path first, packed together), so
//! that the pages of code a running tandem keeps resident are few. See `build/README.md`.
//!
//! Only for release builds for x86_64 Linux, whose default linker (rust-lld, since Rust 1.90)
//! takes `--symbol-ordering-file`. Symbols the file names that the link does not have (another
//! compiler or dependency version) are skipped without a warning; `build/symbol-order.py check`
//! says how much of the file a build still matches. `TANDEM_SYMBOL_ORDER=off` links in the
//! default order; `TANDEM_LINK_MAP=PATH` writes the linker's map to PATH (which the generator
//! reads).

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build/symbol-order.txt");
    println!("cargo:rerun-if-env-changed=TANDEM_SYMBOL_ORDER");
    println!("cargo:rerun-if-env-changed=TANDEM_LINK_MAP");
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
    if order.is_file() {
        println!("cargo:rustc-link-arg-bin=tandem=-Wl,--symbol-ordering-file={}", order.display());
        println!("cargo:rustc-link-arg-bin=tandem=-Wl,--no-warn-symbol-ordering");
    }
}
