//! tandem's own diagnostics: `tracing` to stderr, plain or JSON, quiet by default (nothing per
//! request at `info`), with a filter that can be changed at run time (`PUT /log-level`).

use crate::config::LogFormat;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Changes the diagnostics filter of the running process.
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Arc<Mutex<String>>,
}

impl LogControl {
    /// The filter in force.
    pub fn current(&self) -> String {
        self.current.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Replaces the filter; an invalid one is refused and the old one kept.
    pub fn set(&self, filter: &str) -> Result<(), String> {
        let f = EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
        self.handle.reload(f).map_err(|e| e.to_string())?;
        if let Ok(mut c) = self.current.lock() {
            *c = filter.to_owned();
        }
        Ok(())
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set and valid, wins over `filter` (an invalid
/// one is reported and ignored). Plain lines are coloured only when stderr is a terminal and
/// `NO_COLOR` is unset; JSON lines are flat objects (`timestamp`, `level`, `message`, fields).
/// Returns `None` if a subscriber was already installed (then the filter cannot be changed at run
/// time).
pub fn init(filter: &str, format: LogFormat) -> Option<LogControl> {
    let mut rejected = None;
    let mut chosen = None;
    if let Some(env) = std::env::var("RUST_LOG").ok().filter(|s| !s.trim().is_empty()) {
        match EnvFilter::try_new(&env) {
            Ok(f) => chosen = Some((env, f)),
            Err(e) => rejected = Some((env, e.to_string())),
        }
    }
    let (filter, env_filter) = match chosen {
        Some(c) => c,
        None => match EnvFilter::try_new(filter) {
            Ok(f) => (filter.to_owned(), f),
            Err(_) => ("info".to_owned(), EnvFilter::new("info")),
        },
    };
    let (layer, handle) = reload::Layer::new(env_filter);
    let registry = tracing_subscriber::registry().with(layer);
    let result = match format {
        LogFormat::Plain => {
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            registry
                .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(ansi))
                .try_init()
        }
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if let Some((env, e)) = rejected {
        tracing::warn!(rust_log = %env, error = %e, filter = %filter, "RUST_LOG is not a valid filter; ignored");
    }
    result.ok().map(|()| LogControl { handle, current: Arc::new(Mutex::new(filter)) })
}
