//! Test helpers: start a host on loopback (inside the test process, or the
//! real `hadr-host` binary where a test needs a process of its own), talk
//! HTTP to it.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A private temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hadr-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A topology from the repository with every port replaced by 0 (any free port).
pub fn free_ports(topology: &str) -> String {
    with_fields(topology, &[])
}

/// Like [`free_ports`], with `fields` set on every instance.
pub fn with_fields(topology: &str, fields: &[(&str, serde_json::Value)]) -> String {
    let text = std::fs::read_to_string(repo().join("topologies").join(topology)).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    for entry in value.as_object_mut().unwrap().values_mut() {
        if entry.get("port").is_some() {
            entry["port"] = "0".into();
        }
        for (name, value) in fields {
            entry[*name] = value.clone();
        }
    }
    value.to_string()
}

/// `topology` (see [`with_fields`]) running the faulty test guest, with
/// `fields` too.
pub fn with_faulty_guest(topology: &str, fields: &[(&str, serde_json::Value)]) -> String {
    let module = (
        "module",
        faulty_guest().to_string_lossy().into_owned().into(),
    );
    let all: Vec<_> = std::iter::once(module)
        .chain(fields.iter().cloned())
        .collect();
    with_fields(topology, &all)
}

/// The admin token tests start hosts with.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A running host: in this process, or a `hadr-host serve` child. Stopped
/// on drop (the child with SIGKILL).
pub struct Host {
    run: Run,
    pub router: SocketAddr,
    pub admin: SocketAddr,
    pub dir: TempDir,
}

/// What runs a [`Host`].
enum Run {
    /// A `hadr-host serve` child process.
    Child(Child),
    /// `hadr_server::serve::Host` on a runtime of its own, in a thread of
    /// the test process (as mini-redis's tests run their server): no
    /// process to start and no ready line to read.
    InProcess(InProcess),
}

/// A host served in a thread of the test process.
struct InProcess {
    /// Fired on drop: the listeners stop and open requests finish.
    shutdown: hadr_server::shutdown::Shutdown,
    /// The thread that runs the host's runtime.
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The `serve` flags, parsed the way `hadr-host serve` parses them.
#[derive(clap::Parser)]
struct ServeCli {
    #[command(flatten)]
    args: hadr_server::serve::args::ServeArgs,
}

impl Host {
    /// Serves a topology given as text inside this process: router and
    /// admin on free ports, a fresh state directory, `extra` as `serve`
    /// flags. For tests that need no process of their own (no signal, kill,
    /// pid or stderr); the rest use [`Host::start_in`] and its kin.
    pub fn start(topology: &str, extra: &[&str]) -> Host {
        use clap::Parser;
        assert!(
            !extra.iter().any(|a| a.starts_with("--drain")),
            "--drain acts on SIGTERM: start the host with Host::process"
        );
        if let Ok(token) = std::env::var("HADR_ADMIN_TOKEN") {
            // The host would take it over the state directory's token.
            assert_eq!(
                token, ADMIN_TOKEN,
                "unset HADR_ADMIN_TOKEN to run the tests"
            );
        }
        let dir = TempDir::new("host");
        let path = dir.write("topology.json", topology);
        let state = dir.0.join("state");
        write_token(&state);
        let mut argv: Vec<String> = ["serve", path.to_str().unwrap()]
            .into_iter()
            .chain(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .chain(["--state-dir", state.to_str().unwrap()])
            .map(String::from)
            .collect();
        if !extra.iter().any(|a| a.starts_with("--grace")) {
            // Dropping the host waits for open requests at most this long.
            argv.extend(["--grace".into(), "2s".into()]);
        }
        argv.extend(extra.iter().map(|s| s.to_string()));
        let options = ServeCli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("bad serve flags {extra:?}: {e}"))
            .args
            .options();
        let shutdown = hadr_server::shutdown::Shutdown::new();
        let stop = shutdown.clone();
        let (ready, addresses) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime for the host");
            runtime.block_on(async move {
                match hadr_server::serve::Host::start(&options).await {
                    Ok(host) => {
                        let _ = ready.send(Ok((host.router_addr(), host.admin_addr())));
                        host.run(stop).await.expect("the host's state is saved");
                    }
                    Err(e) => {
                        let _ = ready.send(Err(format!("{e:#}")));
                    }
                }
            });
        });
        let (router, admin) = match addresses.recv() {
            Ok(Ok(addresses)) => addresses,
            Ok(Err(e)) => panic!("the host did not start: {e}"),
            Err(_) => panic!("the host's thread ended before it was ready"),
        };
        Host {
            run: Run::InProcess(InProcess {
                shutdown,
                thread: Some(thread),
            }),
            router,
            admin,
            dir,
        }
    }

    /// The host's process (for its pid, or to signal or kill it).
    /// Panics for an in-process host: start those tests with
    /// [`Host::start_in`].
    pub fn child(&mut self) -> &mut Child {
        match &mut self.run {
            Run::Child(child) => child,
            Run::InProcess(_) => panic!("an in-process host has no process of its own"),
        }
    }

    /// The host's process id. Panics for an in-process host.
    pub fn pid(&self) -> u32 {
        match &self.run {
            Run::Child(child) => child.id(),
            Run::InProcess(_) => panic!("an in-process host has no process of its own"),
        }
    }

    /// Like [`Host::start`], as a `hadr-host serve` child process: for tests
    /// that signal, kill or measure the host.
    pub fn process(topology: &str, extra: &[&str]) -> Host {
        Self::start_in(topology, None, extra)
    }

    /// Starts `hadr-host serve` as a child process on a topology given as
    /// text, router on a free port, with the state directory `state` when
    /// given (kept after the host is gone, so another host can recover from
    /// it), else a fresh one.
    pub fn start_in(topology: &str, state: Option<&Path>, extra: &[&str]) -> Host {
        Self::start_with(topology, state, None, extra)
    }

    /// Like [`Host::start_in`], with its log (stderr) written to `log` when given.
    pub fn start_with(
        topology: &str,
        state: Option<&Path>,
        log: Option<&Path>,
        extra: &[&str],
    ) -> Host {
        Self::launch(&[], topology, state, log, extra)
    }

    /// Like [`Host::start_with`], run through `wrapper` (a command and its
    /// arguments that end by executing the rest, e.g. `prlimit ... --`).
    pub fn launch(
        wrapper: &[&str],
        topology: &str,
        state: Option<&Path>,
        log: Option<&Path>,
        extra: &[&str],
    ) -> Host {
        let dir = TempDir::new("host");
        let path = dir.write("topology.json", topology);
        let state = state.map_or_else(|| dir.0.join("state"), Path::to_path_buf);
        let bin = env!("CARGO_BIN_EXE_hadr-host");
        let mut command = match wrapper {
            [] => Command::new(bin),
            [program, args @ ..] => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
        };
        let mut child = command
            .arg("serve")
            .arg(&path)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(state)
            .env("HADR_ADMIN_TOKEN", ADMIN_TOKEN)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log.map_or_else(Stdio::inherit, |p| {
                Stdio::from(std::fs::File::create(p).unwrap())
            }))
            .spawn()
            .expect("starting hadr-host");
        let line = hadr_tools::spawn::first_line(&mut child);
        let Some((router, admin)) = hadr_tools::spawn::ready_addresses(&line) else {
            panic!("hadr-host did not start; it printed {line:?}");
        };
        Host {
            run: Run::Child(child),
            router,
            admin,
            dir,
        }
    }

    /// `GET /topology`.
    pub async fn topology(&self) -> serde_json::Value {
        let (status, _, body) = get(self.router, "/topology").await;
        assert_eq!(status, StatusCode::OK);
        body
    }

    /// Polls `/topology` until `done` holds of it, for at most 10 s.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let t = self.topology().await;
            if done(&t) {
                return;
            }
            assert!(Instant::now() < deadline, "waiting for {what}: {t}");
            tokio::time::sleep(POLL).await;
        }
    }

    /// The bound port of an instance's direct listener.
    pub async fn instance_addr(&self, name: &str) -> SocketAddr {
        let t = self.topology().await;
        let port: u16 = t[name]["port"].as_str().unwrap().parse().unwrap();
        SocketAddr::from(([127, 0, 0, 1], port))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        match &mut self.run {
            Run::Child(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Run::InProcess(host) => {
                host.shutdown.trigger();
                if let Some(thread) = host.thread.take() {
                    // A host that failed (its final state not saved) fails
                    // the test, unless the test is failing already.
                    if let Err(panic) = thread.join() {
                        if !std::thread::panicking() {
                            std::panic::resume_unwind(panic);
                        }
                    }
                }
            }
        }
    }
}

/// The admin token an in-process host reads from its state directory
/// (a child gets it from `HADR_ADMIN_TOKEN`).
fn write_token(state: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(state).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(state.join("admin-token"))
        .unwrap();
    std::io::Write::write_all(&mut file, ADMIN_TOKEN.as_bytes()).unwrap();
}

/// One `POST /predict` that reports a failed connection as `None` instead of
/// panicking (for load that runs while a host is killed).
pub async fn try_post(addr: SocketAddr, body: Bytes) -> Option<StatusCode> {
    attempt_post(addr, body)
        .await
        .ok()
        .map(|(status, _)| status)
}

/// One `POST /predict` on a fresh connection, bounded in time; what went
/// wrong (refused, reset, timed out) as text instead of a panic.
pub async fn attempt_post(addr: SocketAddr, body: Bytes) -> Result<(StatusCode, Bytes), String> {
    let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out after 10 s".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/predict")
        .header(HOST, addr.to_string())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = sender.send_request(req).await?;
        let status = response.status();
        Ok::<_, hyper::Error>((status, response.into_body().collect().await?.to_bytes()))
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| "no answer within 30 s".to_string())?
        .map_err(|e| format!("exchange: {e}"))
}

/// An HTTP answer: status, headers and the body as JSON.
pub type Answer = (StatusCode, HeaderMap, serde_json::Value);

/// One request on a fresh connection.
pub async fn request(addr: SocketAddr, method: Method, path: &str, body: Bytes) -> Answer {
    request_with(addr, method, path, body, None).await
}

/// `POST /admin/chaos` with the test token.
pub async fn chaos(host: &Host, instance: &str, fault: &str) -> Answer {
    let body = serde_json::json!({"instance": instance, "fault": fault}).to_string();
    let auth = format!("Bearer {ADMIN_TOKEN}");
    request_with(
        host.admin,
        Method::POST,
        "/admin/chaos",
        body.into(),
        Some(&auth),
    )
    .await
}

/// One request on a fresh connection, with an optional `Authorization` header.
pub async fn request_with(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Bytes,
    authorization: Option<&str>,
) -> Answer {
    let (status, headers, bytes) = request_raw(addr, method, path, body, authorization).await;
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "answer to {path} is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, headers, json)
}

/// `GET path` as text (for `/metrics`).
pub async fn get_text(addr: SocketAddr, path: &str) -> String {
    let (status, _, bytes) = request_raw(addr, Method::GET, path, Bytes::new(), None).await;
    assert_eq!(status, StatusCode::OK, "GET {path}");
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// One request on a fresh connection; the body as bytes.
async fn request_raw(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Bytes,
    authorization: Option<&str>,
) -> (StatusCode, HeaderMap, Bytes) {
    let auth = authorization.map(|a| (hyper::header::AUTHORIZATION.as_str(), a.to_string()));
    request_bytes(addr, method, path, auth.as_slice(), body).await
}

/// One request on a fresh connection with extra `headers`; the body as bytes.
pub async fn request_bytes(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Bytes,
) -> (StatusCode, HeaderMap, Bytes) {
    let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr.to_string())
        .header(CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let req = req.body(Full::new(body)).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(60), sender.send_request(req))
        .await
        .expect("request timed out")
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, bytes)
}

pub async fn post(addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> Answer {
    request(addr, Method::POST, path, body.into()).await
}

pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, Method::GET, path, Bytes::new()).await
}

/// How long a test waits between two looks at the host: long enough not to
/// take the CPU the host needs, short against any deadline.
pub const POLL: Duration = Duration::from_millis(5);

/// A model's cases file.
pub fn cases(model: &str) -> serde_json::Value {
    let path = repo().join("models").join(format!("{model}.cases.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// `{"inputs": rows}`.
pub fn inputs(rows: &[serde_json::Value]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "inputs": rows })).unwrap()
}

/// The test guest built with the `faulty` feature: it spins forever on a
/// row whose first value is -7 (see [`hanging_row`]), and traps on every
/// other row whose features sum (as integers) to a multiple of 3.
pub fn faulty_guest() -> PathBuf {
    repo().join("guests/target/wasm32-wasip2/faulty/hadr_guest_predictor.wasm")
}

/// Whether the faulty guest traps on `rows` (the same rule as the guest).
pub fn faulty_traps_on(rows: &[serde_json::Value]) -> bool {
    rows.iter().any(|row| {
        let sum: i64 = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32 as i64)
            .sum();
        sum % 3 == 0
    })
}

/// A row the faulty guest spins on until the deadline stops it.
pub fn hanging_row(row: &serde_json::Value) -> serde_json::Value {
    let mut row = row.clone();
    row[0] = serde_json::json!(-7.0);
    row
}

/// A digits case the faulty guest serves, and one it traps on.
pub fn safe_and_deadly_rows() -> (serde_json::Value, serde_json::Value) {
    let cases = cases("digits");
    let rows: Vec<serde_json::Value> = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["input"].clone())
        .collect();
    let safe = rows
        .iter()
        .find(|r| !faulty_traps_on(std::slice::from_ref(r)));
    let deadly = rows
        .iter()
        .find(|r| faulty_traps_on(std::slice::from_ref(r)));
    (safe.unwrap().clone(), deadly.unwrap().clone())
}

/// A digits row the faulty guest computes on for 300 ms before answering
/// (and does not trap on).
pub fn slow_row() -> serde_json::Value {
    let (mut row, _) = safe_and_deadly_rows();
    row[0] = serde_json::json!(-9.0);
    while faulty_traps_on(std::slice::from_ref(&row)) {
        row[1] = serde_json::json!(row[1].as_f64().unwrap() + 1.0);
    }
    row
}

/// Sends a request of three [`slow_row`]s to `host`, which must serve the
/// faulty guest under a deadline of over a second, and returns once
/// `instance` shows it in flight, load 1: it stays so for the guest's 900 ms
/// of computing, however fast the host.
pub async fn hold_in_flight(host: &Host, instance: &str) -> tokio::task::JoinHandle<Answer> {
    let slow = Bytes::from(inputs(&vec![slow_row(); 3]));
    let router = host.router;
    let in_flight = tokio::spawn(async move { post(router, "/predict", slow).await });
    while host.topology().await[instance]["load"] != 1 {
        assert!(
            !in_flight.is_finished(),
            "the request ended before it was seen in flight"
        );
        tokio::time::sleep(POLL).await;
    }
    in_flight
}

/// Three models in one topology: digits (active) and breast_cancer (active,
/// plus a standby) with the generic guest, the article's placement model
/// with its own; every entry on a free port. `extra` adds fields per entry
/// (`{"digits1": {"max_load": 1}}`).
pub fn models_topology(extra: serde_json::Value) -> String {
    let model = |m: &str| repo().join("models").join(format!("{m}.onnx"));
    let release = repo().join("guests/target/wasm32-wasip2/release");
    let generic = release.join("hadr_guest_predictor.wasm");
    let placement = release.join("hadr_guest_placement.wasm");
    let mut t = serde_json::json!({
        "digits1": {"status": true, "load": 0, "port": "0", "model": model("digits"), "module": generic},
        "cancer1": {"status": true, "load": 0, "port": "0", "model": model("breast_cancer"), "module": generic},
        "cancer2": {"status": false, "load": 0, "port": "0", "model": model("breast_cancer"), "module": generic},
        "placement1": {"status": true, "load": 0, "port": "0", "model": model("placement"), "module": placement},
    });
    if let serde_json::Value::Object(extra) = extra {
        for (name, fields) in extra {
            for (k, v) in fields.as_object().unwrap() {
                t[&name][k] = v.clone();
            }
        }
    }
    t.to_string()
}

/// The bytes of a `POST /predict` request with `body`, for tests that write
/// to a socket themselves.
pub fn predict_request(body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /predict HTTP/1.1\r\nhost: hadr\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// Sends `POST /predict` with `body` on a fresh connection and returns the
/// connection unread: dropping it hangs up on the request.
pub async fn send_unread(addr: SocketAddr, body: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(&predict_request(body)).await.unwrap();
    stream
}

/// Writes raw bytes on a fresh connection and returns the first answer bytes
/// (within 5 s), without sending anything more.
pub async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("no answer")
        .unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

/// One answer of the background load.
#[derive(Debug, Clone)]
pub struct Answered {
    /// `None` when no answer came (refused, reset, timed out).
    pub status: Option<StatusCode>,
    /// Why it is no prediction, if it is none: the transport's error, or a
    /// body that is not JSON (HAProxy's own HTML pages).
    pub error: Option<String>,
    /// The version the answer says computed it.
    pub version: String,
    /// The instance that answered (empty for an error).
    pub instance: String,
    /// When the request was sent and when its answer arrived.
    pub sent: Instant,
    pub received: Instant,
}

impl Answered {
    /// A 200 with a JSON body.
    pub fn ok(&self) -> bool {
        self.status == Some(StatusCode::OK) && self.error.is_none()
    }

    /// What one attempt of [`attempt_post`] came to.
    fn of(outcome: Result<(StatusCode, Bytes), String>, sent: Instant) -> Self {
        let (status, body) = match outcome {
            Ok((status, bytes)) => (
                Some(status),
                serde_json::from_slice(&bytes).map_err(|_| {
                    format!(
                        "not JSON: {}",
                        String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                    )
                }),
            ),
            Err(e) => (None, Err(e)),
        };
        let field = |k: &str| {
            let value: Option<&serde_json::Value> = body.as_ref().ok();
            value.and_then(|b| b[k].as_str()).unwrap_or("").to_string()
        };
        Self {
            status,
            version: field("version"),
            instance: field("instance"),
            error: body.err(),
            sent,
            received: Instant::now(),
        }
    }
}

/// Background load: clients posting in a loop (each request on a fresh
/// connection), keeping every outcome: each answer's status, version and
/// instance, and every request that got no answer or no JSON as a failure.
pub struct Load {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answered>>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Load {
    pub fn start(addr: SocketAddr, clients: usize, bodies: Vec<Bytes>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..clients {
            let (addr, stop, answers, bodies) =
                (addr, stop.clone(), answers.clone(), bodies.clone());
            tasks.spawn(async move {
                // Bounded: stops when told, or after 20 000 requests.
                for k in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let body = bodies[(c + k) % bodies.len()].clone();
                    let sent = Instant::now();
                    let outcome = attempt_post(addr, body).await;
                    answers.lock().unwrap().push(Answered::of(outcome, sent));
                }
            });
        }
        Self {
            stop,
            answers,
            tasks,
        }
    }

    /// The answers so far.
    pub fn snapshot(&self) -> Vec<Answered> {
        self.answers.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.answers.lock().unwrap().len()
    }

    /// Waits (bounded) for `n` more answers.
    pub async fn wait_for(&self, n: usize) {
        let target = self.count() + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.count() < target {
            assert!(Instant::now() < deadline, "the load stalled");
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops the clients and returns every answer; a client that panicked
    /// fails the test here (its requests would otherwise go uncounted).
    pub async fn stop(mut self) -> Vec<Answered> {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(ended) = self.tasks.join_next().await {
            if let Err(e) = ended {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
                panic!("a load client did not finish: {e}");
            }
        }
        let answers = self.answers.lock().unwrap();
        answers.clone()
    }
}

/// The answers that were not a 200 with JSON, shown (status or error, and
/// how long each took).
pub fn failures(answers: &[Answered]) -> Vec<String> {
    answers
        .iter()
        .filter(|a| !a.ok())
        .map(|a| {
            let status = a.status.map_or("no answer".to_string(), |s| s.to_string());
            let error = a.error.as_deref().unwrap_or("");
            format!("{status} {error} after {:?}", a.received - a.sent)
        })
        .collect()
}
