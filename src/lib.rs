//! tandem: a service-mesh proxy sidecar in one binary.
//!
//! tandem runs beside an app in a pod's shared network namespace: it takes the pod's inbound
//! traffic and forwards it to the app on localhost, and writes an access-log line and Prometheus
//! metrics for every request. The same binary is a standalone reverse proxy (`tandem run --app`)
//! and a load-test target (`tandem echo`).
//!
//! # Layout
//!
//! One folder per layer; folders depend one way, top to bottom:
//! listener → protocol servers (`http1`, `h2`) → `proxy` → `upstream` → `telemetry` → `base`
//! (`config` and `lifecycle` are used from every layer and use only `base`, `telemetry`'s
//! diagnostics aside). The life of a request is told once, in `docs/architecture.md`.
//!
//! | module | owns |
//! | --- | --- |
//! | [`cli`] | clap definitions and the flag → configuration-key mapping |
//! | [`commands`] | the body of each subcommand: load, start the runtime, run, exit code |
//! | [`config`] | serde structs, defaults, loading (file, `TANDEM_*`, flags), validation by key; the outbound policy patterns |
//! | [`app`] | wiring: bind every listener first, serve, drain on stop |
//! | [`listener`] | binding, the accept loop, connection limits, TLS, the protocol choice |
//! | [`http1`] | tandem's HTTP/1.1 codec: the inbound server and its client half |
//! | [`h2`] | tandem's HTTP/2 server and HPACK |
//! | [`proxy`] | inbound and outbound: checks, header rewriting, the error enum and its one response function, the response body |
//! | [`tcp`] | the opaque TCP relay of transparent mode (redirected connections that are not HTTP) |
//! | [`upstream`] | the pools and clients to the app and other upstreams |
//! | [`telemetry`] | the per-request record, access log, metrics, tandem's own diagnostics |
//! | [`lifecycle`] | the stop signal and drain, readiness, workers from the CPU limit, `tandem await` |
//! | [`mesh`] | transparent mode's interception rules (`tandem iptables`) |
//! | [`base`] | the shared vocabulary: reason codes, connection metadata, request body types |
//! | [`reload`] | SIGHUP and `POST /reload`: the configuration in force, re-read and applied live or refused by key |
//! | [`admin`] | the admin endpoints (`/live`, `/ready`, `/metrics`, …) |
//! | [`echo`] | the load-test target / test app |
//! | `fuzzing` | the ways in for the fuzz targets in `fuzz/` (hidden; not an API) |

pub mod admin;
pub mod app;
pub mod base;
pub mod cli;
pub mod commands;
pub mod config;
pub mod echo;
#[doc(hidden)]
pub mod fuzzing;
pub mod h2;
pub mod http1;
pub mod lifecycle;
pub mod listener;
pub mod mesh;
pub mod proxy;
pub mod reload;
pub mod tcp;
pub mod telemetry;
pub mod upstream;
