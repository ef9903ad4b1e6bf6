//! Command-line definitions (clap derive) and the mapping of flags onto configuration key paths.

use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// tandem: a service-mesh proxy sidecar in one binary.
#[derive(Debug, Parser)]
#[command(name = "tandem", version = crate::base::build::LONG_VERSION, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    #[command(
        after_help = "Examples:\n  tandem run --app 127.0.0.1:8080\n  tandem run -c /etc/tandem/tandem.yaml --access-log /var/log/tandem/access.log\n  TANDEM_INBOUND_TIMEOUTS_RESPONSE=30s tandem run\n\nPrecedence: flags > TANDEM_* environment variables > the file > defaults."
    )]
    Run(RunArgs),
    /// Run the embedded default: the echo app on a free loopback port and the proxy in front of it.
    #[command(after_help = "Example:\n  tandem demo\n  curl -i http://127.0.0.1:15006/hello")]
    Demo(DemoArgs),
    /// Run the load-test target: a JSON echo shaped by ?status=, ?delay=, ?size=, ?chunked=1, ?echo_body=1.
    #[command(
        after_help = "Examples:\n  tandem echo --listen 127.0.0.1:8080\n  curl 'http://127.0.0.1:8080/x?status=503&delay=250ms'\n  curl 'http://127.0.0.1:8080/x?size=16KiB' -o /dev/null"
    )]
    Echo(EchoArgs),
    /// Validate a configuration like `nginx -t`: every problem with its key; exit 0 or 1; nothing bound.
    #[command(
        after_help = "Examples:\n  tandem check -c tandem.yaml\n  TANDEM_INBOUND_APP=127.0.0.1:9090 tandem check\n  tandem check --syntax-only -c deploy/tandem.yaml   # in CI, away from the pod's files"
    )]
    Check(CheckArgs),
    /// Wait until the proxy is ready; then optionally run a command, passing signals through, and
    /// with --shutdown stop the proxy when the command ends (for Jobs).
    #[command(
        after_help = "Examples:\n  tandem await --timeout 30s\n  tandem await -- nginx -g 'daemon off;'\n  tandem await --shutdown -- ./migrate --all\n\nExit codes: 0 ready (or CMD's own code); 1 not ready in time; 126 CMD cannot be executed;\n127 CMD not found; 128+N CMD killed by signal N, or signal N arrived while waiting."
    )]
    Await(AwaitArgs),
    /// Copy this binary into a directory (an init container's step, so an app container can run `tandem await`).
    #[command(
        after_help = "Example (an init container sharing an emptyDir with the app):\n  tandem copy-self /tandem-bin\n  # the app container then runs: /tandem-bin/tandem await -- CMD ARGS"
    )]
    CopySelf(CopySelfArgs),
    /// Install the NAT rules of transparent mode in this network namespace (an init container's
    /// step): the pod's inbound and outbound TCP redirected to tandem, tandem's own uid exempt.
    #[command(
        after_help = "Examples:\n  tandem iptables --dry-run                 # print the iptables-restore input, touch nothing\n  tandem iptables -c /etc/tandem/tandem.yaml --exclude-outbound-cidrs 169.254.169.254/32\n  tandem iptables --cleanup                 # remove every TANDEM_* chain and jump\n\nNeeds uid 0 with NET_ADMIN and NET_RAW (not for --dry-run). Ports default to the configuration's\nlisten ports (15006, 15001, 15020). docs/transparent.md has the rules and what each is for."
    )]
    Iptables(IptablesArgs),
    /// Print the shell completion script for bash, zsh or fish.
    #[command(
        after_help = "Examples:\n  tandem completions bash > /etc/bash_completion.d/tandem\n  tandem completions zsh > \"${fpath[1]}/_tandem\"\n  tandem completions fish > ~/.config/fish/completions/tandem.fish\n  source <(tandem completions bash)   # this shell only"
    )]
    Completions(CompletionsArgs),
}

/// Flags shared by `run` and `check`: the configuration sources.
#[derive(Debug, Args, Clone, Default)]
pub struct ConfigArgs {
    /// YAML configuration file.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address of the app: IP:PORT, or NAME:PORT resolved once at start (inbound.app).
    #[arg(long, value_name = "ADDR")]
    pub app: Option<String>,
    /// Protocol spoken to the app: http1 or http2 (inbound.app_protocol).
    #[arg(long, value_name = "PROTO")]
    pub app_protocol: Option<String>,
    /// Inbound listen address (inbound.listen).
    #[arg(long, value_name = "ADDR")]
    pub inbound: Option<String>,
    /// Outbound listen address (outbound.listen).
    #[arg(long, value_name = "ADDR")]
    pub outbound: Option<String>,
    /// Admin listen address (admin.listen).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// Access log destination: stdout, off, or a file path (access_log.destination).
    #[arg(long, value_name = "DEST")]
    pub access_log: Option<String>,
    /// Access log format: json or text (access_log.format).
    #[arg(long, value_name = "FORMAT")]
    pub access_log_format: Option<String>,
    /// Diagnostics filter, e.g. info or tandem=debug (log.level; RUST_LOG wins).
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Diagnostics format: plain or json (log.format).
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Worker threads; 0 follows the CPU limit (runtime.workers).
    #[arg(long, value_name = "N")]
    pub workers: Option<String>,
    /// Upstream connect timeout (inbound.timeouts.connect).
    #[arg(long, value_name = "DURATION")]
    pub connect_timeout: Option<String>,
    /// Upstream response timeout, above 0 (inbound.timeouts.response).
    #[arg(long, value_name = "DURATION")]
    pub response_timeout: Option<String>,
    /// Request-head read timeout (inbound.timeouts.header_read).
    #[arg(long, value_name = "DURATION")]
    pub header_read_timeout: Option<String>,
    /// Downstream idle timeout (inbound.timeouts.idle).
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// Most concurrent downstream connections (inbound.limits.max_connections).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<String>,
    /// Most requests in flight (inbound.limits.max_in_flight).
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<String>,
    /// Largest request head (inbound.limits.max_header_bytes).
    #[arg(long, value_name = "SIZE")]
    pub max_header_bytes: Option<String>,
    /// Most request header fields (inbound.limits.max_headers).
    #[arg(long, value_name = "N")]
    pub max_headers: Option<String>,
    /// Drain deadline after a stop begins (shutdown.drain_timeout).
    #[arg(long, value_name = "DURATION")]
    pub drain_timeout: Option<String>,
}

impl ConfigArgs {
    /// The flags given, as (key path, value) overrides.
    pub fn overrides(&self) -> Vec<(String, String)> {
        let pairs: [(&str, &Option<String>); 19] = [
            ("inbound.app", &self.app),
            ("inbound.app_protocol", &self.app_protocol),
            ("inbound.listen", &self.inbound),
            ("outbound.listen", &self.outbound),
            ("admin.listen", &self.admin),
            ("access_log.destination", &self.access_log),
            ("access_log.format", &self.access_log_format),
            ("log.level", &self.log_level),
            ("log.format", &self.log_format),
            ("runtime.workers", &self.workers),
            ("inbound.timeouts.connect", &self.connect_timeout),
            ("inbound.timeouts.response", &self.response_timeout),
            ("inbound.timeouts.header_read", &self.header_read_timeout),
            ("inbound.timeouts.idle", &self.idle_timeout),
            ("inbound.limits.max_connections", &self.max_connections),
            ("inbound.limits.max_in_flight", &self.max_in_flight),
            ("inbound.limits.max_header_bytes", &self.max_header_bytes),
            ("inbound.limits.max_headers", &self.max_headers),
            ("shutdown.drain_timeout", &self.drain_timeout),
        ];
        pairs.iter().filter_map(|(k, v)| v.as_ref().map(|v| ((*k).to_owned(), v.clone()))).collect()
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Check the configuration only: resolve no host name and look at no file it names (the TLS
    /// files, the access-log directory), for a configuration checked where it will not run (CI).
    #[arg(long)]
    pub syntax_only: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the proxy listens [default: 127.0.0.1:15006, or a free port when that one is taken].
    #[arg(long, value_name = "ADDR")]
    pub inbound: Option<SocketAddr>,
    /// Where the outbound (forward) proxy listens [default: 127.0.0.1:15001, or a free port].
    #[arg(long, value_name = "ADDR")]
    pub outbound: Option<SocketAddr>,
    /// Where the admin endpoints listen [default: 127.0.0.1:15020, or a free port].
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Worker threads; 0 follows the CPU limit.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub workers: usize,
}

#[derive(Debug, Args)]
pub struct AwaitArgs {
    /// tandem's admin address (host:port).
    #[arg(long, default_value = "127.0.0.1:15020", value_name = "ADDR")]
    pub admin: String,
    /// Give up after this long (0: wait forever).
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = duration)]
    pub timeout: Duration,
    /// Pause between two readiness requests.
    #[arg(long, default_value = "200ms", value_name = "DURATION", value_parser = duration)]
    pub interval: Duration,
    /// When CMD ends, POST /shutdown to the admin port so the proxy drains and exits too.
    #[arg(long, requires = "command")]
    pub shutdown: bool,
    /// The command to run once the proxy is ready, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct CopySelfArgs {
    /// Directory to copy the binary into (as DIR/tandem, mode 0755).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct IptablesArgs {
    /// Take the listener ports from this configuration (and TANDEM_* variables), as `tandem run` would.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where inbound TCP is redirected [default: inbound.listen's port].
    #[arg(long, value_name = "PORT")]
    pub inbound_port: Option<u16>,
    /// Where outbound TCP is redirected [default: outbound.listen's port].
    #[arg(long, value_name = "PORT")]
    pub outbound_port: Option<u16>,
    /// Never redirected inbound, so probes and scrapes reach tandem [default: admin.listen's port].
    #[arg(long, value_name = "PORT")]
    pub admin_port: Option<u16>,
    /// The uid tandem runs as: its connections are never redirected.
    #[arg(long, default_value_t = 1337, value_name = "UID")]
    pub proxy_uid: u32,
    /// Also exempt connections of processes with this primary gid (off unless given).
    #[arg(long, value_name = "GID")]
    pub proxy_gid: Option<u32>,
    /// Inbound ports not redirected (comma-separated); the admin and inbound ports always are not.
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    pub exclude_inbound_ports: Vec<u16>,
    /// Redirect only these inbound ports instead of all (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    pub include_inbound_ports: Vec<u16>,
    /// Outbound destination ports not redirected (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations not redirected, e.g. 169.254.169.254/32 (comma-separated, IPv4 or IPv6).
    #[arg(long, value_delimiter = ',', value_name = "CIDRS", value_parser = crate::mesh::rules::Cidr::parse)]
    pub exclude_outbound_cidrs: Vec<crate::mesh::rules::Cidr>,
    /// IPv6 rules (ip6tables) too: auto installs them when the namespace has a global IPv6 address.
    #[arg(long, value_enum, default_value = "auto", value_name = "WHEN")]
    pub ipv6: crate::mesh::iptables::Ipv6,
    /// The iptables back end: auto picks the one holding rules, else nft if it works, else legacy.
    #[arg(long, value_enum, default_value = "auto", value_name = "BACKEND")]
    pub iptables_backend: crate::mesh::iptables::BackendChoice,
    /// Print the iptables-restore input of each family and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove every rule and chain tandem made, instead of installing.
    #[arg(long)]
    pub cleanup: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: CompletionShell,
}

/// The shells `tandem completions` writes for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

fn duration(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s).ok_or_else(|| format!("invalid duration {s:?} (examples: 500ms, 30s, 2m)"))
}
