//! The Kubernetes manifests (deploy/k8s): valid against the Kubernetes schemas
//! (kubernetes-validate, installed from PyPI by deploy/k8s/validate), and wired the way
//! millrace needs: pod name = instance id = static member id, state on a volume, a
//! headless Service for routing, /ready for readiness, Prometheus annotations, a
//! disruption budget, and a topology that millrace itself accepts.

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};
use std::path::Path;
use std::process::Command;

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/k8s/millrace.yaml");

fn validate(file: &Path) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s/validate");
    let out = Command::new(script).arg(file).output().expect("run deploy/k8s/validate");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn docs() -> Vec<Value> {
    let text = std::fs::read_to_string(MANIFEST).unwrap();
    YamlLoader::load_from_str(&text).unwrap().iter().map(json).collect()
}

/// A YAML document as JSON, to compare fields with `==`.
fn json(y: &Yaml) -> Value {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Value::String(s.clone()),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(items) => Value::Array(items.iter().map(json).collect()),
        Yaml::Hash(h) => Value::Object(h.iter().map(|(k, v)| (k.as_str().map_or_else(|| format!("{k:?}"), str::to_string), json(v))).collect()),
        _ => Value::Null,
    }
}

fn kind<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn manifests_pass_the_kubernetes_schemas_and_a_broken_one_does_not() {
    let (ok, out) = validate(Path::new(MANIFEST));
    assert!(ok, "{out}");
    assert!(out.contains("statefulset/millrace"), "the StatefulSet was checked: {out}");
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, std::fs::read_to_string(MANIFEST).unwrap().replace("  replicas: 3", "  replicaz: 3")).unwrap();
    let (ok, out) = validate(&broken);
    assert!(!ok && out.contains("replicaz"), "the validator must reject an unknown field: {out}");
}

#[test]
fn the_statefulset_is_wired_for_millrace() {
    let docs = docs();
    let sts = kind(&docs, "StatefulSet", "millrace");
    let pod = &sts["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    let container = &pod["spec"]["containers"][0];
    let env = |name: &str| -> Value {
        container["env"].as_array().unwrap().iter().find(|e| e["name"] == name).cloned().unwrap_or(Value::Null)
    };
    // Pod name → instance id → transactional id and static group member.
    assert_eq!(env("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    assert_eq!(env("MILLRACE_INSTANCE_ID")["value"], "$(POD_NAME)");
    // State on the pod's own volume.
    let state_dir = env("MILLRACE_STATE_DIR")["value"].as_str().unwrap().to_string();
    let mount = container["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "state").unwrap();
    assert_eq!(mount["mountPath"].as_str(), Some(state_dir.as_str()));
    assert_eq!(sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "state");
    // Routing: the headless Service every pod advertises itself under.
    let headless = sts["spec"]["serviceName"].as_str().unwrap();
    let svc = kind(&docs, "Service", headless);
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(&svc["spec"]["selector"], labels);
    let advertised = env("MILLRACE_ADVERTISED_HTTP")["value"].as_str().unwrap().to_string();
    assert!(advertised.starts_with(&format!("$(POD_NAME).{headless}.")), "{advertised}");
    let port = container["ports"][0]["containerPort"].as_u64().unwrap();
    assert!(advertised.ends_with(&format!(":{port}")), "{advertised}");
    // Readiness is restore done; Prometheus scrapes /metrics on the same port.
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health");
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/path"], "/metrics");
    assert_eq!(ann["prometheus.io/port"].as_str(), Some(port.to_string().as_str()));
    // One pod away at a time.
    let pdb = kind(&docs, "PodDisruptionBudget", "millrace");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&sts["spec"]["selector"]["matchLabels"], labels);
    // The topology it mounts is one millrace accepts, listening on the container port.
    let cm = kind(&docs, "ConfigMap", "millrace-topology");
    let topology = millrace::topology::parse(Path::new("configmap/topology.yaml"), cm["data"]["topology.yaml"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(topology.http.listen.ends_with(&format!(":{port}")));
    assert!(topology.check_registered(millrace::builtin_registry().names()).is_ok());
}
