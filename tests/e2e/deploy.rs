//! The deploy kits under `deploy/`, checked as far as this machine can without a container engine:
//! the Dockerfile's steps run as scripts against a scratch root and the image's layout serves with
//! its HEALTHCHECK passing (and failing once the proxy is gone); the compose file, the Kubernetes
//! manifests and the Grafana provisioning are parsed with a real YAML parser (PyYAML) and checked
//! for what they must hold; every metric the dashboard queries exists in a live `/metrics`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{cluster, free_port, pgcloak_bin, venv_python, SUPERPASS, SUPERUSER};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Parses every YAML file named (multi-document allowed) with PyYAML; returns them as JSON.
fn yaml(files: &[&str]) -> serde_json::Value {
    let script = "import json, sys, yaml\n\
                  print(json.dumps({f: list(yaml.safe_load_all(open(f))) for f in sys.argv[1:]}))\n";
    let out = Command::new(venv_python())
        .arg("-c")
        .arg(script)
        .args(files)
        .current_dir(repo())
        .output()
        .expect("python from the venv (scripts/test creates it)");
    assert!(
        out.status.success(),
        "YAML did not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// Runs the image's HEALTHCHECK script against `addr`.
fn healthcheck(bin: &Path, admin: u16) -> bool {
    Command::new(bin)
        .env("PGCLOAK_HEALTH_ADDR", format!("127.0.0.1:{admin}"))
        .status()
        .unwrap()
        .success()
}

#[test]
fn the_dockerfile_steps_lay_out_an_image_that_serves_and_passes_its_healthcheck() {
    let dockerfile = std::fs::read_to_string(repo().join("deploy/docker/Dockerfile")).unwrap();
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let froms: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "a multi-stage build: {froms:?}");
    assert!(froms[0].ends_with(" AS build"));
    assert!(lines.contains(&"RUN deploy/docker/build.sh /out"));
    assert!(lines.contains(&"COPY --from=build /out/ /"));
    assert!(lines.contains(&"RUN /usr/local/lib/pgcloak/setup-runtime.sh"));
    let user = lines.iter().find(|l| l.starts_with("USER ")).expect("USER");
    assert!(!user.contains("root") && !user.contains(" 0"), "{user}");
    assert!(lines
        .iter()
        .any(|l| l.contains("CMD [\"/usr/local/bin/pgcloak-healthcheck\"]")));
    assert!(lines.contains(&"ENTRYPOINT [\"/usr/local/bin/pgcloak\"]"));

    // The build stage's RUN, with the binary this test run built (the image builds it with
    // `cargo build --release --locked`), and the runtime stage's RUN against a scratch root.
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(repo().join("deploy/docker/build.sh"))
        .arg(root.path())
        .env("PGCLOAK_PREBUILT", pgcloak_bin())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("pgcloak "));
    let setup = Command::new(root.path().join("usr/local/lib/pgcloak/setup-runtime.sh"))
        .env("ROOT", root.path())
        .output()
        .unwrap();
    assert!(
        setup.status.success(),
        "setup-runtime.sh: {}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let r = |p: &str| root.path().join(p);
    for f in [
        "usr/local/bin/pgcloak",
        "usr/local/bin/pgcloak-healthcheck",
        "etc/pgcloak/pgcloak.toml",
        "etc/pgcloak/policy.toml",
        "var/lib/pgcloak",
    ] {
        assert!(r(f).exists(), "{f} missing from the image layout");
    }

    // The image's config, as the container runs it; only what must point at this machine instead
    // of the compose/Kubernetes network is overridden from the environment, as an operator would.
    let c = cluster();
    // The compose file's demo schema, which the image's policy describes.
    let init = std::fs::read_to_string(repo().join("deploy/compose/init.sql")).unwrap();
    let start = init.find("CREATE TABLE customers").unwrap();
    let table = &init[start..start + init[start..].find(';').unwrap()];
    let db = c.fresh_db("deploy_image");
    c.psql_direct(&db, table);
    let (port, admin) = (free_port(), free_port());
    let key = r("var/lib/pgcloak/master.key");
    std::fs::write(&key, "q2VrmA0Qk9WnfVhUXmMIvJ0FMxq+d2B9lq0oZ7oK3xI=\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let env: Vec<(String, String)> = [
        (
            "PGCLOAK_CONFIG",
            r("etc/pgcloak/pgcloak.toml").display().to_string(),
        ),
        ("PGCLOAK_LISTEN", format!("127.0.0.1:{port}")),
        ("PGCLOAK_UPSTREAM", format!("127.0.0.1:{}", c.port)),
        (
            "PGCLOAK_POLICY",
            r("etc/pgcloak/policy.toml").display().to_string(),
        ),
        ("PGCLOAK_CATALOG__USER", SUPERUSER.to_string()),
        ("PGCLOAK_CATALOG__PASSWORD", SUPERPASS.to_string()),
        ("PGCLOAK_CATALOG__DATABASE", db.clone()),
        ("PGCLOAK_KEYS__MASTER_KEY_FILE", key.display().to_string()),
        // The shared test cluster's keyring and audit tables belong to other tests.
        (
            "PGCLOAK_KEYS__KEYRING",
            r("var/lib/pgcloak/keyring.json").display().to_string(),
        ),
        ("PGCLOAK_AUDIT__POSTGRES", "false".into()),
        (
            "PGCLOAK_AUDIT__FILE",
            r("var/lib/pgcloak/audit.jsonl").display().to_string(),
        ),
        ("PGCLOAK_ADMIN__LISTEN", format!("127.0.0.1:{admin}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let installed = r("usr/local/bin/pgcloak");
    let check = Command::new(&installed)
        .arg("check")
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "pgcloak check on the image config: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // What compose's pgcloak-init service and the StatefulSet's init container run first.
    let init = Command::new(&installed)
        .args(["keys", "init"])
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "keys init: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let mut child = Command::new(&installed)
        .arg("serve")
        .envs(env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let probe = r("usr/local/bin/pgcloak-healthcheck");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !healthcheck(&probe, admin) {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the image's pgcloak exited with {status}: {err}");
        }
        assert!(Instant::now() < deadline, "HEALTHCHECK never passed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready = http_get(admin, "/readyz").unwrap();
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !healthcheck(&probe, admin),
        "HEALTHCHECK passes with no proxy"
    );
}

#[test]
fn compose_kubernetes_and_grafana_files_hold_what_they_must() {
    let files = [
        "deploy/compose/compose.yaml",
        "deploy/compose/prometheus.yml",
        "deploy/compose/grafana/provisioning/datasources/prometheus.yaml",
        "deploy/compose/grafana/provisioning/dashboards/pgcloak.yaml",
        "deploy/kubernetes/pgcloak.yaml",
    ];
    let y = yaml(&files);

    // compose
    let compose = &y[files[0]][0];
    let services = compose["services"].as_object().unwrap();
    for s in ["postgres", "nats", "pgcloak", "prometheus", "grafana"] {
        assert!(services.contains_key(s), "compose has no {s}");
    }
    let p = &services["pgcloak"];
    assert_eq!(p["read_only"], true);
    // pgcloak-init builds the image both run.
    let build = &services["pgcloak-init"]["build"];
    assert_eq!(build["dockerfile"], "deploy/docker/Dockerfile");
    assert_eq!(services["pgcloak-init"]["image"], p["image"]);
    assert!(repo()
        .join("deploy/compose")
        .join(build["context"].as_str().unwrap())
        .join("deploy/docker/Dockerfile")
        .exists());
    assert_eq!(p["secrets"][0], "pgcloak_master_key");
    assert_eq!(p["volumes"][0], "pgcloak-data:/var/lib/pgcloak");
    assert!(services["nats"]["command"]
        .as_array()
        .unwrap()
        .contains(&"-js".into()));
    assert_eq!(p["environment"]["PGCLOAK_AUDIT__NATS"], "nats://nats:4222");
    let init = &services["pgcloak-init"];
    assert_eq!(init["command"], serde_json::json!(["keys", "init"]));
    assert_eq!(init["environment"], p["environment"]);
    assert_eq!(
        p["depends_on"]["pgcloak-init"]["condition"],
        "service_completed_successfully"
    );
    for svc in ["postgres", "grafana", "prometheus"] {
        for v in services[svc]["volumes"].as_array().into_iter().flatten() {
            let src = v.as_str().unwrap().split(':').next().unwrap();
            if src.starts_with("./") {
                assert!(
                    repo().join("deploy/compose").join(src).exists(),
                    "{svc} mounts {src}, which is missing"
                );
            }
        }
    }
    let image_config = std::fs::read_to_string(repo().join("deploy/docker/pgcloak.toml")).unwrap();
    let target = y[files[1]][0]["scrape_configs"][0]["static_configs"][0]["targets"][0]
        .as_str()
        .unwrap()
        .to_string();
    let admin_port = target.rsplit(':').next().unwrap();
    assert!(
        image_config.contains(&format!("listen = \"0.0.0.0:{admin_port}\"")),
        "Prometheus scrapes {target}, the image's admin listener is elsewhere"
    );
    assert_eq!(y[files[2]][0]["datasources"][0]["uid"], "prometheus");
    assert_eq!(
        y[files[3]][0]["providers"][0]["options"]["path"],
        "/var/lib/grafana/dashboards"
    );

    // Kubernetes
    let docs = y[files[4]].as_array().unwrap();
    let kind =
        |k: &str| -> Vec<&serde_json::Value> { docs.iter().filter(|d| d["kind"] == k).collect() };
    let sts = kind("StatefulSet")[0];
    assert_eq!(sts["spec"]["replicas"], 3);
    let pod = &sts["spec"]["template"]["spec"];
    let ctr = &pod["containers"][0];
    assert_eq!(ctr["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(ctr["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(ctr["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(ctr["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let volumes = pod["volumes"].as_array().unwrap();
    let env = ctr["env"].as_array().unwrap();
    let master = env
        .iter()
        .find(|e| e["valueFrom"]["secretKeyRef"]["name"] == "pgcloak-master-key")
        .expect("the master key from a Secret");
    assert!(volumes
        .iter()
        .any(|v| v["configMap"]["name"] == "pgcloak-config"));
    let init = &pod["initContainers"][0];
    assert_eq!(init["args"][0], "keys");
    assert_eq!(init["args"][1], "init");
    assert_eq!(init["env"], ctr["env"]);
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > 30);
    let pdb = kind("PodDisruptionBudget")[0];
    assert_eq!(pdb["spec"]["minAvailable"], 2);
    let services: Vec<&str> = kind("Service")
        .iter()
        .map(|s| s["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        services,
        ["pgcloak", sts["spec"]["serviceName"].as_str().unwrap()]
    );

    // The ConfigMap's config and policy pass `pgcloak check`, with the peer_id each pod computes
    // from its ordinal by the container's own command.
    let cm = &kind("ConfigMap")[0]["data"];
    assert!(cm["pgcloak.toml"]
        .as_str()
        .unwrap()
        .contains(&format!("master_key_env = {}", master["name"])));
    let dir = tempfile::tempdir().unwrap();
    let cfg = cm["pgcloak.toml"]
        .as_str()
        .unwrap()
        .replace("/etc/pgcloak/", &format!("{}/", dir.path().display()));
    std::fs::write(dir.path().join("pgcloak.toml"), cfg).unwrap();
    std::fs::write(
        dir.path().join("policy.toml"),
        cm["policy.toml"].as_str().unwrap(),
    )
    .unwrap();
    let args = ctr["args"][0].as_str().unwrap().replace(
        "/usr/local/bin/pgcloak serve",
        &format!("{} check", pgcloak_bin().display()),
    );
    for ordinal in 0..3 {
        let out = Command::new("bash")
            .arg("-c")
            .arg(&args)
            .env("POD_NAME", format!("pgcloak-{ordinal}"))
            .env("PGCLOAK_CONFIG", dir.path().join("pgcloak.toml"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        // `exec` replaces the shell: the exit status is the check's.
        assert!(
            out.status.success(),
            "pod {ordinal}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(
            ctr["args"][0]
                .as_str()
                .unwrap()
                .replace("exec /usr/local/bin/pgcloak serve", "echo $PGCLOAK_PEER_ID"),
        )
        .env("POD_NAME", "pgcloak-2")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_exists() {
    let dash: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo().join("deploy/compose/grafana/dashboards/pgcloak.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(dash["uid"], "pgcloak");
    let mut wanted = std::collections::BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("pgcloak_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                wanted.insert(name);
            }
        }
    }
    assert!(wanted.len() >= 25, "{wanted:?}");

    let admin = free_port();
    let audit = tempfile::tempdir().unwrap();
    let proxy = crate::harness::Proxy::start_with(crate::harness::ProxyOptions {
        policy: Some(
            "[[column]]\nname = \"public.t.v\"\nclass = \"confidential\"\nencrypt = \"randomized\"\n"
                .into(),
        ),
        extra: format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[audit]\nfile = \"{}\"\n",
            audit.path().join("a.jsonl").display()
        ),
        ..Default::default()
    });
    // Traffic, so that the audit trail signs a checkpoint (its age is shown once there is one).
    let db = cluster().fresh_db("deploy_dashboard");
    let client = crate::harness::connect(&proxy.url("alice", "alice-pw", &db)).await;
    client.simple_query("SELECT 1").await.unwrap();
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = http_get(admin, "/metrics").unwrap_or_default();
        if metrics.contains("pgcloak_audit_checkpoint_age_seconds ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let present: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for name in &wanted {
        let base = name.strip_suffix("_bucket").unwrap_or(name);
        assert!(
            present.contains(base),
            "the dashboard queries {name}, which /metrics does not have"
        );
    }
    drop(proxy);
}
