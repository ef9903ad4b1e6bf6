//! `tandem iptables`: chooses the iptables back end, reads the namespace's `nat` table with
//! `*-save`, and pipes [`super::rules`]' input into `*-restore --noflush`, one atomic transaction
//! per address family. The tools are run directly (no shell); nothing is touched with `--dry-run`.

use super::rules::{self, Family, Interception, NatTable};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The back end as asked for on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// The one that already holds rules; else nft if it works here; else legacy.
    Auto,
    Legacy,
    Nft,
}

/// Whether to install IPv6 rules (`ip6tables`) too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Ipv6 {
    /// When the namespace has a global IPv6 address outside `lo` (a dual-stack or IPv6 pod).
    Auto,
    On,
    Off,
}

/// The back end in use: which tools are run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Legacy,
    Nft,
    /// Neither `-legacy` nor `-nft` tools exist: the plain `iptables-restore`, whichever it is.
    Installed,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Legacy => "legacy",
            Backend::Nft => "nft",
            Backend::Installed => "as installed",
        }
    }

    /// `iptables-nft-restore`, `ip6tables-legacy-save`, `iptables-restore`, ...
    pub fn tool(self, family: Family, op: &str) -> String {
        let p = family.tool_prefix();
        match self {
            Backend::Legacy => format!("{p}-legacy-{op}"),
            Backend::Nft => format!("{p}-nft-{op}"),
            Backend::Installed => format!("{p}-{op}"),
        }
    }
}

/// Everything `tandem iptables` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    pub rules: Interception,
    pub backend: BackendChoice,
    pub ipv6: Ipv6,
    /// Print the input each family's restore would get; run no restore.
    pub dry_run: bool,
    /// Remove every jump to, and every one of, tandem's chains instead of installing.
    pub cleanup: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} not found on PATH: the image needs the iptables tools, legacy or nft (tandem's image target `iptables` has them)")]
    NotFound(String),
    #[error(
        "NET_ADMIN needed: {tool}: permission denied (run as uid 0 with the NET_ADMIN and NET_RAW capabilities): {detail}"
    )]
    Permission { tool: String, detail: String },
    #[error("{tool} failed ({status}): {detail}{hint}")]
    Failed { tool: String, status: String, detail: String, hint: &'static str },
    #[error("cannot run {tool}: {source}")]
    Io { tool: String, source: std::io::Error },
    #[error("cannot write the rules: {0}")]
    Output(std::io::Error),
    #[error("the installed {family} rules differ from the ones written: {detail}")]
    Mismatch { family: &'static str, detail: String },
}

/// Runs `tandem iptables`: the restore input of each family goes to `out` (as comments and
/// `iptables-restore` lines: the output is itself valid restore input); the returned lines say
/// what was done.
pub fn run(opts: &Options, out: &mut dyn Write) -> Result<Vec<String>, Error> {
    let mut report = Vec::new();
    let backend = match opts.backend {
        BackendChoice::Legacy => Backend::Legacy,
        BackendChoice::Nft => Backend::Nft,
        BackendChoice::Auto => match detect() {
            Ok(b) => b,
            // A dry run still shows the rules where nothing can be read (no iptables, no NET_ADMIN).
            Err(e) if opts.dry_run => {
                writeln!(out, "# back end not detected ({e}); shown for the plain iptables-restore")
                    .map_err(Error::Output)?;
                Backend::Installed
            }
            Err(e) => return Err(e),
        },
    };
    for family in families(opts, backend) {
        let restore = backend.tool(family, "restore");
        let save = backend.tool(family, "save");
        let current = match run_tool(&save, &["-t", "nat"], None) {
            Ok(text) => NatTable::parse(&text),
            Err(e) if opts.dry_run => {
                writeln!(
                    out,
                    "# {save} could not read the nat table ({e}); shown for a namespace without tandem's rules"
                )
                .map_err(Error::Output)?;
                NatTable::default()
            }
            Err(e) => return Err(e),
        };
        let input = if opts.cleanup {
            rules::cleanup_input(&current)
        } else {
            Some(rules::install_input(&opts.rules, family, &current))
        };
        let Some(input) = input else {
            writeln!(out, "# {}: no tandem chain or jump in the nat table; nothing to remove", family.name())
                .map_err(Error::Output)?;
            report.push(format!("{}: nothing of tandem's to remove ({save})", family.name()));
            continue;
        };
        write!(out, "# {}, back end {}: {restore} --noflush\n{input}", family.name(), backend.name())
            .map_err(Error::Output)?;
        if opts.dry_run {
            continue;
        }
        run_tool(&restore, &["--noflush"], Some(&input))?;
        let after = NatTable::parse(&run_tool(&save, &["-t", "nat"], None)?);
        report.push(verify(opts, family, &after)?);
    }
    Ok(report)
}

/// Checks what `*-save` shows after the restore, and says it in one line.
fn verify(opts: &Options, family: Family, after: &NatTable) -> Result<String, Error> {
    let mismatch = |detail: String| Error::Mismatch { family: family.name(), detail };
    if opts.cleanup {
        if !after.own_chains.is_empty() || !after.jumps.is_empty() {
            return Err(mismatch(format!("still there: {:?} {:?}", after.own_chains, after.jumps)));
        }
        return Ok(format!("{}: removed every tandem chain and jump", family.name()));
    }
    if after.jumps != rules::JUMPS {
        return Err(mismatch(format!("jumps into tandem's chains: {:?}", after.jumps)));
    }
    let r = &opts.rules;
    // The rules are written as iptables-save prints them; an iptables that spells one
    // differently has still installed it, so a difference here is said, not fatal.
    let spelled =
        if after.own_rules == r.chain_rules(family) { "" } else { " (iptables-save spells some differently)" };
    Ok(format!(
        "{}: {} rules in {} chains{spelled}; inbound TCP → {}, outbound TCP → {}, uid {}{} exempt",
        family.name(),
        after.own_rules.len() + after.jumps.len(),
        after.own_chains.len(),
        r.inbound_port,
        r.outbound_port,
        r.proxy_uid,
        r.proxy_gid.map(|g| format!(" and gid {g}")).unwrap_or_default(),
    ))
}

/// The families to handle: IPv4 always; IPv6 as asked (for a cleanup in `auto`: wherever the
/// kernel has IPv6 and the tool exists, since an earlier run may have had `--ipv6 on`).
fn families(opts: &Options, backend: Backend) -> Vec<Family> {
    let if_inet6 = std::fs::read_to_string("/proc/net/if_inet6");
    let v6 = match opts.ipv6 {
        Ipv6::On => true,
        Ipv6::Off => false,
        Ipv6::Auto if opts.cleanup => if_inet6.is_ok() && find(&backend.tool(Family::V6, "save")).is_some(),
        Ipv6::Auto => if_inet6.is_ok_and(|t| rules::has_global_ipv6(&t)),
    };
    if v6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

/// Chooses as istio-init and Kubernetes' iptables wrapper do: the back end that already holds
/// rules (tandem's must sit in the same one as the kubelet's or a CNI's, or one set is bypassed),
/// the one with more if both do; else nft when it works in this kernel; else legacy.
fn detect() -> Result<Backend, Error> {
    let mut working: Vec<(Backend, usize)> = Vec::new();
    for backend in [Backend::Nft, Backend::Legacy] {
        let save = backend.tool(Family::V4, "save");
        if find(&save).is_none() {
            continue;
        }
        match run_tool(&save, &[], None) {
            Ok(text) => working.push((backend, text.lines().filter(|l| l.starts_with("-A ")).count())),
            Err(e @ Error::Permission { .. }) => return Err(e),
            // This back end does not work here (no kernel support): the other may.
            Err(_) => {}
        }
    }
    let with_rules =
        working.iter().filter(|(_, n)| *n > 0).fold(None, |best: Option<(Backend, usize)>, &(b, n)| match best {
            Some((_, m)) if m >= n => best,
            _ => Some((b, n)),
        });
    if let Some((backend, _)) = with_rules.or(working.first().copied()) {
        return Ok(backend);
    }
    if find("iptables-restore").is_some() && find("iptables-save").is_some() {
        return Ok(Backend::Installed);
    }
    Err(Error::NotFound("iptables-restore".to_owned()))
}

/// The tool's path on `PATH` (the usual system directories when `PATH` is unset).
fn find(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).map(|dir| dir.join(tool)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `tool ARGS` with `input` on its standard input; its standard output, or the error
/// classified (missing tool, missing capability, anything else with the tool's own words).
fn run_tool(tool: &str, args: &[&str], input: Option<&str>) -> Result<String, Error> {
    let path = find(tool).ok_or_else(|| Error::NotFound(tool.to_owned()))?;
    let io = |source| Error::Io { tool: tool.to_owned(), source };
    let mut child = Command::new(&path)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // The restore tools read all of their input before writing anything, so writing it
        // whole before reading their output cannot block.
        stdin.write_all(text.as_bytes()).map_err(io)?;
    }
    let output = child.wait_with_output().map_err(io)?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let detail = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    Err(classify(tool, &output.status.to_string(), detail))
}

/// A failed tool's error from its message: the missing capability is named as such.
fn classify(tool: &str, status: &str, detail: String) -> Error {
    if detail.contains("Permission denied") || detail.contains("Operation not permitted") {
        return Error::Permission { tool: tool.to_owned(), detail };
    }
    let hint = if detail.contains("xtables.lock") {
        " (legacy iptables writes its lock in /run: mount a writable emptyDir there when the root file system is read-only)"
    } else {
        ""
    };
    Error::Failed { tool: tool.to_owned(), status: status.to_owned(), detail, hint }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_back_end_runs_its_own_tools() {
        assert_eq!(Backend::Nft.tool(Family::V4, "restore"), "iptables-nft-restore");
        assert_eq!(Backend::Legacy.tool(Family::V6, "save"), "ip6tables-legacy-save");
        assert_eq!(Backend::Installed.tool(Family::V4, "save"), "iptables-save");
    }

    #[test]
    fn a_denied_tool_is_reported_as_the_missing_capability() {
        let nft = "iptables-nft-restore v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)";
        let e = classify("iptables-nft-restore", "exit status: 4", nft.to_owned());
        assert!(e.to_string().starts_with("NET_ADMIN needed: iptables-nft-restore: permission denied"), "{e}");
        let lock = "Fatal: can't open lock file /run/xtables.lock: Read-only file system";
        let e = classify("iptables-legacy-restore", "exit status: 4", lock.to_owned());
        assert!(e.to_string().contains("mount a writable emptyDir"), "{e}");
        let e = classify("iptables-nft-restore", "exit status: 2", "line 3 failed".to_owned());
        assert_eq!(e.to_string(), "iptables-nft-restore failed (exit status: 2): line 3 failed");
    }

    #[test]
    fn a_missing_tool_is_named() {
        let e = run_tool("tandem-no-such-iptables-restore", &[], None).expect_err("missing");
        assert!(e.to_string().starts_with("tandem-no-such-iptables-restore not found"), "{e}");
    }
}
