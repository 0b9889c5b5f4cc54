//! The Kubernetes manifests in `image/k8s/` give the container entrypoint only variables it
//! understands, with values it accepts, and ask for what each workload is: kernel mode with the
//! routes for the subnet-router pair, kernel mode with `--advertise-exit-node` for the exit
//! node. The names start with `package_k8s` so that `cargo xtask test package_k8s` runs them
//! with the rest of that check.

use std::collections::BTreeMap;
use std::path::Path;

/// What the pods get from the Secret and the downward API, and the routes for `@ROUTES@`.
const SECRET_VALUES: &[(&str, &str)] = &[
    ("TS_AUTHKEY", "tgkey-5f3a9c1e-0b7d4e2a6c8f1b3d5e7a9c0f"),
    (
        "TG_LOGIN_SERVER",
        "tg://control.example.com:7443#7d0a7f0e3c6b2a19d4c5e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7",
    ),
];
const POD_NAME: &str = "subnet-router-0";
const ROUTES: &str = "10.244.0.0/16,10.96.0.0/12";

fn unquote(v: &str) -> String {
    let v = v.trim();
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
        .to_string()
}

/// The container environment in a manifest: `- name: X` entries followed by `value:` (its
/// value) or `valueFrom:` (the Secret's key's value, or the pod name for a `fieldRef`).
fn environment(yaml: &str) -> BTreeMap<String, String> {
    let lines: Vec<&str> = yaml
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    let mut env = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = line.trim().strip_prefix("- name: ") else {
            continue;
        };
        let Some(next) = lines.get(i + 1).map(|l| l.trim()) else {
            continue;
        };
        if let Some(v) = next.strip_prefix("value:") {
            env.insert(name.to_string(), unquote(v));
        } else if next == "valueFrom:" {
            let source = lines.get(i + 2).map(|l| l.trim()).unwrap_or_default();
            let value = match source {
                "secretKeyRef:" => {
                    let key = lines[i + 3..]
                        .iter()
                        .take(2)
                        .find_map(|l| l.trim().strip_prefix("key: "))
                        .unwrap_or_else(|| panic!("{name}: secretKeyRef without key"));
                    SECRET_VALUES
                        .iter()
                        .find(|(k, _)| *k == key)
                        .unwrap_or_else(|| panic!("{name}: unknown Secret key {key}"))
                        .1
                        .to_string()
                }
                "fieldRef:" => POD_NAME.to_string(),
                other => panic!("{name}: unexpected valueFrom {other}"),
            };
            env.insert(name.to_string(), value);
        }
    }
    env
}

fn manifest(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../image/k8s")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace("@ROUTES@", ROUTES)
}

/// The entrypoint's plan for a manifest's environment: no warnings, kernel mode.
fn plan_of(name: &str) -> tailgate::containerboot::BootPlan {
    let text = manifest(name);
    assert!(text.contains("image: tailgate:latest"), "{name}");
    let env = environment(&text);
    assert!(env.contains_key("TS_AUTHKEY"), "{name}: {env:?}");
    let plan = tailgate::containerboot::plan(&env).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(plan.warnings.is_empty(), "{name}: {:?}", plan.warnings);
    assert!(
        !plan.daemon_args.iter().any(|a| a.contains("userspace")),
        "{name}: kernel mode: {:?}",
        plan.daemon_args
    );
    assert!(
        plan.daemon_args.iter().any(|a| a == "--metrics-listen"),
        "{name}: /healthz for the readiness probe: {:?}",
        plan.daemon_args
    );
    assert_eq!(plan.up.auth_key.as_deref(), Some(SECRET_VALUES[0].1));
    plan
}

#[test]
fn package_k8s_subnet_router_pair_is_valid_entrypoint_input() {
    let plan = plan_of("subnet-router.yaml");
    let routes: Vec<String> = plan
        .up
        .advertise_routes
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(routes.join(","), ROUTES);
    assert!(!plan.up.advertise_exit_node);
    assert_eq!(plan.up.hostname.as_deref(), Some(POD_NAME));
}

#[test]
fn package_k8s_exit_node_is_valid_entrypoint_input() {
    let plan = plan_of("exit-node.yaml");
    assert!(plan.up.advertise_exit_node);
    assert!(plan.up.advertise_routes.is_empty());
}

#[test]
fn package_k8s_secret_holds_what_the_pods_read() {
    let secret = manifest("secret.yaml");
    for (key, _) in SECRET_VALUES {
        assert!(
            secret
                .lines()
                .any(|l| l.trim().starts_with(&format!("{key}: "))),
            "secret.yaml has no {key}"
        );
    }
}

#[test]
fn package_k8s_environment_extractor_follows_value_sources() {
    let yaml = "env:\n  - name: A\n    value: \"x\"\n  # note\n  - name: TS_AUTHKEY\n    valueFrom:\n      secretKeyRef:\n        name: s\n        key: TS_AUTHKEY\n  - name: H\n    valueFrom:\n      fieldRef:\n        fieldPath: metadata.name\nports:\n  - name: metrics\n    containerPort: 9002\n";
    let env = environment(yaml);
    assert_eq!(env.len(), 3, "{env:?}");
    assert_eq!(env["A"], "x");
    assert_eq!(env["TS_AUTHKEY"], SECRET_VALUES[0].1);
    assert_eq!(env["H"], POD_NAME);
}
