//! Wiring: bind every listener first (returning the real addresses), then serve until a stop,
//! then drain within `shutdown.drain_timeout` and report what was left.
//!
//! Two signals drive the end of a run:
//!
//! - **stop** ([`Running::shutdown_handle`]: SIGTERM, SIGINT, `POST /shutdown`): `/ready` turns 503
//!   and every [`StopPolicy::AtStop`] listener (inbound) stops accepting and drains its connections
//!   (the rules are in [`crate::lifecycle::shutdown`]).
//! - **exit**: fires once every [`Side`] is drained or the deadline passed. The admin listener and
//!   every [`StopPolicy::AtExit`] listener (outbound: the app finishes its own calls while its
//!   inbound requests drain) watch it, and get [`EXIT_GRACE`] to finish what they are writing.
//!
//! Whatever tandem closes itself (what remains at the deadline or after the exit grace, and
//! everything at a second SIGTERM/SIGINT) is cut the same way: the telemetry's local-reset flag
//! goes up first, so each request cut is reported `LR` rather than `DC` (the client left); tandem
//! waits, within [`EXIT_GRACE`], until those requests are reported, and writes out the access log
//! before it exits.

use crate::admin::{AdminService, AdminState};
use crate::base::reason::Direction;
use crate::config::AppCheck;
use crate::config::Config;
use crate::config::Sources;
use crate::echo::EchoService;
use crate::lifecycle::shutdown::{Shutdown, Tracker};
use crate::lifecycle::signals::{Signal, Signals};
use crate::listener::accept::{self, ConnSettings, LiveSettings};
use crate::listener::tls::TlsServer;
use crate::listener::transparent::Interception;
use crate::proxy::inbound::InboundProxy;
use crate::proxy::outbound::OutboundProxy;
use crate::reload::{conn_settings, Reloader, Targets};
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::logging::LogControl;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::Telemetry;
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
    Tls(crate::listener::tls::TlsError),
    #[error("runtime.workers: cannot start inbound worker {index}: {source}")]
    Worker { index: usize, source: std::io::Error },
}

/// How long listeners that serve through the drain (admin, outbound) get to finish the answers they
/// are writing once tandem is about to exit.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// How often the drain looks at the request counts of listeners that keep serving through it.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(20);

/// When a listener stops, relative to a stop (SIGTERM, SIGINT, `POST /shutdown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopPolicy {
    /// Stops accepting when the stop begins; its connections are told to close (HTTP/1.1
    /// `Connection: close`, HTTP/2 GOAWAY). The drain waits until the listener and every
    /// connection have closed.
    /// The inbound listener: the Service is sending traffic elsewhere now.
    AtStop,
    /// Keeps accepting through the drain and stops only when tandem exits. The drain waits until
    /// it has no request in flight. The outbound listener: the app finishes its own work (calls to
    /// other services) while its inbound requests drain.
    AtExit,
}

/// One serving listener, as the drain sees it.
pub struct Side {
    pub name: &'static str,
    pub policy: StopPolicy,
    pub conns: Arc<Tracker>,
    /// Requests in flight on this listener right now.
    pub in_flight: Box<dyn Fn() -> usize + Send + Sync>,
}

impl Side {
    async fn drained(&self) {
        match self.policy {
            StopPolicy::AtStop => self.conns.wait_idle().await,
            StopPolicy::AtExit => {
                while (self.in_flight)() > 0 {
                    tokio::time::sleep(IN_FLIGHT_POLL).await;
                }
            }
        }
    }
}

/// A started tandem: every listener bound and serving.
pub struct Running {
    pub inbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The outbound (forward proxy) listener's address.
    pub outbound_addr: SocketAddr,
    /// The stop: fires on SIGTERM, SIGINT or `POST /shutdown`. [`StopPolicy::AtStop`] listeners
    /// watch it.
    shutdown: Shutdown,
    /// Fires once the drain is over and tandem is about to exit. The admin listener (so `/ready`
    /// reads 503 through the drain) and [`StopPolicy::AtExit`] listeners watch it.
    exit: Shutdown,
    ready: Arc<AtomicBool>,
    telemetry: Arc<Telemetry>,
    /// What the end of the run closes; shared with the signal handler.
    ending: Ending,
    /// The configuration in force (`shutdown.drain_timeout` is read from it when a stop begins)
    /// and its reload (SIGHUP).
    reload: Arc<Reloader>,
    tasks: Vec<JoinHandle<()>>,
    /// One inbound proxy per worker (the first serves on the caller's runtime).
    inbound: Vec<Arc<InboundProxy>>,
}

fn bind(key: &'static str, addr: SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    accept::bind(addr).map_err(|source| StartError::Bind { key, addr, source })
}

fn local_addr(
    key: &'static str,
    l: &tokio::net::TcpListener,
    configured: SocketAddr,
) -> Result<SocketAddr, StartError> {
    l.local_addr().map_err(|source| StartError::Bind { key, addr: configured, source })
}

/// Binds every listener, then starts serving on the calling runtime. Nothing is served, and
/// `/ready` does not answer 200, until everything is bound.
pub async fn start(config: Config, log: Option<LogControl>) -> Result<Running, StartError> {
    start_with_workers(config, log, 1).await
}

/// Like [`start`], with `workers` workers: the first serves on the calling runtime, and each
/// other one on a thread of its own with a single-threaded runtime, its own `SO_REUSEPORT`
/// inbound and outbound listeners (the kernel spreads connections across them) and its own
/// keep-alive pools. A request never leaves the thread that accepted its connection. The
/// connection trackers, `max_in_flight`, telemetry and drain are shared. Admin serves on the
/// calling runtime.
pub async fn start_with_workers(
    config: Config,
    log: Option<LogControl>,
    workers: usize,
) -> Result<Running, StartError> {
    start_with_sources(config, log, workers, None).await
}

/// Like [`start_with_workers`], for a `config` loaded from `sources`: a reload (SIGHUP,
/// `POST /reload`) reads them again. Without sources a reload is refused.
pub async fn start_with_sources(
    config: Config,
    log: Option<LogControl>,
    workers: usize,
    sources: Option<Sources>,
) -> Result<Running, StartError> {
    let workers = workers.max(1);
    let metrics = Metrics::new(prometheus::Registry::new())?;
    crate::h2::metrics::register(metrics.registry())?;
    let access_log =
        AccessLog::start(&config.access_log, metrics.access_log_written.clone(), metrics.access_log_dropped.clone())
            .map_err(StartError::AccessLog)?;
    let telemetry = Arc::new(Telemetry::new(metrics, access_log));
    let app_check = AppCheck::parse(&config.readiness.app).map_err(StartError::Readiness)?;

    // 1. Bind everything. A listener added later (outbound) binds here too, before anything serves.
    let (inbound_listener, inbound_addr, inbound_more) =
        bind_group("inbound.listen", config.inbound.listen.value, workers)?;
    let admin_listener = bind("admin.listen", config.admin.listen.value)?;
    let (outbound_listener, outbound_addr, outbound_more) =
        bind_group("outbound.listen", config.outbound.listen.value, workers)?;
    let admin_addr = local_addr("admin.listen", &admin_listener, config.admin.listen.value)?;

    let shutdown = Shutdown::new();
    let exit = Shutdown::new();
    let ready = Arc::new(AtomicBool::new(false));
    let tls = match &config.inbound.tls {
        Some(t) => Some(TlsServer::new(t.clone(), telemetry.metrics.registry()).map_err(StartError::Tls)?),
        None => None,
    };
    let inbound_conns = Tracker::new();
    let inbound = InboundProxy::new(&config.inbound, telemetry.clone(), tls.is_some())?;
    let mut tasks = Vec::new();
    let mut sides = Vec::new();
    if let Some(t) = &tls {
        tasks.push(tokio::spawn(t.clone().watch()));
    }

    let outbound_conns = Tracker::new();
    let outbound = OutboundProxy::new(&config.outbound, telemetry.clone(), outbound_addr, outbound_conns.clone());
    let inbound_settings = LiveSettings::from(conn_settings(&config.inbound.timeouts, &config.inbound.limits))
        .intercepting(Arc::new(Interception::inbound(&config, inbound_addr, telemetry.clone())));
    let outbound_settings = LiveSettings::from(conn_settings(&config.outbound.timeouts, &config.outbound.limits))
        .intercepting(Arc::new(Interception::outbound(&config, outbound_addr, &outbound, telemetry.clone())));
    let targets = Targets {
        telemetry: telemetry.clone(),
        inbound: inbound.clone(),
        outbound: outbound.clone(),
        inbound_conns: inbound_settings.clone(),
        outbound_conns: outbound_settings.clone(),
        tls: tls.clone(),
        log: log.clone(),
    };
    let reload = Reloader::new(config.clone(), app_check, sources, targets)?;

    // 2. The admin listener answers from the start (`/ready` says 503 until step 4) and through the
    //    drain (`/ready` says 503 again), and stops when tandem exits.
    let admin_state = Arc::new(AdminState {
        telemetry: telemetry.clone(),
        shutdown: shutdown.clone(),
        ready: ready.clone(),
        reload: reload.clone(),
        log,
        app: config.inbound.app.value,
    });
    let admin_conns = Tracker::new();
    tasks.push(tokio::spawn(accept::serve(
        admin_listener,
        ConnSettings::internal(),
        Direction::Inbound,
        None,
        exit.drain(),
        admin_conns.clone(),
        accept::HyperServers::new(move |meta: crate::base::conn::ConnMeta| {
            AdminService::new(admin_state.clone(), meta.peer)
        }),
    )));

    // 3. The proxy listeners. Outbound keeps serving through the drain, so the app can finish its
    //    own calls while its inbound requests drain; it stops when tandem exits. Inbound stops
    //    accepting at the stop and drains its connections.
    let lanes = Lanes {
        inbound_settings,
        outbound_settings,
        telemetry: telemetry.clone(),
        shutdown: shutdown.clone(),
        exit: exit.clone(),
        inbound_conns: inbound_conns.clone(),
        outbound_conns: outbound_conns.clone(),
        tls,
    };
    tasks.push(tokio::spawn(lanes.outbound(outbound_listener, outbound.clone())));
    let outbound_first = outbound.clone();
    sides.push(Side {
        name: "outbound",
        policy: StopPolicy::AtExit,
        conns: outbound_conns.clone(),
        in_flight: Box::new(move || outbound.in_flight()),
    });

    let mut proxies = vec![inbound.clone()];
    // A worker that cannot start fails the start; the ones already running stop with it.
    let stop_started = |e: StartError| {
        shutdown.trigger();
        exit.trigger();
        e
    };
    for (i, (in_listener, out_listener)) in inbound_more.into_iter().zip(outbound_more).enumerate() {
        let index = i + 1;
        let proxy = inbound.sibling(&config.inbound);
        proxies.push(proxy.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| stop_started(StartError::Worker { index, source }))?;
        let (in_listener, out_listener) = {
            // Registered with the worker's own event loop.
            let _entered = rt.enter();
            let register = |l| {
                tokio::net::TcpListener::from_std(l)
                    .map_err(|source| stop_started(StartError::Worker { index, source }))
            };
            (register(in_listener)?, register(out_listener)?)
        };
        let inbound_serving = lanes.inbound(in_listener, proxy);
        let outbound_serving = lanes.outbound(out_listener, outbound_first.sibling(&config.outbound));
        let mut exit_drain = exit.drain();
        let trackers = [inbound_conns.clone(), outbound_conns.clone()];
        std::thread::Builder::new()
            .name(format!("tandem-w{index}"))
            .spawn(move || {
                rt.block_on(async move {
                    let outbound = tokio::spawn(outbound_serving);
                    inbound_serving.await;
                    // The worker's connections live on its runtime: keep it until tandem exits
                    // (by then the inbound drain has closed them, or its deadline has), and give
                    // answers still being written the same grace as the main thread.
                    exit_drain.wait().await;
                    let _ = outbound.await;
                    let idle = async {
                        for t in &trackers {
                            t.wait_idle().await;
                        }
                    };
                    accept::within(EXIT_GRACE, idle).await;
                })
            })
            .map_err(|source| stop_started(StartError::Worker { index, source }))?;
    }
    tasks.push(tokio::spawn(lanes.inbound(inbound_listener, inbound.clone())));
    tasks.push(tokio::spawn(crate::lifecycle::memory::give_back_after_bursts(vec![
        inbound_conns.clone(),
        outbound_conns.clone(),
    ])));
    sides.push(Side {
        name: "inbound",
        policy: StopPolicy::AtStop,
        conns: inbound_conns,
        in_flight: Box::new(move || inbound.in_flight()),
    });

    // 4. Ready.
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
        exit: exit.clone(),
        ready,
        telemetry: telemetry.clone(),
        ending: Ending { telemetry, sides: sides.into(), admin_conns, exit },
        reload,
        tasks,
        inbound: proxies,
    })
}

/// What every worker's proxy listeners share: how connections are treated, telemetry, the stop
/// and exit signals, the connection trackers and TLS.
struct Lanes {
    /// Shared by every worker's listener of the side, so a reload reaches them all.
    inbound_settings: LiveSettings,
    outbound_settings: LiveSettings,
    telemetry: Arc<Telemetry>,
    shutdown: Shutdown,
    exit: Shutdown,
    inbound_conns: Arc<Tracker>,
    outbound_conns: Arc<Tracker>,
    tls: Option<Arc<TlsServer>>,
}

impl Lanes {
    /// Serves `proxy` on an inbound listener until the stop.
    fn inbound(
        &self,
        listener: tokio::net::TcpListener,
        proxy: Arc<InboundProxy>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        accept::serve(
            listener,
            self.inbound_settings.clone(),
            Direction::Inbound,
            Some(self.telemetry.clone()),
            self.shutdown.drain(),
            self.inbound_conns.clone(),
            accept::OwnServers::new(crate::http1::server::Codec::new(&proxy), self.tls.clone()),
        )
    }

    /// Serves `proxy` on an outbound listener until tandem exits.
    fn outbound(
        &self,
        listener: tokio::net::TcpListener,
        proxy: Arc<OutboundProxy>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        accept::serve(
            listener,
            self.outbound_settings.clone(),
            Direction::Outbound,
            Some(self.telemetry.clone()),
            self.exit.drain(),
            self.outbound_conns.clone(),
            accept::HyperServers::new(move |meta: crate::base::conn::ConnMeta| {
                proxy.service(meta.peer, meta.original_dst)
            }),
        )
    }
}

/// A listener for the calling runtime, its address, and one more (unregistered) listener on the
/// same address for each further worker (`SO_REUSEPORT`, only with two or more workers).
#[allow(clippy::type_complexity)]
fn bind_group(
    key: &'static str,
    addr: SocketAddr,
    workers: usize,
) -> Result<(tokio::net::TcpListener, SocketAddr, Vec<std::net::TcpListener>), StartError> {
    if workers == 1 {
        let l = bind(key, addr)?;
        let a = local_addr(key, &l, addr)?;
        return Ok((l, a, Vec::new()));
    }
    let shared = |at: SocketAddr| accept::bind_shared(at).map_err(|source| StartError::Bind { key, addr: at, source });
    let first = shared(addr)?;
    let bound = first.local_addr().map_err(|source| StartError::Bind { key, addr, source })?;
    let rest = (1..workers).map(|_| shared(bound)).collect::<Result<Vec<_>, _>>()?;
    let first = tokio::net::TcpListener::from_std(first).map_err(|source| StartError::Bind { key, addr, source })?;
    Ok((first, bound, rest))
}

impl Drop for Running {
    fn drop(&mut self) {
        // Dropped without `wait` (embedding, tests): the worker threads end with their runtimes.
        self.exit.trigger();
    }
}

impl Running {
    /// Idle keep-alive connections to the app, per inbound worker.
    pub fn app_idle_connections(&self) -> Vec<usize> {
        self.inbound.iter().map(|p| p.app_idle_connections()).collect()
    }

    /// The handle that starts a stop (what SIGTERM and `POST /shutdown` use).
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The metrics and access log, for tests and embedding.
    pub fn telemetry(&self) -> Arc<Telemetry> {
        self.telemetry.clone()
    }

    fn remaining(&self) -> String {
        self.ending.remaining()
    }

    /// Serves until a stop begins, then drains: `/ready` turns 503 at once, [`StopPolicy::AtStop`]
    /// listeners stop accepting and their connections are told to close, and tandem waits until
    /// every side is drained or `shutdown.drain_timeout` passes, when what remains is closed and
    /// logged. Returns once tandem may exit.
    pub async fn wait(self) {
        let mut drain = self.shutdown.drain();
        drain.wait().await;
        self.ready.store(false, Ordering::Release);
        self.telemetry.metrics.set_ready(false);
        let drain_timeout = self.reload.drain_timeout();
        tracing::info!(remaining = %self.remaining(), deadline = ?drain_timeout, "stop requested; draining");

        let sides = &self.ending.sides;
        let all_drained = async {
            for side in sides.iter() {
                side.drained().await;
            }
        };
        if accept::within(drain_timeout, all_drained).await {
            tracing::info!("drained; exiting");
        } else {
            tracing::warn!(remaining = %self.remaining(), "drain deadline reached; closing what remains");
            self.ending.cut();
        }

        // Whatever serves until exit stops now; give it a moment to finish answers being written
        // (the `POST /shutdown` that started this, a last scrape), then close the rest.
        self.exit.trigger();
        if !accept::within(EXIT_GRACE, self.ending.settled()).await {
            self.ending.cut();
            self.ending.admin_conns.close_all();
            self.ending.reported().await;
        }
        for t in &self.tasks {
            t.abort();
        }
        self.telemetry.flush_access_log().await;
    }

    /// Like [`Running::wait`], with the process's signals: SIGTERM and SIGINT start the stop (a
    /// second one cuts what remains, logged `LR`, and exits at once), SIGUSR1 reopens the access
    /// log, SIGHUP reloads the configuration.
    pub async fn wait_with_signals(self, signals: Signals) {
        let shutdown = self.shutdown.clone();
        let ending = self.ending.clone();
        let reload = self.reload.clone();
        let signals = tokio::spawn(async move { handle_signals(signals, shutdown, ending, reload).await });
        self.wait().await;
        signals.abort();
    }
}

/// What the end of a run closes: every serving listener's connections and the admin listener's.
/// Shared by the drain ([`Running::wait`]) and the second stop signal.
#[derive(Clone)]
struct Ending {
    telemetry: Arc<Telemetry>,
    sides: Arc<[Side]>,
    admin_conns: Arc<Tracker>,
    exit: Shutdown,
}

impl Ending {
    fn remaining(&self) -> String {
        self.sides
            .iter()
            .map(|s| format!("{}: {} connections, {} requests in flight", s.name, s.conns.count(), (s.in_flight)()))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Closes every serving listener's connections now. The local-reset flag goes up first, so
    /// every request this cuts is reported `LR`, not `DC`.
    fn cut(&self) {
        self.telemetry.begin_local_reset();
        for side in self.sides.iter() {
            side.conns.close_all();
        }
    }

    /// Resolves once every connection (the admin listener's too) has closed and every request
    /// has been reported.
    async fn settled(&self) {
        for conns in self.sides.iter().map(|s| &s.conns).chain(std::iter::once(&self.admin_conns)) {
            conns.wait_idle().await;
        }
        for side in self.sides.iter() {
            while (side.in_flight)() > 0 {
                tokio::time::sleep(IN_FLIGHT_POLL).await;
            }
        }
    }

    /// After a cut: waits, within [`EXIT_GRACE`], until what it cut is reported, so the flush
    /// that follows writes those lines.
    async fn reported(&self) {
        if !accept::within(EXIT_GRACE, self.settled()).await {
            tracing::warn!(remaining = %self.remaining(), "exiting before every cut request was reported");
        }
    }

    /// The second stop signal: cuts everything at once (requests reported `LR`), waits for their
    /// reports and writes out the access log. The caller exits.
    async fn cut_now(&self) {
        self.cut();
        self.exit.trigger();
        self.admin_conns.close_all();
        self.reported().await;
        self.telemetry.flush_access_log().await;
    }
}

async fn handle_signals(mut signals: Signals, shutdown: Shutdown, ending: Ending, reload: Arc<Reloader>) {
    let telemetry = &ending.telemetry;
    loop {
        let name = match signals.next().await {
            Signal::Stop(name) => name,
            Signal::Reopen => {
                tracing::info!("SIGUSR1: reopening the access log");
                telemetry.access_log.reopen();
                continue;
            }
            Signal::Reload => {
                // On its own task: a stop signal is handled while the files are read.
                let reload = reload.clone();
                tokio::spawn(async move { reload.reload("SIGHUP").await });
                continue;
            }
        };
        if shutdown.trigger() {
            tracing::info!(signal = name, "stop requested");
        } else {
            tracing::warn!(signal = name, remaining = %ending.remaining(), "second stop signal; exiting now");
            ending.cut_now().await;
            std::process::exit(0);
        }
    }
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
        let listener = accept::bind(addr)?;
        let addr = listener.local_addr()?;
        let shutdown = Shutdown::new();
        let task = tokio::spawn(accept::serve(
            listener,
            ConnSettings::internal(),
            Direction::Inbound,
            None,
            shutdown.drain(),
            Tracker::new(),
            accept::HyperServers::new(|_| EchoService),
        ));
        Ok(Self { addr, shutdown, task })
    }

    /// Stops accepting and asks open connections to close.
    pub fn stop(&self) {
        self.shutdown.trigger();
    }

    /// Serves until SIGTERM or SIGINT.
    pub async fn wait_with_signals(self, mut signals: Signals) {
        signals.stop().await;
        self.stop();
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn an_at_exit_side_is_drained_when_nothing_is_in_flight_however_many_connections_stay_open() {
        let in_flight = Arc::new(AtomicUsize::new(2));
        let conns = Tracker::new();
        let _pooled = conns.open(); // the app's keep-alive connection stays open through the drain
        let n = in_flight.clone();
        let side = Side {
            name: "outbound",
            policy: StopPolicy::AtExit,
            conns,
            in_flight: Box::new(move || n.load(Ordering::Acquire)),
        };
        let drained = tokio::spawn(async move { side.drained().await });
        in_flight.store(0, Ordering::Release);
        tokio::time::timeout(Duration::from_secs(10), drained).await.expect("drained").expect("join");
    }

    #[tokio::test]
    async fn an_at_stop_side_is_drained_when_its_last_connection_closes() {
        let conns = Tracker::new();
        let open = conns.open();
        let side = Side { name: "inbound", policy: StopPolicy::AtStop, conns, in_flight: Box::new(|| 0) };
        let drained = tokio::spawn(async move { side.drained().await });
        drop(open);
        tokio::time::timeout(Duration::from_secs(10), drained).await.expect("drained").expect("join");
    }
}
