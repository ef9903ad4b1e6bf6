#!/usr/bin/env python3
"""Checks the toolchain claim: Cargo.toml's `rust-version` is at least the newest `rust-version`
any locked dependency that a build or test of tandem on this platform compiles declares, and
README.md names that same Rust.

  python3 build/msrv.py [--target TRIPLE]

Reads `cargo metadata --locked --filter-platform TRIPLE` (default: the host), walks the graph from
tandem over normal and build dependencies (and tandem's own dev-dependencies, which `cargo test`
builds), and exits 1 when tandem's rust-version is lower than the highest one found, or when the
README's "Rust X.Y" does not match it. A rust-version higher than every dependency's is reported,
not failed: tandem's own code may need it (clippy's incompatible_msrv lint checks std APIs against
it), which only building with that compiler shows.
"""

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ver(s):
    parts = [int(p) for p in re.findall(r"\d+", s or "")]
    return tuple((parts + [0, 0, 0])[:3])


def show(v):
    return ".".join(str(p) for p in (v[:2] if v[2] == 0 else v))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", help="platform to filter the graph for (default: the host)")
    args = ap.parse_args()
    target = args.target or subprocess.run(
        ["rustc", "--print", "host-tuple"], capture_output=True, text=True, check=True
    ).stdout.strip()
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", target],
            cwd=ROOT, capture_output=False, stdout=subprocess.PIPE, text=True, check=True,
        ).stdout
    )
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = meta["resolve"]["root"]
    if root is None:
        sys.exit("msrv: no root package in cargo metadata")
    # (id, path from tandem); tandem's dev-dependencies count, theirs do not.
    seen = {}
    stack = [(root, ())]
    while stack:
        pid, path = stack.pop()
        if pid in seen:
            continue
        seen[pid] = path
        for dep in nodes[pid]["deps"]:
            kinds = {k["kind"] for k in dep["dep_kinds"]}
            if pid != root and kinds <= {"dev"}:
                continue
            stack.append((dep["pkg"], path + (packages[dep["pkg"]]["name"],)))
    own = ver(packages[root].get("rust_version"))
    if own == (0, 0, 0):
        sys.exit("msrv: Cargo.toml has no rust-version")
    deps = [(ver(packages[p].get("rust_version")), p) for p in seen if p != root]
    need = max(v for v, _ in deps)
    floor = sorted(
        f"{packages[p]['name']} {packages[p]['version']} (via {' -> '.join(seen[p])})" for v, p in deps if v == need
    )
    print(f"msrv: {len(deps)} locked packages built for {target}; the highest rust-version is {show(need)}, set by:")
    for f in floor:
        print(f"  {f}")
    ok = True
    if own < need:
        print(f"msrv: FAIL: Cargo.toml says rust-version {show(own)}, but the locked dependencies need {show(need)}")
        ok = False
    elif own > need:
        print(f"msrv: note: rust-version {show(own)} is above every dependency's ({show(need)}): tandem's own code must need it")
    else:
        print(f"msrv: Cargo.toml's rust-version {show(own)} is that version")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    named = sorted(set(re.findall(r"\bRust (1\.\d+(?:\.\d+)?) or (?:newer|later)", readme)))
    if [ver(n) for n in named] != [own]:
        print(
            f"msrv: FAIL: README.md should say \"Rust {show(own)} or newer\" (the rust-version); it names "
            + (", ".join(f"Rust {n} or newer" for n in named) if named else "no such version")
        )
        ok = False
    else:
        print(f"msrv: README.md says Rust {named[0]} or newer")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
