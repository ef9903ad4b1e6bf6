//! The interception rules as `iptables-restore --noflush` input, computed from the options and
//! the namespace's current `nat` table and touching nothing: what `tandem iptables` installs,
//! and what its `--cleanup` removes.
//!
//! ```text
//! nat PREROUTING  -p tcp -j TANDEM_INBOUND       (traffic arriving at the pod)
//!   TANDEM_INBOUND      admin and inbound ports, --exclude-inbound-ports: RETURN
//!                       all TCP (or only --include-inbound-ports): TANDEM_IN_REDIRECT
//!   TANDEM_IN_REDIRECT  REDIRECT to the inbound listener (15006)
//! nat OUTPUT      -p tcp -j TANDEM_OUTPUT        (connections the pod makes)
//!   TANDEM_OUTPUT       tandem's uid to a pod's own non-loopback address: TANDEM_INBOUND
//!                       anything else out of `lo` (loopback, the pod's own addresses): RETURN
//!                       tandem's uid (and --proxy-gid): RETURN
//!                       --exclude-outbound-cidrs, --exclude-outbound-ports: RETURN
//!                       the rest: TANDEM_REDIRECT
//!   TANDEM_REDIRECT     REDIRECT to the outbound listener (15001)
//! ```
//!
//! Every rule is written the way `iptables-save` prints it back (`-p tcp -m tcp --dport`,
//! `! -d` before `-o`), so a save shows exactly these lines and a second run can tell whether its
//! jump rules are already there.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The prefix of every chain tandem makes; `--cleanup` removes every `nat` chain that has it.
pub const CHAIN_PREFIX: &str = "TANDEM_";
pub const INBOUND: &str = "TANDEM_INBOUND";
pub const IN_REDIRECT: &str = "TANDEM_IN_REDIRECT";
pub const OUTPUT: &str = "TANDEM_OUTPUT";
pub const REDIRECT: &str = "TANDEM_REDIRECT";
/// tandem's chains in the order they are declared.
pub const CHAINS: [&str; 4] = [INBOUND, IN_REDIRECT, OUTPUT, REDIRECT];
/// The two rules in built-in chains that send traffic into tandem's; appended once.
pub const JUMPS: [&str; 2] = ["-A PREROUTING -p tcp -j TANDEM_INBOUND", "-A OUTPUT -p tcp -j TANDEM_OUTPUT"];

/// An address family, with the tools that handle it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The first word of the family's tools: `iptables-restore`, `ip6tables-save`, ...
    pub fn tool_prefix(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// Every loopback destination (all of 127/8: an app on 127.0.0.2 is still loopback).
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
}

/// An address range `ADDR/PREFIX`, kept as its network address (as iptables prints it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `169.254.169.254` (one address) or `fd00::/8`; host bits are cleared.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| format!("{s:?} is not an address range (ADDR/PREFIX)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn family(&self) -> Family {
        if self.addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What to capture and where to send it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interception {
    /// The inbound listener's port: redirected inbound traffic lands here (and traffic sent to
    /// it directly is not redirected).
    pub inbound_port: u16,
    /// The outbound listener's port: redirected outbound traffic lands here.
    pub outbound_port: u16,
    /// The admin port (`/live`, `/ready`, `/metrics`): never redirected, so the kubelet's
    /// probes and Prometheus reach tandem itself.
    pub admin_port: u16,
    /// Connections made by this uid (tandem's own) are never redirected.
    pub proxy_uid: u32,
    /// Connections made by this primary gid are not redirected either (off when `None`).
    pub proxy_gid: Option<u32>,
    pub exclude_inbound_ports: Vec<u16>,
    /// When not empty, only these inbound ports are redirected (exclusions still win).
    pub include_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<Cidr>,
}

impl Interception {
    /// Every problem with the options, each naming its flag.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut p = Vec::new();
        for (flag, port) in [
            ("--inbound-port", self.inbound_port),
            ("--outbound-port", self.outbound_port),
            ("--admin-port", self.admin_port),
        ] {
            if port == 0 {
                p.push(format!("{flag}: port 0 cannot receive redirected traffic"));
            }
        }
        if self.inbound_port == self.outbound_port && self.inbound_port != 0 {
            p.push(format!(
                "--inbound-port and --outbound-port are both {}: inbound and outbound traffic need a listener each",
                self.inbound_port
            ));
        }
        for (flag, ports) in [
            ("--exclude-inbound-ports", &self.exclude_inbound_ports),
            ("--include-inbound-ports", &self.include_inbound_ports),
            ("--exclude-outbound-ports", &self.exclude_outbound_ports),
        ] {
            if ports.contains(&0) {
                p.push(format!("{flag}: 0 is not a port"));
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(p)
        }
    }

    /// The inbound ports never redirected, in rule order and without repeats.
    fn inbound_exclusions(&self) -> Vec<u16> {
        let mut ports = vec![self.admin_port, self.inbound_port];
        for &port in &self.exclude_inbound_ports {
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        ports
    }

    /// The rules of tandem's four chains for one family, as `-A` lines.
    pub fn chain_rules(&self, family: Family) -> Vec<String> {
        let mut r = Vec::new();
        let excluded = self.inbound_exclusions();
        for port in &excluded {
            r.push(format!("-A {INBOUND} -p tcp -m tcp --dport {port} -j RETURN"));
        }
        if self.include_inbound_ports.is_empty() {
            r.push(format!("-A {INBOUND} -p tcp -j {IN_REDIRECT}"));
        } else {
            let mut seen = Vec::new();
            for &port in &self.include_inbound_ports {
                if !excluded.contains(&port) && !seen.contains(&port) {
                    seen.push(port);
                    r.push(format!("-A {INBOUND} -p tcp -m tcp --dport {port} -j {IN_REDIRECT}"));
                }
            }
        }
        r.push(format!("-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {}", self.inbound_port));

        // tandem calling one of the pod's own addresses (an upstream that is this pod) goes
        // through the inbound side, as Istio's self-call rule does; the inbound side forwards to
        // loopback, which the next rule leaves alone, so this cannot loop.
        let lo = family.loopback();
        r.push(format!("-A {OUTPUT} ! -d {lo} -o lo -m owner --uid-owner {} -j {INBOUND}", self.proxy_uid));
        // The app calling loopback or its own pod address reaches the app directly (Istio and
        // Linkerd alike): not a call to another service.
        r.push(format!("-A {OUTPUT} -o lo -j RETURN"));
        r.push(format!("-A {OUTPUT} -m owner --uid-owner {} -j RETURN", self.proxy_uid));
        if let Some(gid) = self.proxy_gid {
            r.push(format!("-A {OUTPUT} -m owner --gid-owner {gid} -j RETURN"));
        }
        for cidr in self.exclude_outbound_cidrs.iter().filter(|c| c.family() == family) {
            r.push(format!("-A {OUTPUT} -d {cidr} -j RETURN"));
        }
        let mut seen = Vec::new();
        for &port in &self.exclude_outbound_ports {
            if !seen.contains(&port) {
                seen.push(port);
                r.push(format!("-A {OUTPUT} -p tcp -m tcp --dport {port} -j RETURN"));
            }
        }
        r.push(format!("-A {OUTPUT} -j {REDIRECT}"));
        r.push(format!("-A {REDIRECT} -p tcp -j REDIRECT --to-ports {}", self.outbound_port));
        r
    }
}

/// What a namespace's `nat` table holds that is tandem's business.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatTable {
    /// The chains named `TANDEM_*`, in save order.
    pub own_chains: Vec<String>,
    /// The rules of other chains that jump (or go) to one of tandem's, as saved (`-A ...`).
    pub jumps: Vec<String>,
    /// The rules of tandem's chains, as saved.
    pub own_rules: Vec<String>,
    /// How many rules the whole table has (tandem's included).
    pub rules: usize,
}

impl NatTable {
    /// Reads the `*nat` section of `iptables-save` output (other tables and comments ignored).
    pub fn parse(save: &str) -> NatTable {
        let mut t = NatTable::default();
        let mut in_nat = false;
        for line in save.lines().map(str::trim) {
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
            } else if !in_nat || line.starts_with('#') {
                continue;
            } else if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or_default();
                if name.starts_with(CHAIN_PREFIX) {
                    t.own_chains.push(name.to_owned());
                }
            } else if line.starts_with("-A ") {
                t.rules += 1;
                let words = split_words(line);
                let chain = words.get(1).map(String::as_str).unwrap_or_default();
                let target = words.windows(2).find(|w| w[0] == "-j" || w[0] == "-g").map(|w| w[1].as_str());
                if chain.starts_with(CHAIN_PREFIX) {
                    t.own_rules.push(line.to_owned());
                } else if target.is_some_and(|t| t.starts_with(CHAIN_PREFIX)) {
                    t.jumps.push(line.to_owned());
                }
            }
        }
        t
    }
}

/// Splits a saved rule into words, a double-quoted word (a comment) kept whole.
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => word.extend(chars.next()),
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// A saved `-A CHAIN ...` rule as the command that deletes it.
fn delete(rule: &str) -> String {
    format!("-D {}", rule.strip_prefix("-A ").unwrap_or(rule))
}

/// The input that installs the rules over what `current` holds: tandem's chains declared (which
/// creates them, or empties them if they exist), any other `TANDEM_*` chain and any jump that is
/// not one of [`JUMPS`] (or a repeat of one) deleted, the chains' rules added, and each jump
/// appended only if it is not there yet. Running it twice leaves one set of rules.
pub fn install_input(rules: &Interception, family: Family, current: &NatTable) -> String {
    let mut out = String::from("*nat\n");
    for chain in CHAINS {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    let mut kept = Vec::new();
    for jump in &current.jumps {
        if JUMPS.contains(&jump.as_str()) && !kept.contains(jump) {
            kept.push(jump.clone());
        } else {
            out.push_str(&delete(jump));
            out.push('\n');
        }
    }
    let stale: Vec<&String> = current.own_chains.iter().filter(|c| !CHAINS.contains(&c.as_str())).collect();
    for chain in &stale {
        out.push_str(&format!("-F {chain}\n"));
    }
    for chain in &stale {
        out.push_str(&format!("-X {chain}\n"));
    }
    for rule in rules.chain_rules(family) {
        out.push_str(&rule);
        out.push('\n');
    }
    for jump in JUMPS {
        if !kept.iter().any(|k| k == jump) {
            out.push_str(jump);
            out.push('\n');
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// The input that removes every jump to a `TANDEM_*` chain and then every such chain (all are
/// emptied before any is deleted, since they refer to each other); `None` when there is none.
pub fn cleanup_input(current: &NatTable) -> Option<String> {
    if current.own_chains.is_empty() && current.jumps.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    for jump in &current.jumps {
        out.push_str(&delete(jump));
        out.push('\n');
    }
    for chain in &current.own_chains {
        out.push_str(&format!("-F {chain}\n"));
    }
    for chain in &current.own_chains {
        out.push_str(&format!("-X {chain}\n"));
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// Whether `/proc/net/if_inet6` lists a global-scope address on an interface other than `lo`:
/// the pod has IPv6 connectivity that the rules must cover.
pub fn has_global_ipv6(if_inet6: &str) -> bool {
    // Columns: address, interface index, prefix length, scope, flags, name; scope 00 is global.
    if_inet6.lines().any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        cols.len() >= 6 && cols[3] == "00" && cols[5] != "lo"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Interception {
        Interception {
            inbound_port: 15006,
            outbound_port: 15001,
            admin_port: 15020,
            proxy_uid: 1337,
            proxy_gid: None,
            exclude_inbound_ports: Vec::new(),
            include_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
        }
    }

    #[test]
    fn the_default_rules_are_exactly_these() {
        assert_eq!(
            defaults().chain_rules(Family::V4),
            [
                "-A TANDEM_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
                "-A TANDEM_INBOUND -p tcp -m tcp --dport 15006 -j RETURN",
                "-A TANDEM_INBOUND -p tcp -j TANDEM_IN_REDIRECT",
                "-A TANDEM_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
                "-A TANDEM_OUTPUT ! -d 127.0.0.0/8 -o lo -m owner --uid-owner 1337 -j TANDEM_INBOUND",
                "-A TANDEM_OUTPUT -o lo -j RETURN",
                "-A TANDEM_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "-A TANDEM_OUTPUT -j TANDEM_REDIRECT",
                "-A TANDEM_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            ]
        );
    }

    #[test]
    fn ipv6_rules_name_ipv6_loopback_and_only_ipv6_ranges() {
        let mut r = defaults();
        r.exclude_outbound_cidrs =
            vec![Cidr::parse("169.254.169.254/32").expect("v4"), Cidr::parse("fd00:ec2::254").expect("v6")];
        let v6 = r.chain_rules(Family::V6);
        assert!(v6.contains(&"-A TANDEM_OUTPUT ! -d ::1/128 -o lo -m owner --uid-owner 1337 -j TANDEM_INBOUND".into()));
        assert!(v6.contains(&"-A TANDEM_OUTPUT -d fd00:ec2::254/128 -j RETURN".into()));
        assert!(!v6.iter().any(|l| l.contains("169.254")), "{v6:?}");
        let v4 = r.chain_rules(Family::V4);
        assert!(v4.contains(&"-A TANDEM_OUTPUT -d 169.254.169.254/32 -j RETURN".into()));
        assert!(!v4.iter().any(|l| l.contains("fd00")), "{v4:?}");
    }

    #[test]
    fn every_option_lands_where_it_belongs_in_rule_order() {
        let mut r = defaults();
        r.proxy_gid = Some(2000);
        r.exclude_inbound_ports = vec![22, 15020, 22];
        r.include_inbound_ports = vec![8080, 22, 9090, 8080];
        r.exclude_outbound_ports = vec![5432, 5432, 3306];
        r.exclude_outbound_cidrs = vec![Cidr::parse("10.1.2.3/8").expect("cidr")];
        assert_eq!(
            r.chain_rules(Family::V4),
            [
                "-A TANDEM_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
                "-A TANDEM_INBOUND -p tcp -m tcp --dport 15006 -j RETURN",
                "-A TANDEM_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
                "-A TANDEM_INBOUND -p tcp -m tcp --dport 8080 -j TANDEM_IN_REDIRECT",
                "-A TANDEM_INBOUND -p tcp -m tcp --dport 9090 -j TANDEM_IN_REDIRECT",
                "-A TANDEM_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
                "-A TANDEM_OUTPUT ! -d 127.0.0.0/8 -o lo -m owner --uid-owner 1337 -j TANDEM_INBOUND",
                "-A TANDEM_OUTPUT -o lo -j RETURN",
                "-A TANDEM_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "-A TANDEM_OUTPUT -m owner --gid-owner 2000 -j RETURN",
                "-A TANDEM_OUTPUT -d 10.0.0.0/8 -j RETURN",
                "-A TANDEM_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN",
                "-A TANDEM_OUTPUT -p tcp -m tcp --dport 3306 -j RETURN",
                "-A TANDEM_OUTPUT -j TANDEM_REDIRECT",
                "-A TANDEM_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            ]
        );
    }

    #[test]
    fn ranges_parse_to_their_network_address_and_bad_ones_say_why() {
        assert_eq!(Cidr::parse("169.254.169.254").expect("one").to_string(), "169.254.169.254/32");
        assert_eq!(Cidr::parse("192.168.7.9/16").expect("v4").to_string(), "192.168.0.0/16");
        assert_eq!(Cidr::parse("0.0.0.0/0").expect("all").to_string(), "0.0.0.0/0");
        assert_eq!(Cidr::parse("fd00:1::5/16").expect("v6").to_string(), "fd00::/16");
        assert_eq!(Cidr::parse("::/0").expect("all v6").to_string(), "::/0");
        assert!(Cidr::parse("10.0.0.0/33").expect_err("too long").contains("0 to 32"));
        assert!(Cidr::parse("fd00::/129").expect_err("too long").contains("0 to 128"));
        assert!(Cidr::parse("metadata/32").expect_err("a name").contains("not an address range"));
    }

    #[test]
    fn validation_names_the_flag_of_every_problem() {
        let mut r = defaults();
        r.outbound_port = 15006;
        r.admin_port = 0;
        r.exclude_outbound_ports = vec![0];
        let p = r.validate().expect_err("invalid");
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].starts_with("--admin-port: "), "{p:?}");
        assert!(p[1].contains("--inbound-port and --outbound-port are both 15006"), "{p:?}");
        assert!(p[2].starts_with("--exclude-outbound-ports: "), "{p:?}");
        assert!(defaults().validate().is_ok());
    }

    const SAVED: &str = "# Generated by iptables-nft-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
-A INPUT -p tcp -m comment --comment \"-j TANDEM_INBOUND\" -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:TANDEM_INBOUND - [0:0]
:TANDEM_IN_REDIRECT - [0:0]
:TANDEM_OLD - [0:0]
:OTHER - [0:0]
-A PREROUTING -p tcp -j TANDEM_INBOUND
-A PREROUTING -p tcp -j TANDEM_INBOUND
-A OUTPUT -p udp -m comment --comment \"a -j TANDEM_X lookalike\" -j ACCEPT
-A OUTPUT -j TANDEM_OLD
-A OTHER -g TANDEM_IN_REDIRECT
-A TANDEM_INBOUND -p tcp -j TANDEM_IN_REDIRECT
COMMIT
";

    #[test]
    fn the_saved_nat_table_yields_tandems_chains_and_the_jumps_into_them() {
        let t = NatTable::parse(SAVED);
        assert_eq!(t.own_chains, ["TANDEM_INBOUND", "TANDEM_IN_REDIRECT", "TANDEM_OLD"]);
        assert_eq!(
            t.jumps,
            [
                "-A PREROUTING -p tcp -j TANDEM_INBOUND",
                "-A PREROUTING -p tcp -j TANDEM_INBOUND",
                "-A OUTPUT -j TANDEM_OLD",
                "-A OTHER -g TANDEM_IN_REDIRECT",
            ]
        );
        assert_eq!(t.own_rules, ["-A TANDEM_INBOUND -p tcp -j TANDEM_IN_REDIRECT"]);
        assert_eq!(t.rules, 6);
        assert_eq!(NatTable::parse(""), NatTable::default());
    }

    #[test]
    fn installing_into_a_fresh_table_declares_the_chains_and_appends_both_jumps() {
        let r = defaults();
        let mut expected = String::from(
            "*nat\n:TANDEM_INBOUND - [0:0]\n:TANDEM_IN_REDIRECT - [0:0]\n:TANDEM_OUTPUT - [0:0]\n:TANDEM_REDIRECT - [0:0]\n",
        );
        for rule in r.chain_rules(Family::V4) {
            expected.push_str(&rule);
            expected.push('\n');
        }
        expected.push_str("-A PREROUTING -p tcp -j TANDEM_INBOUND\n-A OUTPUT -p tcp -j TANDEM_OUTPUT\nCOMMIT\n");
        assert_eq!(install_input(&r, Family::V4, &NatTable::default()), expected);
    }

    #[test]
    fn installing_again_keeps_one_of_each_jump_and_removes_strays_and_stale_chains() {
        let input = install_input(&defaults(), Family::V4, &NatTable::parse(SAVED));
        let lines: Vec<&str> = input.lines().collect();
        // The repeated PREROUTING jump and the jump into an old chain go; the old chain goes.
        let deletes: Vec<&&str> = lines.iter().filter(|l| l.starts_with("-D ") || l.starts_with("-X ")).collect();
        assert_eq!(
            deletes,
            [
                &"-D PREROUTING -p tcp -j TANDEM_INBOUND",
                &"-D OUTPUT -j TANDEM_OLD",
                &"-D OTHER -g TANDEM_IN_REDIRECT",
                &"-X TANDEM_OLD"
            ]
        );
        // The PREROUTING jump is there once already: only OUTPUT's is appended.
        assert!(!lines.contains(&"-A PREROUTING -p tcp -j TANDEM_INBOUND"), "{input}");
        assert!(lines.contains(&"-A OUTPUT -p tcp -j TANDEM_OUTPUT"), "{input}");
        // The chain declarations come first, before any command, as iptables-restore needs.
        assert_eq!(lines[1], ":TANDEM_INBOUND - [0:0]");
        assert_eq!(lines.last(), Some(&"COMMIT"));
    }

    #[test]
    fn cleanup_deletes_the_jumps_then_empties_and_removes_every_tandem_chain() {
        assert_eq!(
            cleanup_input(&NatTable::parse(SAVED)).expect("something to remove"),
            "*nat\n-D PREROUTING -p tcp -j TANDEM_INBOUND\n-D PREROUTING -p tcp -j TANDEM_INBOUND\n\
             -D OUTPUT -j TANDEM_OLD\n-D OTHER -g TANDEM_IN_REDIRECT\n\
             -F TANDEM_INBOUND\n-F TANDEM_IN_REDIRECT\n-F TANDEM_OLD\n\
             -X TANDEM_INBOUND\n-X TANDEM_IN_REDIRECT\n-X TANDEM_OLD\nCOMMIT\n"
        );
        assert_eq!(cleanup_input(&NatTable::default()), None);
    }

    #[test]
    fn ipv6_counts_only_with_a_global_address_outside_loopback() {
        let lo_and_link_local = "00000000000000000000000000000001 01 80 10 80       lo\n\
                                 fe80000000000000b0a1c2fffed3e4f5 02 40 20 80     eth0\n";
        assert!(!has_global_ipv6(lo_and_link_local));
        let global = format!("{lo_and_link_local}fd000000000000000000000000000005 02 40 00 80     eth0\n");
        assert!(has_global_ipv6(&global));
        assert!(!has_global_ipv6(""));
    }
}
