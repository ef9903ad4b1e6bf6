//! Outbound policy: which destinations the app may reach through the forward proxy.
//!
//! `outbound.allow` and `outbound.deny` are lists of destination patterns, each `HOST[:PORTS]`:
//!
//! | pattern | matches |
//! | --- | --- |
//! | `*` | every destination |
//! | `orders`, `api.example.com` | that name exactly (case-insensitive, a trailing dot ignored) |
//! | `*.svc.cluster.local` | every name ending in `.svc.cluster.local`, at any depth (not the bare suffix) |
//! | `10.0.0.0/8`, `fd00::/8` | a literal IP in the request, or an address the name resolved to |
//! | `10.1.2.3`, `::1`, `[::1]` | one address (a `/32` or `/128`) |
//! | `…:443`, `…:8000-8999`, `…:*` | restricts the pattern to a port or port range; none means every port |
//! | `*:443` | every host, port 443 |
//!
//! An IPv6 address or CIDR with a port is bracketed: `[fd00::/8]:443`.
//!
//! A destination is denied if any `deny` pattern matches it; otherwise allowed if `allow` is empty
//! or any `allow` pattern matches. Name patterns match the name the client used; address patterns
//! match a literal IP, or each address a name resolves to: tandem connects only to the resolved
//! addresses that are allowed, and refuses the request if none is.
//!
//! The request path checks names before resolving (no DNS for a name that is denied outright) and
//! addresses after; neither allocates.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// One destination pattern: a host part and a port range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    host: HostPattern,
    ports: Ports,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// Lower case, no trailing dot.
    Exact(String),
    /// Lower case, with its leading dot (`.svc.cluster.local`).
    Suffix(String),
    Net(Cidr),
}

/// An inclusive port range; `0..=65535` is every port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ports {
    lo: u16,
    hi: u16,
}

impl Ports {
    const ANY: Ports = Ports { lo: 0, hi: u16::MAX };

    fn contains(self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

/// An address block: `10.0.0.0/8`, `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside the block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| format!("{ip:?} is not an IP address"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(len) => {
                let n: u8 = len.parse().map_err(|_| format!("prefix length {len:?} is not a number"))?;
                if n > max {
                    return Err(format!("prefix length /{n} is longer than {max} bits"));
                }
                n
            }
        };
        let cidr = Cidr { addr, prefix };
        if cidr.network() != addr {
            return Err(format!("{s} has host bits set; the block is {}/{prefix}", cidr.network()));
        }
        Ok(cidr)
    }
}

impl Cidr {
    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::from(std::net::Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::from(std::net::Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == max {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

impl FromStr for Rule {
    type Err = String;

    /// Parses `HOST[:PORTS]`; the error says what is wrong with it.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty pattern".to_owned());
        }
        let (host, ports) = split_host_port(s)?;
        let ports = match ports {
            None | Some("*") => Ports::ANY,
            Some(p) => parse_ports(p)?,
        };
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            check_name(suffix)?;
            HostPattern::Suffix(format!(".{}", suffix.trim_end_matches('.').to_ascii_lowercase()))
        } else if host.contains('*') {
            return Err(format!(
                "{host:?}: a wildcard is allowed only as the whole host (*) or as the first label (*.example.com)"
            ));
        } else if host.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{host:?} is not a host; for a port on every host write *:{host}"));
        } else if host.contains('/') || host.parse::<IpAddr>().is_ok() {
            HostPattern::Net(host.parse()?)
        } else {
            check_name(host)?;
            HostPattern::Exact(host.trim_end_matches('.').to_ascii_lowercase())
        };
        Ok(Rule { host, ports })
    }
}

/// Splits `host:ports`, `[v6]:ports`, `[v6/len]:ports`; a bare IPv6 address or CIDR has no port.
fn split_host_port(s: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| format!("{s:?}: missing ']'"))?;
        return match after {
            "" => Ok((host, None)),
            p => match p.strip_prefix(':') {
                Some(p) => Ok((host, Some(p))),
                None => Err(format!("{s:?}: expected ':PORT' after ']'")),
            },
        };
    }
    match s.matches(':').count() {
        0 => Ok((s, None)),
        1 => {
            let (h, p) = s.split_once(':').unwrap_or((s, ""));
            Ok((h, Some(p)))
        }
        // More than one colon: an IPv6 address or block without a port.
        _ => Ok((s, None)),
    }
}

fn parse_ports(p: &str) -> Result<Ports, String> {
    let port = |t: &str| -> Result<u16, String> {
        match t.trim().parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{t:?} is not a port (1-65535)")),
        }
    };
    match p.split_once('-') {
        Some((a, b)) => {
            let (lo, hi) = (port(a)?, port(b)?);
            if lo > hi {
                return Err(format!("port range {lo}-{hi} is empty"));
            }
            Ok(Ports { lo, hi })
        }
        None => {
            let n = port(p)?;
            Ok(Ports { lo: n, hi: n })
        }
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let name = name.trim_end_matches('.');
    if name.is_empty() {
        return Err("empty host name".to_owned());
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.' || *c == '_')) {
        return Err(format!("{name:?}: {bad:?} is not allowed in a host name"));
    }
    if name.split('.').any(str::is_empty) {
        return Err(format!("{name:?}: empty label"));
    }
    Ok(())
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v6 = matches!(&self.host, HostPattern::Net(c) if c.addr.is_ipv6());
        let ports = self.ports != Ports::ANY;
        if v6 && ports {
            f.write_str("[")?;
        }
        match &self.host {
            HostPattern::Any => f.write_str("*")?,
            HostPattern::Exact(n) => f.write_str(n)?,
            HostPattern::Suffix(s) => write!(f, "*{s}")?,
            HostPattern::Net(c) => write!(f, "{c}")?,
        }
        if v6 && ports {
            f.write_str("]")?;
        }
        if ports {
            if self.ports.lo == self.ports.hi {
                write!(f, ":{}", self.ports.lo)?;
            } else {
                write!(f, ":{}-{}", self.ports.lo, self.ports.hi)?;
            }
        }
        Ok(())
    }
}

impl crate::config::HumanUnit for Rule {
    const KIND: &'static str = "destination pattern";
    fn placeholder() -> Self {
        Rule { host: HostPattern::Any, ports: Ports::ANY }
    }
    fn parse_human(s: &str) -> Option<Self> {
        s.parse().ok()
    }
    fn render(&self) -> String {
        self.to_string()
    }
}

/// What one rule says about a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    Yes,
    No,
    /// An address pattern, and the address is not known yet.
    NeedsAddress,
}

/// Where a destination is going, as far as it is known.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// The name the client used (`None` when it named a literal IP).
    pub name: Option<&'a str>,
    /// The literal IP, or one resolved address (`None` before resolution).
    pub addr: Option<IpAddr>,
    pub port: u16,
}

impl Rule {
    fn matches(&self, d: &Destination<'_>) -> Match {
        if !self.ports.contains(d.port) {
            return Match::No;
        }
        let yes = |b: bool| if b { Match::Yes } else { Match::No };
        match &self.host {
            HostPattern::Any => Match::Yes,
            HostPattern::Exact(n) => yes(d.name.is_some_and(|name| trim_dot(name).eq_ignore_ascii_case(n))),
            HostPattern::Suffix(s) => yes(d.name.is_some_and(|name| {
                let name = trim_dot(name).as_bytes();
                let s = s.as_bytes();
                name.len() > s.len() && name[name.len() - s.len()..].eq_ignore_ascii_case(s)
            })),
            HostPattern::Net(c) => match d.addr {
                Some(ip) => yes(c.contains(ip)),
                None => Match::NeedsAddress,
            },
        }
    }
}

fn trim_dot(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

/// Which list and entry decided a denial, for the response body and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// `outbound.deny[i]` matched.
    Denied(usize),
    /// `outbound.allow` is not empty and nothing in it matched.
    NotAllowed,
}

/// The policy's answer for a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny(Why),
    /// Decided by address patterns: resolve the name, then ask again for each address.
    Resolve,
}

/// The allow and deny lists.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

impl Policy {
    pub fn new(allow: Vec<Rule>, deny: Vec<Rule>) -> Self {
        Self { allow, deny }
    }

    /// Decides for `d`; with an address known the answer is never [`Verdict::Resolve`].
    pub fn decide(&self, d: &Destination<'_>) -> Verdict {
        let mut pending = false;
        for (i, r) in self.deny.iter().enumerate() {
            match r.matches(d) {
                Match::Yes => return Verdict::Deny(Why::Denied(i)),
                Match::NeedsAddress => pending = true,
                Match::No => {}
            }
        }
        if self.allow.is_empty() {
            return if pending { Verdict::Resolve } else { Verdict::Allow };
        }
        let mut allow_pending = false;
        for r in &self.allow {
            match r.matches(d) {
                Match::Yes => return if pending { Verdict::Resolve } else { Verdict::Allow },
                Match::NeedsAddress => allow_pending = true,
                Match::No => {}
            }
        }
        if allow_pending {
            Verdict::Resolve
        } else {
            Verdict::Deny(Why::NotAllowed)
        }
    }

    /// Says why, for a denial: `matches outbound.deny[1] (*.internal)` or `not in outbound.allow`.
    pub fn explain(&self, why: Why) -> String {
        match why {
            Why::Denied(i) => match self.deny.get(i) {
                Some(r) => format!("matches outbound.deny[{i}] ({r})"),
                None => format!("matches outbound.deny[{i}]"),
            },
            Why::NotAllowed => "matches nothing in outbound.allow".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> Rule {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn name(n: &str, port: u16) -> Destination<'_> {
        Destination { name: Some(n), addr: None, port }
    }

    fn ip(a: &str, port: u16) -> Destination<'static> {
        Destination { name: None, addr: Some(a.parse().expect("ip")), port }
    }

    #[test]
    fn patterns_parse_and_render_back() {
        for (input, rendered) in [
            ("*", "*"),
            ("*:443", "*:443"),
            ("Orders.", "orders"),
            ("*.svc.cluster.local", "*.svc.cluster.local"),
            ("*.svc.cluster.local:8000-8999", "*.svc.cluster.local:8000-8999"),
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.0.0.0/8:443", "10.0.0.0/8:443"),
            ("169.254.169.254", "169.254.169.254"),
            ("fd00::/8", "fd00::/8"),
            ("[fd00::/8]:443", "[fd00::/8]:443"),
            ("[::1]", "::1"),
            ("::1", "::1"),
            ("api.example.com:*", "api.example.com"),
        ] {
            assert_eq!(rule(input).to_string(), rendered, "{input}");
            assert_eq!(rule(rendered), rule(input));
        }
    }

    #[test]
    fn bad_patterns_say_why() {
        for (input, says) in [
            ("", "empty"),
            ("10.0.0.0/33", "longer than 32"),
            ("10.0.0.1/8", "host bits"),
            ("10.0.0.0/x", "not a number"),
            ("orders:0", "not a port"),
            ("orders:70000", "not a port"),
            ("orders:http", "not a port"),
            ("orders:9-1", "empty"),
            ("ord*rs", "wildcard"),
            ("*.", "empty host name"),
            ("a..b", "empty label"),
            ("exa mple", "not allowed"),
            ("[::1", "missing ']'"),
            ("[::1]443", "expected ':PORT'"),
            ("443", "*:443"),
        ] {
            let err = input.parse::<Rule>().expect_err(input);
            assert!(err.contains(says), "{input:?}: {err}");
        }
    }

    #[test]
    fn names_match_exactly_or_by_suffix() {
        let exact = rule("orders");
        assert_eq!(exact.matches(&name("ORDERS.", 80)), Match::Yes);
        assert_eq!(exact.matches(&name("orders.ns", 80)), Match::No);
        let suffix = rule("*.svc.cluster.local");
        assert_eq!(suffix.matches(&name("orders.ns.svc.cluster.local", 80)), Match::Yes);
        assert_eq!(suffix.matches(&name("a.b.SVC.cluster.local.", 80)), Match::Yes);
        assert_eq!(suffix.matches(&name("svc.cluster.local", 80)), Match::No);
        assert_eq!(suffix.matches(&name("evilsvc.cluster.local", 80)), Match::No);
        // Names never match an address pattern's literal, and the reverse.
        assert_eq!(exact.matches(&ip("10.0.0.1", 80)), Match::No);
    }

    #[test]
    fn ports_restrict_any_pattern() {
        let r = rule("*:443");
        assert_eq!(r.matches(&name("x", 443)), Match::Yes);
        assert_eq!(r.matches(&name("x", 80)), Match::No);
        let range = rule("orders:8000-8999");
        assert_eq!(range.matches(&name("orders", 8000)), Match::Yes);
        assert_eq!(range.matches(&name("orders", 8999)), Match::Yes);
        assert_eq!(range.matches(&name("orders", 9000)), Match::No);
    }

    #[test]
    fn cidrs_match_literal_and_mapped_addresses() {
        let r = rule("10.0.0.0/8");
        assert_eq!(r.matches(&ip("10.255.1.2", 80)), Match::Yes);
        assert_eq!(r.matches(&ip("::ffff:10.1.2.3", 80)), Match::Yes);
        assert_eq!(r.matches(&ip("11.0.0.1", 80)), Match::No);
        assert_eq!(r.matches(&name("orders", 80)), Match::NeedsAddress);
        let v6 = rule("fd00::/8");
        assert_eq!(v6.matches(&ip("fdab::1", 80)), Match::Yes);
        assert_eq!(v6.matches(&ip("fe80::1", 80)), Match::No);
        assert_eq!(rule("0.0.0.0/0").matches(&ip("1.2.3.4", 1)), Match::Yes);
        assert_eq!(rule("::/0").matches(&ip("10.0.0.1", 1)), Match::No);
    }

    #[test]
    fn deny_wins_and_empty_allow_allows_all() {
        let p = Policy::new(vec![], vec![]);
        assert_eq!(p.decide(&name("anything", 1)), Verdict::Allow);

        let p = Policy::new(vec![rule("*.svc.cluster.local")], vec![rule("secrets.ns.svc.cluster.local")]);
        assert_eq!(p.decide(&name("orders.ns.svc.cluster.local", 80)), Verdict::Allow);
        assert_eq!(p.decide(&name("secrets.ns.svc.cluster.local", 80)), Verdict::Deny(Why::Denied(0)));
        assert_eq!(p.decide(&name("example.com", 80)), Verdict::Deny(Why::NotAllowed));
        assert_eq!(p.explain(Why::Denied(0)), "matches outbound.deny[0] (secrets.ns.svc.cluster.local)");
    }

    #[test]
    fn address_rules_defer_names_until_resolution() {
        let p = Policy::new(vec![], vec![rule("169.254.169.254")]);
        assert_eq!(p.decide(&name("metadata.internal", 80)), Verdict::Resolve);
        let resolved = Destination {
            name: Some("metadata.internal"),
            addr: Some("169.254.169.254".parse().expect("ip")),
            port: 80,
        };
        assert_eq!(p.decide(&resolved), Verdict::Deny(Why::Denied(0)));
        assert_eq!(p.decide(&ip("10.0.0.1", 80)), Verdict::Allow);

        let p = Policy::new(vec![rule("10.0.0.0/8")], vec![]);
        assert_eq!(p.decide(&name("orders", 80)), Verdict::Resolve);
        assert_eq!(p.decide(&ip("10.0.0.1", 80)), Verdict::Allow);
        assert_eq!(p.decide(&ip("192.168.0.1", 80)), Verdict::Deny(Why::NotAllowed));

        // A name denied outright needs no lookup even when address rules exist.
        let p = Policy::new(vec![], vec![rule("*.evil.test"), rule("10.0.0.0/8")]);
        assert_eq!(p.decide(&name("x.evil.test", 80)), Verdict::Deny(Why::Denied(0)));
    }
}
