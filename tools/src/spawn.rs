//! A `hadr-host serve` child process: started from a [`Launch`], ready once
//! it prints its ready line, killed with SIGKILL or stopped with SIGTERM,
//! and restarted on the same state directory and addresses. The drill and
//! the local fleet ([`crate::fleet::local`]) run hosts through it.
//!
//! A leaf of `hadr-tools`: uses no other tool.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, TcpListener};
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
    #[error("hadr-host did not start: it printed {said:?} and {ended}; {log} ends with:\n{tail}")]
    NotReady {
        /// Its first line of stdout (empty when it printed none).
        said: String,
        /// How it ended ("exited with exit status: 1", "was killed", …).
        ended: String,
        /// Its log file (stderr).
        log: PathBuf,
        /// The last lines of that log: tests delete their directories when
        /// they fail, so the reason has to travel in the error.
        tail: String,
    },
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

/// How long a host may take to print its ready line: it compiles its guest
/// when the compiled cache misses, on a machine shared with other work.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// How long a host may take to exit after SIGTERM: its `--drain` and its
/// `--grace` (10 s by default), with room.
const STOP_WITHIN: Duration = Duration::from_secs(30);

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
        let mut ports = Ports::default();
        let localhost = std::net::Ipv4Addr::LOCALHOST.into();
        let launch = Launch {
            exe: std::env::current_exe().map_err(|e| io("finding this executable", e))?,
            topology: copy,
            state: dir.join("state"),
            log: dir.join("host.log"),
            router: ports.pick(localhost)?,
            admin: ports.pick(localhost)?,
            token: new_token()?,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        drop(ports);
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
    /// exit; SIGKILL if it has not exited within 30 s.
    pub fn terminate(&mut self) {
        self.terminate_within(STOP_WITHIN);
    }

    /// SIGTERM, then SIGKILL if it has not exited `within`.
    fn terminate_within(&mut self, within: Duration) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            if !matches!(exit_within(&mut child, within), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
            }
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
            return Err(ProcessError::NotReady {
                said: line,
                ended: end(child),
                log: self.log.clone(),
                tail: tail(&self.log, 12),
            });
        }
        Ok(child)
    }
}

/// Waits briefly for a child that closed its stdout to exit (killing it if
/// it does not) and says how it ended.
fn end(mut child: Child) -> String {
    let ended = match exit_within(&mut child, Duration::from_secs(2)) {
        Ok(Some(status)) => return format!("exited with {status}"),
        Ok(None) => "was still running, so it was killed".to_string(),
        Err(e) => format!("could not be waited for ({e}), so it was killed"),
    };
    let _ = child.kill();
    let _ = child.wait();
    ended
}

/// Its exit status once it exits, or `None` if it is still running after
/// `within` (polled: std has no wait with a timeout).
fn exit_within(
    child: &mut Child,
    within: Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `lines` lines of the file at `path` (or why it cannot be read).
fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read it: {e})"),
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The first line a child prints on its piped stdout (empty if it printed
/// none before exiting, or within 120 s): servers announce where they
/// listen there.
pub fn first_line(child: &mut Child) -> String {
    first_line_within(child, READY_WITHIN)
}

/// [`first_line`] within `within`; a child still silent then is killed
/// (which also ends the thread that reads for it).
fn first_line_within(child: &mut Child, within: Duration) -> String {
    let Some(stdout) = child.stdout.take() else {
        return String::new();
    };
    let (sender, line) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = sender.send(line);
    });
    line.recv_timeout(within).unwrap_or_else(|_| {
        let _ = child.kill();
        String::new()
    })
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

/// Free ports for hosts to bind. Every port picked stays bound until the
/// `Ports` is dropped, so two picks on one address never return the same
/// port (the kernel would otherwise hand a just-released port out again).
/// Drop it just before starting the processes that bind them.
#[derive(Default)]
pub struct Ports {
    held: Vec<TcpListener>,
}

impl Ports {
    /// A port free on `ip`, distinct from every other picked on it.
    pub fn pick(&mut self, ip: IpAddr) -> Result<SocketAddr, ProcessError> {
        let listener = bind(SocketAddr::new(ip, 0))?;
        let addr = listener.local_addr().map_err(|source| ProcessError::Io {
            what: format!("finding a free port on {ip}"),
            source,
        })?;
        self.held.push(listener);
        Ok(addr)
    }

    /// A port free on every one of `ips` (a fleet's hosts take the same
    /// admin port, each at its own address, as on separate machines).
    pub fn pick_common(&mut self, ips: &[IpAddr]) -> Result<u16, ProcessError> {
        let Some((first, rest)) = ips.split_first() else {
            return Err(ProcessError::Io {
                what: "finding a port free on every one of no addresses".into(),
                source: std::io::ErrorKind::InvalidInput.into(),
            });
        };
        for _ in 0..50 {
            let candidate = bind(SocketAddr::new(*first, 0))?;
            let Ok(port) = candidate.local_addr().map(|a| a.port()) else {
                continue;
            };
            let others: Result<Vec<TcpListener>, _> = rest
                .iter()
                .map(|ip| TcpListener::bind(SocketAddr::new(*ip, port)))
                .collect();
            if let Ok(others) = others {
                self.held.push(candidate);
                self.held.extend(others);
                return Ok(port);
            }
        }
        Err(ProcessError::Io {
            what: format!("finding a port free on every one of {ips:?}"),
            source: std::io::ErrorKind::AddrInUse.into(),
        })
    }
}

fn bind(addr: SocketAddr) -> Result<TcpListener, ProcessError> {
    TcpListener::bind(addr).map_err(|source| ProcessError::Io {
        what: format!("finding a free port on {}", addr.ip()),
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

    #[test]
    fn picked_ports_stay_taken_until_released_and_differ() {
        let ips: Vec<IpAddr> = (2..5)
            .map(|k| std::net::Ipv4Addr::new(127, 0, 99, k).into())
            .collect();
        let mut ports = Ports::default();
        let common = ports.pick_common(&ips).unwrap();
        let own: Vec<SocketAddr> = (0..20).map(|_| ports.pick(ips[0]).unwrap()).collect();
        let mut distinct: Vec<u16> = own.iter().map(|a| a.port()).collect();
        distinct.push(common);
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 21, "two picks on one address were equal");
        let bindable = |addr: SocketAddr| TcpListener::bind(addr).is_ok();
        for ip in &ips {
            assert!(
                !bindable(SocketAddr::new(*ip, common)),
                "{ip}:{common} was not held"
            );
        }
        assert!(own.iter().all(|a| !bindable(*a)), "a pick was not held");
        drop(ports);
        // Another test's child, between its fork and its exec, may still
        // hold a copy of a released socket for a moment.
        let freed = |addr: SocketAddr| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !bindable(addr) {
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            true
        };
        for ip in &ips {
            assert!(
                freed(SocketAddr::new(*ip, common)),
                "{ip}:{common} was not released"
            );
        }
        assert!(own.iter().all(|a| freed(*a)), "a pick was not released");
    }

    /// A child that prints nothing and ignores SIGTERM for 30 s.
    fn stubborn() -> Child {
        Command::new("/bin/sh")
            .args(["-c", "trap '' TERM; exec sleep 30"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_silent_child_is_given_up_on_and_killed() {
        let mut child = stubborn();
        let started = Instant::now();
        assert_eq!(
            first_line_within(&mut child, Duration::from_millis(300)),
            ""
        );
        assert!(started.elapsed() < Duration::from_secs(10), "not bounded");
        let exited = exit_within(&mut child, Duration::from_secs(5)).unwrap();
        assert!(exited.is_some(), "the silent child was left running");
    }

    #[test]
    fn a_host_that_ignores_sigterm_is_killed_after_the_bound() {
        let launch = Launch {
            exe: "/bin/sh".into(),
            topology: "unused.json".into(),
            state: "unused".into(),
            log: "unused.log".into(),
            router: "127.0.0.1:1".parse().unwrap(),
            admin: "127.0.0.1:2".parse().unwrap(),
            token: "t".into(),
            extra: vec![],
        };
        let mut host = HostProcess {
            child: Some(stubborn()),
            router: launch.router,
            admin: launch.admin,
            launch,
        };
        let started = Instant::now();
        host.terminate_within(Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(10), "not bounded");
        assert!(host.child.is_none());
    }

    #[test]
    fn a_host_that_does_not_start_says_how_it_ended_and_what_it_logged() {
        let dir = std::env::temp_dir().join(format!("hadr-spawn-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("host.log");
        std::fs::write(&log, "an earlier start\n").unwrap();
        // `sh serve …` fails at once: there is no script named `serve`.
        let launch = Launch {
            exe: "/bin/sh".into(),
            topology: dir.join("topology.json"),
            state: dir.join("state"),
            log: log.clone(),
            router: "127.0.0.1:1".parse().unwrap(),
            admin: "127.0.0.1:2".parse().unwrap(),
            token: "t".into(),
            extra: vec![],
        };
        let error = HostProcess::launch(launch).err().expect("sh is not a host");
        let text = error.to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        let ProcessError::NotReady {
            said, ended, tail, ..
        } = error
        else {
            panic!("not NotReady: {text}");
        };
        assert_eq!(said, "");
        assert!(ended.starts_with("exited with exit status: "), "{ended}");
        assert!(tail.starts_with("an earlier start\n"), "{tail}");
        assert!(tail.contains("serve"), "sh's complaint is missing: {tail}");
        assert!(text.contains(&tail), "{text}");
    }
}
