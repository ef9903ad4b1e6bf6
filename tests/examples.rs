//! The configurations in examples/ (the three ways tandem is used) pass `tandem check`: in full
//! where everything they name exists here, the syntax alone for the sidecar, whose TLS files and
//! log volume exist only in its pod.

mod support;

use std::path::PathBuf;

/// Each example, and whether it names files that exist only where it runs.
const EXAMPLES: [(&str, bool); 3] =
    [("sidecar.yaml", true), ("reverse-proxy.yaml", false), ("load-test-target.yaml", false)];

#[test]
fn every_example_configuration_passes_tandem_check() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .expect("examples/")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    found.sort();
    let mut listed: Vec<String> = EXAMPLES.iter().map(|(n, _)| (*n).to_owned()).collect();
    listed.sort();
    assert_eq!(found, listed, "every example is checked here");
    for (name, syntax_only) in EXAMPLES {
        let mut cmd = std::process::Command::new(support::bin());
        cmd.arg("check");
        if syntax_only {
            cmd.arg("--syntax-only");
        }
        let out = cmd.arg("-c").arg(dir.join(name)).env_remove("RUST_LOG").output().expect("run");
        assert!(out.status.success(), "examples/{name}: {}", String::from_utf8_lossy(&out.stderr));
        // A variable in CI's environment must not be what makes it pass.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("TANDEM_"), "examples/{name}: {stderr}");
    }
}
