//! The process's signals: installed before tandem reports ready, so a signal sent as soon as the
//! ready line appears is handled rather than killing the process with the default action.

use std::io;

/// What a signal asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT (named): start the stop, or cut everything at the second one.
    Stop(&'static str),
    /// SIGUSR1: reopen the access log (after logrotate moved it).
    Reopen,
    /// SIGHUP: re-read the configuration and apply what can change live (nginx's meaning).
    Reload,
}

/// The installed handlers. Until [`Signals::install`] returns, the default actions apply.
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    usr1: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; call inside the runtime, before anything is announced as ready.
    pub fn install() -> io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
                usr1: signal(SignalKind::user_defined1())?,
                hup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// The next signal received.
    pub async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => Signal::Stop("SIGTERM"),
                _ = self.int.recv() => Signal::Stop("SIGINT"),
                _ = self.usr1.recv() => Signal::Reopen,
                _ = self.hup.recv() => Signal::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop("SIGINT")
        }
    }

    /// The next stop signal; reopen and reload requests are ignored (for processes with no access
    /// log and no configuration to re-read, such as `tandem echo`).
    pub async fn stop(&mut self) -> &'static str {
        loop {
            if let Signal::Stop(name) = self.next().await {
                return name;
            }
        }
    }
}
