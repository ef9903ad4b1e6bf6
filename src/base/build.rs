//! What this binary is: the version, git commit, build profile and Rust version that build.rs
//! recorded, for `tandem --version` and the `tandem_build_info` metric's labels.

/// The crate version (Cargo.toml).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit built (short hash), or "unknown" when built outside a git checkout.
pub const COMMIT: &str = env!("BUILD_GIT_COMMIT");
/// The cargo profile: debug, release, profiling, ...
pub const PROFILE: &str = env!("BUILD_PROFILE_NAME");
/// The version of the Rust compiler that built it.
pub const RUSTC: &str = env!("BUILD_RUSTC_VERSION");

/// `tandem --version`'s text after the program name.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BUILD_GIT_COMMIT"),
    ", profile ",
    env!("BUILD_PROFILE_NAME"),
    ", rustc ",
    env!("BUILD_RUSTC_VERSION"),
    ")"
);
