//! Reload (SIGHUP, `POST /reload`): the configuration is read again from the sources the process
//! started with (the same file, environment and flags), checked as `tandem check` checks it, and
//! what can change without dropping anything is put in force; in-flight requests and open
//! connections finish under what they started with.
//!
//! A reload is all or nothing. It is refused, with the configuration in force kept whole, when
//! the new one fails validation (the messages are `tandem check`'s) or changes a key that needs a
//! restart ([`RESTART`]: a new socket, new threads, new pools). Everything a reload changes is
//! read or opened first (the access-log file, the TLS files); if one of them fails the reload
//! fails and nothing changes. Each reload logs one line (the keys that changed, or why it was
//! refused) and counts in `tandem_config_reloads_total{result="applied|refused|failed"}`.
//!
//! What changes live, and how the request path reads it: the limits and response timeout of
//! each side are one copy-out of an `ArcSwap` when a request is admitted
//! ([`crate::proxy::admission`]); the connection settings are loaded once per accepted
//! connection ([`crate::listener::accept::LiveSettings`]); the outbound policy once per check;
//! the TLS certificate set once per handshake; the access log's destination and format are the
//! writer thread's (lines queued before the reload are written where they were going).

use crate::config::{AppCheck, Config, Sources};
use crate::listener::accept::{ConnSettings, LiveSettings};
use crate::listener::tls::TlsServer;
use crate::proxy::inbound::InboundProxy;
use crate::proxy::outbound::OutboundProxy;
use crate::telemetry::logging::LogControl;
use crate::telemetry::Telemetry;
use arc_swap::ArcSwap;
use prometheus::{IntCounterVec, Opts};
use std::sync::{Arc, Mutex};

/// The keys a reload cannot change, and why (a reload that changes one is refused, naming it).
/// A key here covers the keys under it.
pub const RESTART: &[(&str, &str)] = &[
    ("inbound.listen", "a listen address needs a new socket"),
    ("outbound.listen", "a listen address needs a new socket"),
    ("admin.listen", "a listen address needs a new socket"),
    ("runtime.workers", "workers are threads, each with its own listeners, made at start"),
    ("inbound.app", "each worker's connection pool to the app is made for it at start"),
    ("inbound.app_protocol", "each worker's connection pool to the app is made for it at start"),
    ("inbound.timeouts.connect", "the connection pools to the app are made with it at start"),
    ("inbound.timeouts.upstream_idle", "the connection pools to the app are made with it at start"),
    ("inbound.limits.max_idle_per_upstream", "the connection pools to the app are made with it at start"),
    ("outbound.timeouts.connect", "the outbound connection pools are made with it at start"),
    ("outbound.timeouts.upstream_idle", "the outbound connection pools are made with it at start"),
    ("outbound.limits.max_idle_per_upstream", "the outbound connection pools are made with it at start"),
    ("log.format", "the diagnostics format is set when logging starts"),
    ("transparent", "each listener's handling of redirected connections is made at start"),
];

/// Turning `inbound.tls` on or off changes what the inbound listener speaks.
const TLS_ON_OFF: &str = "turning TLS on or off changes what the inbound listener speaks";

/// How a reload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new configuration is in force; the keys that changed (none: nothing did, and the TLS
    /// files were read again).
    Applied(Vec<String>),
    /// The new configuration was not taken (invalid, or a key needs a restart); one problem
    /// each, named by key.
    Refused(Vec<String>),
    /// Something the new configuration names could not be opened or read; nothing changed.
    Failed(Vec<String>),
}

impl Outcome {
    /// The `result` label of `tandem_config_reloads_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Applied(_) => "applied",
            Outcome::Refused(_) => "refused",
            Outcome::Failed(_) => "failed",
        }
    }
}

/// What a reload reaches: the values shared by every worker.
pub struct Targets {
    pub telemetry: Arc<Telemetry>,
    pub inbound: Arc<InboundProxy>,
    pub outbound: Arc<OutboundProxy>,
    pub inbound_conns: LiveSettings,
    pub outbound_conns: LiveSettings,
    pub tls: Option<Arc<TlsServer>>,
    pub log: Option<LogControl>,
}

/// The configuration in force, and the reload that replaces it.
pub struct Reloader {
    /// Where the configuration came from; `None` for a process started from a configuration
    /// made in code (`tandem demo`, embedding), which has nothing to re-read.
    sources: Option<Sources>,
    /// The configuration in force. The lock serializes reloads (SIGHUP and `POST /reload` at
    /// once); nothing on the request path takes it.
    current: Mutex<Config>,
    /// `GET /config`: the configuration in force as YAML.
    yaml: ArcSwap<String>,
    /// `readiness.app`, for `/ready/app`.
    app_check: ArcSwap<AppCheck>,
    targets: Targets,
    reloads: IntCounterVec,
}

/// The connection settings of one listener, from its section's timeouts and limits.
pub fn conn_settings(t: &crate::config::Timeouts, l: &crate::config::Limits) -> ConnSettings {
    ConnSettings {
        header_read_timeout: t.header_read.value,
        idle_timeout: t.idle.value,
        max_header_bytes: l.max_header_bytes.value.0 as usize,
        max_headers: l.max_headers,
        max_connections: l.max_connections,
    }
}

impl Reloader {
    /// The reloader for a process started with `config` (loaded from `sources`, if any).
    pub fn new(
        config: Config,
        app_check: AppCheck,
        sources: Option<Sources>,
        targets: Targets,
    ) -> Result<Arc<Self>, prometheus::Error> {
        let reloads = IntCounterVec::new(
            Opts::new("tandem_config_reloads_total", "Configuration reloads (SIGHUP, POST /reload), by result"),
            &["result"],
        )?;
        targets.telemetry.metrics.registry().register(Box::new(reloads.clone()))?;
        for r in ["applied", "refused", "failed"] {
            reloads.with_label_values(&[r]);
        }
        Ok(Arc::new(Self {
            sources,
            yaml: ArcSwap::from_pointee(config.to_yaml()),
            current: Mutex::new(config),
            app_check: ArcSwap::from_pointee(app_check),
            targets,
            reloads,
        }))
    }

    /// The configuration in force as YAML (unmasked; `GET /config` masks it).
    pub fn yaml(&self) -> Arc<String> {
        self.yaml.load_full()
    }

    /// The app readiness check in force.
    pub fn app_check(&self) -> Arc<AppCheck> {
        self.app_check.load_full()
    }

    /// `shutdown.drain_timeout` in force.
    pub fn drain_timeout(&self) -> std::time::Duration {
        self.current.lock().map(|c| c.shutdown.drain_timeout.value).unwrap_or_default()
    }

    /// Reloads (reading files and resolving names on the blocking pool), logs the one line and
    /// counts the result. `trigger` says what asked (`SIGHUP`, `POST /reload`).
    pub async fn reload(self: &Arc<Self>, trigger: &'static str) -> Outcome {
        let me = self.clone();
        let outcome = match tokio::task::spawn_blocking(move || me.reload_now()).await {
            Ok(o) => o,
            Err(e) => Outcome::Failed(vec![format!("the reload stopped: {e}")]),
        };
        self.reloads.with_label_values(&[outcome.label()]).inc();
        match &outcome {
            Outcome::Applied(keys) if keys.is_empty() => {
                tracing::info!(trigger, "configuration reloaded; nothing changed (TLS files read again)")
            }
            Outcome::Applied(keys) => tracing::info!(trigger, changed = %keys.join(", "), "configuration reloaded"),
            Outcome::Refused(why) => tracing::warn!(
                trigger,
                problems = %why.join("; "),
                "configuration reload refused; the configuration in force is kept"
            ),
            Outcome::Failed(why) => tracing::error!(
                trigger,
                problems = %why.join("; "),
                "configuration reload failed; the configuration in force is kept"
            ),
        }
        outcome
    }

    fn reload_now(&self) -> Outcome {
        let Some(sources) = &self.sources else {
            return Outcome::Refused(vec![
                "this process was started from a configuration made in code; there is nothing to re-read".to_owned(),
            ]);
        };
        let new = match Config::load_checking(sources, crate::listener::tls::check_config_files) {
            Ok(loaded) => loaded.config,
            Err(problems) => return Outcome::Refused(problems.0.iter().map(|p| p.to_string()).collect()),
        };
        let Ok(mut current) = self.current.lock() else {
            return Outcome::Failed(vec!["an earlier reload panicked".to_owned()]);
        };
        let changed = changed_keys(&current, &new);
        let restart = self.needs_restart(&changed);
        if !restart.is_empty() {
            return Outcome::Refused(restart);
        }
        // Everything that can fail, before anything changes.
        let t = &self.targets;
        let access_log = if changed.iter().any(|k| k.starts_with("access_log.")) {
            match t.telemetry.access_log.prepare(&new.access_log) {
                Ok(r) => Some(r),
                Err(e) => return Outcome::Failed(vec![format!("access_log.destination: {e}")]),
            }
        } else {
            None
        };
        let tls = match (&t.tls, &new.inbound.tls) {
            (Some(_), Some(settings)) => match TlsServer::prepare(settings.clone()) {
                Ok(p) => Some(p),
                Err(e) => return Outcome::Failed(vec![e.to_string()]),
            },
            _ => None,
        };
        let app_check = match AppCheck::parse(&new.readiness.app) {
            Ok(c) => c,
            Err(e) => return Outcome::Failed(vec![format!("readiness.app: {e}")]),
        };
        if changed.iter().any(|k| k == "log.level") {
            if let Some(log) = &t.log {
                if let Err(e) = log.set(&new.log.level) {
                    return Outcome::Failed(vec![format!("log.level: {e}")]);
                }
            }
        }

        // Nothing below can fail.
        t.inbound.reconfigure(&new.inbound);
        t.outbound.reconfigure(&new.outbound);
        t.inbound_conns.store(conn_settings(&new.inbound.timeouts, &new.inbound.limits));
        t.outbound_conns.store(conn_settings(&new.outbound.timeouts, &new.outbound.limits));
        if let Some(to) = access_log {
            t.telemetry.access_log.retarget(to, new.access_log.queue);
        }
        if let (Some(server), Some(prepared)) = (&t.tls, tls) {
            server.commit(prepared);
        }
        self.app_check.store(Arc::new(app_check));
        self.yaml.store(Arc::new(new.to_yaml()));
        *current = new;
        Outcome::Applied(changed)
    }

    /// One problem for each changed key a reload cannot apply.
    fn needs_restart(&self, changed: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for key in changed {
            let why = if key == "inbound.tls" {
                Some(TLS_ON_OFF)
            } else if key == "access_log.destination" && !self.targets.telemetry.access_log.started() {
                Some("the access log started off; turning it on starts its writer")
            } else {
                RESTART.iter().find(|(k, _)| covers(k, key)).map(|(_, why)| *why)
            };
            if let Some(why) = why {
                out.push(format!("{key}: changing it needs a restart ({why})"));
            }
        }
        out
    }
}

/// Whether `key` is `prefix` or a key under it.
fn covers(prefix: &str, key: &str) -> bool {
    key.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

/// The dotted keys whose values differ between two configurations, in file order. A list is
/// one key; a section present in one and absent in the other (`inbound.tls`) is that section.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let tree = |c: &Config| serde_yaml_ng::to_value(c).unwrap_or(serde_yaml_ng::Value::Null);
    let mut out = Vec::new();
    diff("", &tree(old), &tree(new), &mut out);
    out
}

fn diff(path: &str, a: &serde_yaml_ng::Value, b: &serde_yaml_ng::Value, out: &mut Vec<String>) {
    use serde_yaml_ng::Value;
    match (a, b) {
        (Value::Mapping(ma), Value::Mapping(mb)) => {
            let keys = ma.keys().chain(mb.keys().filter(|k| !ma.contains_key(*k)));
            for k in keys {
                let name = k.as_str().unwrap_or_default();
                let child = if path.is_empty() { name.to_owned() } else { format!("{path}.{name}") };
                let null = Value::Null;
                diff(&child, ma.get(k).unwrap_or(&null), mb.get(k).unwrap_or(&null), out);
            }
        }
        _ if a != b => out.push(path.to_owned()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Human;
    use std::time::Duration;

    #[test]
    fn changed_keys_name_leaves_lists_and_sections_that_come_or_go() {
        let old = Config::default();
        let mut new = Config::default();
        new.inbound.timeouts.response = Human::new(Duration::from_secs(3));
        new.outbound.deny = vec![Human::new("10.0.0.0/8".parse().expect("rule"))];
        new.inbound.tls = Some(crate::config::InboundTls::template());
        assert_eq!(changed_keys(&old, &new), vec!["inbound.timeouts.response", "inbound.tls", "outbound.deny"]);
        assert!(changed_keys(&old, &old.clone()).is_empty());
    }

    #[test]
    fn a_restart_key_covers_the_keys_under_it_and_no_other() {
        assert!(covers("inbound.app", "inbound.app"));
        assert!(!covers("inbound.app", "inbound.app_protocol"));
        assert!(covers("outbound.listen", "outbound.listen"));
        assert!(covers("outbound.allow", "outbound.allow[1]"));
    }
}
