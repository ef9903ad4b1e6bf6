//! Loading: the file, the `TANDEM_*` environment and the flags laid over one YAML tree, walked
//! against the defaults, deserialized, then validated, so that every problem of every kind (an
//! unknown key, a wrong type, a choice that is not one, a bad value, a missing directory) is
//! reported in one run, each with its key, in words an operator reads.
//!
//! 1. The file (if any) is parsed into a tree.
//! 2. Every `TANDEM_<KEY_PATH>` variable for a known key is laid over it
//!    (`TANDEM_INBOUND_TIMEOUTS_CONNECT=250ms` sets `inbound.timeouts.connect`); one that names no
//!    key is a warning ([`Sources::unknown_variables`]), with the nearest variable when one is close.
//! 3. Flags are laid over that, by the same key paths.
//! 4. The tree is walked against the defaults: an unknown key is reported (with the nearest key)
//!    and taken out; an empty section is the defaults; a list given as one string is split at
//!    commas (one rule for every list, whichever source set it).
//! 5. The tree is deserialized; a value of the wrong type or a choice that is not one is reported
//!    with its key and taken out, and deserializing starts again, so one bad value hides nothing.
//! 6. [`Config::validate`] checks values, and the TLS files.
//! 7. What the run needs outside the configuration is looked at: `inbound.app` given as a host
//!    name is resolved (once: the request path holds an address), and the access-log file must be
//!    one tandem can open. [`Config::load_syntax`] (`tandem check --syntax-only`) skips this and
//!    the TLS files, for a configuration checked away from where it runs.
//!
//! Each problem names its key, and where a variable or a flag set it, says so.

use super::{problem, Config, Destination, FileCheck, Human, InboundTls, Problem, Problems};
use serde_yaml_ng::Value;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// Where the configuration comes from: an optional file, the environment, and flag overrides.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// `-c FILE`.
    pub file: Option<PathBuf>,
    /// Environment variables as (name, value) pairs; only `TANDEM_*` ones are looked at.
    pub env: Vec<(String, String)>,
    /// Flag overrides as (dotted key path, value).
    pub flags: Vec<(String, String)>,
}

impl Sources {
    /// A warning for each `TANDEM_*` variable that names no key, with the nearest variable when one
    /// is close. Warnings, not errors: Kubernetes injects `<SERVICE>_PORT`-style variables, and a
    /// Service called `tandem` makes `TANDEM_PORT`. Apart from loading, so that they are shown
    /// whether the configuration loads or not.
    pub fn unknown_variables(&self) -> Vec<String> {
        let names = env_names();
        let mut out = Vec::new();
        for (name, _) in &self.env {
            let Some(rest) = name.strip_prefix("TANDEM_") else { continue };
            if names.iter().any(|n| n == rest) {
                continue;
            }
            out.push(match nearest(rest, &names) {
                Some(n) => format!("{name} names no configuration key; ignored (did you mean TANDEM_{n}?)"),
                None => format!("{name} names no configuration key; ignored"),
            });
        }
        out
    }
}

/// What loading produced besides the configuration.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    pub config: Config,
    /// Worth knowing: what a host name resolved to.
    pub notes: Vec<String>,
}

/// Resolves a host name and port to addresses (the system resolver, or a test's).
type Resolver = fn(&str, u16) -> std::io::Result<Vec<SocketAddr>>;

/// What loading looks at outside the configuration itself.
#[derive(Clone, Copy)]
struct Outside {
    /// The TLS files an `inbound.tls` section names.
    tls: FileCheck,
    /// Resolves `inbound.app` and checks the access-log file; `None` checks the syntax only.
    look: Option<Resolver>,
}

fn system_resolver(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    (host, port).to_socket_addrs().map(Iterator::collect)
}

/// The most problems one tree can produce while deserializing: each round takes out the key it
/// reported, so the rounds are bounded by the keys, and this bounds them in any case.
const MAX_ROUNDS: usize = 256;

impl Config {
    /// Loads and validates a configuration from its sources; every problem is reported at once.
    pub fn load(sources: &Sources) -> Result<Loaded, Problems> {
        load(sources, Outside { tls: |_| Ok(()), look: Some(system_resolver) })
    }

    /// [`Config::load`], with `files` checking the TLS material the configuration names (the
    /// listener's loader, passed in so that configuration depends on no layer above it): its
    /// problems are reported with every other one.
    pub fn load_checking(sources: &Sources, files: FileCheck) -> Result<Loaded, Problems> {
        load(sources, Outside { tls: files, look: Some(system_resolver) })
    }

    /// [`Config::load`] without looking outside the configuration: no name is resolved and no
    /// file looked at, so that a configuration can be checked on a machine it will not run on
    /// (`tandem check --syntax-only`, as `promtool check config --syntax-only`). An `inbound.app`
    /// host name stays as written, unresolved: the result is for printing, not for running.
    pub fn load_syntax(sources: &Sources) -> Result<Loaded, Problems> {
        load(sources, Outside { tls: |_| Ok(()), look: None })
    }
}

impl Config {
    /// [`Config::load_syntax`] with `yaml` as the file's text (the `config` fuzz target's way
    /// in: no name resolved, no file read, `files` checking the TLS material).
    pub(crate) fn load_text(yaml: &str, sources: &Sources, files: FileCheck) -> Result<Loaded, Problems> {
        let tree = serde_yaml_ng::from_str(yaml)
            .map_err(|e| Problems(vec![problem("(file)", format!("not valid YAML: {e}"))]))?;
        load_tree(tree, sources, Outside { tls: files, look: None })
    }
}

fn load(sources: &Sources, outside: Outside) -> Result<Loaded, Problems> {
    let tree = match &sources.file {
        Some(path) => read_file(path)?,
        None => Value::Mapping(Default::default()),
    };
    load_tree(tree, sources, outside)
}

/// Loads from the file's YAML tree, with the environment and flags over it.
fn load_tree(mut tree: Value, sources: &Sources, outside: Outside) -> Result<Loaded, Problems> {
    if tree.is_null() {
        tree = Value::Mapping(Default::default());
    }
    let defaults = template().map_err(|e| Problems(vec![problem("(defaults)", e.to_string())]))?;
    let mut known = Vec::new();
    key_paths(&defaults, &mut Vec::new(), &mut known);
    let leaves: Vec<&Vec<String>> = known.iter().filter(|p| is_leaf(&defaults, p)).collect();

    let mut problems = Vec::new();
    let mut loaded = Loaded::default();
    // Which source set a key last, to say so next to its problems: (key, variable or "a flag").
    let mut origins: Vec<(String, String)> = Vec::new();
    for (name, value) in &sources.env {
        let Some(rest) = name.strip_prefix("TANDEM_") else { continue };
        if let Some(path) = leaves.iter().find(|path| env_name(path) == rest) {
            set_path(&mut tree, path, scalar(value), &mut problems, name);
            origins.push((path.join("."), name.clone()));
        }
    }
    for (key, value) in &sources.flags {
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        set_path(&mut tree, &path, scalar(value), &mut problems, key);
        origins.push((key.clone(), "a flag".to_owned()));
    }
    walk(&mut tree, &defaults, &mut Vec::new(), &known, &mut problems);
    if let Some(mut config) = deserialize(&mut tree, &mut problems) {
        // Keys settled here are not reported again by validation: one taken out above holds its
        // default now; an app name is resolved (or, checking the syntax only, well formed).
        let mut settled: Vec<String> = problems.iter().map(|p| p.key.clone()).collect();
        if config.inbound.app.invalid.is_some() {
            settled.push(APP.to_owned());
            resolve_app(&mut config.inbound.app, outside.look, &mut problems, &mut loaded.notes);
        }
        if let Err(Problems(found)) = config.validate(outside.tls) {
            problems.extend(found.into_iter().filter(|p| !settled.contains(&p.key)));
        }
        if outside.look.is_some() {
            if let Destination::File(path) = Destination::parse(&config.access_log.destination) {
                if let Err(e) = check_log_file(&path) {
                    problems.push(problem("access_log.destination", e));
                }
            }
        }
        loaded.config = config;
    }
    if problems.is_empty() {
        return Ok(loaded);
    }
    for p in &mut problems {
        let set_by = origins
            .iter()
            .rev()
            .find(|(k, _)| p.key == *k || p.key.strip_prefix(k.as_str()).is_some_and(|rest| rest.starts_with('[')));
        p.source = set_by.map(|(_, s)| s.clone());
    }
    Err(Problems(problems))
}

fn read_file(path: &Path) -> Result<Value, Problems> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Problems(vec![problem("(file)", format!("cannot read {}: {e}", path.display()))]))?;
    serde_yaml_ng::from_str(&text).map_err(|e| {
        let at = e.location().map(|l| format!(" at line {} column {}", l.line(), l.column())).unwrap_or_default();
        Problems(vec![problem("(file)", format!("{} is not valid YAML{at}: {e}", path.display()))])
    })
}

/// The defaults as a tree, with every optional section present: the keys there are.
fn template() -> Result<Value, serde_yaml_ng::Error> {
    let mut template = Config::default();
    template.inbound.tls = Some(InboundTls::template());
    serde_yaml_ng::to_value(template)
}

/// The variable suffix of every key that holds a value (`INBOUND_TIMEOUTS_CONNECT`).
fn env_names() -> Vec<String> {
    let Ok(defaults) = template() else { return Vec::new() };
    let mut known = Vec::new();
    key_paths(&defaults, &mut Vec::new(), &mut known);
    known.iter().filter(|p| is_leaf(&defaults, p)).map(|p| env_name(p)).collect()
}

/// The environment variable suffix for a key path: `inbound.timeouts.connect` → `INBOUND_TIMEOUTS_CONNECT`.
pub fn env_name(path: &[String]) -> String {
    path.join("_").to_ascii_uppercase()
}

/// Every key path of the defaults, sections and leaves.
fn key_paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if let Value::Mapping(m) = v {
        for (k, child) in m {
            if let Some(k) = k.as_str() {
                prefix.push(k.to_owned());
                out.push(prefix.clone());
                key_paths(child, prefix, out);
                prefix.pop();
            }
        }
    }
}

/// Whether `path` holds a value rather than a section of keys.
fn is_leaf(defaults: &Value, path: &[String]) -> bool {
    let node = path.iter().try_fold(defaults, |node, k| node.get(k.as_str()));
    !matches!(node, Some(Value::Mapping(m)) if !m.is_empty())
}

/// An environment or flag value: YAML scalars (`true`, `12`, `[a, b]`), else the plain string.
fn scalar(s: &str) -> Value {
    let t = s.trim();
    if t.starts_with('[') || t == "true" || t == "false" || t.parse::<i64>().is_ok() {
        if let Ok(v) = serde_yaml_ng::from_str::<Value>(t) {
            return v;
        }
    }
    Value::String(s.to_owned())
}

fn set_path(tree: &mut Value, path: &[String], value: Value, problems: &mut Vec<Problem>, source: &str) {
    let mut node = tree;
    for (i, key) in path.iter().enumerate() {
        if !node.is_mapping() {
            if node.is_null() {
                *node = Value::Mapping(Default::default());
            } else {
                problems.push(problem(path[..i].join("."), format!("is not a section, cannot set {source}")));
                return;
            }
        }
        let Value::Mapping(map) = node else { return };
        let k = Value::String(key.clone());
        if i + 1 == path.len() {
            map.insert(k, value);
            return;
        }
        node = map.entry(k).or_insert(Value::Null);
    }
}

/// Step 4: reports and takes out unknown keys, drops empty sections, and reads a list written as
/// one string as its comma-separated items.
fn walk(v: &mut Value, d: &Value, path: &mut Vec<String>, known: &[Vec<String>], problems: &mut Vec<Problem>) {
    let (Value::Mapping(m), Value::Mapping(dm)) = (v, d) else { return };
    if dm.is_empty() {
        return;
    }
    let keys: Vec<Value> = m.keys().cloned().collect();
    for k in keys {
        path.push(match k.as_str() {
            Some(s) => s.to_owned(),
            None => serde_yaml_ng::to_string(&k).map(|s| s.trim().to_owned()).unwrap_or_default(),
        });
        match (dm.get(&k), m.get_mut(&k)) {
            (None, _) => {
                problems.push(unknown_key(path, dm, known));
                m.remove(&k);
            }
            (Some(section @ Value::Mapping(_)), Some(child)) => {
                if child.is_null() {
                    m.remove(&k);
                } else {
                    walk(child, section, path, known, problems);
                }
            }
            (Some(Value::Sequence(_)), Some(child)) => match child {
                Value::Null => *child = Value::Sequence(Vec::new()),
                Value::String(s) => {
                    let items = s.split(',').map(str::trim).filter(|t| !t.is_empty());
                    *child = Value::Sequence(items.map(|t| Value::String(t.to_owned())).collect());
                }
                // A lone number or boolean is a list of one (`TANDEM_OUTBOUND_DENY=25` reads as YAML).
                Value::Number(_) | Value::Bool(_) => {
                    let text = serde_yaml_ng::to_string(child).map(|t| t.trim().to_owned()).unwrap_or_default();
                    *child = Value::Sequence(vec![Value::String(text)]);
                }
                _ => {}
            },
            _ => {}
        }
        path.pop();
    }
}

/// An unknown key's problem: the nearest key beside it, else the same name in another section,
/// else the keys valid there.
fn unknown_key(path: &[String], here: &serde_yaml_ng::Mapping, known: &[Vec<String>]) -> Problem {
    let key = path.join(".");
    let (name, parent) = path.split_last().map(|(n, p)| (n.as_str(), p)).unwrap_or(("", &[]));
    let siblings: Vec<&str> = here.keys().filter_map(Value::as_str).collect();
    if let Some(near) = nearest(name, siblings.iter().copied()) {
        let mut full = parent.to_vec();
        full.push(near);
        return problem(key, format!("unknown key; did you mean {}?", full.join(".")));
    }
    let shared = |p: &Vec<String>| p.iter().zip(path).take_while(|(a, b)| a == b).count();
    let elsewhere = known
        .iter()
        .filter(|p| p.last().is_some_and(|last| nearest(name, [last.as_str()]).is_some()))
        .max_by_key(|p| (shared(p), std::cmp::Reverse(p.len())));
    match elsewhere {
        Some(p) => problem(key, format!("unknown key; did you mean {}?", p.join("."))),
        None => problem(key, format!("unknown key (valid here: {})", siblings.join(", "))),
    }
}

/// The candidate closest to `word` by edit distance, if close enough to be a slip of the keyboard
/// (one edit in four characters, at least one).
fn nearest<S: AsRef<str>>(word: &str, candidates: impl IntoIterator<Item = S>) -> Option<String> {
    let limit = (word.chars().count() / 4).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c.as_ref()), c.as_ref().to_owned()))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edits (insert, delete, substitute, swap two neighbours) that turn `a` into `b`, ignoring case.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    // Three rows of the table: two back (for swaps), one back, this one.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut row = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        row[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            row[j] = (prev[j] + 1).min(row[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                row[j] = row[j].min(before[j - 2] + 1);
            }
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut row);
    }
    prev[b.len()]
}

/// Step 5: deserializes the tree; a value serde refuses is reported under its key and taken out
/// (its default stands in), and the rest is deserialized again.
fn deserialize(tree: &mut Value, problems: &mut Vec<Problem>) -> Option<Config> {
    for _ in 0..MAX_ROUNDS {
        let e = match serde_path_to_error::deserialize::<_, Config>(&*tree) {
            Ok(config) => return Some(config),
            Err(e) => e,
        };
        let mut key = String::new();
        let mut section = Vec::new();
        for segment in e.path().iter() {
            match segment {
                serde_path_to_error::Segment::Map { key: k } => {
                    if !key.is_empty() {
                        key.push('.');
                    }
                    key.push_str(k);
                    section.push(k.clone());
                }
                serde_path_to_error::Segment::Seq { index } => key.push_str(&format!("[{index}]")),
                _ => {}
            }
        }
        if key.is_empty() {
            key.push_str("(file)");
        }
        let (key, message) = in_words(&key, &e.into_inner().to_string());
        problems.push(problem(key, message));
        if section.is_empty() || !remove_path(tree, &section) {
            return None;
        }
    }
    None
}

fn remove_path(tree: &mut Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else { return false };
    let node = parents.iter().try_fold(tree, |node, k| node.get_mut(k.as_str()));
    match node {
        Some(Value::Mapping(m)) => m.remove(last.as_str()).is_some(),
        _ => false,
    }
}

/// serde's message for the value at `key`, in an operator's words: (key, message).
fn in_words(key: &str, msg: &str) -> (String, String) {
    let msg = msg.find(" at line ").map_or(msg, |i| &msg[..i]);
    if let Some(field) = msg.strip_prefix("missing field `").and_then(|r| r.strip_suffix('`')) {
        return (format!("{key}.{field}"), format!("is required when {key} is present"));
    }
    if let Some(rest) = msg.strip_prefix("unknown variant `") {
        let (given, expected) = rest.split_once("`, expected ").unwrap_or((rest, ""));
        let names: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        return (key.to_owned(), format!("must be one of: {} (not {given:?})", names.join(", ")));
    }
    let rest = msg.strip_prefix("invalid type: ").or_else(|| msg.strip_prefix("invalid value: "));
    if let Some((given, expected)) = rest.and_then(|r| r.split_once(", expected ")) {
        let given = given_in_words(given);
        let unsigned = ["usize", "u64", "u32", "u16", "u8"].contains(&expected);
        let message = if unsigned && given.starts_with('-') {
            format!("must be 0 or more (not {given})")
        } else {
            format!("must be {} (not {given})", expected_in_words(expected))
        };
        return (key.to_owned(), message);
    }
    (key.to_owned(), msg.to_owned())
}

/// What serde calls the type it wanted, as an operator would say it.
fn expected_in_words(expected: &str) -> String {
    match expected {
        "usize" | "u64" | "u32" | "u16" | "u8" | "isize" | "i64" | "i32" | "i16" | "i8" => "a whole number".to_owned(),
        "a boolean" => "true or false".to_owned(),
        "a string" => "text".to_owned(),
        "path string" => "a file path".to_owned(),
        "a sequence" => "a list".to_owned(),
        e if e.starts_with("struct ") || e == "a map" => "a section of keys".to_owned(),
        e => e.to_owned(),
    }
}

/// serde's description of the value it got (`string "x"`, ``integer `5` ``, `sequence`).
fn given_in_words(given: &str) -> String {
    if let Some(s) = given.strip_prefix("string ") {
        return s.to_owned();
    }
    if let Some((_, v)) = given.split_once('`') {
        return v.trim_end_matches('`').to_owned();
    }
    match given {
        "unit value" => "empty".to_owned(),
        "sequence" => "a list".to_owned(),
        "map" => "a section of keys".to_owned(),
        g => g.to_owned(),
    }
}

const APP: &str = "inbound.app";

/// Step 7: `inbound.app` written as `NAME:PORT` is resolved now, once, to the address the
/// request path uses (an IPv4 one when the name has both, as an app on loopback usually listens
/// on 127.0.0.1); what cannot be an address says what is needed. With no resolver (syntax
/// only) a well-formed name passes as written.
fn resolve_app(
    app: &mut Human<SocketAddr>,
    resolve: Option<Resolver>,
    problems: &mut Vec<Problem>,
    notes: &mut Vec<String>,
) {
    const KEY: &str = APP;
    let Some(raw) = app.invalid.clone() else { return };
    let written = raw.trim();
    let (host, port) = match written.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (written, None),
    };
    let is_host = is_host_name(host) || host.parse::<std::net::IpAddr>().is_ok();
    let port = match port.map(str::parse::<u16>) {
        Some(Ok(p)) if is_host => p,
        None if is_host => {
            problems.push(problem(KEY, format!("{raw:?} needs a port, such as {host}:8080")));
            return;
        }
        _ => {
            problems.push(problem(
                KEY,
                format!(
                    "invalid address {raw:?}: needs an IP address or a host name and a port, such as 127.0.0.1:8080"
                ),
            ));
            return;
        }
    };
    let Some(resolve) = resolve else { return };
    match resolve(host, port) {
        Ok(addrs) => match addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()) {
            Some(addr) => {
                notes.push(format!("{KEY}: {written} resolves to {addr}"));
                *app = Human::new(*addr);
            }
            None => problems.push(problem(KEY, format!("{host:?} resolves to no address"))),
        },
        Err(e) => problems.push(problem(KEY, format!("cannot resolve {host:?}: {e}"))),
    }
}

/// A DNS host name: dot-separated labels of letters, digits, `-` and `_`, none empty or longer
/// than 63, not starting or ending in `-`, the last not all digits (that would be a bad IP).
fn is_host_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(label_ok)
        && !s.rsplit('.').next().is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
}

/// Step 7: what `tandem run` needs of an access-log file, checked without creating it: a file it can
/// append to, or a directory it can create the file in.
fn check_log_file(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => return Err(format!("{} is a directory", path.display())),
        Ok(_) => {
            // Opening for append without writing changes nothing in the file.
            return std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map(drop)
                .map_err(|e| format!("cannot open {} for writing: {e}", path.display()));
        }
        // Not there (or a parent is a file): the directory says why below.
        Err(e) if !matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            return Err(format!("cannot read {}: {e}", path.display()));
        }
        Err(_) => {}
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => writable_dir(dir),
        Ok(_) => Err(format!("{} is not a directory", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("directory {} does not exist (tandem creates the file, not its directory)", dir.display()))
        }
        Err(e) => Err(format!("cannot read directory {}: {e}", dir.display())),
    }
}

/// Whether this process may create a file in `dir` (asked of the kernel, so that no file is made).
#[cfg(unix)]
fn writable_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let c =
        std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| format!("{} has a NUL byte", dir.display()))?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call; access(2) only reads it.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        Ok(())
    } else {
        Err(format!("cannot create a file in {}: {}", dir.display(), std::io::Error::last_os_error()))
    }
}

#[cfg(not(unix))]
fn writable_dir(_dir: &Path) -> Result<(), String> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_follow_key_paths() {
        let path: Vec<String> = ["inbound", "timeouts", "connect"].iter().map(|s| s.to_string()).collect();
        assert_eq!(env_name(&path), "INBOUND_TIMEOUTS_CONNECT");
    }

    #[test]
    fn edit_distance_counts_slips_of_the_keyboard() {
        assert_eq!(edit_distance("timeout", "timeouts"), 1);
        assert_eq!(edit_distance("conect", "connect"), 1);
        assert_eq!(edit_distance("tiemouts", "timeouts"), 1);
        assert_eq!(edit_distance("Listen", "listen"), 0);
        assert_eq!(edit_distance("colour", "listen"), 6);
        assert_eq!(nearest("timeout", ["listen", "timeouts", "limits"]), Some("timeouts".to_owned()));
        assert_eq!(nearest("app", ["tls", "listen"]), None);
    }

    #[test]
    fn host_names_are_told_from_what_is_not_one() {
        for ok in ["localhost", "app.default.svc.cluster.local", "my_app", "a-b.example."] {
            assert!(is_host_name(ok), "{ok}");
        }
        for bad in ["", "my app", "-a", "a..b", "999.1.1.1", "a/b", &"x".repeat(64)] {
            assert!(!is_host_name(bad), "{bad}");
        }
    }

    fn unresolvable(_: &str, _: u16) -> std::io::Result<Vec<SocketAddr>> {
        Err(std::io::Error::other("failed to lookup address information: Name does not resolve"))
    }

    fn dual_stack(_: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(vec![SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], port)), SocketAddr::from(([127, 0, 0, 1], port))])
    }

    fn with_app(app: &str, resolve: Resolver) -> Result<Loaded, Vec<String>> {
        let sources = Sources { flags: vec![("inbound.app".to_owned(), app.to_owned())], ..Sources::default() };
        load(&sources, Outside { tls: |_| Ok(()), look: Some(resolve) })
            .map_err(|p| p.0.iter().map(Problem::to_string).collect())
    }

    #[test]
    fn an_app_name_that_does_not_resolve_is_named_by_its_key() {
        let p = with_app("orders.invalid:8080", unresolvable).expect_err("does not resolve");
        assert_eq!(
            p,
            vec!["inbound.app (set by a flag): cannot resolve \"orders.invalid\": failed to lookup address \
                  information: Name does not resolve"
                .to_owned()]
        );
        let p = with_app("orders:8080", |_, _| Ok(Vec::new())).expect_err("no address");
        assert_eq!(p, vec!["inbound.app (set by a flag): \"orders\" resolves to no address".to_owned()]);
    }

    #[test]
    fn an_app_name_with_both_families_takes_the_ipv4_address() {
        let loaded = with_app("localhost:9090", dual_stack).expect("resolves");
        assert_eq!(loaded.config.inbound.app.value, SocketAddr::from(([127, 0, 0, 1], 9090)));
        assert_eq!(loaded.notes, vec!["inbound.app: localhost:9090 resolves to 127.0.0.1:9090".to_owned()]);
    }

    #[test]
    fn a_list_written_as_one_value_is_read_as_its_items() {
        let mut tree: Value = serde_yaml_ng::from_str(
            "outbound: {deny: 25, allow: ' a,, b '}\ninbound: {tls: {cert: c, key: k, allowed_identities: }}",
        )
        .expect("yaml");
        let defaults = template().expect("template");
        let mut problems = Vec::new();
        walk(&mut tree, &defaults, &mut Vec::new(), &[], &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let list = |path: &[&str]| path.iter().try_fold(&tree, |n, k| n.get(*k)).cloned();
        let strings = |v: &[&str]| Some(Value::Sequence(v.iter().map(|s| Value::String((*s).to_owned())).collect()));
        assert_eq!(list(&["outbound", "deny"]), strings(&["25"]));
        assert_eq!(list(&["outbound", "allow"]), strings(&["a", "b"]));
        assert_eq!(list(&["inbound", "tls", "allowed_identities"]), strings(&[]));
    }

    #[test]
    fn a_file_that_is_not_a_section_of_keys_says_so() {
        let mut tree: Value = serde_yaml_ng::from_str("- inbound\n- outbound").expect("yaml");
        let mut problems = Vec::new();
        assert!(deserialize(&mut tree, &mut problems).is_none());
        assert_eq!(problems, vec![Problem::new("(file)", "must be a section of keys (not a list)")]);
    }

    #[test]
    fn serde_messages_are_put_in_words() {
        let cases = [
            ("invalid type: string \"many\", expected usize", "must be a whole number (not \"many\")"),
            ("invalid value: integer `-1`, expected usize", "must be 0 or more (not -1)"),
            ("invalid type: floating point `1.5`, expected usize", "must be a whole number (not 1.5)"),
            ("invalid type: string \"yes\", expected a boolean", "must be true or false (not \"yes\")"),
            ("unknown variant `http3`, expected `http1` or `http2`", "must be one of: http1, http2 (not \"http3\")"),
            ("unknown variant `x`, expected one of `a`, `b`, `c`", "must be one of: a, b, c (not \"x\")"),
            ("invalid type: map, expected a sequence", "must be a list (not a section of keys)"),
            ("invalid type: integer `5`, expected struct Inbound", "must be a section of keys (not 5)"),
            ("invalid type: unit value, expected a string", "must be text (not empty)"),
        ];
        for (serde, words) in cases {
            assert_eq!(in_words("k", serde), ("k".to_owned(), words.to_owned()), "{serde}");
        }
        assert_eq!(
            in_words("inbound.tls", "missing field `cert`"),
            ("inbound.tls.cert".to_owned(), "is required when inbound.tls is present".to_owned())
        );
    }
}
