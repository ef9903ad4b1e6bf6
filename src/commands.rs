//! The body of each subcommand: load the configuration, start the runtime, run, and turn the
//! outcome into an exit code.

use crate::app;
use crate::cli::{
    AwaitArgs, CheckArgs, CompletionShell, CompletionsArgs, ConfigArgs, CopySelfArgs, DemoArgs, EchoArgs, IptablesArgs,
    RunArgs,
};
use crate::config::{Config, Loaded, Sources};
use std::net::SocketAddr;
use std::process::ExitCode;

/// Loads the configuration from the file, the process environment and the flags (`syntax_only`:
/// looking at no file or name outside it); with it, the warnings about `TANDEM_*` variables that
/// name no key, whether it loads or not.
pub fn load(args: &ConfigArgs, syntax_only: bool) -> (Result<Loaded, crate::config::Problems>, Vec<String>) {
    let sources = sources(args);
    let loaded = if syntax_only {
        Config::load_syntax(&sources)
    } else {
        Config::load_checking(&sources, crate::listener::tls::check_config_files)
    };
    (loaded, sources.unknown_variables())
}

/// The file, the process environment's `TANDEM_*` variables and the flags: what `run` loads at
/// start and a reload reads again.
fn sources(args: &ConfigArgs) -> Sources {
    Sources {
        file: args.config.clone(),
        env: std::env::vars().filter(|(k, _)| k.starts_with("TANDEM_")).collect(),
        flags: args.overrides(),
    }
}

fn report(problems: &crate::config::Problems) {
    eprintln!(
        "tandem: invalid configuration ({} problem{}):",
        problems.0.len(),
        if problems.0.len() == 1 { "" } else { "s" }
    );
    for p in &problems.0 {
        eprintln!("  {p}");
    }
}

fn runtime(workers: usize, name: &str) -> std::io::Result<tokio::runtime::Runtime> {
    let w = crate::lifecycle::workers::workers(workers);
    let rt = if w.count == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().thread_name(name).build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(w.count).enable_all().thread_name(name).build()?
    };
    tracing::info!(workers = w.count, source = %w.source, "runtime workers");
    Ok(rt)
}

/// Raises the soft open-file limit to the hard limit, as nginx and Go servers do, so that
/// `max_connections` is not cut short by a low default.
fn raise_nofile_limit() {
    #[cfg(unix)]
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// `tandem check`: every problem with its key and exit 1, or the effective configuration and exit 0.
pub fn check(args: &CheckArgs) -> ExitCode {
    let (loaded, warnings) = load(&args.config, args.syntax_only);
    for warning in &warnings {
        eprintln!("tandem: warning: {warning}");
    }
    match loaded {
        Ok(loaded) => {
            for note in &loaded.notes {
                eprintln!("tandem: {note}");
            }
            print!("{}", loaded.config.to_yaml());
            if args.syntax_only {
                eprintln!("tandem: configuration is valid (syntax only: no file or host name looked at)");
                return ExitCode::SUCCESS;
            }
            if let Some(tls) = &loaded.config.inbound.tls {
                if let Ok(summary) = crate::listener::tls::check_files(tls) {
                    eprintln!("tandem: inbound.tls.cert: certificate expires {}", summary.expiry_text());
                }
            }
            eprintln!("tandem: configuration is valid");
            ExitCode::SUCCESS
        }
        Err(p) => {
            report(&p);
            ExitCode::FAILURE
        }
    }
}

/// `tandem run`: validate, then bind everything, then serve until stopped.
pub fn run(args: &RunArgs) -> ExitCode {
    let (loaded, warnings) = load(&args.config, false);
    let loaded = match loaded {
        Ok(l) => l,
        Err(p) => {
            for warning in &warnings {
                eprintln!("tandem: warning: {warning}");
            }
            report(&p);
            return ExitCode::FAILURE;
        }
    };
    let config = loaded.config;
    let log = crate::telemetry::logging::init(&config.log.level, config.log.format);
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    for note in &loaded.notes {
        tracing::info!("{note}");
    }
    raise_nofile_limit();
    // One event loop per worker: this thread runs the first (with admin and outbound), and each
    // further inbound worker gets a thread and a listener of its own (app::start_with_workers).
    let w = crate::lifecycle::workers::workers(config.runtime.workers);
    tracing::info!(workers = w.count, source = %w.source, "runtime workers");
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().thread_name("tandem").build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandem: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        // Before anything is announced: a signal sent once the ready line is out must be handled.
        let signals = match crate::lifecycle::signals::Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("tandem: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        match app::start_with_sources(config, log, w.count, Some(sources(&args.config))).await {
            Ok(running) => {
                running.wait_with_signals(signals).await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("tandem: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `tandem demo`: the echo app on a free loopback port and the proxy in front of it.
pub fn demo(args: &DemoArgs) -> ExitCode {
    let log = crate::telemetry::logging::init("info", crate::config::LogFormat::Plain);
    let rt = match runtime(0, "tandem") {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandem: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        // Before anything is announced: a signal sent once the ready line is out must be handled.
        let signals = match crate::lifecycle::signals::Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("tandem: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let echo = match app::Echo::start(SocketAddr::from(([127, 0, 0, 1], 0))).await {
            Ok(e) => e,
            Err(e) => {
                eprintln!("tandem: cannot start the echo app: {e}");
                return ExitCode::FAILURE;
            }
        };
        let inbound = demo_addr(args.inbound, 15006);
        let outbound = demo_addr(args.outbound, 15001);
        let admin = demo_addr(args.admin, 15020);
        let mut config = Config::default();
        config.inbound.listen = crate::config::Human::new(inbound.0);
        config.inbound.app = crate::config::Human::new(echo.addr);
        config.outbound.listen = crate::config::Human::new(outbound.0);
        config.admin.listen = crate::config::Human::new(admin.0);
        config.shutdown.drain_timeout = crate::config::Human::new(std::time::Duration::from_secs(5));
        let running = match app::start(config, log).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("tandem: {e}");
                return ExitCode::FAILURE;
            }
        };
        let p = running.inbound_addr;
        let a = running.admin_addr;
        let o = running.outbound_addr;
        for (taken, now, what, flag) in [
            (inbound.1, p, "the proxy", "--inbound"),
            (outbound.1, o, "the outbound proxy", "--outbound"),
            (admin.1, a, "admin", "--admin"),
        ] {
            if let Some(taken) = taken {
                println!("tandem demo: {taken} is in use; {what} listens on {now} instead ({flag} ADDR chooses)");
            }
        }
        println!(
            "\ntandem demo: the echo app is on {app}, the proxy in front of it on {p} (outbound {o}, admin {a}).\n\
             Try (access log lines appear below as JSON):\n\n  \
             curl -i http://{p}/hello\n  \
             curl -i 'http://{p}/slow?delay=300ms&status=503'\n  \
             curl -s -X POST --data-binary 'hello tandem' 'http://{p}/upload?echo_body=1'\n  \
             curl -s -x http://{o} http://{app}/outbound-call   # the app's own calls, through the outbound proxy\n  \
             curl -s http://{a}/metrics | grep tandem_http_requests_total\n\n\
             Ctrl-C stops it.\n",
            app = echo.addr,
        );
        running.wait_with_signals(signals).await;
        echo.stop();
        ExitCode::SUCCESS
    })
}

/// The address a demo listener binds: the one given, else 127.0.0.1:`port` when nothing listens
/// there, else a free port (with the address that was taken, to say so). The check binds without
/// `SO_REUSEPORT`, so a tandem already on the port (whose listeners share it) counts as taking it.
fn demo_addr(given: Option<SocketAddr>, port: u16) -> (SocketAddr, Option<SocketAddr>) {
    if let Some(addr) = given {
        return (addr, None);
    }
    let default = SocketAddr::from(([127, 0, 0, 1], port));
    match std::net::TcpListener::bind(default) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => (SocketAddr::from(([127, 0, 0, 1], 0)), Some(default)),
        // Free (the probe is closed again before tandem binds), or an error the bind will report.
        _ => (default, None),
    }
}

/// `tandem echo`: the load-test target.
pub fn echo(args: &EchoArgs) -> ExitCode {
    crate::telemetry::logging::init("info", crate::config::LogFormat::Plain);
    raise_nofile_limit();
    let rt = match runtime(args.workers, "tandem-echo") {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandem: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        // Before anything is announced: a signal sent once the ready line is out must be handled.
        let signals = match crate::lifecycle::signals::Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("tandem: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        match app::Echo::start(args.listen).await {
            Ok(echo) => {
                tracing::info!(listen = %echo.addr, "echo app listening");
                echo.wait_with_signals(signals).await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tandem: cannot listen on {}: {e}", args.listen);
                ExitCode::FAILURE
            }
        }
    })
}

/// `tandem await`: wait for `/ready`, then optionally run a command (see [`crate::lifecycle::await_cmd`]).
#[cfg(unix)]
pub fn await_ready(args: &AwaitArgs) -> ExitCode {
    // One thread is plenty: a few HTTP requests and a child to watch.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandem await: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = crate::lifecycle::await_cmd::Options {
        admin: args.admin.clone(),
        timeout: args.timeout,
        interval: args.interval,
        shutdown: args.shutdown,
        command: args.command.clone(),
    };
    ExitCode::from(rt.block_on(crate::lifecycle::await_cmd::run(opts)))
}

#[cfg(not(unix))]
pub fn await_ready(_args: &AwaitArgs) -> ExitCode {
    eprintln!("tandem await: supported on Unix only");
    ExitCode::FAILURE
}

/// `tandem completions SHELL`: the completion script for SHELL (every command and flag, and the
/// values of the ones that take a fixed set), written to stdout.
pub fn completions(args: &CompletionsArgs) -> ExitCode {
    let shell = match args.shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    let mut command = <crate::cli::Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut command, "tandem", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// `tandem copy-self DIR`: copies the running binary to `DIR/tandem` (mode 0755), written to a
/// temporary name first and renamed, so a reader never sees half a binary.
pub fn copy_self(args: &CopySelfArgs) -> ExitCode {
    let result = (|| -> std::io::Result<std::path::PathBuf> {
        let me = std::env::current_exe()?;
        let dest = args.dir.join("tandem");
        let tmp = args.dir.join(".tandem.tmp");
        std::fs::copy(&me, &tmp)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        }
        std::fs::rename(&tmp, &dest)?;
        Ok(dest)
    })();
    match result {
        Ok(dest) => {
            eprintln!("tandem: copied to {}", dest.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tandem: cannot copy the binary into {}: {e}", args.dir.display());
            ExitCode::FAILURE
        }
    }
}

/// `tandem iptables`: the listener ports from the configuration (as `run` loads it, syntax only:
/// an init container resolves no name), overridden by the flags; then the rules installed,
/// printed (`--dry-run`) or removed (`--cleanup`) by [`crate::mesh::iptables`].
pub fn iptables(args: &IptablesArgs) -> ExitCode {
    let (loaded, warnings) = load(&ConfigArgs { config: args.config.clone(), ..ConfigArgs::default() }, true);
    for warning in &warnings {
        eprintln!("tandem iptables: warning: {warning}");
    }
    let config = match loaded {
        Ok(l) => l.config,
        Err(p) => {
            report(&p);
            return ExitCode::FAILURE;
        }
    };
    let rules = crate::mesh::rules::Interception {
        inbound_port: args.inbound_port.unwrap_or(config.inbound.listen.value.port()),
        outbound_port: args.outbound_port.unwrap_or(config.outbound.listen.value.port()),
        admin_port: args.admin_port.unwrap_or(config.admin.listen.value.port()),
        proxy_uid: args.proxy_uid,
        proxy_gid: args.proxy_gid,
        exclude_inbound_ports: args.exclude_inbound_ports.clone(),
        include_inbound_ports: args.include_inbound_ports.clone(),
        exclude_outbound_ports: args.exclude_outbound_ports.clone(),
        exclude_outbound_cidrs: args.exclude_outbound_cidrs.clone(),
    };
    if let Err(problems) = rules.validate() {
        for p in problems {
            eprintln!("tandem iptables: {p}");
        }
        return ExitCode::FAILURE;
    }
    let opts = crate::mesh::iptables::Options {
        rules,
        backend: args.iptables_backend,
        ipv6: args.ipv6,
        dry_run: args.dry_run,
        cleanup: args.cleanup,
    };
    match crate::mesh::iptables::run(&opts, &mut std::io::stdout().lock()) {
        Ok(done) => {
            for line in done {
                eprintln!("tandem iptables: {line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tandem iptables: {e}");
            ExitCode::FAILURE
        }
    }
}
