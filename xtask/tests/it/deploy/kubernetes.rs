//! The Kubernetes manifests under `deploy/kubernetes`: the checker in
//! `manifest_check` finds nothing wrong with them and something wrong with
//! each deliberately broken copy, and the two workloads keep the shape the
//! design asks for (the agent unprivileged on every node with the bpf
//! filesystem, the collector replicated behind health probes).

use std::{collections::HashMap, fs};

use yaml_rust2::Yaml;

use super::{
    common::{self, agent_help, collector_help},
    manifest_check::{self, Binaries, Doc},
};

/// Every `*.yaml` file of `deploy/kubernetes`, as `(file name, text)`.
fn manifests() -> Vec<(String, String)> {
    let dir = common::deploy_dir().join("kubernetes");
    let mut files: Vec<(String, String)> = fs::read_dir(&dir)
        .expect("read deploy/kubernetes")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .map(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("UTF-8 file name")
                .to_owned();
            let text = fs::read_to_string(&path).expect("read a manifest");
            (name, text)
        })
        .collect();
    files.sort();
    files
}

fn binaries() -> Binaries {
    let collector = collector_help();
    Binaries {
        served_paths: Binaries::served_paths_from(&collector),
        help: HashMap::from([
            ("tally-agent run".to_owned(), agent_help()),
            ("tally-collector serve".to_owned(), collector),
        ]),
    }
}

fn docs() -> Vec<Doc> {
    let mut problems = Vec::new();
    let docs = manifest_check::parse(&manifests(), &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    docs
}

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .map(|d| &d.yaml)
        .find(|y| y["kind"].as_str() == Some(kind) && y["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

#[test]
fn manifests_are_well_formed_and_consistent() {
    let files = manifests();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "agent-daemonset.yaml",
        "collector-deployment.yaml",
        "namespace.yaml",
        "secrets.example.yaml",
    ] {
        assert!(
            names.contains(&expected),
            "deploy/kubernetes lacks {expected}"
        );
    }
    let binaries = binaries();
    assert!(
        ["/healthz", "/readyz"]
            .iter()
            .all(|p| binaries.served_paths.iter().any(|s| s == p)),
        "`tally-collector serve --help` no longer names /healthz and /readyz: {:?}",
        binaries.served_paths
    );
    let problems = manifest_check::check(&files, &binaries);
    assert!(problems.is_empty(), "problems:\n{}", problems.join("\n"));
}

#[test]
fn the_check_refuses_broken_manifests() {
    let binaries = binaries();
    let breakages = [
        (
            "collector-deployment.yaml",
            "  replicas: 2\n",
            "  replicas: 2\n  replicas: 3\n",
            "not valid YAML",
        ),
        (
            "agent-daemonset.yaml",
            "      containers:\n        - name: agent\n          image: registry.example/tally:0.1.0\n",
            "      containers:\n        - name: agent\n",
            "has no image",
        ),
        (
            "collector-deployment.yaml",
            "    matchLabels:\n      app.kubernetes.io/name: tally-collector\n",
            "    matchLabels:\n      app.kubernetes.io/name: tally-colector\n",
            "does not match the pod template",
        ),
        (
            "collector-deployment.yaml",
            "            - name: tls\n              mountPath",
            "            - name: certs\n              mountPath",
            "which the pod does not define",
        ),
        (
            "agent-daemonset.yaml",
            "secretName: tally-ca",
            "secretName: tally-cas",
            "which the examples do not document",
        ),
        (
            "collector-deployment.yaml",
            "key: admin-token",
            "key: admin_token",
            "does not have",
        ),
        (
            "collector-deployment.yaml",
            "path: /readyz",
            "path: /ready",
            "which is not served",
        ),
        (
            "collector-deployment.yaml",
            "- name: grpc\n              containerPort",
            "- name: grpc-node-channel\n              containerPort",
            "not a valid port name",
        ),
        (
            "collector-deployment.yaml",
            "containerPort: 8080",
            "containerPort: 80800",
            "is not a port",
        ),
        (
            "collector-deployment.yaml",
            "value: \"0.0.0.0:8080\"",
            "value: 8080",
            "is not a string",
        ),
        (
            "collector-deployment.yaml",
            "name: TALLY_PERIOD_RESET",
            "name: TALLY_PERIOD_RESETS",
            "does not read",
        ),
        (
            "collector-deployment.yaml",
            "targetPort: http",
            "targetPort: web",
            "targetPort",
        ),
        (
            "collector-deployment.yaml",
            "value: /etc/tally/tls/tls.key",
            "value: /etc/tally/tls/tls.pem",
            "has no key",
        ),
        (
            "agent-daemonset.yaml",
            "value: /etc/tally/ca/ca.crt",
            "value: /etc/tally/ca.crt",
            "in no mounted volume",
        ),
        (
            "agent-daemonset.yaml",
            "value: /etc/tally/agent.token",
            "value: /etc/tally/tokens/$(NODE_NAME)",
            "not defined before it",
        ),
        (
            "namespace.yaml",
            "  name: tally\n",
            "  name: tally-system\n",
            "is not defined",
        ),
        (
            "collector-deployment.yaml",
            "readinessProbe:",
            "readinesProbe:",
            "unknown field spec.template.spec.containers[0].readinesProbe",
        ),
        (
            "agent-daemonset.yaml",
            "      tolerations:",
            "      toleration:",
            "unknown field spec.template.spec.toleration",
        ),
        (
            "agent-daemonset.yaml",
            "add: [\"BPF\"",
            "ad: [\"BPF\"",
            "unknown field spec.template.spec.containers[0].securityContext.capabilities.ad",
        ),
    ];
    for (file, good, bad, expected) in breakages {
        let files: Vec<(String, String)> = manifests()
            .into_iter()
            .map(|(name, text)| {
                if name == file {
                    assert!(text.contains(good), "{file} no longer contains {good:?}");
                    let broken = text.replacen(good, bad, 1);
                    (name, broken)
                } else {
                    (name, text)
                }
            })
            .collect();
        let problems = manifest_check::check(&files, &binaries);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{file} with {bad:?} instead of {good:?}: expected a problem with {expected:?}, got {problems:?}"
        );
    }
}

#[test]
fn agent_runs_unprivileged_on_every_node_with_the_bpf_filesystem() {
    let docs = docs();
    let ds = find(&docs, "DaemonSet", "tally-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true), "hostNetwork");
    assert_eq!(
        pod["dnsPolicy"].as_str(),
        Some("ClusterFirstWithHostNet"),
        "with hostNetwork, only this policy resolves the collector's Service"
    );
    assert!(
        pod["tolerations"].as_vec().is_some_and(|t| t
            .iter()
            .any(|t| t["operator"].as_str() == Some("Exists") && t["key"].is_badvalue())),
        "a toleration for every taint, so that it runs on every node"
    );
    let agent = &pod["containers"][0];
    let security = &agent["securityContext"];
    assert_ne!(
        security["privileged"].as_bool(),
        Some(true),
        "not privileged"
    );
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    let caps = |list: &str| -> Vec<&str> {
        security["capabilities"][list]
            .as_vec()
            .map(|v| v.iter().filter_map(Yaml::as_str).collect())
            .unwrap_or_default()
    };
    assert_eq!(caps("drop"), ["ALL"]);
    let added = caps("add");
    assert!(
        added.contains(&"BPF") && added.contains(&"NET_ADMIN"),
        "{added:?}"
    );
    assert!(
        added
            .iter()
            .all(|c| ["BPF", "NET_ADMIN", "PERFMON"].contains(c)),
        "more than the agent needs: {added:?}"
    );
    assert_eq!(
        security["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault"),
        "the runtime's seccomp profile"
    );
    let volumes = pod["volumes"].as_vec().expect("volumes");
    let host_paths: Vec<&str> = volumes
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert_eq!(
        host_paths,
        [
            "/sys/fs/bpf/tally",
            "/var/lib/tally-agent",
            "/etc/tally/agent.token"
        ],
        "only tally's own directories and the node's token from the host"
    );
    let env = |name: &str| {
        agent["env"]
            .as_vec()
            .and_then(|e| e.iter().find(|e| e["name"].as_str() == Some(name)))
            .and_then(|e| e["value"].as_str())
    };
    // Only tally's directory of the node's bpffs, where the pins outlive
    // the pod, and where the agent pins.
    let bpffs = volumes
        .iter()
        .find(|v| v["hostPath"]["path"].as_str() == Some("/sys/fs/bpf/tally"))
        .expect("a hostPath volume for /sys/fs/bpf/tally");
    let mount = agent["volumeMounts"]
        .as_vec()
        .and_then(|m| m.iter().find(|m| m["name"] == bpffs["name"]))
        .expect("the bpffs volume is mounted");
    assert_eq!(mount["mountPath"].as_str(), env("TALLY_PIN_DIR"));
    // Each pod reads its own node's token and no other: no Secret of
    // tokens is mounted, the token is the node's file.
    let token = volumes
        .iter()
        .find(|v| v["hostPath"]["path"].as_str() == Some("/etc/tally/agent.token"))
        .expect("the node's token file");
    assert_eq!(token["hostPath"]["type"].as_str(), Some("File"));
    let mount = agent["volumeMounts"]
        .as_vec()
        .and_then(|m| m.iter().find(|m| m["name"] == token["name"]))
        .expect("the token is mounted");
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    assert_eq!(mount["mountPath"].as_str(), env("TALLY_TOKEN_FILE"));
    for volume in volumes {
        assert!(
            volume["secret"]["secretName"].as_str() != Some("tally-agent-tokens"),
            "a Secret of every node's token is mounted"
        );
    }
    // The node's state directory, where the reboot journal outlives the pod
    // and the node's reboots.
    let state = pod["volumes"]
        .as_vec()
        .and_then(|v| {
            v.iter()
                .find(|v| v["hostPath"]["path"].as_str() == Some("/var/lib/tally-agent"))
        })
        .expect("a hostPath volume for /var/lib/tally-agent");
    let mount = agent["volumeMounts"]
        .as_vec()
        .and_then(|m| m.iter().find(|m| m["name"] == state["name"]))
        .expect("the state volume is mounted");
    assert_eq!(mount["mountPath"].as_str(), Some("/var/lib/tally-agent"));
    assert!(
        !agent["resources"]["limits"]["memory"].is_badvalue(),
        "a memory limit"
    );
}

#[test]
fn collector_is_replicated_behind_health_probes() {
    let docs = docs();
    let deployment = find(&docs, "Deployment", "tally-collector");
    assert!(
        deployment["spec"]["replicas"]
            .as_i64()
            .is_some_and(|r| r >= 2)
    );
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    // The HTTP side serves HTTPS (plain HTTP only on loopback), so the
    // probes speak it too.
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            container[probe]["httpGet"]["scheme"].as_str(),
            Some("HTTPS"),
            "{probe}"
        );
    }
    let env: Vec<&str> = container["env"]
        .as_vec()
        .map(|e| e.iter().filter_map(|e| e["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        env.contains(&"TALLY_HTTP_TLS_CERT") && env.contains(&"TALLY_HTTP_TLS_KEY"),
        "{env:?}"
    );
    let service = find(&docs, "Service", "tally-collector");
    let ports: Vec<i64> = service["spec"]["ports"]
        .as_vec()
        .map(|p| p.iter().filter_map(|p| p["port"].as_i64()).collect())
        .unwrap_or_default();
    assert_eq!(ports, [50051, 8080], "gRPC and HTTP");
}

#[test]
fn names_follow_kubernetes_rules() {
    assert!(manifest_check::is_dns_label("tally-agent"));
    assert!(!manifest_check::is_dns_label("Tally"));
    assert!(!manifest_check::is_dns_label("-x"));
    assert!(manifest_check::is_port_name("grpc"));
    assert!(!manifest_check::is_port_name("1234"));
    assert!(!manifest_check::is_port_name("a-very-long-port-name"));
    assert_eq!(
        Binaries::served_paths_from(
            "the dashboard (`/`), health (`/healthz`, `/readyz`), `--flag`"
        ),
        ["/", "/healthz", "/readyz"]
    );
}
