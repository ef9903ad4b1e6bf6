//! tandem: a service-mesh proxy sidecar in one binary.
//!
//! tandem runs beside an app in a pod's shared network namespace: it takes the pod's inbound
//! traffic and forwards it to the app on localhost, and writes an access-log line and Prometheus
//! metrics for every request. The same binary is a standalone reverse proxy (`tandem run --app`)
//! and a load-test target (`tandem echo`).
//!
//! # Layout
//!
//! | module | owns |
//! | --- | --- |
//! | [`cli`] | clap definitions and the flag → configuration-key mapping |
//! | [`commands`] | the body of each subcommand: load, start the runtime, run, exit code |
//! | [`config`] | serde structs, defaults, loading (file, `TANDEM_*`, flags), validation by key |
//! | [`app`] | wiring: bind every listener first, serve, drain on stop |
//! | [`serve`] | the one accept loop: TCP → HTTP/1.1 or h2c → service, limits, graceful drain |
//! | [`inbound`] | the inbound stack: checks, rewriting, forwarding to the app |
//! | [`outbound`] | the outbound forward proxy: absolute-form/`Host` requests and `CONNECT` tunnels for the app's own calls |
//! | [`policy`] | the outbound allow/deny destination patterns (names, CIDRs, ports) |
//! | [`h1_proxy`] | the inbound HTTP/1.1 codec: plain requests parsed, rewritten and relayed to the app without hyper; the rest handed to hyper |
//! | [`h2_server`] | tandem's own HTTP/2 server for the inbound proxy to an HTTP/1.1 app: frames, streams, flow control, the stop's GOAWAY |
//! | [`hpack`] | HPACK header compression for [`h2_server`]: the decoder with its dynamic table and Huffman strings, and the encoder |
//! | [`h1_client`] | the codec's client half: bodiless requests from [`h2_server`] and hyper's server (handed-over HTTP/1.1) sent on the codec's connections to the app |
//! | [`h1_guard`] | HTTP/1 request framing on the downstream stream: marks `Content-Length` + `Transfer-Encoding` |
//! | [`forward`] | the pooled upstream client and the header rewriting rules |
//! | [`error`] | the error enum and the one error → response function |
//! | [`body`] | the response body type: streamed, counted, reported when it ends |
//! | [`record`] | the per-request record and its once-only completion report |
//! | [`telemetry`] | the metrics + access log handle every listener shares |
//! | [`access_log`] | the access-log writer thread, formats, rotation and reopen |
//! | [`metrics`] | every Prometheus metric, on one registry passed in |
//! | [`admin`] | the admin endpoints (`/live`, `/ready`, `/metrics`, …) |
//! | [`readiness`] | the app readiness check behind `/ready/app` |
//! | [`shutdown`] | the stop signal and the open-connection tracker |
//! | [`runtime`] | worker count from the container's CPU limit |
//! | [`logging`] | tandem's own diagnostics (`tracing`) and the run-time filter |
//! | [`ratelimit`] | rate-limited warnings for repeated errors |
//! | [`tls`] | inbound TLS and mutual TLS (rustls), identities, rotation from files |
//! | [`echo`] | the load-test target / test app |
//! | [`await_cmd`] | `tandem await`: wait for `/ready`, run a command, pass signals, stop the proxy after |

pub mod access_log;
pub mod admin;
pub mod app;
#[cfg(unix)]
pub mod await_cmd;
pub mod body;
pub mod cli;
pub mod commands;
pub mod config;
pub mod echo;
pub mod error;
pub mod forward;
pub mod h1_client;
pub mod h1_guard;
pub mod h1_proxy;
pub mod h2_server;
pub mod hpack;
pub mod inbound;
pub mod logging;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod ratelimit;
pub mod readiness;
pub mod record;
pub mod runtime;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
