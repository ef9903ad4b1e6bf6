//! tandem's own diagnostics: `tracing` to stderr, plain or JSON, quiet by default (nothing per
//! request at `info`), with a filter that can be changed at run time (`PUT /log-level`).

use crate::config::LogFormat;
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

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `filter`.
pub fn init(filter: &str, format: LogFormat) -> Option<LogControl> {
    let filter = std::env::var("RUST_LOG").ok().filter(|s| !s.trim().is_empty()).unwrap_or_else(|| filter.to_owned());
    let env_filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(env_filter);
    let registry = tracing_subscriber::registry().with(layer);
    let result = match format {
        LogFormat::Plain => {
            registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false)).try_init()
        }
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_current_span(false))
            .try_init(),
    };
    result.ok().map(|()| LogControl { handle, current: Arc::new(Mutex::new(filter)) })
}
