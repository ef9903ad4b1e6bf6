//! Wiring: bind every listener first (returning the real addresses), then serve until a stop,
//! then drain within `shutdown.drain_timeout` and report what was left.

use crate::access_log::AccessLog;
use crate::admin::{AdminService, AdminState};
use crate::config::Config;
use crate::echo::EchoService;
use crate::inbound::InboundProxy;
use crate::logging::LogControl;
use crate::metrics::Metrics;
use crate::outbound::OutboundProxy;
use crate::readiness::AppCheck;
use crate::record::Direction;
use crate::serve::{self, ConnSettings};
use crate::shutdown::{Shutdown, Tracker};
use crate::telemetry::Telemetry;
use crate::tls::TlsServer;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Why tandem could not start; each names the key it comes from.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{key}: cannot bind {addr}: {source}")]
    Bind { key: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("access_log.destination: {0}")]
    AccessLog(std::io::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("inbound.app: {0}")]
    App(#[from] http::Error),
    #[error("readiness.app: {0}")]
    Readiness(String),
    #[error("{0}")]
    Tls(crate::tls::TlsError),
}

/// A started tandem: every listener bound and serving.
pub struct Running {
    pub inbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The outbound (forward proxy) listener's address.
    pub outbound_addr: SocketAddr,
    shutdown: Shutdown,
    ready: Arc<AtomicBool>,
    telemetry: Arc<Telemetry>,
    inbound: Arc<InboundProxy>,
    inbound_conns: Arc<Tracker>,
    drain_timeout: Duration,
    tasks: Vec<JoinHandle<()>>,
    admin_task: JoinHandle<()>,
    /// Outbound serves through the drain (the app finishes its own work) and stops with the process.
    outbound_stop: Shutdown,
    outbound_task: JoinHandle<()>,
}

fn bind(key: &'static str, addr: SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    serve::bind(addr).map_err(|source| StartError::Bind { key, addr, source })
}

fn settings(t: &crate::config::Timeouts, l: &crate::config::Limits) -> ConnSettings {
    ConnSettings {
        header_read_timeout: t.header_read.value,
        idle_timeout: t.idle.value,
        max_header_bytes: l.max_header_bytes.value.0 as usize,
        max_headers: l.max_headers,
        max_connections: l.max_connections,
        h1_guard: false,
    }
}

/// Binds every listener, then starts serving. Nothing is served until everything is bound.
pub async fn start(config: Config, log: Option<LogControl>) -> Result<Running, StartError> {
    let metrics = Metrics::new(prometheus::Registry::new())?;
    let access_log =
        AccessLog::start(&config.access_log, metrics.access_log_written.clone(), metrics.access_log_dropped.clone())
            .map_err(StartError::AccessLog)?;
    let telemetry = Arc::new(Telemetry::new(metrics, access_log));
    let app_check = AppCheck::parse(&config.readiness.app).map_err(StartError::Readiness)?;

    let inbound_listener = bind("inbound.listen", config.inbound.listen.value)?;
    let admin_listener = bind("admin.listen", config.admin.listen.value)?;
    let outbound_listener = bind("outbound.listen", config.outbound.listen.value)?;
    let outbound_addr = outbound_listener.local_addr().map_err(|source| StartError::Bind {
        key: "outbound.listen",
        addr: config.outbound.listen.value,
        source,
    })?;
    let inbound_addr = inbound_listener.local_addr().map_err(|source| StartError::Bind {
        key: "inbound.listen",
        addr: config.inbound.listen.value,
        source,
    })?;
    let admin_addr = admin_listener.local_addr().map_err(|source| StartError::Bind {
        key: "admin.listen",
        addr: config.admin.listen.value,
        source,
    })?;

    let shutdown = Shutdown::new();
    let ready = Arc::new(AtomicBool::new(false));
    let tls = match &config.inbound.tls {
        Some(t) => Some(TlsServer::new(t.clone(), telemetry.metrics.registry()).map_err(StartError::Tls)?),
        None => None,
    };
    let inbound = InboundProxy::new(&config.inbound, telemetry.clone(), tls.is_some())?;
    let inbound_conns = Tracker::new();

    let admin_state = Arc::new(AdminState {
        telemetry: telemetry.clone(),
        shutdown: shutdown.clone(),
        ready: ready.clone(),
        config_yaml: config.to_yaml(),
        log,
        app_check,
        app: config.inbound.app.value,
    });
    // The admin listener keeps answering through the drain (so /ready reads 503) and stops with
    // the process.
    let admin_stop = Shutdown::new();
    let admin_task = tokio::spawn(serve::serve(
        admin_listener,
        ConnSettings::internal(),
        Direction::Inbound,
        None,
        admin_stop.drain(),
        Tracker::new(),
        None,
        move |meta: serve::ConnMeta| AdminService::new(admin_state.clone(), meta.peer),
    ));

    let mut tasks = Vec::new();
    if let Some(t) = &tls {
        tasks.push(tokio::spawn(t.clone().watch()));
    }

    // Outbound keeps serving while inbound drains, so the app can finish its own work: its
    // accept loop stops only when the process exits.
    let outbound_stop = Shutdown::new();
    let outbound_conns = Tracker::new();
    let outbound = OutboundProxy::new(&config.outbound, telemetry.clone(), outbound_addr, outbound_conns.clone());
    let outbound_task = tokio::spawn(serve::serve(
        outbound_listener,
        settings(&config.outbound.timeouts, &config.outbound.limits),
        Direction::Outbound,
        Some(telemetry.clone()),
        outbound_stop.drain(),
        outbound_conns,
        None,
        move |meta: serve::ConnMeta| outbound.service(meta.peer),
    ));

    let proxy = inbound.clone();
    let inbound_task = tokio::spawn(serve::serve(
        inbound_listener,
        // The inbound service refuses what the HTTP/1 framing guard marks (CL + TE).
        ConnSettings { h1_guard: true, ..settings(&config.inbound.timeouts, &config.inbound.limits) },
        Direction::Inbound,
        Some(telemetry.clone()),
        shutdown.drain(),
        inbound_conns.clone(),
        tls,
        move |meta| proxy.service(meta),
    ));

    ready.store(true, Ordering::Release);
    telemetry.metrics.set_ready(true);
    tracing::info!(
        inbound = %inbound_addr,
        app = %config.inbound.app.value,
        admin = %admin_addr,
        outbound = %outbound_addr,
        "tandem is ready"
    );
    Ok(Running {
        inbound_addr,
        admin_addr,
        outbound_addr,
        shutdown,
        ready,
        telemetry,
        inbound,
        inbound_conns,
        drain_timeout: config.shutdown.drain_timeout.value,
        tasks: {
            tasks.push(inbound_task);
            tasks
        },
        admin_task,
        outbound_stop,
        outbound_task,
    })
}

impl Running {
    /// The handle that starts a stop (what SIGTERM and `POST /shutdown` use).
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The metrics and access log, for tests and embedding.
    pub fn telemetry(&self) -> Arc<Telemetry> {
        self.telemetry.clone()
    }

    /// Serves until a stop begins, then drains. Returns once tandem may exit.
    pub async fn wait(self) {
        let mut drain = self.shutdown.drain();
        drain.wait().await;
        self.ready.store(false, Ordering::Release);
        self.telemetry.metrics.set_ready(false);
        tracing::info!(
            connections = self.inbound_conns.count(),
            in_flight = self.inbound.in_flight(),
            deadline = ?self.drain_timeout,
            "stop requested; draining"
        );
        let drained = serve::within(self.drain_timeout, self.inbound_conns.wait_idle()).await;
        if !drained {
            tracing::warn!(
                connections = self.inbound_conns.count(),
                in_flight = self.inbound.in_flight(),
                "drain deadline reached; closing what remains"
            );
        } else {
            tracing::info!("drained; exiting");
        }
        for t in self.tasks {
            t.abort();
        }
        self.admin_task.abort();
        self.outbound_stop.trigger();
        self.outbound_task.abort();
        self.telemetry.access_log.flush();
    }

    /// Like [`Running::wait`], with the process's signals: SIGTERM and SIGINT start the stop (a
    /// second one exits at once), SIGUSR1 reopens the access log.
    pub async fn wait_with_signals(self) -> i32 {
        let shutdown = self.shutdown.clone();
        let telemetry = self.telemetry.clone();
        let signals = tokio::spawn(async move { handle_signals(shutdown, telemetry).await });
        self.wait().await;
        signals.abort();
        0
    }
}

#[cfg(unix)]
async fn handle_signals(shutdown: Shutdown, telemetry: Arc<Telemetry>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut usr1)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::user_defined1()))
    else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1: reopening the access log");
                telemetry.access_log.reopen();
                continue;
            }
        };
        if shutdown.trigger() {
            tracing::info!(signal = name, "stop requested");
        } else {
            tracing::warn!(signal = name, "second stop signal; exiting now");
            telemetry.access_log.flush();
            std::process::exit(0);
        }
    }
}

#[cfg(not(unix))]
async fn handle_signals(shutdown: Shutdown, _telemetry: Arc<Telemetry>) {
    let _ = tokio::signal::ctrl_c().await;
    shutdown.trigger();
}

/// A running echo app.
pub struct Echo {
    pub addr: SocketAddr,
    shutdown: Shutdown,
    task: JoinHandle<()>,
}

impl Echo {
    /// Binds `addr` and serves the echo app.
    pub async fn start(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = serve::bind(addr)?;
        let addr = listener.local_addr()?;
        let shutdown = Shutdown::new();
        let task = tokio::spawn(serve::serve(
            listener,
            ConnSettings::internal(),
            Direction::Inbound,
            None,
            shutdown.drain(),
            Tracker::new(),
            None,
            |_| EchoService,
        ));
        Ok(Self { addr, shutdown, task })
    }

    /// Stops accepting and asks open connections to close.
    pub fn stop(&self) {
        self.shutdown.trigger();
    }

    /// Serves until SIGTERM or SIGINT.
    pub async fn wait_with_signals(self) {
        let _ = shutdown_signal().await;
        self.stop();
        let _ = self.task.await;
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut t), Ok(mut i)) => tokio::select! {
                _ = t.recv() => "SIGTERM",
                _ = i.recv() => "SIGINT",
            },
            _ => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
