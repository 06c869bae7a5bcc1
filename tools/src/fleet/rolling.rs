//! `hadr-host deploy --fleet topology.json`: a deploy rolled across the hosts
//! of a topology, one host at a time, in file order. Each host checks the new
//! version itself (compile, load, smoke prediction) before it switches, so
//! the first host that refuses stops the roll: the hosts before it serve the
//! new version, the rest the old one, and the report says which is which.
//!
//! A host is found by its entries' `host` address and the one admin port of
//! the fleet, so it reaches one process per address: before anything
//! changes, every host's `GET /admin/deployments` must list all the entries
//! of its address (another process there would be left on the old version
//! unseen), and after each deploy it must show them on the new version.

use std::net::IpAddr;

use crate::admin_client::{AdminClient, ClientError, DeployPlan};
use hadr_server::topology::Topology;

/// The topology does not say where each entry's admin listener is.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// An entry names no host: its process listens on its own `--listen`
    /// IP, which the file does not say.
    #[error("{file}: instance `{instance}`: field `host`: missing; deploy --fleet reaches each entry's host at its \"host\" address (give every entry one, or deploy to each host with --admin)")]
    NoHost {
        /// The topology file.
        file: String,
        /// The entry.
        instance: String,
    },
    /// An entry listens on every address (`0.0.0.0`, `::`): no one host.
    #[error("{file}: instance `{instance}`: field `host`: {host} is every address of its machine, not one host to reach; deploy to each host with --admin (docs/fleet.md)")]
    Unspecified {
        /// The topology file.
        file: String,
        /// The entry.
        instance: String,
        /// Its address.
        host: IpAddr,
    },
    /// The admin listener at an entry's address does not serve it: another
    /// process on that address does, which deploy --fleet cannot reach.
    #[error("{file}: instance `{instance}`: field `host`: the admin listener at {admin} does not serve it (it serves {serves:?}), so another process on {host} does; deploy --fleet reaches one process per address: deploy to that one with --admin")]
    NotServed {
        /// The topology file.
        file: String,
        /// The entry.
        instance: String,
        /// Its address.
        host: IpAddr,
        /// The admin listener asked.
        admin: String,
        /// The entries that listener serves.
        serves: Vec<String>,
    },
}

/// The hosts of `topology`: each distinct `host` address with its entries,
/// in file order. Refuses entries that name no single address.
pub fn hosts(topology: &Topology) -> Result<Vec<(IpAddr, Vec<String>)>, LayoutError> {
    let file = || topology.path.display().to_string();
    let mut hosts: Vec<(IpAddr, Vec<String>)> = Vec::new();
    for spec in &topology.instances {
        let instance = spec.name.clone();
        let ip = spec.host.ok_or_else(|| LayoutError::NoHost {
            file: file(),
            instance: instance.clone(),
        })?;
        if ip.is_unspecified() {
            return Err(LayoutError::Unspecified {
                file: file(),
                instance,
                host: ip,
            });
        }
        match hosts.iter_mut().find(|(h, _)| *h == ip) {
            Some((_, names)) => names.push(instance),
            None => hosts.push((ip, vec![instance])),
        }
    }
    Ok(hosts)
}

/// One host's part of the roll.
#[derive(Debug, serde::Serialize)]
pub struct HostOutcome {
    /// Its admin listener.
    pub admin: String,
    /// Its entries that serve the new version, as its
    /// `GET /admin/deployments` shows after the deploy.
    pub deployed: Vec<String>,
    /// Its entries the deploy left as they were (they serve another model).
    pub untouched: Vec<String>,
    /// What its admin API answered.
    pub answer: serde_json::Value,
    /// Why nothing was deployed there, when nothing was: its entries name
    /// no model, and it serves none of the name deployed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// Why the roll stopped at a host.
#[derive(Debug, thiserror::Error)]
pub enum StopReason {
    /// It refused, or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// It answered the deploy, but does not serve the new version.
    #[error("after the deploy, instance `{instance}` serves version {serves}, not {wanted}")]
    NotSwitched {
        /// The entry.
        instance: String,
        /// What `GET /admin/deployments` shows.
        serves: String,
        /// What the deploy answered.
        wanted: String,
    },
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
    pub source: StopReason,
    /// Admin addresses of the hosts that took the new version.
    pub done: Vec<String>,
    /// Admin addresses of the hosts after it.
    pub rest: Vec<String>,
}

impl RollingError {
    /// Whether the operator's input is at fault (a refused model, a wrong token).
    pub fn is_operator_error(&self) -> bool {
        match &self.source {
            StopReason::Client(e) => e.is_operator_error(),
            StopReason::NotSwitched { .. } => false,
        }
    }
}

/// Why a fleet deploy failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetDeployError {
    /// The topology does not locate every entry; nothing was changed.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The roll stopped at a host.
    #[error(transparent)]
    Stopped(#[from] Box<RollingError>),
}

impl FleetDeployError {
    /// Whether the operator's input is at fault (the file, a refused model, a wrong token).
    pub fn is_operator_error(&self) -> bool {
        match self {
            FleetDeployError::Layout(_) => true,
            FleetDeployError::Stopped(e) => e.is_operator_error(),
        }
    }
}

/// The hosts a deploy of `plan` goes to: all of them, but for a model only
/// those with an entry serving a model of its name (a host replaces the
/// model of that name only, and refuses a model it does not serve). An
/// entry that names no model serves its host's default, which the file
/// does not say: its host is asked, and decides (a refusal of a model it
/// does not serve skips it, see [`deploy`]).
pub fn hosts_for(
    topology: &Topology,
    plan: &DeployPlan,
) -> Result<Vec<(IpAddr, Vec<String>)>, LayoutError> {
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
    Ok(hosts(topology)?
        .into_iter()
        .filter(|(_, entries)| entries.iter().any(serves))
        .collect())
}

/// Whether `entries` were chosen for a model deploy only because none names
/// its model (each serves its host's default, which the file does not say).
fn only_by_default(topology: &Topology, entries: &[String], plan: &DeployPlan) -> bool {
    let Some((name, _)) = &plan.model else {
        return false;
    };
    !topology.instances.iter().any(|spec| {
        entries.contains(&spec.name) && spec.model.file_stem() == Some(std::ffi::OsStr::new(name))
    })
}

/// The host's refusal of a model it serves under no instance (see
/// `hadr_server::rollout`: "no instance serves a model named `NAME`; …").
fn serves_no_such_model(reason: &StopReason, plan: &DeployPlan) -> Option<String> {
    let (StopReason::Client(ClientError::Refused { status, message }), Some((name, _))) =
        (reason, &plan.model)
    else {
        return None;
    };
    let prefix = format!("no instance serves a model named `{name}`");
    (*status == hyper::StatusCode::UNPROCESSABLE_ENTITY && message.starts_with(&prefix))
        .then(|| message.clone())
}

/// How to reach the fleet's admin listeners.
pub struct Access {
    /// Every host's admin port, at its own address.
    pub admin_port: u16,
    /// The token every host takes.
    pub token: String,
    /// How long one admin call may take.
    pub timeout: std::time::Duration,
}

impl Access {
    fn client(&self, ip: IpAddr) -> AdminClient {
        AdminClient {
            url: format!("http://{}", self.admin(ip))
                .parse()
                .expect("a valid URL"),
            token: self.token.clone(),
            timeout: self.timeout,
        }
    }

    fn admin(&self, ip: IpAddr) -> String {
        std::net::SocketAddr::new(ip, self.admin_port).to_string()
    }
}

/// Deploys `plan` to each host of `topology` it concerns ([`hosts_for`]) in
/// turn, once every one of them is seen to serve all the entries of its
/// address.
pub async fn deploy(
    topology: &Topology,
    access: &Access,
    plan: &DeployPlan,
) -> Result<Vec<HostOutcome>, FleetDeployError> {
    let hosts = hosts_for(topology, plan)?;
    let stopped = |k: usize, source: StopReason, done: &[HostOutcome]| {
        let (ip, entries) = &hosts[k];
        Box::new(RollingError {
            admin: access.admin(*ip),
            entries: entries.clone(),
            source,
            done: done
                .iter()
                .filter(|d| d.skipped.is_none())
                .map(|d| d.admin.clone())
                .collect(),
            rest: hosts[k + 1..]
                .iter()
                .map(|(ip, _)| access.admin(*ip))
                .collect(),
        })
    };
    for (k, (ip, entries)) in hosts.iter().enumerate() {
        let served = served(&access.client(*ip))
            .await
            .map_err(|e| stopped(k, e.into(), &[]))?;
        if let Some(instance) = entries
            .iter()
            .find(|e| !served.iter().any(|(n, _)| n == *e))
        {
            return Err(LayoutError::NotServed {
                file: topology.path.display().to_string(),
                instance: instance.clone(),
                host: *ip,
                admin: access.admin(*ip),
                serves: served.into_iter().map(|(n, _)| n).collect(),
            }
            .into());
        }
    }
    let mut done = Vec::new();
    for (k, (ip, entries)) in hosts.iter().enumerate() {
        tracing::info!(host = %access.admin(*ip), ?entries, "deploying to the next host");
        match deploy_one(&access.client(*ip), entries, plan).await {
            Ok(outcome) => done.push(outcome),
            Err(source) => match serves_no_such_model(&source, plan)
                .filter(|_| only_by_default(topology, entries, plan))
            {
                Some(why) => done.push(HostOutcome {
                    admin: access.admin(*ip),
                    deployed: Vec::new(),
                    untouched: entries.clone(),
                    answer: serde_json::Value::Null,
                    skipped: Some(why),
                }),
                None => return Err(stopped(k, source, &done).into()),
            },
        }
    }
    Ok(done)
}

/// Deploys `plan` to one host, then checks with its `GET /admin/deployments`
/// that every entry the deploy answered for serves the version it named.
async fn deploy_one(
    client: &AdminClient,
    entries: &[String],
    plan: &DeployPlan,
) -> Result<HostOutcome, StopReason> {
    let answer = client.deploy(plan).await?;
    let served = served(client).await?;
    let wanted = |entry: &String| answer["instances"][entry].as_str().map(str::to_string);
    let mut outcome = HostOutcome {
        admin: client
            .url
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        deployed: Vec::new(),
        untouched: Vec::new(),
        answer: serde_json::Value::Null,
        skipped: None,
    };
    for entry in entries {
        let Some(wanted) = wanted(entry) else {
            outcome.untouched.push(entry.clone());
            continue;
        };
        let serves = served
            .iter()
            .find(|(n, _)| n == entry)
            .map_or("none".to_string(), |(_, v)| v.clone());
        if serves != wanted {
            return Err(StopReason::NotSwitched {
                instance: entry.clone(),
                serves,
                wanted,
            });
        }
        outcome.deployed.push(entry.clone());
    }
    outcome.answer = answer;
    Ok(outcome)
}

/// Each instance a host serves with its version, from `GET /admin/deployments`.
async fn served(client: &AdminClient) -> Result<Vec<(String, String)>, ClientError> {
    let deployments = client.get("/admin/deployments").await?;
    Ok(deployments["instances"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, d)| {
            (
                name.clone(),
                d["version"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::StatusCode;

    #[test]
    fn hosts_group_entries_by_address_in_file_order() {
        let t = Topology::parse_shape(
            r#"{"b": {"status": true, "host": "127.0.0.3", "port": 1},
                "a": {"status": true, "host": "127.0.0.2", "port": 1},
                "c": {"status": false, "host": "127.0.0.3", "port": 2},
                "d": {"status": true, "host": "127.0.0.2", "port": 3}}"#,
            std::path::Path::new("fleet.json"),
        )
        .unwrap();
        let hosts = hosts(&t).unwrap();
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
                (
                    "127.0.0.2".to_string(),
                    vec!["a".to_string(), "d".to_string()]
                ),
            ]
        );
    }

    #[test]
    fn entries_without_one_address_to_reach_are_refused_by_name() {
        let refused = |text: &str| {
            let t = Topology::parse_shape(text, std::path::Path::new("fleet.json")).unwrap();
            hosts(&t).unwrap_err().to_string()
        };
        let e = refused(
            r#"{"a": {"status": true, "host": "127.0.0.2", "port": 1},
                "b": {"status": true, "port": 2}}"#,
        );
        assert!(
            e.starts_with("fleet.json: instance `b`: field `host`: missing"),
            "{e}"
        );
        for any in ["0.0.0.0", "::"] {
            let e = refused(&format!(
                r#"{{"a": {{"status": true, "host": "{any}", "port": 1}}}}"#
            ));
            assert!(
                e.starts_with(&format!(
                    "fleet.json: instance `a`: field `host`: {any} is every address"
                )),
                "{e}"
            );
        }
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
                .unwrap()
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

    /// Stand-in hosts on `127.0.<net>.2`, `.3`, … sharing one admin port,
    /// with a scratch folder for the files a plan uploads.
    struct Lab {
        ips: Vec<IpAddr>,
        access: Access,
        dir: std::path::PathBuf,
    }

    impl Lab {
        fn new(net: u8, hosts: u8) -> Self {
            let ips: Vec<IpAddr> = (2..hosts + 2)
                .map(|k| IpAddr::from([127, 0, net, k]))
                .collect();
            let admin_port = crate::spawn::Ports::default().pick_common(&ips).unwrap();
            let dir =
                std::env::temp_dir().join(format!("hadr-rolling-{net}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let access = Access {
                admin_port,
                token: "t".into(),
                timeout: crate::admin_client::CALL_TIMEOUT,
            };
            Self { ips, access, dir }
        }

        /// Host `k`'s admin listener, serving `instance`: it shows version
        /// `before` until a deploy comes, answers the deploy with `deploy`
        /// (the version it names, or a 422 with that message), then shows
        /// `after`. Counts the deploys it was sent.
        async fn host(
            &self,
            k: usize,
            instance: &str,
            before: &str,
            deploy: Result<&str, &str>,
            after: &str,
        ) -> Arc<AtomicUsize> {
            let show = |version: &str| serde_json::json!({"instances": {instance: {"version": version}}, "events": []});
            let deploy = match deploy {
                Ok(v) => (
                    StatusCode::OK,
                    serde_json::json!({"action": "deployed", "instances": {instance: v}}),
                ),
                Err(message) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    serde_json::json!({"error": "refused", "message": message}),
                ),
            };
            let stand_in = Arc::new(StandIn {
                deploys: Arc::new(AtomicUsize::new(0)),
                deploy,
                before: show(before),
                after: show(after),
            });
            let deploys = stand_in.deploys.clone();
            let listener = tokio::net::TcpListener::bind((self.ips[k], self.access.admin_port))
                .await
                .unwrap();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let stand_in = stand_in.clone();
                    let answer =
                        hyper::service::service_fn(move |req| stand_in.clone().answer(req));
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), answer),
                    );
                }
            });
            deploys
        }
    }

    /// What a stand-in admin listener answers: `deploy` to a deploy, and
    /// to anything else `before` until a deploy came, `after` since.
    struct StandIn {
        deploys: Arc<AtomicUsize>,
        deploy: (StatusCode, serde_json::Value),
        before: serde_json::Value,
        after: serde_json::Value,
    }

    impl StandIn {
        async fn answer(
            self: Arc<Self>,
            req: hyper::Request<hyper::body::Incoming>,
        ) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
            let is_deploy =
                req.method() == hyper::Method::POST && req.uri().path() == "/admin/deploy";
            // Read whole (an upload's body too), as a host does.
            let _ = req.into_body().collect().await;
            let (status, body) = if is_deploy {
                self.deploys.fetch_add(1, SeqCst);
                self.deploy.clone()
            } else if self.deploys.load(SeqCst) > 0 {
                (StatusCode::OK, self.after.clone())
            } else {
                (StatusCode::OK, self.before.clone())
            };
            let mut response = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
            *response.status_mut() = status;
            Ok(response)
        }
    }

    impl Drop for Lab {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A topology of `entries` (name, host, model file stem if named) and
    /// a plan deploying `model` (a model named so) or a module.
    fn plan_for(
        lab: &Lab,
        entries: &[(&str, &str, Option<&str>)],
        model: Option<&str>,
    ) -> (Topology, DeployPlan) {
        let t: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .enumerate()
            .map(|(k, (name, host, model))| {
                let mut spec = serde_json::json!({"status": true, "host": host, "port": k + 1});
                if let Some(model) = model {
                    spec["model"] = format!("models/{model}.onnx").into();
                }
                (name.to_string(), spec)
            })
            .collect();
        let t = Topology::parse_shape(
            &serde_json::Value::Object(t).to_string(),
            std::path::Path::new("fleet.json"),
        )
        .unwrap();
        let file = lab.dir.join("new-version");
        std::fs::write(&file, b"not really a module or a model").unwrap();
        let plan = DeployPlan {
            module: model.is_none().then(|| file.clone()),
            model: model.map(|m| (m.to_string(), file)),
            to: hadr_server::rollout::Targets::All,
            canary: None,
            example: None,
            max_error_rate: None,
            min_calls: None,
        };
        (t, plan)
    }

    #[tokio::test]
    async fn a_second_process_on_an_address_stops_the_roll_before_any_change() {
        let lab = Lab::new(98, 2);
        // b runs in another process on a's address: a's listener does not list it.
        let entries = [
            ("a", "127.0.98.2", None),
            ("b", "127.0.98.2", None),
            ("c", "127.0.98.3", None),
        ];
        let (t, plan) = plan_for(&lab, &entries, None);
        let first = lab.host(0, "a", "v1", Ok("v2"), "v2").await;
        let second = lab.host(1, "c", "v1", Ok("v2"), "v2").await;
        let e = deploy(&t, &lab.access, &plan)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "fleet.json: instance `b`: field `host`: the admin listener at 127.0.98.2:"
            ),
            "{e}"
        );
        let sent = (first.load(SeqCst), second.load(SeqCst));
        assert_eq!(sent, (0, 0), "nothing was deployed");
    }

    #[tokio::test]
    async fn an_entry_is_done_only_when_its_host_shows_the_new_version() {
        let lab = Lab::new(97, 2);
        let entries = [("a", "127.0.97.2", None), ("c", "127.0.97.3", None)];
        let (t, plan) = plan_for(&lab, &entries, None);
        lab.host(0, "a", "v1", Ok("v2"), "v2").await;
        // The second host answers the deploy but still shows v1 after it.
        let second = lab.host(1, "c", "v1", Ok("v2"), "v1").await;
        let e = deploy(&t, &lab.access, &plan).await.unwrap_err();
        assert_eq!(second.load(SeqCst), 1);
        let FleetDeployError::Stopped(stopped) = e else {
            panic!("not stopped at a host: {e}");
        };
        assert_eq!(
            stopped.done,
            [format!("127.0.97.2:{}", lab.access.admin_port)]
        );
        assert!(
            stopped
                .to_string()
                .contains("instance `c` serves version v1, not v2"),
            "{stopped}"
        );
    }

    #[tokio::test]
    async fn a_host_asked_only_for_its_default_model_may_serve_none_of_the_name() {
        let lab = Lab::new(96, 3);
        // b names no model: its host is asked, and serves no `digits`.
        let entries = [
            ("a", "127.0.96.2", Some("digits")),
            ("b", "127.0.96.3", None),
            ("c", "127.0.96.4", Some("digits")),
        ];
        let (t, plan) = plan_for(&lab, &entries, Some("digits"));
        let none = "no instance serves a model named `digits`; this topology serves `wine`";
        lab.host(0, "a", "v1", Ok("v2"), "v2").await;
        lab.host(1, "b", "w1", Err(none), "w1").await;
        let last = lab.host(2, "c", "v1", Ok("v2"), "v2").await;
        let outcomes = deploy(&t, &lab.access, &plan).await.unwrap();
        let shown: Vec<(&[String], bool)> = outcomes
            .iter()
            .map(|o| (&o.deployed[..], o.skipped.is_some()))
            .collect();
        let (a, c) = (["a".to_string()], ["c".to_string()]);
        assert_eq!(shown, [(&a[..], false), (&[][..], true), (&c[..], false)]);
        assert_eq!(last.load(SeqCst), 1, "the roll went on");
        // A host whose entry names the model is not skipped on that answer.
        let (t, plan) = plan_for(&lab, &[("b", "127.0.96.3", Some("digits"))], Some("digits"));
        let e = deploy(&t, &lab.access, &plan).await.unwrap_err();
        assert!(e.to_string().contains(none), "{e}");
    }
}
