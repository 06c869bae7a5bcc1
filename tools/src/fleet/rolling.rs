//! `hadr-host deploy --fleet topology.json`: a deploy rolled across the hosts
//! of a topology, one host at a time, in file order. Each host checks the new
//! version itself (compile, load, smoke prediction) before it switches, so
//! the first host that refuses stops the roll: the hosts before it serve the
//! new version, the rest the old one, and the report says which is which.

use std::net::IpAddr;

use crate::admin_client::{AdminClient, ClientError, DeployPlan};
use hadr_server::topology::Topology;

/// The hosts of `topology`: each distinct `host` address (127.0.0.1 where an
/// entry names none) with its entries, in file order.
pub fn hosts(topology: &Topology) -> Vec<(IpAddr, Vec<String>)> {
    let mut hosts: Vec<(IpAddr, Vec<String>)> = Vec::new();
    for spec in &topology.instances {
        let ip = spec.host.unwrap_or(IpAddr::from([127, 0, 0, 1]));
        match hosts.iter_mut().find(|(h, _)| *h == ip) {
            Some((_, names)) => names.push(spec.name.clone()),
            None => hosts.push((ip, vec![spec.name.clone()])),
        }
    }
    hosts
}

/// One host's part of the roll.
#[derive(Debug, serde::Serialize)]
pub struct HostOutcome {
    /// Its admin listener.
    pub admin: String,
    /// The entries it serves.
    pub entries: Vec<String>,
    /// What its admin API answered.
    pub answer: serde_json::Value,
}

/// The roll stopped at a host.
#[derive(Debug, thiserror::Error)]
#[error("the deploy stopped at host {admin} (entries {entries:?}): {source}; hosts already switched: {done:?}, not tried: {rest:?}")]
pub struct RollingError {
    /// The host that refused or could not be reached.
    pub admin: String,
    /// Its entries.
    pub entries: Vec<String>,
    /// Why.
    pub source: ClientError,
    /// Admin addresses of the hosts that took the new version.
    pub done: Vec<String>,
    /// Admin addresses of the hosts after it.
    pub rest: Vec<String>,
}

impl RollingError {
    /// Whether the operator's input is at fault (a refused model, a wrong token).
    pub fn is_operator_error(&self) -> bool {
        self.source.is_operator_error()
    }
}

/// The hosts a deploy of `plan` goes to: all of them, but for a model only
/// those with an entry serving a model of its name (a host replaces the
/// model of that name only, and refuses a model it does not serve). An
/// entry that names no model serves its host's default, which the file
/// does not say: its host is asked, and decides.
pub fn hosts_for(topology: &Topology, plan: &DeployPlan) -> Vec<(IpAddr, Vec<String>)> {
    let Some((name, _)) = &plan.model else {
        return hosts(topology);
    };
    let serves = |entry: &String| {
        topology.instances.iter().any(|spec| {
            spec.name == *entry
                && (spec.model.as_os_str().is_empty()
                    || spec.model.file_stem() == Some(std::ffi::OsStr::new(name)))
        })
    };
    hosts(topology)
        .into_iter()
        .filter(|(_, entries)| entries.iter().any(serves))
        .collect()
}

/// Deploys `plan` to each host of `topology` it concerns ([`hosts_for`]) in
/// turn, each host's admin listener at its address and `admin_port`, with
/// `token`.
pub async fn deploy(
    topology: &Topology,
    admin_port: u16,
    token: &str,
    plan: &DeployPlan,
) -> Result<Vec<HostOutcome>, RollingError> {
    let hosts = hosts_for(topology, plan);
    let admin = |ip: &IpAddr| std::net::SocketAddr::new(*ip, admin_port).to_string();
    let mut done = Vec::new();
    for (k, (ip, entries)) in hosts.iter().enumerate() {
        let address = admin(ip);
        let client = AdminClient {
            url: format!("http://{address}").parse().expect("a valid URL"),
            token: token.to_string(),
        };
        tracing::info!(host = %address, ?entries, "deploying to the next host");
        match client.deploy(plan).await {
            Ok(answer) => done.push(HostOutcome {
                admin: address,
                entries: entries.clone(),
                answer,
            }),
            Err(source) => {
                return Err(RollingError {
                    admin: address,
                    entries: entries.clone(),
                    source,
                    done: done.into_iter().map(|d| d.admin).collect(),
                    rest: hosts[k + 1..].iter().map(|(ip, _)| admin(ip)).collect(),
                })
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_group_entries_by_address_in_file_order() {
        let t = Topology::parse_shape(
            r#"{"b": {"status": true, "host": "127.0.0.3", "port": 1},
                "a": {"status": true, "host": "127.0.0.2", "port": 1},
                "c": {"status": false, "host": "127.0.0.3", "port": 2},
                "d": {"status": true, "port": 3}}"#,
            std::path::Path::new("fleet.json"),
        )
        .unwrap();
        let hosts = hosts(&t);
        let shown: Vec<(String, Vec<String>)> = hosts
            .into_iter()
            .map(|(ip, names)| (ip.to_string(), names))
            .collect();
        assert_eq!(
            shown,
            [
                (
                    "127.0.0.3".to_string(),
                    vec!["b".to_string(), "c".to_string()]
                ),
                ("127.0.0.2".to_string(), vec!["a".to_string()]),
                ("127.0.0.1".to_string(), vec!["d".to_string()]),
            ]
        );
    }

    #[test]
    fn a_model_goes_only_to_the_hosts_serving_its_name() {
        let t = Topology::parse_shape(
            r#"{"a": {"status": true, "host": "127.0.0.2", "port": 1, "model": "models/digits.onnx"},
                "b": {"status": true, "host": "127.0.0.3", "port": 1, "model": "models/breast_cancer.onnx"},
                "c": {"status": false, "host": "127.0.0.3", "port": 2, "model": "models/digits.onnx"},
                "d": {"status": true, "host": "127.0.0.4", "port": 1, "model": "models/breast_cancer.onnx"},
                "e": {"status": true, "host": "127.0.0.5", "port": 1}}"#,
            std::path::Path::new("fleet.json"),
        )
        .unwrap();
        let plan = |model: Option<&str>| DeployPlan {
            module: model.is_none().then(|| "guest.wasm".into()),
            model: model.map(|m| (m.to_string(), format!("{m}-v2.onnx").into())),
            to: hadr_server::rollout::Targets::All,
            canary: None,
            example: None,
            max_error_rate: None,
            min_calls: None,
        };
        let ips = |plan: DeployPlan| -> Vec<String> {
            hosts_for(&t, &plan)
                .into_iter()
                .map(|(ip, _)| ip.to_string())
                .collect()
        };
        // 127.0.0.5's entry names no model: its host decides.
        assert_eq!(
            ips(plan(Some("digits"))),
            ["127.0.0.2", "127.0.0.3", "127.0.0.5"]
        );
        assert_eq!(
            ips(plan(Some("breast_cancer"))),
            ["127.0.0.3", "127.0.0.4", "127.0.0.5"]
        );
        assert_eq!(ips(plan(Some("wine"))), ["127.0.0.5"]);
        assert_eq!(ips(plan(None)).len(), 4);
    }
}
