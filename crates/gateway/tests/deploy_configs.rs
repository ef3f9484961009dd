//! The gateway configurations shipped in deploy/ (compose file, Kubernetes
//! ConfigMap) are valid: strict parsing and validation, as `--check` does.
use std::path::Path;

fn repo(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn compose_gateway_config_is_valid_and_uses_etcd() {
    let cfg = ragfleet_gateway::Config::parse(&repo("deploy/gateway.toml"), "deploy/gateway.toml")
        .expect("deploy/gateway.toml parses");
    let pool = cfg.pools.get("nodes").expect("pool nodes");
    assert!(pool.servers.is_empty(), "servers come from etcd");
    assert!(pool.discovery.is_enabled());
    assert!(cfg.admin.is_some(), "Prometheus scrapes the admin listener");
}

/// The TOML embedded in the ConfigMap (`gateway.toml: |` block, 4 spaces in).
fn configmap_toml(yaml: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "gateway.toml: |");
    assert!(lines.next().is_some(), "ConfigMap has a gateway.toml block");
    lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn kubernetes_configmap_gateway_config_is_valid_and_uses_dns() {
    let text = configmap_toml(&repo("deploy/k8s/config.yaml"));
    assert!(text.contains("[pool.nodes.discovery.dns]"));
    let cfg = ragfleet_gateway::Config::parse(&text, "deploy/k8s/config.yaml (gateway.toml)")
        .expect("the ConfigMap's gateway.toml parses");
    let pool = cfg.pools.get("nodes").expect("pool nodes");
    assert!(pool.discovery.is_enabled());
}
