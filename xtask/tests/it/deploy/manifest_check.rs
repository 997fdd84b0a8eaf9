//! A checker for the Kubernetes manifests: it parses every YAML document and
//! lists what the API server would refuse, or what would leave a pod unable
//! to start: missing required fields, a selector that does not match its pod
//! template, a volume mount without a volume, a Secret or a key of one that
//! the examples do not document, an invalid port, a probe on a path the
//! collector does not serve, a setting the binary does not read.
//!
//! It returns problems as sentences instead of panicking, so that the tests
//! can show it refusing broken copies of the manifests.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use yaml_rust2::{Yaml, YamlLoader};

/// One YAML document and where it came from.
pub struct Doc {
    pub place: String,
    pub yaml: Yaml,
}

/// What the binaries say about themselves: for a container's command (its
/// first two words, e.g. `tally-agent run`), the `--help` text; and the HTTP
/// paths the collector serves.
pub struct Binaries {
    pub help: HashMap<String, String>,
    pub served_paths: Vec<String>,
}

impl Binaries {
    /// The paths in backquotes in `tally-collector serve --help` (`/healthz`, ...).
    pub fn served_paths_from(help: &str) -> Vec<String> {
        help.split('`')
            .skip(1)
            .step_by(2)
            .filter(|word| word.starts_with('/') && !word.contains(' '))
            .map(str::to_owned)
            .collect()
    }
}

/// Parses `(file name, text)` pairs into documents; a file that does not
/// parse is a problem.
pub fn parse(files: &[(String, String)], problems: &mut Vec<String>) -> Vec<Doc> {
    let mut docs = Vec::new();
    for (file, text) in files {
        match YamlLoader::load_from_str(text) {
            Ok(yamls) => {
                for (index, yaml) in yamls.into_iter().enumerate() {
                    if !yaml.is_null() {
                        docs.push(Doc {
                            place: format!("{file} document {}", index + 1),
                            yaml,
                        });
                    }
                }
            }
            Err(err) => problems.push(format!("{file}: not valid YAML: {err}")),
        }
    }
    docs
}

/// Every problem in the documents of `files`.
pub fn check(files: &[(String, String)], binaries: &Binaries) -> Vec<String> {
    let mut problems = Vec::new();
    let docs = parse(files, &mut problems);
    let secrets = documented_secrets(&docs);
    let namespaces: BTreeSet<&str> = docs
        .iter()
        .filter(|d| kind(d) == "Namespace")
        .filter_map(|d| d.yaml["metadata"]["name"].as_str())
        .collect();
    let mut ctx = Ctx {
        problems: &mut problems,
        secrets: &secrets,
        binaries,
    };
    for doc in &docs {
        for field in super::fields::unknown(&doc.yaml) {
            ctx.say(doc, format!("unknown field {field}"));
        }
        check_common(doc, &namespaces, &mut ctx);
        match kind(doc) {
            "DaemonSet" | "Deployment" => check_workload(doc, &mut ctx),
            "Service" => check_service(doc, &docs, &mut ctx),
            "Secret" => check_secret(doc, &mut ctx),
            "Namespace" => {}
            other => ctx.say(doc, format!("kind {other:?} is not one this check knows")),
        }
    }
    problems
}

struct Ctx<'a> {
    problems: &'a mut Vec<String>,
    secrets: &'a BTreeMap<String, BTreeSet<String>>,
    binaries: &'a Binaries,
}

impl Ctx<'_> {
    fn say(&mut self, doc: &Doc, problem: String) {
        let name = doc.yaml["metadata"]["name"].as_str().unwrap_or("?");
        self.problems
            .push(format!("{} ({} {name}): {problem}", doc.place, kind(doc)));
    }
}

fn kind(doc: &Doc) -> &str {
    doc.yaml["kind"].as_str().unwrap_or("")
}

/// The Secrets the documents define, with their keys.
fn documented_secrets(docs: &[Doc]) -> BTreeMap<String, BTreeSet<String>> {
    docs.iter()
        .filter(|d| kind(d) == "Secret")
        .filter_map(|d| {
            let name = d.yaml["metadata"]["name"].as_str()?;
            let mut keys = BTreeSet::new();
            for field in ["data", "stringData"] {
                if let Some(hash) = d.yaml[field].as_hash() {
                    keys.extend(hash.keys().filter_map(Yaml::as_str).map(str::to_owned));
                }
            }
            Some((name.to_owned(), keys))
        })
        .collect()
}

/// A DNS-1123 label: what names of most objects, containers and volumes must be.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// An IANA service name: what a port's name must be.
pub fn is_port_name(name: &str) -> bool {
    is_dns_label(name)
        && name.len() <= 15
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.contains("--")
}

fn is_env_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_port(value: &Yaml) -> bool {
    value.as_i64().is_some_and(|p| (1..=65535).contains(&p))
}

fn strings(value: &Yaml) -> Vec<&str> {
    value
        .as_vec()
        .map(|v| v.iter().filter_map(Yaml::as_str).collect())
        .unwrap_or_default()
}

fn check_common(doc: &Doc, namespaces: &BTreeSet<&str>, ctx: &mut Ctx<'_>) {
    let expected_api = match kind(doc) {
        "DaemonSet" | "Deployment" => Some("apps/v1"),
        "Service" | "Secret" | "Namespace" => Some("v1"),
        _ => None,
    };
    match (doc.yaml["apiVersion"].as_str(), expected_api) {
        (None, _) => ctx.say(doc, "no apiVersion".into()),
        (Some(api), Some(expected)) if api != expected => {
            ctx.say(doc, format!("apiVersion {api:?}, expected {expected:?}"))
        }
        _ => {}
    }
    if doc.yaml["kind"].as_str().is_none() {
        ctx.say(doc, "no kind".into());
    }
    let meta = &doc.yaml["metadata"];
    match meta["name"].as_str() {
        Some(name) if is_dns_label(name) => {}
        Some(name) => ctx.say(doc, format!("metadata.name {name:?} is not a DNS label")),
        None => ctx.say(doc, "no metadata.name".into()),
    }
    if kind(doc) != "Namespace" {
        match meta["namespace"].as_str() {
            Some(ns) if namespaces.contains(ns) => {}
            Some(ns) => ctx.say(doc, format!("namespace {ns:?} is not defined")),
            None => ctx.say(doc, "no metadata.namespace".into()),
        }
    }
    check_labels(doc, "metadata.labels", &meta["labels"], ctx);
}

fn check_labels(doc: &Doc, at: &str, labels: &Yaml, ctx: &mut Ctx<'_>) {
    if labels.is_badvalue() {
        return;
    }
    let Some(hash) = labels.as_hash() else {
        return ctx.say(doc, format!("{at} is not a mapping"));
    };
    for (key, value) in hash {
        if key.as_str().is_none() || value.as_str().is_none() {
            ctx.say(
                doc,
                format!("{at}: {key:?}: {value:?} is not a string label"),
            );
        }
    }
}

fn check_secret(doc: &Doc, ctx: &mut Ctx<'_>) {
    for field in ["data", "stringData"] {
        if let Some(hash) = doc.yaml[field].as_hash() {
            for (key, value) in hash {
                if value.as_str().is_none() {
                    ctx.say(doc, format!("{field}.{key:?} is not a string"));
                }
            }
        }
    }
    if doc.yaml["type"].as_str() == Some("kubernetes.io/tls") {
        let name = doc.yaml["metadata"]["name"].as_str().unwrap_or("");
        let keys = ctx.secrets.get(name).cloned().unwrap_or_default();
        for key in ["tls.crt", "tls.key"] {
            if !keys.contains(key) {
                ctx.say(doc, format!("a kubernetes.io/tls Secret needs {key}"));
            }
        }
    }
}

fn check_workload(doc: &Doc, ctx: &mut Ctx<'_>) {
    let spec = &doc.yaml["spec"];
    let template = &spec["template"];
    check_labels(
        doc,
        "spec.template.metadata.labels",
        &template["metadata"]["labels"],
        ctx,
    );
    match spec["selector"]["matchLabels"].as_hash() {
        Some(selector) if !selector.is_empty() => {
            for (key, value) in selector {
                if template["metadata"]["labels"][key.as_str().unwrap_or("")] != *value {
                    ctx.say(
                        doc,
                        format!(
                            "spec.selector.matchLabels {key:?}: {value:?} does not match the pod template's labels"
                        ),
                    );
                }
            }
        }
        _ => ctx.say(doc, "no spec.selector.matchLabels".into()),
    }
    if kind(doc) == "Deployment"
        && !spec["replicas"].is_badvalue()
        && spec["replicas"].as_i64().is_none()
    {
        ctx.say(doc, "spec.replicas is not an integer".into());
    }
    let pod = &template["spec"];
    let volumes = check_volumes(doc, &pod["volumes"], ctx);
    let containers = pod["containers"].as_vec().cloned().unwrap_or_default();
    if containers.is_empty() {
        ctx.say(doc, "no containers".into());
    }
    let mut mounted = BTreeSet::new();
    let mut names = BTreeSet::new();
    for container in &containers {
        let name = container["name"].as_str().unwrap_or("");
        if !is_dns_label(name) {
            ctx.say(doc, format!("container name {name:?} is not a DNS label"));
        }
        if !names.insert(name.to_owned()) {
            ctx.say(doc, format!("two containers named {name:?}"));
        }
        check_container(doc, container, &volumes, &mut mounted, ctx);
    }
    for volume in volumes.keys() {
        if !mounted.contains(volume) {
            ctx.say(doc, format!("volume {volume:?} is mounted by no container"));
        }
    }
}

/// A volume's source: the Secret it comes from, if any.
type Volumes = BTreeMap<String, Option<String>>;

fn check_volumes(doc: &Doc, list: &Yaml, ctx: &mut Ctx<'_>) -> Volumes {
    let mut volumes = Volumes::new();
    for volume in list.as_vec().cloned().unwrap_or_default() {
        let name = volume["name"].as_str().unwrap_or("").to_owned();
        if !is_dns_label(&name) {
            ctx.say(doc, format!("volume name {name:?} is not a DNS label"));
        }
        let mut secret = None;
        if let Some(secret_name) = volume["secret"]["secretName"].as_str() {
            if !ctx.secrets.contains_key(secret_name) {
                ctx.say(
                    doc,
                    format!("volume {name:?} uses Secret {secret_name:?}, which the examples do not document"),
                );
            }
            let mode = &volume["secret"]["defaultMode"];
            if !mode.is_badvalue() && !mode.as_i64().is_some_and(|m| (0..=0o777).contains(&m)) {
                ctx.say(
                    doc,
                    format!("volume {name:?}: defaultMode {mode:?} is not a file mode"),
                );
            }
            secret = Some(secret_name.to_owned());
        } else if let Some(path) = volume["hostPath"]["path"].as_str() {
            if !path.starts_with('/') {
                ctx.say(
                    doc,
                    format!("volume {name:?}: hostPath {path:?} is not absolute"),
                );
            }
        } else {
            ctx.say(
                doc,
                format!("volume {name:?} has no source this check knows"),
            );
        }
        if volumes.insert(name.clone(), secret).is_some() {
            ctx.say(doc, format!("two volumes named {name:?}"));
        }
    }
    volumes
}

fn check_container(
    doc: &Doc,
    container: &Yaml,
    volumes: &Volumes,
    mounted: &mut BTreeSet<String>,
    ctx: &mut Ctx<'_>,
) {
    let name = container["name"].as_str().unwrap_or("?").to_owned();
    let mut say =
        |ctx: &mut Ctx<'_>, problem: String| ctx.say(doc, format!("container {name:?}: {problem}"));
    if container["image"].as_str().is_none_or(str::is_empty) {
        say(ctx, "has no image".into());
    }
    let command = strings(&container["command"]);
    let key = command
        .iter()
        .take(2)
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    let help = ctx.binaries.help.get(&key).cloned();
    if help.is_none() {
        say(
            ctx,
            format!("runs {command:?}, not a tally command this check knows"),
        );
    }

    // Ports: valid numbers, valid and unique names.
    let mut ports: BTreeMap<String, i64> = BTreeMap::new();
    let mut numbers = BTreeSet::new();
    for port in container["ports"].as_vec().cloned().unwrap_or_default() {
        if !is_port(&port["containerPort"]) {
            say(
                ctx,
                format!("containerPort {:?} is not a port", port["containerPort"]),
            );
        }
        numbers.insert(port["containerPort"].as_i64().unwrap_or(0));
        if let Some(protocol) = port["protocol"].as_str()
            && !["TCP", "UDP", "SCTP"].contains(&protocol)
        {
            say(ctx, format!("port protocol {protocol:?}"));
        }
        match port["name"].as_str() {
            Some(port_name) if is_port_name(port_name) => {
                let number = port["containerPort"].as_i64().unwrap_or(0);
                if ports.insert(port_name.to_owned(), number).is_some() {
                    say(ctx, format!("two ports named {port_name:?}"));
                }
            }
            Some(port_name) => say(
                ctx,
                format!(
                    "port name {port_name:?} is not a valid port name (at most 15 of a-z, 0-9, -)"
                ),
            ),
            None => {}
        }
    }

    // Volume mounts: each names a volume; absolute, distinct paths.
    let mut mounts: Vec<(String, String)> = Vec::new();
    for mount in container["volumeMounts"]
        .as_vec()
        .cloned()
        .unwrap_or_default()
    {
        let volume = mount["name"].as_str().unwrap_or("").to_owned();
        let path = mount["mountPath"].as_str().unwrap_or("").to_owned();
        if !volumes.contains_key(&volume) {
            say(
                ctx,
                format!("mounts volume {volume:?}, which the pod does not define"),
            );
        }
        if !path.starts_with('/') {
            say(ctx, format!("mountPath {path:?} is not absolute"));
        }
        if mounts.iter().any(|(_, p)| *p == path) {
            say(ctx, format!("two mounts on {path:?}"));
        }
        mounted.insert(volume.clone());
        mounts.push((volume, path));
    }

    // Environment: valid names, string values, documented Secrets and keys,
    // settings the binary reads, files that a mount provides.
    let env = container["env"].as_vec().cloned().unwrap_or_default();
    let mut defined: Vec<String> = Vec::new();
    let referenced: BTreeSet<String> = env
        .iter()
        .filter_map(|e| e["value"].as_str())
        .flat_map(references)
        .collect();
    for var in &env {
        let var_name = var["name"].as_str().unwrap_or("").to_owned();
        if !is_env_name(&var_name) {
            say(ctx, format!("environment variable name {var_name:?}"));
        }
        let has_value = !var["value"].is_badvalue();
        let has_from = !var["valueFrom"].is_badvalue();
        if has_value == has_from {
            say(
                ctx,
                format!("{var_name} needs exactly one of value and valueFrom"),
            );
        }
        if has_value {
            match var["value"].as_str() {
                Some(value) => {
                    for used in references(value) {
                        if !defined.contains(&used) {
                            say(
                                ctx,
                                format!("{var_name} uses $({used}), not defined before it"),
                            );
                        }
                    }
                    check_file_setting(&var_name, value, &mounts, volumes, ctx, &mut say);
                }
                None => say(
                    ctx,
                    format!(
                        "{var_name}: value {:?} is not a string (quote it)",
                        var["value"]
                    ),
                ),
            }
        }
        let secret_ref = &var["valueFrom"]["secretKeyRef"];
        if !secret_ref.is_badvalue() {
            let secret = secret_ref["name"].as_str().unwrap_or("");
            let key = secret_ref["key"].as_str().unwrap_or("");
            match ctx.secrets.get(secret) {
                None => say(
                    ctx,
                    format!(
                        "{var_name} comes from Secret {secret:?}, which the examples do not document"
                    ),
                ),
                Some(keys) if !keys.contains(key) => say(
                    ctx,
                    format!(
                        "{var_name} comes from key {key:?}, which Secret {secret:?} does not have"
                    ),
                ),
                Some(_) => {}
            }
        }
        let field_ref = &var["valueFrom"]["fieldRef"];
        if !field_ref.is_badvalue() && field_ref["fieldPath"].as_str().is_none_or(str::is_empty) {
            say(ctx, format!("{var_name}: fieldRef without fieldPath"));
        }
        if let Some(help) = &help
            && !super::common::help_names(help, &var_name)
            && !referenced.contains(&var_name)
        {
            say(ctx, format!("sets {var_name}, which `{key}` does not read"));
        }
        defined.push(var_name);
    }

    // Probes: on a path the collector serves, through a port it declares.
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let get = &container[probe]["httpGet"];
        if container[probe].is_badvalue() {
            continue;
        }
        if get.is_badvalue() {
            say(ctx, format!("{probe} is not an httpGet probe"));
            continue;
        }
        let path = get["path"].as_str().unwrap_or("");
        if !ctx.binaries.served_paths.iter().any(|p| p == path) {
            say(
                ctx,
                format!(
                    "{probe} asks {path:?}, which is not served (served: {:?})",
                    ctx.binaries.served_paths
                ),
            );
        }
        let port_ok = match &get["port"] {
            Yaml::String(port_name) => ports.contains_key(port_name),
            Yaml::Integer(number) => numbers.contains(number),
            _ => false,
        };
        if !port_ok {
            say(
                ctx,
                format!(
                    "{probe} port {:?} is not one of the container's ports",
                    get["port"]
                ),
            );
        }
    }
}

/// The `$(NAME)` references in an environment value.
fn references(value: &str) -> Vec<String> {
    value
        .split("$(")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(name, _)| name.to_owned()))
        .collect()
}

/// A setting that is a file path must lie in a mount; in a Secret's mount,
/// its name must be one of the Secret's keys.
fn check_file_setting(
    var_name: &str,
    value: &str,
    mounts: &[(String, String)],
    volumes: &Volumes,
    ctx: &mut Ctx<'_>,
    say: &mut impl FnMut(&mut Ctx<'_>, String),
) {
    if !value.starts_with('/') {
        return;
    }
    // Inside a mounted directory, or the mount itself (a file, or the
    // directory a setting names).
    let holder = mounts.iter().find_map(|(volume, path)| {
        let rest = value.strip_prefix(path.as_str())?;
        let rest = if rest.is_empty() {
            rest
        } else {
            rest.strip_prefix('/')?
        };
        Some((volume, rest))
    });
    let Some((volume, file)) = holder else {
        return say(ctx, format!("{var_name}={value} is in no mounted volume"));
    };
    if let Some(Some(secret)) = volumes.get(volume)
        && !file.is_empty()
        && !file.contains("$(")
        && !ctx
            .secrets
            .get(secret)
            .is_some_and(|keys| keys.contains(file))
    {
        say(
            ctx,
            format!("{var_name}={value}: Secret {secret:?} has no key {file:?}"),
        );
    }
}

fn check_service(doc: &Doc, docs: &[Doc], ctx: &mut Ctx<'_>) {
    let spec = &doc.yaml["spec"];
    let Some(selector) = spec["selector"].as_hash().filter(|s| !s.is_empty()) else {
        return ctx.say(doc, "no spec.selector".into());
    };
    let namespace = doc.yaml["metadata"]["namespace"].as_str();
    let target = docs.iter().find(|d| {
        matches!(kind(d), "DaemonSet" | "Deployment")
            && d.yaml["metadata"]["namespace"].as_str() == namespace
            && selector.iter().all(|(k, v)| {
                d.yaml["spec"]["template"]["metadata"]["labels"][k.as_str().unwrap_or("")] == *v
            })
    });
    let Some(target) = target else {
        return ctx.say(doc, "its selector matches no pod template".into());
    };
    let containers = target.yaml["spec"]["template"]["spec"]["containers"]
        .as_vec()
        .cloned()
        .unwrap_or_default();
    let container_ports: Vec<&Yaml> = containers
        .iter()
        .flat_map(|c| {
            c["ports"]
                .as_vec()
                .map(|p| p.iter().collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect();
    let mut names = BTreeSet::new();
    for port in spec["ports"].as_vec().cloned().unwrap_or_default() {
        if !is_port(&port["port"]) {
            ctx.say(doc, format!("port {:?} is not a port", port["port"]));
        }
        let name = port["name"].as_str().unwrap_or("");
        if !is_port_name(name) || !names.insert(name.to_owned()) {
            ctx.say(doc, format!("port name {name:?} is invalid or repeated"));
        }
        let found = match &port["targetPort"] {
            Yaml::String(target_name) => container_ports
                .iter()
                .any(|p| p["name"].as_str() == Some(target_name.as_str())),
            Yaml::Integer(number) => container_ports
                .iter()
                .any(|p| p["containerPort"].as_i64() == Some(*number)),
            Yaml::BadValue => container_ports
                .iter()
                .any(|p| p["containerPort"] == port["port"]),
            _ => false,
        };
        if !found {
            ctx.say(
                doc,
                format!(
                    "targetPort {:?} is no port of the pods it selects",
                    port["targetPort"]
                ),
            );
        }
    }
}
