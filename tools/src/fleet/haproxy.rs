//! `hadr-host export haproxy`: an HAProxy 2.6 configuration that keeps the
//! article's router semantics for a topology whose entries run on their own
//! hosts (`serve --only`):
//!
//! - the actives share the load, least connections first, each sent at most
//!   its `max_load` requests at once (`maxconn`); more wait in HAProxy's
//!   queue for at most `timeout queue`, then get 503;
//! - the standby takes the overflow: when no active has a free slot (full or
//!   down), a `use-server` rule sends the request to it. It is a `backup`
//!   server of the same backend too, so that once every active is down the
//!   balancing itself (and so a request retried after its active died)
//!   reaches it. One backend, one server line per entry: HAProxy counts an
//!   entry's connections once, so its `maxconn` bounds it however the request
//!   got there (a server declared in two backends is two servers, each with
//!   its own `maxconn`);
//! - health checks on each entry's `/readyz` every 100 ms, each allowed 1 s
//!   to answer, down after 2 failures or at the first connection error, up
//!   after 2 successes;
//! - a request whose server failed (refused, reset, no answer) is retried up
//!   to 3 times on another server. Safe only because a prediction has no
//!   side effects. HAProxy must hold the whole body to retry it, so its
//!   buffer is sized for `--max-body`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use hadr_server::topology::{InstanceSpec, Topology};

/// What the configuration is made for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where HAProxy listens (the router's address for clients).
    pub listen: SocketAddr,
    /// The hosts' `--max-body`: HAProxy's buffer must hold a whole request
    /// for it to be retried.
    pub max_body: usize,
    /// Where HAProxy reaches an entry, when that is not its `host` and
    /// `port` (a Kubernetes Service name, a NAT), as `(name, "host:port")`.
    pub addresses: Vec<(String, String)>,
    /// How long a request may wait for a free server before HAProxy answers
    /// 503 (everything full).
    pub queue_timeout_ms: u64,
    /// HAProxy's server timeout; above the hosts' `--deadline` and retry
    /// ([`server_timeout`]).
    pub server_timeout_ms: u64,
}

/// `hadr-host serve`'s default `--deadline`.
pub const HOST_DEFAULT_DEADLINE: Duration = Duration::from_secs(1);

/// The longest a host may take to answer, for hosts run with `deadline`: a
/// request that runs into it is retried once inside the host, and may wait
/// for a sandbox first, so twice the deadline plus 2 s. Shorter, HAProxy
/// would give up on (and resend) requests the host is still computing.
pub fn server_timeout(deadline: Duration) -> u64 {
    (2 * deadline + Duration::from_secs(2)).as_millis() as u64
}

/// Why no configuration could be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// An entry has no port, so HAProxy cannot reach it.
    #[error("{file}: instance `{instance}`: field `port`: a fleet entry needs a fixed port (not missing, not 0) for HAProxy to reach it")]
    NoPort {
        /// The topology file.
        file: String,
        /// The entry.
        instance: String,
    },
    /// An entry listens on every address (`0.0.0.0`, `::`): as a server
    /// address that means "the client's own destination" to HAProxy, not a
    /// host it can reach.
    #[error("{file}: instance `{instance}`: field `host`: {host} is every address of its machine, not one HAProxy can reach; give HAProxy the entry's address with --address {instance}=HOST:PORT")]
    Unspecified {
        /// The topology file.
        file: String,
        /// The entry.
        instance: String,
        /// Its address.
        host: std::net::IpAddr,
    },
    /// `--address` names an entry the topology does not have.
    #[error("--address names `{0}`, which the topology does not have")]
    UnknownAddress(String),
}

/// How long a health check may wait for `/readyz`'s answer once connected:
/// far above a loaded host's answer time, far below `timeout server`.
const CHECK_TIMEOUT_MS: u64 = 1000;

/// Room HAProxy needs beside the body in its buffer (request line and headers).
const HEADER_ROOM: usize = 16 * 1024;

/// The configuration for `topology`.
pub fn config(topology: &Topology, options: &Options) -> Result<String, ExportError> {
    if let Some((name, _)) = options
        .addresses
        .iter()
        .find(|(n, _)| !topology.instances.iter().any(|i| &i.name == n))
    {
        return Err(ExportError::UnknownAddress(name.clone()));
    }
    let server = |spec: &InstanceSpec, backup: bool| -> Result<String, ExportError> {
        let address = match options.addresses.iter().find(|(n, _)| *n == spec.name) {
            Some((_, address)) => address.clone(),
            None => {
                let port = spec
                    .port
                    .filter(|p| *p != 0)
                    .ok_or_else(|| ExportError::NoPort {
                        file: topology.path.display().to_string(),
                        instance: spec.name.clone(),
                    })?;
                let host = spec.host.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
                if host.is_unspecified() {
                    return Err(ExportError::Unspecified {
                        file: topology.path.display().to_string(),
                        instance: spec.name.clone(),
                        host,
                    });
                }
                SocketAddr::new(host, port).to_string()
            }
        };
        let backup = if backup { " backup" } else { "" };
        Ok(format!(
            "    server {} {address} maxconn {}{backup}\n",
            spec.name, spec.max_load
        ))
    };
    let (actives, standbys): (Vec<&InstanceSpec>, Vec<&InstanceSpec>) =
        topology.instances.iter().partition(|i| i.active);
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "# Generated by `hadr-host export haproxy {}`: the article's router for a topology whose\n\
         # entries run as `hadr-host serve --only <entry>` on their own hosts (docs/fleet.md).\n\
         # HAProxy 2.6. Check with `haproxy -c -f <this file>`.",
        topology.path.display()
    );
    let _ = writeln!(
        w,
        "global\n    maxconn 4096\n    # A request is retried only if HAProxy holds all of it: room for --max-body.\n    tune.bufsize {}\n",
        options.max_body + HEADER_ROOM
    );
    let defaults = [
        "mode http".to_string(),
        "timeout connect 1s".into(),
        "timeout client 30s".into(),
        format!("timeout server {}ms", options.server_timeout_ms),
        "# Everything full: a request waits this long for a slot, then gets 503 (never hangs).".into(),
        format!("timeout queue {}ms", options.queue_timeout_ms),
        "timeout http-request 10s".into(),
        "option http-buffer-request".into(),
        "# A failed attempt (refused, reset, no answer, a full host's 503) is sent again,".into(),
        "# elsewhere: safe because a prediction has no side effects. Not 500 or 504: a request".into(),
        "# that crashes or hangs its sandbox is retried once by the host itself, and must not".into(),
        "# be carried to every host in turn.".into(),
        "retry-on conn-failure empty-response junk-response response-timeout 0rtt-rejected 503".into(),
        "# 5, not 3: with 3, a host killed mid-load still cost a request about 1 run in 8".into(),
        "# (its retries spent before the host was marked down; 0 in 45 with 5).".into(),
        "retries 5".into(),
        "option redispatch 2".into(),
        "# /readyz every 100 ms; down after 2 failures or the first connection error, up after 2.".into(),
        "default-server check inter 100ms fall 2 rise 2 observe layer4 error-limit 1 on-error mark-down".into(),
        "# Without it `inter` (100 ms) bounds the whole check: a /readyz answered late by a host".into(),
        "# busy computing would take a healthy server out exactly when it is needed.".into(),
        format!("timeout check {CHECK_TIMEOUT_MS}ms"),
        "# Everything full: hadr's own 503, Retry-After included.".into(),
        r#"http-error status 503 content-type application/json string "{\"error\": \"no_capacity\", \"message\": \"every server of the topology is at its max_load or down; retry later\"}" hdr Retry-After 1"#.into(),
    ];
    let _ = writeln!(w, "defaults");
    for line in defaults {
        let _ = writeln!(w, "    {line}");
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "frontend hadr\n    bind {}\n    default_backend fleet\n",
        options.listen
    );
    let _ = write!(
        w,
        "backend fleet\n    balance leastconn\n    option httpchk GET /readyz\n    http-check expect status 200\n"
    );
    w.push_str(&overflow(&standbys));
    for spec in &actives {
        w.push_str(&server(spec, false)?);
    }
    for spec in &standbys {
        w.push_str(&server(spec, true)?);
    }
    Ok(out)
}

/// The article's overflow as `use-server` rules: no active has a free slot
/// (full or down) -> a standby with room, in file order, else the last one
/// (the request waits in its queue). Empty without a standby.
fn overflow(standbys: &[&InstanceSpec]) -> String {
    let Some((last, others)) = standbys.split_last() else {
        return String::new();
    };
    let mut out = String::from(
        "    # The article's overflow: no active has a free slot (full or down) -> the standby.\n\
         \x20   # Backup servers count in be_conn_free only once every active is down.\n\
         \x20   acl actives_full be_conn_free le 0\n",
    );
    for spec in others {
        let _ = writeln!(
            out,
            "    use-server {0} if actives_full {{ srv_conn_free({0}) gt 0 }}",
            spec.name
        );
    }
    let _ = writeln!(out, "    use-server {} if actives_full", last.name);
    if !others.is_empty() {
        out.push_str(
            "    # Every active down: the standbys share the load.\n    option allbackups\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn topology(text: &str) -> Topology {
        Topology::parse_shape(text, Path::new("fleet.json")).unwrap()
    }

    fn options() -> Options {
        Options {
            listen: "127.0.0.1:8000".parse().unwrap(),
            max_body: 1 << 20,
            addresses: vec![],
            queue_timeout_ms: 1000,
            server_timeout_ms: 30_000,
        }
    }

    const TWO_ACTIVE: &str = r#"{
        "predict1": {"status": true, "load": 0, "port": "9696", "host": "127.0.0.2"},
        "predict2": {"status": true, "load": 0, "port": "9697", "host": "127.0.0.3", "max_load": 20},
        "predict3": {"status": false, "load": 0, "port": "9698", "host": "127.0.0.4"}
    }"#;

    #[test]
    fn actives_share_by_least_connections_and_the_standby_takes_the_overflow() {
        let cfg = config(&topology(TWO_ACTIVE), &options()).unwrap();
        let fleet = cfg.split("\nbackend fleet\n").nth(1).unwrap();
        assert!(fleet.contains("balance leastconn"));
        assert!(
            fleet.contains("server predict1 127.0.0.2:9696 maxconn 10\n"),
            "{cfg}"
        );
        assert!(
            fleet.contains("server predict2 127.0.0.3:9697 maxconn 20\n"),
            "{cfg}"
        );
        assert!(
            fleet.contains("server predict3 127.0.0.4:9698 maxconn 10 backup\n"),
            "{cfg}"
        );
        assert!(
            fleet.contains("use-server predict3 if actives_full\n"),
            "{cfg}"
        );
        assert!(cfg.contains(&format!("tune.bufsize {}", (1 << 20) + HEADER_ROOM)));
        assert!(cfg.contains("\" hdr Retry-After 1\n"), "{cfg}");
    }

    #[test]
    fn each_entry_is_one_server_so_its_maxconn_bounds_it_once() {
        let cfg = config(&topology(TWO_ACTIVE), &options()).unwrap();
        for name in ["predict1", "predict2", "predict3"] {
            let lines = cfg
                .lines()
                .filter(|l| l.trim_start().starts_with(&format!("server {name} ")))
                .count();
            assert_eq!(lines, 1, "{name} is declared {lines} times: {cfg}");
        }
        assert_eq!(cfg.matches("\nbackend ").count(), 1, "{cfg}");
    }

    #[test]
    fn several_standbys_take_the_overflow_in_turn() {
        let cfg = config(
            &topology(
                r#"{"a": {"status": true, "port": 1}, "s1": {"status": false, "port": 2},
                    "s2": {"status": false, "port": 3}}"#,
            ),
            &options(),
        )
        .unwrap();
        let rules = "    use-server s1 if actives_full { srv_conn_free(s1) gt 0 }\n    use-server s2 if actives_full\n";
        assert!(cfg.contains(rules), "{cfg}");
        assert!(cfg.contains("option allbackups"), "{cfg}");
    }

    #[test]
    fn the_server_timeout_covers_a_deadline_and_the_hosts_retry() {
        assert_eq!(server_timeout(HOST_DEFAULT_DEADLINE), 4_000);
        assert_eq!(server_timeout(Duration::from_secs(4)), 10_000);
        let mut o = options();
        o.server_timeout_ms = server_timeout(Duration::from_millis(1500));
        let cfg = config(&topology(TWO_ACTIVE), &o).unwrap();
        assert!(cfg.contains("    timeout server 5000ms\n"), "{cfg}");
    }

    #[test]
    fn without_a_standby_there_is_no_overflow_rule() {
        let cfg = config(
            &topology(r#"{"a": {"status": true, "port": 1}, "b": {"status": true, "port": 2}}"#),
            &options(),
        )
        .unwrap();
        assert!(
            !cfg.contains("actives_full") && !cfg.contains("use-server"),
            "{cfg}"
        );
        assert!(cfg.contains("server a 127.0.0.1:1 maxconn 10\n"));
    }

    #[test]
    fn addresses_override_and_missing_ports_are_refused_by_name() {
        let mut o = options();
        o.addresses = vec![("predict1".into(), "hadr-predict1:9696".into())];
        let cfg = config(&topology(TWO_ACTIVE), &o).unwrap();
        assert!(
            cfg.contains("server predict1 hadr-predict1:9696 maxconn 10\n"),
            "{cfg}"
        );
        o.addresses = vec![("nope".into(), "x:1".into())];
        let e = config(&topology(TWO_ACTIVE), &o).unwrap_err();
        assert!(e.to_string().contains("`nope`"), "{e}");
        let e = config(&topology(r#"{"a": {"status": true}}"#), &options()).unwrap_err();
        assert!(e.to_string().contains("instance `a`: field `port`"), "{e}");
    }

    #[test]
    fn an_entry_on_every_address_needs_an_address_for_haproxy() {
        for any in ["0.0.0.0", "::"] {
            let t = topology(&format!(
                r#"{{"a": {{"status": true, "host": "{any}", "port": "9696"}}}}"#
            ));
            let e = config(&t, &options()).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!(
                    "fleet.json: instance `a`: field `host`: {any} is every address"
                )) && e.contains("--address a=HOST:PORT"),
                "{e}"
            );
            let mut o = options();
            o.addresses = vec![("a".into(), "hadr-a:9696".into())];
            let cfg = config(&t, &o).unwrap();
            assert!(cfg.contains("server a hadr-a:9696 maxconn 10\n"), "{cfg}");
        }
    }
}
