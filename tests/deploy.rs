//! The manifests in deploy/ against the binary: every tandem configuration they ship passes
//! `tandem check`, and the ports and commands they use are the ones tandem serves and accepts.
//! (Schema validation and policy checks run in CI: kubernetes-validate and checkov.)

mod support;

use serde_yaml_ng::Value;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every YAML document in `path`.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn tandem_config(configmap: &str) -> String {
    let docs = documents(&root().join(configmap));
    docs[0]["data"]["tandem.yaml"].as_str().expect("data.tandem.yaml").to_owned()
}

#[test]
fn every_shipped_tandem_configuration_passes_tandem_check() {
    for cm in ["deploy/base/shared/configmap-tandem.yaml", "deploy/job/configmap-tandem.yaml"] {
        let file = std::env::temp_dir().join(format!("tandem-deploy-{}.yaml", std::process::id()));
        std::fs::write(&file, tandem_config(cm)).expect("write");
        // The syntax only: the access-log directory is the pod's volume, not on this machine.
        let out = std::process::Command::new(support::bin())
            .args(["check", "--syntax-only", "-c"])
            .arg(&file)
            .output()
            .expect("run");
        let _ = std::fs::remove_file(&file);
        assert!(out.status.success(), "{cm}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn containers(pod: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for key in ["initContainers", "containers"] {
        if let Some(seq) = pod[key].as_sequence() {
            all.extend(seq.iter());
        }
    }
    all
}

fn named<'a>(pod: &'a Value, name: &str) -> &'a Value {
    containers(pod).into_iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("container {name}"))
}

fn args(c: &Value, key: &str) -> Vec<String> {
    c[key].as_sequence().map(|s| s.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

#[test]
fn the_pods_use_tandems_ports_and_commands() {
    let config = tandem_config("deploy/base/shared/configmap-tandem.yaml");
    assert!(config.contains("listen: \"[::]:15006\"") && config.contains("listen: \"[::]:15020\""));
    assert!(config.contains("destination: /var/log/tandem/access.log"));
    let fluent = std::fs::read_to_string(root().join("deploy/base/shared/configmap-fluent-bit.yaml")).expect("read");
    assert!(fluent.contains("Path              /var/log/tandem/access.log"), "Fluent Bit tails tandem's log file");
    let svc = &documents(&root().join("deploy/base/shared/service.yaml"))[0];
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 15006);

    for file in ["deploy/base/deployment.yaml", "deploy/no-native-sidecar/deployment.yaml"] {
        let d = &documents(&root().join(file))[0];
        let pod = &d["spec"]["template"]["spec"];
        let tandem = named(pod, "tandem");
        assert_eq!(args(tandem, "args"), ["run", "-c", "/etc/tandem/tandem.yaml"], "{file}");
        let native = tandem["restartPolicy"] == "Always";
        assert_eq!(native, file.contains("base/"), "{file}: native sidecar only in the base");
        let app = named(pod, "app");
        assert_eq!(app["readinessProbe"]["httpGet"]["path"], "/ready/app", "{file}");
        assert_eq!(app["readinessProbe"]["httpGet"]["port"], 15020, "{file}");
        let env: Vec<(String, String)> = app["env"]
            .as_sequence()
            .expect("env")
            .iter()
            .map(|e| (e["name"].as_str().unwrap_or("").to_owned(), e["value"].as_str().unwrap_or("").to_owned()))
            .collect();
        assert!(env.contains(&("HTTP_PROXY".into(), "http://127.0.0.1:15001".into())), "{file}");
        assert!(env.contains(&("HTTPS_PROXY".into(), "http://127.0.0.1:15001".into())), "{file}");
        assert!(env.iter().any(|(k, _)| k == "NO_PROXY"), "{file}");
        if !native {
            let cmd = args(app, "command");
            assert_eq!(&cmd[..3], ["/tandem-bin/tandem", "await", "--timeout"], "{file}");
            assert_eq!(args(named(pod, "tandem-bin"), "args"), ["copy-self", "/tandem-bin"]);
        }
        for c in containers(pod) {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{file}: {}", c["name"].as_str().unwrap_or(""));
            assert_eq!(sc["readOnlyRootFilesystem"], true);
            assert_eq!(sc["runAsNonRoot"], true);
            assert_eq!(sc["capabilities"]["drop"][0], "ALL");
            assert!(c["resources"]["limits"]["memory"].is_string() && c["resources"]["requests"]["cpu"].is_string());
        }
    }

    let job = &documents(&root().join("deploy/job/job.yaml"))[0];
    let pod = &job["spec"]["template"]["spec"];
    let cmd = args(named(pod, "report"), "command");
    let sep = cmd.iter().position(|a| a == "--").expect("--");
    assert!(cmd[..sep].contains(&"--shutdown".to_owned()), "{cmd:?}");
    assert_eq!(pod["restartPolicy"], "Never");

    // The flags the manifests pass are ones tandem accepts.
    let out = std::process::Command::new(support::bin())
        .args(["await", "--timeout", "120s", "--shutdown", "--admin", "127.0.0.1:1", "--help"])
        .output()
        .expect("run");
    assert!(out.status.success());
}

#[test]
fn the_dockerfile_builds_what_ci_tests_and_runs_it_as_the_documented_uid() {
    let docker = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let ci = std::fs::read_to_string(root().join(".ci/run")).expect(".ci/run");
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README");
    // The same static build in both: glibc linked in, so the image needs no libc.
    let build = r#"RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "#;
    assert!(docker.contains(build) && ci.contains(build), "{build}");
    assert!(docker.contains("FROM gcr.io/distroless/static-"), "distroless static final stage");
    assert!(docker.contains("USER 1337:1337") && readme.contains("uid and gid 1337"));
    assert!(docker.contains(r#"ENTRYPOINT ["tandem"]"#));
    assert!(docker.contains("EXPOSE 15006 15001 15020"));
    // Transparent mode's init container: a target of its own with the iptables tools.
    assert!(docker.contains("AS iptables") && docker.contains("apt-get install -y --no-install-recommends iptables="));
    for file in [
        "deploy/base/deployment.yaml",
        "deploy/no-native-sidecar/deployment.yaml",
        "deploy/transparent/deployment.yaml",
        "deploy/job/job.yaml",
    ] {
        let d = &documents(&root().join(file))[0];
        for c in containers(&d["spec"]["template"]["spec"]) {
            if c["image"].as_str().is_some_and(|i| i.starts_with("tandem:")) {
                assert_eq!(c["securityContext"]["runAsUser"], 1337, "{file}");
            }
        }
    }
}

#[test]
fn the_transparent_pod_adds_only_the_iptables_step_and_drops_the_proxy_variables() {
    let file = "deploy/transparent/deployment.yaml";
    let d = &documents(&root().join(file))[0];
    let pod = &d["spec"]["template"]["spec"];
    // The rules go in first, by the init image, from the same configuration tandem runs with.
    let init = &pod["initContainers"][0];
    assert_eq!(init["name"], "tandem-init");
    assert!(init["image"].as_str().is_some_and(|i| i.starts_with("tandem-iptables:")));
    let init_args = args(init, "args");
    assert_eq!(&init_args[..3], ["iptables", "-c", "/etc/tandem/tandem.yaml"]);
    assert_eq!(args(named(pod, "tandem"), "args"), ["run", "-c", "/etc/tandem/tandem.yaml"]);
    // Root with NET_ADMIN and NET_RAW, nothing more (as istio-init): not privileged, no escalation.
    let sc = &init["securityContext"];
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(args(&sc["capabilities"], "drop"), ["ALL"]);
    assert_eq!(args(&sc["capabilities"], "add"), ["NET_ADMIN", "NET_RAW"]);
    // Every other container as in the base: non-root, nothing added.
    for c in containers(pod).into_iter().filter(|c| c["name"] != "tandem-init") {
        let name = c["name"].as_str().unwrap_or("");
        assert_eq!(c["securityContext"]["runAsNonRoot"], true, "{name}");
        assert!(c["securityContext"]["capabilities"]["add"].is_null(), "{name}");
    }
    // The app needs no proxy variables: its connections are redirected.
    let env = named(pod, "app")["env"].as_sequence().cloned().unwrap_or_default();
    assert!(!env.iter().any(|e| e["name"].as_str().is_some_and(|n| n.to_lowercase().contains("proxy"))), "{env:?}");

    // The Service and the policy name the app's own port; the namespace cannot be "restricted".
    let k = &documents(&root().join("deploy/transparent/kustomization.yaml"))[0];
    let patches: Vec<(String, String)> = k["patches"]
        .as_sequence()
        .expect("patches")
        .iter()
        .map(|p| (p["target"]["kind"].as_str().unwrap_or("").to_owned(), p["patch"].as_str().unwrap_or("").to_owned()))
        .collect();
    let patch = |kind: &str| patches.iter().find(|(k, _)| k == kind).map(|(_, p)| p.clone()).expect(kind);
    assert!(patch("Service").contains("path: /spec/ports/0/targetPort\n  value: 8080"), "{}", patch("Service"));
    assert!(patch("NetworkPolicy").contains("value: 8080"));
    assert!(patch("Namespace").contains("enforce\n  value: privileged"), "{}", patch("Namespace"));

    // The flags the init container passes are ones `tandem iptables` accepts.
    let out = std::process::Command::new(support::bin()).args(&init_args).arg("--help").output().expect("run");
    assert!(out.status.success(), "{init_args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_scripts_the_readmes_run_by_path_are_executable() {
    use std::os::unix::fs::PermissionsExt;
    // The READMEs and CI run these as `benches/compare.sh ...`, not through an interpreter: a
    // fresh clone must give them the executable bit (git keeps it as the file mode).
    for file in
        [".ci/run", "benches/compare.sh", "benches/compare.py", "benches/profile.py", "deploy/measure-sizing.sh"]
    {
        let mode = std::fs::metadata(root().join(file)).expect(file).permissions().mode();
        assert!(mode & 0o111 == 0o111, "{file} is not executable (mode {mode:o})");
        let text = std::fs::read_to_string(root().join(file)).expect(file);
        assert!(text.starts_with("#!/usr/bin/env "), "{file} has no #! line");
    }
}

/// The pod templates of every workload manifest, with their file names.
fn pod_templates() -> Vec<(&'static str, Value)> {
    ["deploy/base/deployment.yaml", "deploy/no-native-sidecar/deployment.yaml", "deploy/job/job.yaml"]
        .into_iter()
        .map(|file| (file, documents(&root().join(file))[0]["spec"]["template"]["spec"].clone()))
        .collect()
}

#[test]
fn every_probe_has_a_timeout_and_the_app_probes_outlast_tandems_own_check() {
    let check = tandem::lifecycle::readiness::CHECK_TIMEOUT.as_secs();
    for (file, pod) in pod_templates() {
        for c in containers(&pod) {
            let name = c["name"].as_str().unwrap_or("");
            for kind in ["startupProbe", "readinessProbe", "livenessProbe"] {
                let probe = &c[kind];
                if probe.is_null() {
                    continue;
                }
                let timeout = probe["timeoutSeconds"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{file}: {name}'s {kind} has no timeoutSeconds"));
                // /ready/app waits for tandem's own app check (CHECK_TIMEOUT): with the kubelet's
                // timeout no longer than it, a slow app shows as a probe timeout instead of
                // tandem's 503 that says what failed.
                if probe["httpGet"]["path"] == "/ready/app" {
                    assert!(
                        timeout > check,
                        "{file}: {name}'s {kind} times out at {timeout}s, tandem's check at {check}s"
                    );
                }
            }
        }
    }
}

#[test]
fn images_are_pinned_by_tag_and_pulled_only_when_missing() {
    // IfNotPresent: kind and minikube run an image loaded into the node (`kind load docker-image
    // tandem:0.1.0`), which Always would try, and fail, to pull.
    for (file, pod) in pod_templates() {
        for c in containers(&pod) {
            let image = c["image"].as_str().expect("image");
            let tag = image.rsplit_once(':').map(|(_, t)| t).filter(|t| !t.contains('/'));
            assert!(tag.is_some_and(|t| t != "latest"), "{file}: {image} is not pinned by tag");
            assert_eq!(c["imagePullPolicy"], "IfNotPresent", "{file}: {image}");
        }
    }
}

#[test]
fn the_documented_fluent_bit_configuration_is_the_deployed_one() {
    let cm = &documents(&root().join("deploy/base/shared/configmap-fluent-bit.yaml"))[0];
    let doc = std::fs::read_to_string(root().join("docs/observability.md")).expect("docs/observability.md");
    let section = &doc[doc.find("### Shipping with Fluent Bit").expect("the section")..];
    for key in ["fluent-bit.conf", "parsers.conf"] {
        let deployed = cm["data"][key].as_str().unwrap_or_else(|| panic!("data.{key}"));
        // The block after the line that names the file.
        let after = &section[section.find(&format!("`{key}`:\n\n```ini\n")).unwrap_or_else(|| panic!("{key} shown"))..];
        let start = after.find("```ini\n").expect("block") + "```ini\n".len();
        let shown = &after[start..start + after[start..].find("```").expect("block end")];
        assert_eq!(shown.trim_end(), deployed.trim_end(), "docs/observability.md shows another {key}");
    }
}
