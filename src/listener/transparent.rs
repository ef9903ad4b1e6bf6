//! Transparent mode's side of the listeners: where a connection redirected by iptables was
//! going (`SO_ORIGINAL_DST`, `IP6T_SO_ORIGINAL_DST`), and what serves it.
//!
//! A connection whose original destination is the listener's own address, or that has none (no
//! NAT entry: it came to the listener directly), was not redirected: it takes the listener's
//! usual path untouched. A redirected one to a port in `transparent.opaque_ports` is relayed as
//! TCP at once; any other is detected ([`crate::listener::detect`]): HTTP/1.x and HTTP/2 go to
//! the listener's HTTP servers (inbound: the app on the original port; outbound: the original
//! destination), a TLS ClientHello to inbound TLS termination when the listener has it, and
//! everything else (TLS not terminated, unknown bytes, silence until the timeout) through the
//! opaque relay ([`crate::tcp::relay`]) to the original destination: inbound, the app on the
//! original port on loopback; outbound, the original destination under the outbound policy.

use crate::base::reason::Direction;
use crate::config::Transparent as TransparentConfig;
use crate::listener::accept::{Accepted, Servers};
use crate::listener::detect::{self, Found};
use crate::proxy::outbound::Dialer;
use crate::tcp::relay::{Relay, Unreachable};
use crate::telemetry::metrics::Detection;
use crate::telemetry::Telemetry;
use http::HeaderValue;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// Where one listener's opaque connections go.
pub enum Target {
    /// Inbound: the app, on the original destination's port at `app`'s loopback address
    /// ([`crate::proxy::inbound::app_on_port`]).
    App { app: SocketAddr, connect_timeout: Duration },
    /// Outbound: the original destination, dialed under the outbound policy.
    Original(Arc<Dialer>),
}

/// One listener's handling of redirected connections.
pub struct Interception {
    direction: Direction,
    /// The listener's own address: a connection whose original destination is this one came to
    /// it directly.
    own: SocketAddr,
    opaque_ports: Vec<u16>,
    detect_timeout: Duration,
    target: Target,
    /// The `upstream_cluster` of the relay's lines.
    cluster: &'static str,
    telemetry: Arc<Telemetry>,
}

impl std::fmt::Debug for Interception {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interception")
            .field("direction", &self.direction)
            .field("own", &self.own)
            .field("opaque_ports", &self.opaque_ports)
            .field("detect_timeout", &self.detect_timeout)
            .finish_non_exhaustive()
    }
}

impl Interception {
    /// `own`: the address the listener is bound to.
    pub fn new(
        cfg: &TransparentConfig,
        direction: Direction,
        own: SocketAddr,
        target: Target,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let cluster = match direction {
            Direction::Inbound => crate::telemetry::metrics::INBOUND_UPSTREAM,
            Direction::Outbound => crate::telemetry::metrics::OUTBOUND_UPSTREAM,
        };
        Self {
            direction,
            own,
            opaque_ports: cfg.opaque_ports.iter().map(|p| p.value.0).collect(),
            detect_timeout: cfg.detect_timeout.value,
            target,
            cluster,
            telemetry,
        }
    }

    /// The inbound listener's (bound at `own`): opaque connections go to the app on their
    /// original port, within `inbound.timeouts.connect`.
    pub fn inbound(cfg: &crate::config::Config, own: SocketAddr, telemetry: Arc<Telemetry>) -> Self {
        let target = Target::App { app: cfg.inbound.app.value, connect_timeout: cfg.inbound.timeouts.connect.value };
        Self::new(&cfg.transparent, Direction::Inbound, own, target, telemetry)
    }

    /// The outbound listener's (bound at `own`): opaque connections go to their original
    /// destination through `proxy`'s dialer (the outbound policy, `outbound.timeouts.connect`).
    pub fn outbound(
        cfg: &crate::config::Config,
        own: SocketAddr,
        proxy: &crate::proxy::outbound::OutboundProxy,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let target = Target::Original(proxy.dialer().clone());
        Self::new(&cfg.transparent, Direction::Outbound, own, target, telemetry)
    }

    /// Where `stream` (from `peer`) was going before iptables redirected it, or `None` when it
    /// was not redirected.
    pub fn original_dst(&self, stream: &TcpStream, peer: SocketAddr) -> Option<SocketAddr> {
        let sock = socket2::SockRef::from(stream);
        let v4 = match peer {
            SocketAddr::V4(_) => true,
            SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
        };
        let found = if v4 { sock.original_dst() } else { sock.original_dst_ipv6() };
        let addr = found.ok()?.as_socket()?;
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        let own = addr.port() == self.own.port() && (self.own.ip().is_unspecified() || self.own.ip() == addr.ip());
        (!own).then_some(addr)
    }

    /// Serves one accepted connection: the listener's usual path when it was not redirected,
    /// else by what its first bytes show. `idle`: the listener's `timeouts.idle` when the
    /// connection was accepted (a reload changes it), after which an opaque relay that moved
    /// nothing is closed.
    pub async fn route<S: Servers>(&self, mut conn: Accepted, servers: &S, idle: Duration) {
        let Some(original) = self.original_dst(&conn.stream, conn.peer) else {
            return servers.serve_conn(conn).await;
        };
        conn.original_dst = Some(original);
        let found = if self.opaque_ports.contains(&original.port()) {
            None
        } else {
            match detect::detect(conn.stream, self.detect_timeout).await {
                Ok((found, stream)) => {
                    conn.stream = stream;
                    Some(found)
                }
                Err(e) => {
                    tracing::debug!(error = %e, peer = %conn.peer, "protocol detection failed; connection closed");
                    return;
                }
            }
        };
        let counted = found.as_ref().map_or(Detection::Opaque, Found::detection);
        self.telemetry.metrics.protocol_detected(self.direction, counted);
        let server_name = match found {
            Some(Found::Http1 | Found::Http2) => {
                conn.plaintext = true;
                return servers.serve_conn(conn).await;
            }
            Some(Found::Tls { .. }) if servers.terminates_tls() => return servers.serve_conn(conn).await,
            Some(Found::Tls { server_name }) => server_name,
            Some(Found::Other | Found::Timeout) | None => None,
        };
        let server_name = server_name.and_then(|n| HeaderValue::from_str(&n).ok());
        let Accepted { stream, peer, .. } = conn;
        let relay = Relay::new(self.telemetry.clone(), self.direction, self.cluster, idle);
        match &self.target {
            Target::App { app, connect_timeout } => {
                let to = crate::proxy::inbound::app_on_port(*app, original.port());
                relay.run(stream, peer, server_name, crate::tcp::relay::connect(to, *connect_timeout)).await;
            }
            Target::Original(dialer) => {
                let ip = original.ip().to_string();
                let dial = async {
                    dialer.dial(&ip, original.port()).await.map_err(|e| Unreachable {
                        reason: if e.is_denied() {
                            crate::base::reason::Reason::NR
                        } else {
                            crate::base::reason::Reason::UF
                        },
                        addr: e.addr().or(Some(original)),
                        cause: e.to_string(),
                    })
                };
                relay.run(stream, peer, server_name, dial).await;
            }
        }
    }
}
