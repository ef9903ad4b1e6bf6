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
    assert_eq!(c.inbound.listen.value.to_string(), "0.0.0.0:15006");
    assert_eq!(c.inbound.app.value.to_string(), "127.0.0.1:8080");
}

#[test]
fn each_invalid_fixture_names_its_key() {
    let cases: &[(&str, &[&str])] = &[
        ("bad_duration.yaml", &["inbound.timeouts.connect: invalid duration \"5 parsecs\""]),
        (
            "unknown_key.yaml",
            &["inbound.timeouts.conect: unknown key (expected one of: ", "acces_log: unknown key (expected one of: "],
        ),
        (
            "bad_address.yaml",
            &["inbound.app: invalid address \"127.0.0.1:99999\"", "admin.listen: invalid address \"localhost:15020\""],
        ),
        ("bad_size.yaml", &["inbound.limits.max_header_bytes: invalid size \"lots\""]),
        ("outbound_non_loopback.yaml", &["outbound.listen: 0.0.0.0:15001 is not a loopback address"]),
        ("bad_type.yaml", &["inbound.limits.max_in_flight: invalid type"]),
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
    assert_eq!(p, vec!["inbound.timeouts.connect: invalid duration \"forever\"".to_owned()]);
}

#[test]
fn check_exits_0_with_the_effective_configuration_or_1_with_every_problem() {
    let (code, stdout, _) = tandem(&args(&["check", "-c", &path("valid.yaml")]), &[]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("app: 127.0.0.1:9090"), "{stdout}");
    let (code, stdout, _) = tandem(&args(&["check"]), &[]);
    assert_eq!(code, Some(0), "no file: the defaults");
    assert!(stdout.contains("listen: 0.0.0.0:15006"), "{stdout}");

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
    assert!(stderr.contains("inbound.timeouts.connect: invalid duration \"5 parsecs\""), "{stderr}");
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
