//! A topology run as a fleet on one machine: one `hadr-host serve --only
//! <entry>` process per entry, each on its own loopback address
//! (`127.0.N.2`, `127.0.N.3`, …: separate "machines" that need no setup),
//! behind a real HAProxy configured by [`super::haproxy`] on `127.0.N.1`.
//! What `hadr-host drill --fleet` and the fleet tests run.
//!
//! Every address is on loopback: nothing here sends a packet off the machine.

use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::haproxy;
use crate::spawn::{new_token, HostProcess, Launch, Ports, ProcessError};
use hadr_server::topology::Topology;

/// Why a fleet could not run.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A host could not be started.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// HAProxy is not installed.
    #[error("HAProxy is not installed (no `haproxy` on PATH or in /usr/sbin): apt-get install -y haproxy")]
    NoHaproxy,
    /// The topology or the HAProxy configuration is wrong.
    #[error("{0}")]
    Config(String),
    /// HAProxy did not start or did not route.
    #[error("HAProxy did not come up: {0}")]
    Haproxy(String),
}

/// How to run the fleet.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// The `hadr-host` executable.
    pub exe: PathBuf,
    /// The third byte of the loopback addresses (`127.N.x.y` is all loopback):
    /// fleets running at once must differ.
    pub network: u8,
    /// `--drain` for every host.
    pub drain: Duration,
    /// `--max-body` for every host, and HAProxy's buffer.
    pub max_body: usize,
    /// More `serve` options for every host.
    pub extra: Vec<String>,
}

/// One entry's host.
pub struct FleetHost {
    /// The entry it serves.
    pub name: String,
    /// Its entry's port (what HAProxy sends to).
    pub port: SocketAddr,
    /// The process.
    pub process: HostProcess,
}

/// A running fleet: its hosts and the HAProxy in front of them.
pub struct LocalFleet {
    /// One host per entry, in topology order.
    pub hosts: Vec<FleetHost>,
    /// Where clients send requests (HAProxy's frontend).
    pub frontend: SocketAddr,
    /// The topology the hosts run (rewritten with their addresses).
    pub topology: PathBuf,
    /// The admin port every host listens on, at its own address.
    pub admin_port: u16,
    /// The admin token every host takes.
    pub token: String,
    /// The HAProxy in front of them.
    pub haproxy: Haproxy,
}

/// A running HAProxy, with a statistics listener added to its configuration
/// so that its view of each server can be read.
pub struct Haproxy {
    child: Child,
    /// Its statistics page (CSV at `/stats;csv`).
    pub stats: SocketAddr,
}

/// The HAProxy executable, if installed.
pub fn haproxy_exe() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
}

impl LocalFleet {
    /// Starts every entry of `topology` as its own host, then HAProxy; waits
    /// until HAProxy routes a prediction. State, logs and configuration go
    /// in `dir`.
    pub fn start(topology: &Path, dir: &Path, options: &FleetOptions) -> Result<Self, FleetError> {
        let haproxy_exe = haproxy_exe().ok_or(FleetError::NoHaproxy)?;
        let io = |what: &str, e: std::io::Error| FleetError::Config(format!("{what}: {e}"));
        std::fs::create_dir_all(dir).map_err(|e| io("creating the fleet directory", e))?;
        let ip = |k: u8| IpAddr::V4(Ipv4Addr::new(127, 0, options.network, k));
        // Every address is picked while the earlier picks are held, so no
        // two are the same; HAProxy's stay held until HAProxy starts (the
        // hosts take seconds to start, and other programs bind on 127.0.N.1
        // when N is 0).
        let mut picked = Ports::default();
        let (copy, ports) = rewrite(topology, dir, options.network, &mut picked)?;
        let shape = Topology::load_shape(&copy).map_err(|e| FleetError::Config(e.to_string()))?;
        let host_ips: Vec<IpAddr> = (0..ports.len()).map(|k| ip(k as u8 + 2)).collect();
        let admin_port = picked.pick_common(&host_ips)?;
        let routers = host_ips
            .iter()
            .map(|host_ip| picked.pick(*host_ip))
            .collect::<Result<Vec<_>, _>>()?;
        let mut front = Ports::default();
        let frontend = front.pick(ip(1))?;
        let stats = front.pick(ip(1))?;
        drop(picked);
        let token = new_token()?;
        let mut extra = vec![
            "--drain".to_string(),
            format!("{}ms", options.drain.as_millis()),
            "--max-body".to_string(),
            options.max_body.to_string(),
        ];
        extra.extend(options.extra.iter().cloned());
        let mut hosts = Vec::new();
        for (k, (spec, port)) in shape.instances.iter().zip(&ports).enumerate() {
            let own = dir.join(&spec.name);
            std::fs::create_dir_all(&own).map_err(|e| io("creating a host directory", e))?;
            let mut args = vec!["--only".to_string(), spec.name.clone()];
            args.extend(extra.iter().cloned());
            let process = HostProcess::launch(Launch {
                exe: options.exe.clone(),
                topology: copy.clone(),
                state: own.join("state"),
                log: own.join("host.log"),
                router: routers[k],
                admin: SocketAddr::new(host_ips[k], admin_port),
                token: token.clone(),
                extra: args,
            })?;
            hosts.push(FleetHost {
                name: spec.name.clone(),
                port: *port,
                process,
            });
        }
        let config = haproxy::config(
            &shape,
            &haproxy::Options {
                listen: frontend,
                max_body: options.max_body,
                addresses: vec![],
                queue_timeout_ms: 1000,
                server_timeout_ms: haproxy::server_timeout(deadline(&options.extra)),
            },
        )
        .map_err(|e| FleetError::Config(e.to_string()))?;
        drop(front);
        let haproxy = Haproxy::start(&haproxy_exe, &config, dir, stats)?;
        let mut fleet = Self {
            hosts,
            frontend,
            topology: copy,
            admin_port,
            token,
            haproxy,
        };
        fleet.wait_all_up(Duration::from_secs(10))?;
        Ok(fleet)
    }

    /// The host serving entry `name`.
    pub fn host(&mut self, name: &str) -> &mut FleetHost {
        self.hosts
            .iter_mut()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("the fleet has no entry `{name}`"))
    }

    /// Waits (bounded) until HAProxy has `name` up in every backend it is in.
    pub fn wait_up(&self, name: &str, within: Duration) -> Result<(), FleetError> {
        self.wait_for(name, within, "up", |status| status == "UP")
    }

    /// Waits (bounded) until HAProxy has `name` down everywhere.
    pub fn wait_down(&self, name: &str, within: Duration) -> Result<(), FleetError> {
        self.wait_for(name, within, "down", |status| status.starts_with("DOWN"))
    }

    /// Waits (bounded) until HAProxy has a server `name`, in `wanted` state
    /// in every backend it is in (a name it does not have never is).
    fn wait_for(
        &self,
        name: &str,
        within: Duration,
        what: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<(), FleetError> {
        self.haproxy
            .wait_until(within, |states| {
                let mine: Vec<_> = states.iter().filter(|(_, s, _)| s == name).collect();
                !mine.is_empty() && mine.iter().all(|(_, _, status)| wanted(status))
            })
            .map_err(|states| FleetError::Haproxy(format!("`{name}` is not {what}: {states:?}")))
    }

    fn wait_all_up(&mut self, within: Duration) -> Result<(), FleetError> {
        let names: Vec<String> = self.hosts.iter().map(|h| h.name.clone()).collect();
        for name in names {
            if let Err(e) = self.wait_up(&name, within) {
                let mut log = String::new();
                if let Ok(Some(status)) = self.haproxy.child.try_wait() {
                    log = format!(" (HAProxy exited: {status})");
                }
                return Err(FleetError::Haproxy(format!("{e}{log}")));
            }
        }
        Ok(())
    }

    /// Stops every host (SIGTERM) and HAProxy.
    pub fn stop(mut self) {
        for host in &mut self.hosts {
            host.process.terminate();
        }
    }
}

impl Haproxy {
    /// Starts HAProxy (`exe`) on `config` plus a statistics listener on
    /// `stats`, writing `haproxy.cfg` and `haproxy.log` in `dir`.
    pub fn start(
        exe: &Path,
        config: &str,
        dir: &Path,
        stats: SocketAddr,
    ) -> Result<Self, FleetError> {
        let io = |what: &str, e: std::io::Error| FleetError::Config(format!("{what}: {e}"));
        let config = format!(
            "{config}\n# For the drill and tests: server states.\nlisten stats\n    bind {stats}\n    stats enable\n    stats uri /stats\n"
        );
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config).map_err(|e| io("writing haproxy.cfg", e))?;
        let log = std::fs::File::create(dir.join("haproxy.log"))
            .map_err(|e| io("creating haproxy.log", e))?;
        let child = Command::new(exe)
            .arg("-f")
            .arg(&cfg)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| FleetError::Haproxy(format!("starting it: {e}")))?;
        Ok(Self { child, stats })
    }

    /// HAProxy's view of each server: `(backend, server, status)`, e.g.
    /// `("actives", "predict1", "UP")`.
    pub fn server_states(&self) -> Vec<(String, String, String)> {
        let Ok(text) = http_get(self.stats, "/stats;csv") else {
            return Vec::new();
        };
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                let (backend, server, status) = (f.first()?, f.get(1)?, f.get(17)?);
                (*server != "FRONTEND" && *server != "BACKEND")
                    .then(|| (backend.to_string(), server.to_string(), status.to_string()))
            })
            .collect()
    }

    fn wait_until(
        &self,
        within: Duration,
        done: impl Fn(&[(String, String, String)]) -> bool,
    ) -> Result<(), Vec<(String, String, String)>> {
        let deadline = Instant::now() + within;
        loop {
            let states = self.server_states();
            if !states.is_empty() && done(&states) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(states);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The hosts' `--deadline`, from their `serve` options (else serve's default).
fn deadline(extra: &[String]) -> Duration {
    extra
        .windows(2)
        .find(|pair| pair[0] == "--deadline")
        .and_then(|pair| humantime::parse_duration(&pair[1]).ok())
        .unwrap_or(haproxy::HOST_DEFAULT_DEADLINE)
}

/// Copies `topology` into `dir` with entry `k` on `127.0.N.(k+2)` at a port
/// picked there, and its `model` and `module` paths made absolute.
fn rewrite(
    topology: &Path,
    dir: &Path,
    network: u8,
    picked: &mut Ports,
) -> Result<(PathBuf, Vec<SocketAddr>), FleetError> {
    let config = |m: String| FleetError::Config(m);
    let text = std::fs::read_to_string(topology)
        .map_err(|e| config(format!("reading {}: {e}", topology.display())))?;
    let mut value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| config(format!("{}: {e}", topology.display())))?;
    let folder = std::path::absolute(topology.parent().unwrap_or(Path::new(".")))
        .map_err(|e| config(e.to_string()))?;
    let entries = value
        .as_object_mut()
        .ok_or_else(|| config(format!("{}: not a topology", topology.display())))?;
    let mut ports = Vec::new();
    for (k, (name, entry)) in entries.iter_mut().enumerate() {
        let entry = entry.as_object_mut().ok_or_else(|| {
            config(format!(
                "{}: instance `{name}`: not an object of fields",
                topology.display()
            ))
        })?;
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, network, k as u8 + 2));
        let port = picked.pick(ip)?;
        entry.insert("host".into(), ip.to_string().into());
        entry.insert("port".into(), port.port().to_string().into());
        for key in ["model", "module"] {
            if let Some(path) = entry.get(key).and_then(|v| v.as_str()) {
                let absolute = folder.join(path).to_string_lossy().into_owned();
                entry.insert(key.into(), absolute.into());
            }
        }
        ports.push(port);
    }
    let copy = dir.join("topology.json");
    std::fs::write(&copy, value.to_string())
        .map_err(|e| config(format!("writing {}: {e}", copy.display())))?;
    Ok((copy, ports))
}

/// A plain HTTP/1.0 GET, for HAProxy's stats page (blocking, bounded).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_that_is_no_object_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("hadr-local-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let topology = dir.join("bad.json");
        std::fs::write(&topology, r#"{"a": {"status": true}, "b": 1}"#).unwrap();
        let result = rewrite(&topology, &dir, 94, &mut Ports::default());
        std::fs::remove_dir_all(&dir).unwrap();
        let e = result.expect_err("`b` is no entry").to_string();
        assert!(
            e.ends_with("bad.json: instance `b`: not an object of fields"),
            "{e}"
        );
    }
}
