//! A `hadr-host serve` child process: started from a [`Launch`], ready once
//! it prints its ready line, killed with SIGKILL or stopped with SIGTERM,
//! and restarted on the same state directory and addresses. The drill and
//! the local fleet ([`crate::fleet::local`]) run hosts through it.
//!
//! A leaf of `hadr-tools`: uses no other tool.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a host could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Starting, reading or writing failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The topology file is not JSON.
    #[error("{0}: not a topology")]
    Topology(PathBuf, #[source] serde_json::Error),
    /// No random token could be made.
    #[error("cannot make an admin token: {0}")]
    Token(getrandom::Error),
    /// The host exited or printed something else instead of its ready line.
    #[error("hadr-host did not start ({0}); see {1}")]
    NotReady(String, PathBuf),
}

/// A host process (running unless it was killed or terminated).
pub struct HostProcess {
    child: Option<Child>,
    launch: Launch,
    /// The router's address (fixed across restarts).
    pub router: SocketAddr,
    /// The admin listener's address (fixed across restarts).
    pub admin: SocketAddr,
}

/// How to start a host, again and again.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `hadr-host` executable.
    pub exe: PathBuf,
    /// The topology file.
    pub topology: PathBuf,
    /// Its state directory.
    pub state: PathBuf,
    /// Where its stderr goes (appended across restarts).
    pub log: PathBuf,
    /// `--listen`.
    pub router: SocketAddr,
    /// `--admin-listen`.
    pub admin: SocketAddr,
    /// The admin token (`HADR_ADMIN_TOKEN`).
    pub token: String,
    /// More `serve` options.
    pub extra: Vec<String>,
}

/// The token drills use for the admin calls.
const TOKEN_ENV: &str = "HADR_ADMIN_TOKEN";

impl HostProcess {
    /// Starts `hadr-host serve` on a copy of `topology` with every instance
    /// port set to 0 and its relative `model` and `module` paths made absolute
    /// (the copy lives elsewhere), in `dir` (state directory and log there).
    pub fn start(topology: &Path, dir: &Path, extra: &[&str]) -> Result<Self, ProcessError> {
        let io = |what: &str, source| ProcessError::Io {
            what: what.to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| io("creating the drill directory", e))?;
        let text = std::fs::read_to_string(topology)
            .map_err(|e| io(&format!("reading {}", topology.display()), e))?;
        let mut value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ProcessError::Topology(topology.to_path_buf(), e))?;
        let folder = std::path::absolute(topology.parent().unwrap_or(Path::new(".")))
            .map_err(|e| io("resolving the topology's folder", e))?;
        if let Some(entries) = value.as_object_mut() {
            for entry in entries.values_mut() {
                if entry.get("port").is_some() {
                    entry["port"] = "0".into();
                }
                for key in ["model", "module"] {
                    if let Some(path) = entry.get(key).and_then(|v| v.as_str()) {
                        entry[key] = folder.join(path).to_string_lossy().into_owned().into();
                    }
                }
            }
        }
        let copy = dir.join("topology.json");
        std::fs::write(&copy, value.to_string()).map_err(|e| io("writing the topology", e))?;
        let launch = Launch {
            exe: std::env::current_exe().map_err(|e| io("finding this executable", e))?,
            topology: copy,
            state: dir.join("state"),
            log: dir.join("host.log"),
            router: free_port(std::net::Ipv4Addr::LOCALHOST.into())?,
            admin: free_port(std::net::Ipv4Addr::LOCALHOST.into())?,
            token: new_token()?,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        Self::launch(launch)
    }

    /// Starts a host as `launch` says and waits for its ready line.
    pub fn launch(launch: Launch) -> Result<Self, ProcessError> {
        let child = launch.spawn()?;
        Ok(Self {
            child: Some(child),
            router: launch.router,
            admin: launch.admin,
            launch,
        })
    }

    /// The admin token.
    pub fn token(&self) -> &str {
        &self.launch.token
    }

    /// SIGKILL, and waits for the exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (the host drains, if told to, then stops), and waits for the
    /// exit.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let _ = child.wait();
        }
    }

    /// Starts it again (after [`HostProcess::kill`] or
    /// [`HostProcess::terminate`]) on the same state directory and
    /// addresses; returns how long it took to be ready.
    pub fn restart(&mut self) -> Result<Duration, ProcessError> {
        self.kill();
        let started = Instant::now();
        self.child = Some(self.launch.spawn()?);
        Ok(started.elapsed())
    }

    /// SIGKILL, then a restart on the same state directory and ports.
    /// Returns how long the restart took to be ready.
    pub fn kill_and_restart(&mut self) -> Result<Duration, ProcessError> {
        self.kill();
        self.restart()
    }

    /// SIGTERM, and waits for the exit.
    pub fn stop(mut self) {
        self.terminate();
    }
}

impl Launch {
    /// Starts the host and waits for its ready line.
    fn spawn(&self) -> Result<Child, ProcessError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|source| ProcessError::Io {
                what: format!("opening {}", self.log.display()),
                source,
            })?;
        let mut child = Command::new(&self.exe)
            .arg("serve")
            .arg(&self.topology)
            .args(["--listen", &self.router.to_string()])
            .args(["--admin-listen", &self.admin.to_string()])
            .arg("--state-dir")
            .arg(&self.state)
            .args(&self.extra)
            .env(TOKEN_ENV, &self.token)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|source| ProcessError::Io {
                what: "starting hadr-host".into(),
                source,
            })?;
        let line = first_line(&mut child);
        if ready_addresses(&line).is_none() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ProcessError::NotReady(
                format!("it printed {line:?}"),
                self.log.clone(),
            ));
        }
        Ok(child)
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The first line a child prints on its piped stdout (empty if it printed
/// none before exiting): servers announce where they listen there.
pub fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = BufReader::new(stdout).read_line(&mut line);
    }
    line
}

/// The router's and the admin listener's addresses from `hadr-host serve`'s
/// ready line (`hadr-host ready: router http://A admin http://B`).
pub fn ready_addresses(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let [_, "ready:", "router", router, "admin", admin] = words[..] else {
        return None;
    };
    let addr = |url: &str| url.strip_prefix("http://")?.parse().ok();
    Some((addr(router)?, addr(admin)?))
}

/// A port on `ip` that was free a moment ago.
pub fn free_port(ip: std::net::IpAddr) -> Result<SocketAddr, ProcessError> {
    let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0)).and_then(|l| l.local_addr());
    listener.map_err(|source| ProcessError::Io {
        what: format!("finding a free port on {ip}"),
        source,
    })
}

/// A fresh random admin token.
pub fn new_token() -> Result<String, ProcessError> {
    let mut token = [0u8; 16];
    getrandom::getrandom(&mut token).map_err(ProcessError::Token)?;
    Ok(hadr_state::blobs::hex(&token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_line_gives_both_addresses_and_nothing_else_does() {
        let line = "hadr-host ready: router http://127.0.0.1:8000 admin http://127.0.0.1:9000\n";
        let (router, admin) = ready_addresses(line).unwrap();
        assert_eq!((router.port(), admin.port()), (8000, 9000));
        assert_eq!(
            ready_addresses("hadr-host: cannot read topology.json"),
            None
        );
        assert_eq!(
            ready_addresses("hadr-host ready: router 127.0.0.1:8000 admin http://x"),
            None
        );
    }
}
