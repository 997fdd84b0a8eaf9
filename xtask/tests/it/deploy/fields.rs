//! The fields of the Kubernetes objects the manifests use, as the API
//! defines them, so that a misspelt field (`readinesProbe:`), which the API
//! server would reject or silently drop, is caught here. Only the parts of
//! each object that tally's manifests use are listed: a field this table
//! lacks is reported too, and belongs in it once checked against the API.

use yaml_rust2::Yaml;

/// What a value of the object tree may hold.
pub enum Shape {
    /// A mapping with exactly these fields possible.
    Fields(&'static [(&'static str, &'static Shape)]),
    /// A list of values of one shape.
    ListOf(&'static Shape),
    /// A scalar, or a mapping with free keys (labels, quantities).
    Free,
}

use Shape::{Fields, Free, ListOf};

static FREE: Shape = Free;

static METADATA: Shape = Fields(&[
    ("name", &FREE),
    ("namespace", &FREE),
    ("labels", &FREE),
    ("annotations", &FREE),
]);

static SELECTOR: Shape = Fields(&[("matchLabels", &FREE), ("matchExpressions", &FREE)]);

static SECCOMP: Shape = Fields(&[("type", &FREE), ("localhostProfile", &FREE)]);

static CAPABILITIES: Shape = Fields(&[("add", &FREE), ("drop", &FREE)]);

static CONTAINER_SECURITY: Shape = Fields(&[
    ("runAsUser", &FREE),
    ("runAsGroup", &FREE),
    ("runAsNonRoot", &FREE),
    ("privileged", &FREE),
    ("allowPrivilegeEscalation", &FREE),
    ("readOnlyRootFilesystem", &FREE),
    ("capabilities", &CAPABILITIES),
    ("seccompProfile", &SECCOMP),
    ("seLinuxOptions", &FREE),
    ("appArmorProfile", &FREE),
    ("procMount", &FREE),
]);

static POD_SECURITY: Shape = Fields(&[
    ("runAsUser", &FREE),
    ("runAsGroup", &FREE),
    ("runAsNonRoot", &FREE),
    ("fsGroup", &FREE),
    ("fsGroupChangePolicy", &FREE),
    ("supplementalGroups", &FREE),
    ("seccompProfile", &SECCOMP),
    ("seLinuxOptions", &FREE),
    ("appArmorProfile", &FREE),
    ("sysctls", &FREE),
]);

static KEY_REF: Shape = Fields(&[("name", &FREE), ("key", &FREE), ("optional", &FREE)]);

static FIELD_REF: Shape = Fields(&[("fieldPath", &FREE), ("apiVersion", &FREE)]);

static VALUE_FROM: Shape = Fields(&[
    ("secretKeyRef", &KEY_REF),
    ("configMapKeyRef", &KEY_REF),
    ("fieldRef", &FIELD_REF),
    ("resourceFieldRef", &FREE),
]);

static ENV: Shape = Fields(&[
    ("name", &FREE),
    ("value", &FREE),
    ("valueFrom", &VALUE_FROM),
]);

static PORT: Shape = Fields(&[
    ("name", &FREE),
    ("containerPort", &FREE),
    ("protocol", &FREE),
    ("hostPort", &FREE),
    ("hostIP", &FREE),
]);

static MOUNT: Shape = Fields(&[
    ("name", &FREE),
    ("mountPath", &FREE),
    ("readOnly", &FREE),
    ("subPath", &FREE),
    ("subPathExpr", &FREE),
    ("mountPropagation", &FREE),
    ("recursiveReadOnly", &FREE),
]);

static HTTP_GET: Shape = Fields(&[
    ("path", &FREE),
    ("port", &FREE),
    ("host", &FREE),
    ("scheme", &FREE),
    ("httpHeaders", &FREE),
]);

static PROBE: Shape = Fields(&[
    ("httpGet", &HTTP_GET),
    ("tcpSocket", &FREE),
    ("exec", &FREE),
    ("grpc", &FREE),
    ("initialDelaySeconds", &FREE),
    ("periodSeconds", &FREE),
    ("timeoutSeconds", &FREE),
    ("successThreshold", &FREE),
    ("failureThreshold", &FREE),
    ("terminationGracePeriodSeconds", &FREE),
]);

static RESOURCES: Shape = Fields(&[("requests", &FREE), ("limits", &FREE)]);

static CONTAINER: Shape = Fields(&[
    ("name", &FREE),
    ("image", &FREE),
    ("imagePullPolicy", &FREE),
    ("command", &FREE),
    ("args", &FREE),
    ("workingDir", &FREE),
    ("env", &ListOf(&ENV)),
    ("envFrom", &FREE),
    ("ports", &ListOf(&PORT)),
    ("volumeMounts", &ListOf(&MOUNT)),
    ("resources", &RESOURCES),
    ("readinessProbe", &PROBE),
    ("livenessProbe", &PROBE),
    ("startupProbe", &PROBE),
    ("securityContext", &CONTAINER_SECURITY),
    ("lifecycle", &FREE),
    ("terminationMessagePolicy", &FREE),
]);

static SECRET_VOLUME: Shape = Fields(&[
    ("secretName", &FREE),
    ("defaultMode", &FREE),
    ("items", &FREE),
    ("optional", &FREE),
]);

static HOST_PATH: Shape = Fields(&[("path", &FREE), ("type", &FREE)]);

static VOLUME: Shape = Fields(&[
    ("name", &FREE),
    ("secret", &SECRET_VOLUME),
    ("hostPath", &HOST_PATH),
    ("configMap", &FREE),
    ("emptyDir", &FREE),
    ("projected", &FREE),
    ("persistentVolumeClaim", &FREE),
]);

static TOLERATION: Shape = Fields(&[
    ("key", &FREE),
    ("operator", &FREE),
    ("value", &FREE),
    ("effect", &FREE),
    ("tolerationSeconds", &FREE),
]);

static POD_SPEC: Shape = Fields(&[
    ("containers", &ListOf(&CONTAINER)),
    ("initContainers", &ListOf(&CONTAINER)),
    ("volumes", &ListOf(&VOLUME)),
    ("hostNetwork", &FREE),
    ("hostPID", &FREE),
    ("hostIPC", &FREE),
    ("dnsPolicy", &FREE),
    ("automountServiceAccountToken", &FREE),
    ("serviceAccountName", &FREE),
    ("tolerations", &ListOf(&TOLERATION)),
    ("terminationGracePeriodSeconds", &FREE),
    ("priorityClassName", &FREE),
    ("securityContext", &POD_SECURITY),
    ("nodeSelector", &FREE),
    ("affinity", &FREE),
    ("topologySpreadConstraints", &FREE),
    ("restartPolicy", &FREE),
    ("imagePullSecrets", &FREE),
]);

static TEMPLATE: Shape = Fields(&[("metadata", &METADATA), ("spec", &POD_SPEC)]);

static ROLLING: Shape = Fields(&[("maxUnavailable", &FREE), ("maxSurge", &FREE)]);

static STRATEGY: Shape = Fields(&[("type", &FREE), ("rollingUpdate", &ROLLING)]);

static DAEMONSET_SPEC: Shape = Fields(&[
    ("selector", &SELECTOR),
    ("template", &TEMPLATE),
    ("updateStrategy", &STRATEGY),
    ("minReadySeconds", &FREE),
    ("revisionHistoryLimit", &FREE),
]);

static DEPLOYMENT_SPEC: Shape = Fields(&[
    ("replicas", &FREE),
    ("selector", &SELECTOR),
    ("template", &TEMPLATE),
    ("strategy", &STRATEGY),
    ("minReadySeconds", &FREE),
    ("revisionHistoryLimit", &FREE),
    ("progressDeadlineSeconds", &FREE),
    ("paused", &FREE),
]);

static SERVICE_PORT: Shape = Fields(&[
    ("name", &FREE),
    ("port", &FREE),
    ("targetPort", &FREE),
    ("protocol", &FREE),
    ("appProtocol", &FREE),
    ("nodePort", &FREE),
]);

static SERVICE_SPEC: Shape = Fields(&[
    ("selector", &FREE),
    ("ports", &ListOf(&SERVICE_PORT)),
    ("type", &FREE),
    ("clusterIP", &FREE),
    ("sessionAffinity", &FREE),
    ("externalTrafficPolicy", &FREE),
    ("internalTrafficPolicy", &FREE),
    ("ipFamilyPolicy", &FREE),
]);

const HEAD: [(&str, &Shape); 3] = [
    ("apiVersion", &FREE),
    ("kind", &FREE),
    ("metadata", &METADATA),
];

static DAEMONSET: Shape = Fields(&[HEAD[0], HEAD[1], HEAD[2], ("spec", &DAEMONSET_SPEC)]);
static DEPLOYMENT: Shape = Fields(&[HEAD[0], HEAD[1], HEAD[2], ("spec", &DEPLOYMENT_SPEC)]);
static SERVICE: Shape = Fields(&[HEAD[0], HEAD[1], HEAD[2], ("spec", &SERVICE_SPEC)]);
static NAMESPACE: Shape = Fields(&[HEAD[0], HEAD[1], HEAD[2]]);
static SECRET: Shape = Fields(&[
    HEAD[0],
    HEAD[1],
    HEAD[2],
    ("type", &FREE),
    ("data", &FREE),
    ("stringData", &FREE),
    ("immutable", &FREE),
]);

/// The fields of a document that its kind does not have, as `a.b[0].c`.
pub fn unknown(doc: &Yaml) -> Vec<String> {
    let shape = match doc["kind"].as_str() {
        Some("DaemonSet") => &DAEMONSET,
        Some("Deployment") => &DEPLOYMENT,
        Some("Service") => &SERVICE,
        Some("Namespace") => &NAMESPACE,
        Some("Secret") => &SECRET,
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    walk(shape, doc, "", &mut out);
    out
}

fn walk(shape: &Shape, value: &Yaml, at: &str, out: &mut Vec<String>) {
    match shape {
        Fields(fields) => {
            let Some(hash) = value.as_hash() else {
                return;
            };
            for (key, inner) in hash {
                let key = key.as_str().unwrap_or("?");
                let path = if at.is_empty() {
                    key.to_owned()
                } else {
                    format!("{at}.{key}")
                };
                match fields.iter().find(|(name, _)| *name == key) {
                    Some((_, inner_shape)) => walk(inner_shape, inner, &path, out),
                    None => out.push(path),
                }
            }
        }
        ListOf(item) => {
            for (index, inner) in value.as_vec().into_iter().flatten().enumerate() {
                walk(item, inner, &format!("{at}[{index}]"), out);
            }
        }
        Free => {}
    }
}
