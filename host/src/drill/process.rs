//! A `hadr-host serve` child process the drill can start, kill with
//! SIGKILL, and restart on the same state directory and ports.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a host could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Starting, reading or writing failed.
    #[error("{0}")]
    Io(String),
    /// The host exited or printed something else instead of its ready line.
    #[error("hadr-host did not start ({0}); see {1}")]
    NotReady(String, PathBuf),
}

/// A running host.
pub struct HostProcess {
    child: Child,
    launch: Launch,
    /// The router's address (fixed across restarts).
    pub router: SocketAddr,
    /// The admin listener's address (fixed across restarts).
    pub admin: SocketAddr,
}

/// How to start it, again and again.
struct Launch {
    topology: PathBuf,
    state: PathBuf,
    log: PathBuf,
    router: SocketAddr,
    admin: SocketAddr,
    token: String,
    extra: Vec<String>,
}

/// The token drills use for the admin calls.
const TOKEN_ENV: &str = "HADR_ADMIN_TOKEN";

impl HostProcess {
    /// Starts `hadr-host serve` on a copy of `topology` with every instance
    /// port set to 0 and its relative `model` and `module` paths made absolute
    /// (the copy lives elsewhere), in `dir` (state directory and log there).
    pub fn start(topology: &Path, dir: &Path, extra: &[&str]) -> Result<Self, ProcessError> {
        let io = |what: &str, e: std::io::Error| ProcessError::Io(format!("{what}: {e}"));
        std::fs::create_dir_all(dir).map_err(|e| io("creating the drill directory", e))?;
        let text = std::fs::read_to_string(topology)
            .map_err(|e| io(&format!("reading {}", topology.display()), e))?;
        let mut value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ProcessError::Io(format!("{}: {e}", topology.display())))?;
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
        let mut token = [0u8; 16];
        getrandom::getrandom(&mut token).map_err(|e| ProcessError::Io(e.to_string()))?;
        let launch = Launch {
            topology: copy,
            state: dir.join("state"),
            log: dir.join("host.log"),
            router: free_port()?,
            admin: free_port()?,
            token: hadr_state::blobs::hex(&token),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        let child = launch.spawn()?;
        Ok(Self {
            child,
            router: launch.router,
            admin: launch.admin,
            launch,
        })
    }

    /// The admin token.
    pub fn token(&self) -> &str {
        &self.launch.token
    }

    /// SIGKILL, then a restart on the same state directory and ports.
    /// Returns how long the restart took to be ready.
    pub fn kill_and_restart(&mut self) -> Result<Duration, ProcessError> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let started = Instant::now();
        self.child = self.launch.spawn()?;
        Ok(started.elapsed())
    }

    /// SIGTERM, and waits for the exit.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let _ = self.child.wait();
    }
}

impl Launch {
    /// Starts the host and waits for its ready line.
    fn spawn(&self) -> Result<Child, ProcessError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| ProcessError::Io(format!("opening {}: {e}", self.log.display())))?;
        let exe = std::env::current_exe().map_err(|e| ProcessError::Io(e.to_string()))?;
        let mut child = Command::new(exe)
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
            .map_err(|e| ProcessError::Io(format!("starting hadr-host: {e}")))?;
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        if !line.contains("ready:") {
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> Result<SocketAddr, ProcessError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| ProcessError::Io(format!("finding a free port: {e}")))?;
    listener
        .local_addr()
        .map_err(|e| ProcessError::Io(e.to_string()))
}
