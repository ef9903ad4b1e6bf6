//! The folders of `src/` depend one way (DESIGN.md, "Code layout"): the listener calls the
//! protocol servers, they call the proxy, the proxy calls the upstream clients, and telemetry,
//! lifecycle, configuration and the shared vocabulary (`base`) sit at the bottom. This reads
//! every source file's `crate::` paths (comments and unit tests aside) and fails on a path that
//! points up, so a new cycle between folders cannot land.

use std::collections::BTreeSet;
use std::path::Path;

/// Each folder (or top-level module) with the layer it sits in: a module may use only modules
/// of a lower layer.
const LAYERS: &[(&str, u32)] = &[
    ("main", 10),
    ("commands", 9),
    ("app", 8),
    ("cli", 7),
    ("admin", 7),
    ("echo", 7),
    ("fuzzing", 7),
    ("reload", 6),
    ("listener", 5),
    ("http1", 4),
    ("h2", 4),
    ("proxy", 3),
    ("tcp", 2),
    ("upstream", 2),
    ("telemetry", 1),
    ("lifecycle", 1),
    ("mesh", 1),
    ("config", 0),
    ("base", 0),
];

fn layer(module: &str) -> u32 {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l).unwrap_or_else(|| panic!("{module} has no layer"))
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn folders_depend_one_way_with_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut upward = BTreeSet::new();
    for path in &all {
        let rel = path.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a component").as_os_str().to_string_lossy().into_owned();
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(path).expect("read");
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let used: String =
                    line[at + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if used != module && layer(&used) >= layer(&module) {
                    upward.insert(format!("{} uses crate::{used}", rel.display()));
                }
            }
        }
    }
    assert!(upward.is_empty(), "paths that point up or across:\n{}", upward.into_iter().collect::<Vec<_>>().join("\n"));
}
