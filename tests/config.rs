//! Configuration: the fixtures in tests/fixtures load or fail with messages that name their key;
//! `tandem check` exit codes; environment over file and flags over environment; `tandem run`
//! refusing a bad configuration before binding anything.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tandem::config::{AccessLogFormat, AppProtocol, Config, Sources};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Loads a configuration; on failure, every problem as `key: message`.
fn load(file: Option<&str>, env: &[(&str, &str)], flags: &[(&str, &str)]) -> Result<Config, Vec<String>> {
    let sources = Sources { file: file.map(fixture), env: pairs(env), flags: pairs(flags) };
    Config::load(&sources).map(|l| l.config).map_err(|p| p.0.iter().map(|p| p.to_string()).collect())
}

/// Runs the binary with exactly `env` as its environment; (exit code, stdout, stderr). Killed and
/// failed after 20 s.
fn tandem(args: &[String], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut child = Command::new(support::bin())
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tandem");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tandem {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

fn path(name: &str) -> String {
    fixture(name).display().to_string()
}

#[test]
fn the_valid_fixture_loads() {
    let c = load(Some("valid.yaml"), &[], &[]).expect("valid.yaml loads");
    assert_eq!(c.inbound.app.value.to_string(), "127.0.0.1:9090");
    assert_eq!(c.inbound.app_protocol, AppProtocol::Http2);
    assert_eq!(c.inbound.timeouts.connect.value, Duration::from_millis(250));
    assert_eq!(c.inbound.timeouts.idle.value, Duration::from_secs(120));
    assert_eq!(c.inbound.limits.max_header_bytes.value.0, 32 * 1024);
    assert_eq!(c.inbound.limits.max_in_flight, 500);
    assert_eq!(c.access_log.destination, "off");
    assert_eq!(c.access_log.format, AccessLogFormat::Text);
    assert_eq!(c.access_log.max_size.value.0, 10 << 20);
    assert_eq!(c.shutdown.drain_timeout.value, Duration::from_secs(5));
    assert_eq!(c.runtime.workers, 2);
    // What is not in the file keeps its default.
    assert_eq!(c.outbound.timeouts.response.value, Duration::from_secs(15));
}

#[test]
fn no_file_runs_on_the_defaults() {
    let c = load(None, &[], &[]).expect("defaults load");
    assert_eq!(c.inbound.listen.value.to_string(), "[::]:15006");
    assert_eq!(c.inbound.app.value.to_string(), "127.0.0.1:8080");
}

#[test]
fn each_invalid_fixture_names_its_key() {
    let cases: &[(&str, &[&str])] = &[
        ("bad_duration.yaml", &["inbound.timeouts.connect: invalid duration \"5 parsecs\""]),
        (
            "unknown_key.yaml",
            &[
                "inbound.timeouts.conect: unknown key; did you mean inbound.timeouts.connect?",
                "acces_log: unknown key; did you mean access_log?",
            ],
        ),
        (
            "bad_address.yaml",
            &["inbound.app: invalid address \"127.0.0.1:99999\"", "admin.listen: invalid address \"localhost:15020\""],
        ),
        ("bad_size.yaml", &["inbound.limits.max_header_bytes: invalid size \"lots\""]),
        ("outbound_non_loopback.yaml", &["outbound.listen: 0.0.0.0:15001 is not a loopback address"]),
        ("bad_type.yaml", &["inbound.limits.max_in_flight: must be a whole number (not \"many\")"]),
        (
            "many_problems.yaml",
            &[
                "inbound.timeouts.connect: invalid duration \"5 parsecs\"",
                "inbound.timeouts.response: invalid duration \"soon\"",
                "inbound.limits.max_header_bytes: invalid size \"huge\"",
                "inbound.limits.max_in_flight: must be at least 1",
                "outbound.listen: 0.0.0.0:15001 is not a loopback address",
            ],
        ),
    ];
    for (file, want) in cases {
        let problems = load(Some(file), &[], &[]).expect_err(file);
        assert_eq!(problems.len(), want.len(), "{file}: {problems:#?}");
        for w in *want {
            assert!(problems.iter().any(|p| p.starts_with(w)), "{file}: no problem starts with {w:?}: {problems:#?}");
        }
    }
    assert!(load(Some("unknown_key.yaml"), &[], &[]).expect_err("unknown").iter().any(|p| p.contains("connect")));
    // The non-loopback outbound listener is allowed with the explicit opt-in.
    let c = load(Some("outbound_non_loopback.yaml"), &[], &[("outbound.allow_non_loopback", "true")])
        .expect("allowed with the opt-in");
    assert_eq!(c.outbound.listen.value.to_string(), "0.0.0.0:15001");
}

#[test]
fn environment_beats_the_file_and_flags_beat_the_environment() {
    let env = [("TANDEM_INBOUND_APP", "127.0.0.1:9191"), ("TANDEM_INBOUND_TIMEOUTS_RESPONSE", "7s")];
    let c = load(Some("valid.yaml"), &env, &[]).expect("loads");
    assert_eq!(c.inbound.app.value.to_string(), "127.0.0.1:9191", "environment over file");
    assert_eq!(c.inbound.timeouts.response.value, Duration::from_secs(7));
    let c = load(Some("valid.yaml"), &env, &[("inbound.app", "127.0.0.1:9292")]).expect("loads");
    assert_eq!(c.inbound.app.value.to_string(), "127.0.0.1:9292", "flag over environment");
    assert_eq!(c.inbound.timeouts.response.value, Duration::from_secs(7));
    // A bad value from the environment is named by its key too.
    let p = load(None, &[("TANDEM_INBOUND_TIMEOUTS_CONNECT", "forever")], &[]).expect_err("bad env");
    assert_eq!(
        p,
        vec!["inbound.timeouts.connect (set by TANDEM_INBOUND_TIMEOUTS_CONNECT): invalid duration \"forever\""
            .to_owned()]
    );
}

#[test]
fn check_exits_0_with_the_effective_configuration_or_1_with_every_problem() {
    let (code, stdout, _) = tandem(&args(&["check", "-c", &path("valid.yaml")]), &[]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("app: 127.0.0.1:9090"), "{stdout}");
    let (code, stdout, _) = tandem(&args(&["check"]), &[]);
    assert_eq!(code, Some(0), "no file: the defaults");
    assert!(stdout.contains("listen: '[::]:15006'"), "{stdout}");

    for (file, want) in [
        ("bad_duration.yaml", "inbound.timeouts.connect: invalid duration \"5 parsecs\""),
        ("unknown_key.yaml", "acces_log: unknown key"),
        ("bad_address.yaml", "admin.listen: invalid address \"localhost:15020\""),
        ("bad_size.yaml", "inbound.limits.max_header_bytes: invalid size \"lots\""),
        ("outbound_non_loopback.yaml", "outbound.listen: 0.0.0.0:15001 is not a loopback address"),
        ("many_problems.yaml", "inbound.limits.max_in_flight: must be at least 1"),
    ] {
        let (code, stdout, stderr) = tandem(&args(&["check", "-c", &path(file)]), &[]);
        assert_eq!(code, Some(1), "{file}: {stderr}");
        assert!(stderr.contains(want), "{file}: {stderr}");
        assert!(stdout.is_empty(), "{file}: nothing on stdout: {stdout}");
    }
    let (code, _, stderr) = tandem(&args(&["check", "-c", "/nonexistent/tandem.yaml"]), &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("cannot read /nonexistent/tandem.yaml"), "{stderr}");
}

#[test]
fn check_applies_environment_then_flags() {
    let file = path("valid.yaml");
    let env = [("TANDEM_INBOUND_APP", "127.0.0.1:9191")];
    let (code, stdout, _) = tandem(&args(&["check", "-c", &file]), &env);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("app: 127.0.0.1:9191"), "environment over file: {stdout}");
    let (code, stdout, _) = tandem(&args(&["check", "-c", &file, "--app", "127.0.0.1:9292"]), &env);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("app: 127.0.0.1:9292"), "flag over environment: {stdout}");
    let (code, _, stderr) = tandem(&args(&["check", "-c", &file, "--connect-timeout", "5 parsecs"]), &env);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("inbound.timeouts.connect (set by a flag): invalid duration \"5 parsecs\""), "{stderr}");
}

#[test]
fn run_with_a_bad_configuration_exits_1_before_binding() {
    // The inbound port is taken: if `run` tried to bind before validating, it would fail on the
    // bind instead of naming the bad key.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let inbound = taken.local_addr().expect("addr").to_string();
    let (admin, outbound) = (support::free_addr().to_string(), support::free_addr().to_string());
    let run = |file: &str| {
        args(&[
            "run",
            "-c",
            &path(file),
            "--inbound",
            &inbound,
            "--admin",
            &admin,
            "--outbound",
            &outbound,
            "--access-log",
            "off",
        ])
    };
    let (code, _, stderr) = tandem(&run("bad_duration.yaml"), &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("inbound.timeouts.connect: invalid duration \"5 parsecs\""), "{stderr}");
    assert!(!stderr.contains("cannot bind") && !stderr.contains("ready"), "nothing was bound: {stderr}");

    // The same command with a valid file does get as far as binding, and fails there.
    let (code, _, stderr) = tandem(&run("valid.yaml"), &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("inbound.listen: cannot bind {inbound}")), "{stderr}");
    drop(taken);
}

#[test]
fn every_kind_of_problem_is_reported_in_one_run_in_words_an_operator_reads() {
    let problems = load(Some("every_kind.yaml"), &[], &[]).expect_err("every_kind.yaml");
    let want = [
        "inbound.timeout: unknown key; did you mean inbound.timeouts?",
        "inbound.app_protocol: must be one of: http1, http2 (not \"http3\")",
        "inbound.limits.max_in_flight: must be a whole number (not \"many\")",
        "inbound.limits.max_headers: must be at least 1",
        "inbound.timeouts.connect: invalid duration \"5 parsecs\"",
        "access_log.format: must be one of: json, text (not \"xml\")",
        "access_log.max_files: must be 0 or more (not -1)",
        "outbound.allow_non_loopback: must be true or false (not \"yes please\")",
        "outbound.deny: must be a list",
    ];
    for w in want {
        assert!(problems.iter().any(|p| p.starts_with(w)), "no problem starts with {w:?}: {problems:#?}");
    }
    assert_eq!(problems.len(), want.len(), "{problems:#?}");
    for p in &problems {
        for jargon in ["usize", "expected", "variant", "invalid type", "struct"] {
            assert!(!p.contains(jargon), "{jargon:?} in {p:?}");
        }
    }

    // The binary prints them all, and still nothing on stdout.
    let (code, stdout, stderr) = tandem(&args(&["check", "-c", &path("every_kind.yaml")]), &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("({} problems)", want.len())), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
}

#[test]
fn a_misspelt_key_gets_the_nearest_one_and_a_misplaced_key_its_home() {
    let p = load(None, &[], &[("inbound.timeouts.conect", "1s")]).expect_err("misspelt");
    assert_eq!(
        p,
        vec!["inbound.timeouts.conect (set by a flag): unknown key; did you mean inbound.timeouts.connect?".to_owned()]
    );
    let p = load(None, &[], &[("inbound.drain_timeout", "1s")]).expect_err("misplaced");
    assert_eq!(
        p,
        vec!["inbound.drain_timeout (set by a flag): unknown key; did you mean shutdown.drain_timeout?".to_owned()]
    );
    // Nothing near: the keys that are valid there.
    let p = load(None, &[], &[("admin.colour", "blue")]).expect_err("unknown");
    assert_eq!(p, vec!["admin.colour (set by a flag): unknown key (valid here: listen)".to_owned()]);
    // A variable that names no key is a note, with the nearest variable when there is one.
    let sources = Sources {
        env: pairs(&[("TANDEM_INBOUND_TIMEOUT_CONNECT", "1s"), ("TANDEM_PORT", "tcp://10.0.0.1:80")]),
        ..Sources::default()
    };
    Config::load(&sources).expect("unknown variables are not errors");
    let notes = sources.unknown_variables();
    assert!(
        notes.iter().any(|n| n.contains("TANDEM_INBOUND_TIMEOUT_CONNECT")
            && n.contains("did you mean TANDEM_INBOUND_TIMEOUTS_CONNECT?")),
        "{notes:#?}"
    );
    assert!(notes.iter().any(|n| n.contains("TANDEM_PORT") && !n.contains("did you mean")), "{notes:#?}");
}

#[test]
fn environment_and_flags_go_through_the_same_reporting_and_name_their_source() {
    let env = [("TANDEM_INBOUND_APP_PROTOCOL", "http3"), ("TANDEM_INBOUND_LIMITS_MAX_IN_FLIGHT", "many")];
    let p = load(Some("valid.yaml"), &env, &[("inbound.limits.max_headers", "lots"), ("log.format", "xml")])
        .expect_err("four problems");
    let want = [
        "inbound.app_protocol (set by TANDEM_INBOUND_APP_PROTOCOL): must be one of: http1, http2 (not \"http3\")",
        "inbound.limits.max_in_flight (set by TANDEM_INBOUND_LIMITS_MAX_IN_FLIGHT): must be a whole number (not \"many\")",
        "inbound.limits.max_headers (set by a flag): must be a whole number (not \"lots\")",
        "log.format (set by a flag): must be one of: plain, json (not \"xml\")",
    ];
    assert_eq!(p.len(), want.len(), "{p:#?}");
    for w in want {
        assert!(p.iter().any(|x| x == w), "no problem {w:?}: {p:#?}");
    }
    let (code, _, stderr) = tandem(
        &args(&["check", "--app-protocol", "http3", "--max-in-flight=-3", "--workers", "two"]),
        &[("TANDEM_ACCESS_LOG_FORMAT", "xml"), ("TANDEM_INBOUND_TIMEOUT_CONNECT", "1s")],
    );
    assert_eq!(code, Some(1), "{stderr}");
    for w in [
        "warning: TANDEM_INBOUND_TIMEOUT_CONNECT names no configuration key; ignored (did you mean \
         TANDEM_INBOUND_TIMEOUTS_CONNECT?)",
        "inbound.app_protocol (set by a flag): must be one of: http1, http2 (not \"http3\")",
        "inbound.limits.max_in_flight (set by a flag): must be 0 or more (not -3)",
        "runtime.workers (set by a flag): must be a whole number (not \"two\")",
        "access_log.format (set by TANDEM_ACCESS_LOG_FORMAT): must be one of: json, text (not \"xml\")",
    ] {
        assert!(stderr.contains(w), "{w:?} in {stderr}");
    }
}

#[test]
fn the_app_may_be_a_host_name_resolved_at_start() {
    let c = load(None, &[], &[("inbound.app", "localhost:9090")]).expect("a name loads");
    assert!(c.inbound.app.value.ip().is_loopback(), "{:?}", c.inbound.app);
    assert_eq!(c.inbound.app.value.port(), 9090);
    let (code, stdout, stderr) = tandem(&args(&["check", "--app", "localhost:8080"]), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("inbound.app: localhost:8080 resolves to "), "{stderr}");
    assert!(stdout.contains("app: 127.0.0.1:8080") || stdout.contains("app: '[::1]:8080'"), "{stdout}");

    // What cannot be an app address says what is needed, without asking a DNS server.
    for (app, want) in [
        ("localhost", "inbound.app (set by a flag): \"localhost\" needs a port, such as localhost:8080"),
        ("my app:8080", "inbound.app (set by a flag): invalid address \"my app:8080\": needs an IP address or a host name and a port"),
        ("127.0.0.1:99999", "inbound.app (set by a flag): invalid address \"127.0.0.1:99999\""),
    ] {
        let p = load(None, &[], &[("inbound.app", app)]).expect_err(app);
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(p[0].starts_with(want), "{want:?}: {p:#?}");
    }
    // A listen address is bound, not resolved: it needs an IP.
    let p = load(None, &[], &[("admin.listen", "localhost:15020")]).expect_err("listen name");
    assert_eq!(
        p,
        vec!["admin.listen (set by a flag): invalid address \"localhost:15020\": a listen address needs an IP address and a port, such as 0.0.0.0:15020".to_owned()]
    );
}

#[test]
fn check_finds_an_access_log_that_run_could_not_open() {
    let dir = support::TempDir::new("check-log");
    let missing = dir.join("no-such-dir").join("access.log");
    let p = load(None, &[], &[("access_log.destination", &missing.display().to_string())]).expect_err("missing dir");
    assert_eq!(
        p,
        vec![format!(
            "access_log.destination (set by a flag): directory {} does not exist (tandem creates the file, not its directory)",
            dir.join("no-such-dir").display()
        )]
    );
    let p = load(None, &[], &[("access_log.destination", &dir.0.display().to_string())]).expect_err("a directory");
    assert_eq!(p, vec![format!("access_log.destination (set by a flag): {} is a directory", dir.0.display())]);
    let file = dir.join("not-a-dir");
    std::fs::write(&file, b"").expect("write");
    let p = load(None, &[], &[("access_log.destination", &file.join("access.log").display().to_string())])
        .expect_err("parent is a file");
    assert_eq!(p, vec![format!("access_log.destination (set by a flag): {} is not a directory", file.display())]);
    // A file that does not exist yet in a directory that does is fine, and check does not create it.
    let fresh = dir.join("access.log");
    load(None, &[], &[("access_log.destination", &fresh.display().to_string())]).expect("fresh file");
    assert!(!fresh.exists(), "check must not create the log");

    let (code, _, stderr) = tandem(&args(&["check", "--access-log", &missing.display().to_string()]), &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("access_log.destination (set by a flag): directory "), "{stderr}");

    // Away from where it runs (CI), the syntax alone: no file looked at, no name resolved.
    let (code, stdout, stderr) = tandem(
        &args(&["check", "--syntax-only", "--access-log", &missing.display().to_string(), "--app", "app.example:8080"]),
        &[("TANDEM_INBOUND_TLS_CERT", "/nonexistent/tls.crt"), ("TANDEM_INBOUND_TLS_KEY", "/nonexistent/tls.key")],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("syntax only"), "{stderr}");
    assert!(stdout.contains("app: app.example:8080"), "{stdout}");
    // The syntax is still checked.
    let (code, _, stderr) = tandem(&args(&["check", "--syntax-only", "--app", "app.example", "--workers", "x"]), &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("inbound.app (set by a flag): \"app.example\" needs a port"), "{stderr}");
    assert!(stderr.contains("runtime.workers (set by a flag): must be a whole number"), "{stderr}");
}

#[test]
fn zero_never_means_time_out_at_once() {
    // Every duration key: 0 turns the two idle timeouts off, and is refused everywhere else.
    let tls = [("TANDEM_INBOUND_TLS_CERT", "/c.pem"), ("TANDEM_INBOUND_TLS_KEY", "/k.pem")];
    let off = ["inbound.timeouts.idle", "outbound.timeouts.idle"];
    let refused = [
        "inbound.timeouts.header_read",
        "inbound.timeouts.connect",
        "inbound.timeouts.response",
        "inbound.timeouts.upstream_idle",
        "outbound.timeouts.header_read",
        "outbound.timeouts.connect",
        "outbound.timeouts.response",
        "outbound.timeouts.upstream_idle",
        "inbound.tls.handshake_timeout",
        "shutdown.drain_timeout",
    ];
    for key in off {
        let c = load(None, &tls, &[(key, "0")]).unwrap_or_else(|p| panic!("{key}: {p:#?}"));
        assert!(c.to_yaml().contains("idle: 0s"), "{key}");
    }
    for key in refused {
        let p = load(None, &tls, &[(key, "0")]).expect_err(key);
        assert_eq!(p.len(), 1, "{key}: {p:#?}");
        assert!(p[0].starts_with(&format!("{key} (set by a flag): must be greater than 0")), "{p:#?}");
    }
    let (code, _, stderr) = tandem(&args(&["check", "--response-timeout", "0"]), &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("inbound.timeouts.response (set by a flag): must be greater than 0"), "{stderr}");
}

#[test]
fn every_list_takes_a_comma_separated_variable() {
    let env = [
        ("TANDEM_INBOUND_TLS_CERT", "/c.pem"),
        ("TANDEM_INBOUND_TLS_KEY", "/k.pem"),
        ("TANDEM_INBOUND_TLS_CLIENT_CA", "/ca.pem"),
        ("TANDEM_INBOUND_TLS_ALLOWED_IDENTITIES", "spiffe://td/ns/a/sa/x, spiffe://td/ns/b/*"),
        ("TANDEM_OUTBOUND_ALLOW", "[orders, '*.svc.cluster.local:443']"),
        ("TANDEM_OUTBOUND_DENY", "169.254.169.254,*:25"),
    ];
    let c = load(None, &env, &[]).expect("lists load");
    let tls = c.inbound.tls.expect("tls");
    assert_eq!(tls.allowed_identities, vec!["spiffe://td/ns/a/sa/x".to_owned(), "spiffe://td/ns/b/*".to_owned()]);
    assert_eq!(c.outbound.allow.len(), 2);
    assert_eq!(c.outbound.deny.len(), 2);
    // The bracketed form works for every list too, and an empty variable is an empty list.
    let env = [
        ("TANDEM_INBOUND_TLS_CERT", "/c.pem"),
        ("TANDEM_INBOUND_TLS_KEY", "/k.pem"),
        ("TANDEM_INBOUND_TLS_CLIENT_CA", "/ca.pem"),
        ("TANDEM_INBOUND_TLS_ALLOWED_IDENTITIES", "[a, b]"),
        ("TANDEM_OUTBOUND_DENY", ""),
    ];
    let c = load(None, &env, &[]).expect("lists load");
    assert_eq!(c.inbound.tls.expect("tls").allowed_identities, vec!["a".to_owned(), "b".to_owned()]);
    assert!(c.outbound.deny.is_empty());
}
