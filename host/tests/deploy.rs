//! Acceptance: hot swap. Deploys and rollbacks under load fail no request
//! and switch the version answers carry; an unfit module or model is refused
//! with its reason while the old version keeps serving; a canary takes its
//! share and is aborted automatically when it fails; a restart serves the
//! deployed version, from the compiled cache.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    cases, faulty_guest, free_ports, get, hanging_row, inputs, post, repo, request_with,
    safe_and_deadly_rows, send_unread, try_post, with_faulty_guest, Host, Load, TempDir,
    ADMIN_TOKEN,
};
use hyper::{Method, StatusCode};

/// The default guest, with a custom section appended: a different digest
/// (so a different version), the same behaviour.
fn variant_guest(dir: &TempDir) -> PathBuf {
    variant_guest_of(dir, b"v2")
}

/// The default guest with `payload` in an appended custom section: one
/// version per payload.
fn variant_guest_of(dir: &TempDir, payload: &[u8]) -> PathBuf {
    variant_of(
        dir,
        &repo().join(hadr_server::serve::DEFAULT_GUEST),
        payload,
    )
}

/// The module at `source` with `payload` in an appended custom section.
fn variant_of(dir: &TempDir, source: &Path, payload: &[u8]) -> PathBuf {
    let mut bytes = std::fs::read(source).unwrap();
    let name = b"hadr-test-variant";
    // Custom section: id 0, size, name (length-prefixed), payload.
    bytes.push(0);
    bytes.push((1 + name.len() + payload.len()) as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    let path = dir
        .0
        .join(format!("guest-{}.wasm", String::from_utf8_lossy(payload)));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Runs `hadr-host <args>` against `host`'s admin listener.
fn cli(host: &Host, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hadr-host"))
        .args(args)
        .args(["--admin", &format!("http://{}", host.admin)])
        .args(["--token", ADMIN_TOKEN])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn deploy(host: &Host, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["deploy"];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = cli(host, &all);
    assert_eq!(code, Some(0), "deploy {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap()
}

/// `GET /admin/deployments`.
async fn deployments(host: &Host) -> serde_json::Value {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let path = "/admin/deployments";
    request_with(host.admin, Method::GET, path, Bytes::new(), Some(&auth))
        .await
        .2
}

/// Whether the deployments answer records an event of `kind`.
fn has_event(deployments: &serde_json::Value, kind: &str) -> bool {
    deployments["events"]
        .as_array()
        .is_some_and(|e| e.iter().any(|e| e["kind"] == kind))
}

/// The version that answers one row through `router`, which must be 200.
async fn served_version(router: std::net::SocketAddr) -> String {
    let (s, _, b) = post(router, "/predict", one_row()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["version"].as_str().unwrap_or_default().to_string()
}

fn one_row() -> Bytes {
    inputs(&[cases("digits")["cases"][0]["input"].clone()]).into()
}

fn versions(topology: &serde_json::Value) -> Vec<String> {
    ["predict1", "predict2", "predict3"]
        .iter()
        .filter_map(|n| topology[*n]["version"].as_str().map(str::to_string))
        .collect()
}

/// Acceptance 1: deploy a new guest and a new model to every instance under
/// load from 8 clients, then roll back: no request fails, and the version
/// in the answers switches at each step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_then_rollback_under_load_fails_no_request() {
    let dir = TempDir::new("deploy");
    let guest = variant_guest(&dir);
    let model = repo().join("models/digits-v2.onnx");
    let host = Host::start(&free_ports("2-active.json"), &[]);
    let v1 = versions(&host.topology().await)[0].clone();
    let load = Load::start(host.router, 8, vec![one_row()]);
    load.wait_for(200).await;

    let model_arg = format!("digits={}", model.display());
    let deploy_sent = Instant::now();
    let outcome = deploy(
        &host,
        &["--module", guest.to_str().unwrap(), "--model", &model_arg],
    );
    let deployed = Instant::now();
    assert_eq!(outcome["action"], "deployed", "{outcome}");
    let v2 = outcome["instances"]["predict1"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(v1, v2);
    assert_eq!(outcome["instances"]["predict3"], v2.as_str(), "{outcome}");
    load.wait_for(200).await;
    let t = host.topology().await;
    assert_eq!(versions(&t), vec![v2.clone(); 3], "{t}");
    assert_eq!(t["predict1"]["previous_version"], v1.as_str());
    assert_eq!(t["predict1"]["source"], "deploy");

    let rollback_sent = Instant::now();
    let (code, stdout, stderr) = cli(&host, &["rollback"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("rolled back"), "{stdout}");
    let rolled_back = Instant::now();
    load.wait_for(200).await;
    let answers = load.stop().await;
    let failed: Vec<_> = answers.iter().filter(|a| !a.ok()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        answers.len(),
        &failed[..3.min(failed.len())]
    );
    // Each answer carries the version it was computed by. Requests sent
    // before the deploy was asked for ran on the old version; those sent
    // after it was acknowledged and answered before the rollback was asked
    // for, on the new one; those sent after the rollback, on the old again.
    // (Requests in between may finish on either, as in-flight calls do.)
    let window = |from: Instant, to: Option<Instant>| -> Vec<&str> {
        answers
            .iter()
            .filter(|a| a.sent >= from && to.is_none_or(|t| a.received <= t))
            .map(|a| a.version.as_str())
            .collect()
    };
    let before: Vec<&str> = answers
        .iter()
        .filter(|a| a.received <= deploy_sent)
        .map(|a| a.version.as_str())
        .collect();
    for (what, seen, want) in [
        ("before the deploy", before, &v1),
        (
            "between deploy and rollback",
            window(deployed, Some(rollback_sent)),
            &v2,
        ),
        ("after the rollback", window(rolled_back, None), &v1),
    ] {
        assert!(seen.len() >= 100, "only {} answers {what}", seen.len());
        assert!(seen.iter().all(|v| v == want), "{what}: versions {seen:?}");
    }
    assert_eq!(versions(&host.topology().await), vec![v1.clone(); 3]);
    eprintln!(
        "{} answers, 0 failed: {} from {v1}, {} from {v2}",
        answers.len(),
        answers.iter().filter(|a| a.version == v1).count(),
        answers.iter().filter(|a| a.version == v2).count()
    );
}

/// A deploy retried (its answer lost) or repeated finds the version already
/// in force: it changes nothing, so the previous version stays what a
/// rollback returns to. A model replaces only the model of its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_of_the_version_in_force_leaves_the_rollback_target() {
    let host = Host::start(&free_ports("2-active.json"), &[]);
    let v1 = versions(&host.topology().await)[0].clone();
    let model = repo().join("models/digits-v2.onnx");
    let model_arg = format!("digits={}", model.display());
    let first = deploy(&host, &["--model", &model_arg]);
    assert_eq!(first["action"], "deployed", "{first}");
    let v2 = first["instances"]["predict1"].as_str().unwrap().to_string();
    for again in [
        vec!["--model", &model_arg],
        vec!["--model", &model_arg, "--to", "predict2"],
    ] {
        let outcome = deploy(&host, &again);
        assert_eq!(outcome["action"], "unchanged", "{again:?}: {outcome}");
        assert_eq!(outcome["instances"]["predict2"], v2.as_str(), "{outcome}");
    }
    let t = host.topology().await;
    assert_eq!(versions(&t), vec![v2.clone(); 3], "{t}");
    for name in ["predict1", "predict2", "predict3"] {
        assert_eq!(t[name]["previous_version"], v1.as_str(), "{name}: {t}");
    }
    let (code, _, stderr) = cli(&host, &["deploy", "--model", &model_arg, "--canary", "50"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("already serves version"), "{stderr}");
    // A new example for the version in force is a change (smoke-tested,
    // then what GET /predict sends), but not a new version: the rollback
    // target stays.
    let dir = TempDir::new("example-only");
    let example = inputs(&[cases("digits")["cases"][5]["input"].clone()]);
    let file = dir.write("example.json", std::str::from_utf8(&example).unwrap());
    let args = ["--model", &model_arg, "--example", file.to_str().unwrap()];
    let outcome = deploy(&host, &args);
    assert_eq!(outcome["action"], "deployed", "{outcome}");
    let (_, _, of_example) = post(host.router, "/predict", example).await;
    let (_, _, got) = get(host.router, "/predict").await;
    assert_eq!(got["outputs"], of_example["outputs"], "{got}");
    let t = host.topology().await;
    assert_eq!(versions(&t), vec![v2.clone(); 3], "{t}");
    assert_eq!(t["predict3"]["previous_version"], v1.as_str(), "{t}");
    assert_eq!(deploy(&host, &args)["action"], "unchanged");

    let renamed = format!("cancer={}", model.display());
    let (code, _, stderr) = cli(&host, &["deploy", "--model", &renamed]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("no instance serves a model named `cancer`; this topology serves `digits`"),
        "{stderr}"
    );
    let (code, _, stderr) = cli(&host, &["deploy", "--model", &renamed, "--to", "predict1"]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("instance `predict1` serves the model `digits`, not `cancer`"),
        "{stderr}"
    );

    let (code, stdout, stderr) = cli(&host, &["rollback"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("rolled back"), "{stdout}");
    assert_eq!(versions(&host.topology().await), vec![v1; 3]);
}

/// Acceptance 2: each unfit version is refused with 422 and its reason, no
/// request fails meanwhile, and the old version keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: measures or restarts a hadr-host process"]
async fn unfit_versions_are_refused_and_the_old_one_keeps_serving() {
    let dir = TempDir::new("refusals");
    let not_wasm = dir.write("notes.wasm", "this is not WebAssembly");
    let empty_component = dir.0.join("empty.wasm");
    std::fs::write(&empty_component, b"\0asm\x0d\0\x01\0").unwrap();
    let bad_model = dir.write("broken.onnx", "not an onnx protobuf at all");
    let (_, deadly) = safe_and_deadly_rows();
    let deadly_example = dir.write(
        "deadly.json",
        &String::from_utf8(inputs(&[deadly])).unwrap(),
    );
    let host = Host::process(&free_ports("2-active.json"), &[]);
    let before = versions(&host.topology().await);
    let load = Load::start(host.router, 4, vec![one_row()]);
    let model_arg = format!("digits={}", bad_model.display());
    let hostile = dir.0.join("hostile.onnx");
    std::fs::write(&hostile, hostile_model()).unwrap();
    let hostile_arg = format!("digits={}", hostile.display());
    let faulty = faulty_guest();
    let cases: [(Vec<&str>, &str); 5] = [
        (
            vec!["--model", &hostile_arg],
            "would take 536870912 bytes of host memory, over the model budget of 268435456 bytes (--max-model-bytes)",
        ),
        (
            vec!["--module", not_wasm.to_str().unwrap()],
            "is not a WebAssembly component",
        ),
        (
            vec!["--module", empty_component.to_str().unwrap()],
            "is not a predictor component",
        ),
        (vec!["--model", &model_arg], "the model was refused"),
        (
            vec![
                "--module",
                faulty.to_str().unwrap(),
                "--example",
                deadly_example.to_str().unwrap(),
            ],
            "failed its smoke test",
        ),
    ];
    for (args, reason) in cases {
        load.wait_for(20).await;
        let mut all = vec!["deploy"];
        all.extend_from_slice(&args);
        let (code, _, stderr) = cli(&host, &all);
        assert_eq!(code, Some(2), "{args:?} was not refused: {stderr}");
        assert!(stderr.contains("422"), "{stderr}");
        assert!(
            stderr.contains(reason),
            "{args:?}: expected {reason:?} in {stderr}"
        );
        assert_eq!(versions(&host.topology().await), before);
    }
    load.wait_for(20).await;
    let answers = load.stop().await;
    assert!(answers.iter().all(|a| a.ok() && a.version == before[0]));
    // The hostile model's 512 MiB were never allocated: the host's peak
    // resident memory stayed far below them.
    let peak = peak_rss_kib(host.pid());
    assert!(peak < 300 * 1024, "peak RSS {peak} KiB");

    // The same refusals straight at the route: 422 with a JSON reason.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let body = serde_json::json!({"module": "0".repeat(64)}).to_string();
    let (s, _, b) = request_with(
        host.admin,
        Method::POST,
        "/admin/deploy",
        body.into(),
        Some(&auth),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("was uploaded"),
        "{b}"
    );
    // A name that is no digest: the client's mistake, not the host's.
    for body in [
        serde_json::json!({"module": "zz"}),
        serde_json::json!({"model": {"name": "digits", "digest": "../../etc"}}),
    ] {
        let (s, _, b) = request_with(
            host.admin,
            Method::POST,
            "/admin/deploy",
            body.to_string().into(),
            Some(&auth),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
        assert!(
            b["message"].as_str().unwrap().contains("not a hex SHA-256"),
            "{b}"
        );
    }
    let digest = "f".repeat(64);
    let (s, _, b) = request_with(
        host.admin,
        Method::PUT,
        &format!("/admin/blobs/{digest}"),
        "x".into(),
        Some(&auth),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(b["error"], "digest_mismatch");
    let (s, _, _) =
        request_with(host.admin, Method::POST, "/admin/deploy", "{}".into(), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

/// Acceptance 3: a canary at 20% takes about a fifth of the answers and is
/// promoted; a canary guest that traps on a share of inputs is aborted
/// automatically, the event is recorded, and clients never see its faults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_takes_its_share_and_a_failing_one_is_aborted() {
    let dir = TempDir::new("canary");
    let guest = variant_guest(&dir);
    let host = Host::start(&free_ports("2-active.json"), &[]);
    let v1 = versions(&host.topology().await)[0].clone();
    let outcome = deploy(
        &host,
        &["--module", guest.to_str().unwrap(), "--canary", "20"],
    );
    assert_eq!(outcome["action"], "canary", "{outcome}");
    let t = host.topology().await;
    let v2 = t["predict1"]["canary"]["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(t["predict1"]["canary"]["percent"], 20);
    let mut from_canary = 0;
    for _ in 0..500 {
        let (s, _, b) = post(host.router, "/predict", one_row()).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        from_canary += usize::from(b["version"] == v2.as_str());
    }
    eprintln!("canary at 20%: {from_canary} of 500 answers");
    assert!((75..=125).contains(&from_canary), "{from_canary} of 500");
    let promoted = deploy(&host, &["--promote"]);
    assert_eq!(promoted["action"], "promoted", "{promoted}");
    let (_, _, b) = post(host.router, "/predict", one_row()).await;
    assert_eq!(b["version"], v2.as_str());
    assert_ne!(v1, v2);

    // The faulty guest passes its smoke test (a safe example) and traps on
    // about a third of real inputs.
    let (safe, _) = safe_and_deadly_rows();
    let example = dir.write("safe.json", &String::from_utf8(inputs(&[safe])).unwrap());
    let faulty = faulty_guest();
    deploy(
        &host,
        &[
            "--module",
            faulty.to_str().unwrap(),
            "--canary",
            "50",
            "--example",
            example.to_str().unwrap(),
        ],
    );
    let bodies: Vec<Bytes> = cases("digits")["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Bytes::from(inputs(&[c["input"].clone()])))
        .collect();
    let load = Load::start(host.router, 4, bodies);
    let deadline = Instant::now() + Duration::from_secs(60);
    let events = loop {
        load.wait_for(10).await;
        let d = deployments(&host).await;
        if has_event(&d, "auto-abort") {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "the failing canary was never aborted: {d}"
        );
    };
    load.wait_for(50).await;
    let answers = load.stop().await;
    let failed = answers.iter().filter(|a| !a.ok()).count();
    assert_eq!(failed, 0, "clients saw the canary's faults");
    let event = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "auto-abort")
        .unwrap();
    assert!(
        event["detail"]
            .as_str()
            .unwrap()
            .contains("error rate passed 5.0%"),
        "{event}"
    );
    let t = host.topology().await;
    assert!(t["predict1"].get("canary").is_none(), "{t}");
    assert_eq!(versions(&t), vec![v2.clone(); 3]);
    eprintln!("auto-abort: {}", event["detail"]);
}

/// Posts until the first 200 (bounded).
async fn first_ok(router: std::net::SocketAddr) {
    for _ in 0..1000 {
        if try_post(router, one_row()).await == Some(StatusCode::OK) {
            return;
        }
    }
    panic!("no 200");
}

fn start_timed(topology: &str, state: &Path, log: &Path) -> (Host, Duration) {
    let started = Instant::now();
    let host = Host::start_with(topology, Some(state), Some(log), &[]);
    (host, started.elapsed())
}

/// After two module deploys the topology file's module is neither in force
/// nor the rollback target, but every start compiles it (the file's
/// version is the fallback): its compiled file is kept, so restarts stay
/// warm. (The collector removed it at each start, and each next start
/// compiled it again: 200–400 ms more of every `kill -9` outage.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: restarts a hadr-host process"]
async fn restarts_after_two_deploys_compile_nothing() {
    let dir = TempDir::new("two-deploys");
    let state = dir.0.join("state");
    let topology = free_ports("single.json");
    let (host, _) = start_timed(&topology, &state, &dir.0.join("first.log"));
    for payload in [&b"a"[..], b"b"] {
        let guest = variant_guest_of(&dir, payload);
        deploy(&host, &["--module", guest.to_str().unwrap()]);
    }
    let deployed = served_version(host.router).await;
    drop(host); // kill -9
    for start in ["second", "third"] {
        let log = dir.0.join(format!("{start}.log"));
        let (host, _) = start_timed(&topology, &state, &log);
        assert_eq!(served_version(host.router).await, deployed);
        drop(host);
        let text = std::fs::read_to_string(&log).unwrap();
        for compiled in [
            "cache=\"miss",
            "cache=Miss",
            "cache=\"rebuilt",
            "cache=Rebuilt",
            "ignoring a compiled-cache entry",
            "removed unused",
        ] {
            assert!(
                !text.contains(compiled),
                "{start} start: {compiled}: {text}"
            );
        }
    }
}

/// A canary lives in memory: a restart ends it, and the event log says so
/// (its last word was still `canary`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: restarts a hadr-host process"]
async fn a_restart_ends_the_canary_in_the_event_log() {
    let dir = TempDir::new("canary-restart");
    let state = dir.0.join("state");
    let topology = free_ports("single.json");
    let (host, _) = start_timed(&topology, &state, &dir.0.join("first.log"));
    let in_force = served_version(host.router).await;
    let guest = variant_guest(&dir);
    deploy(
        &host,
        &["--module", guest.to_str().unwrap(), "--canary", "50"],
    );
    assert!(has_event(&deployments(&host).await, "canary"));
    drop(host); // kill -9
    let (host, _) = start_timed(&topology, &state, &dir.0.join("second.log"));
    assert_eq!(served_version(host.router).await, in_force);
    let events = deployments(&host).await["events"].clone();
    let last = events
        .as_array()
        .and_then(|e| e.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(last["kind"], "abort", "{events}");
    assert!(
        last["detail"]
            .as_str()
            .unwrap()
            .contains("ended by a restart"),
        "{last}"
    );
    drop(host);
    // Said once: the next start finds the canary closed.
    let (host, _) = start_timed(&topology, &state, &dir.0.join("third.log"));
    let again = deployments(&host).await["events"].clone();
    assert_eq!(
        again.as_array().unwrap().len(),
        events.as_array().unwrap().len(),
        "{again}"
    );
}

/// Acceptance 4: a restart after a deploy serves the deployed version and
/// says so; with a warm compiled cache it does not compile, and the time
/// from process start to the first 200 is reported against a cold start. A
/// damaged cache entry is ignored and rebuilt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: measures or restarts a hadr-host process"]
async fn a_restart_serves_the_deployed_version_from_the_compiled_cache() {
    let dir = TempDir::new("restart");
    let guest = variant_guest(&dir);
    let state = dir.0.join("state");
    let topology = free_ports("2-active.json");
    let log = dir.0.join("first.log");
    let started = Instant::now();
    let (host, _) = start_timed(&topology, &state, &log);
    first_ok(host.router).await;
    let cold = started.elapsed();
    // An example of its own, which `GET /predict` sends: kept across the
    // restart (it was rebuilt as a row of zeros).
    let example = inputs(&[cases("digits")["cases"][3]["input"].clone()]);
    let example_file = dir.write("example.json", std::str::from_utf8(&example).unwrap());
    let deployed = deploy(
        &host,
        &[
            "--module",
            guest.to_str().unwrap(),
            "--example",
            example_file.to_str().unwrap(),
        ],
    );
    let v2 = deployed["instances"]["predict1"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, _, of_example) = post(host.router, "/predict", example.clone()).await;
    let (_, _, got) = get(host.router, "/predict").await;
    assert_eq!(got["outputs"], of_example["outputs"], "{got}");
    drop(host); // kill -9

    let log = dir.0.join("second.log");
    let started = Instant::now();
    let (host, _) = start_timed(&topology, &state, &log);
    first_ok(host.router).await;
    let warm = started.elapsed();
    let (_, _, b) = post(host.router, "/predict", one_row()).await;
    assert_eq!(b["version"], v2.as_str(), "{b}");
    let (s, _, got) = get(host.router, "/predict").await;
    assert_eq!(s, StatusCode::OK, "{got}");
    assert_eq!(
        got["outputs"], of_example["outputs"],
        "the example after a restart: {got}"
    );
    drop(host);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("serving the version put in force by `hadr-host deploy`"),
        "{text}"
    );
    assert!(
        text.contains("cache=\"hit\"") || text.contains("cache=hit"),
        "{text}"
    );
    assert!(!text.contains("miss"), "{text}");
    eprintln!(
        "process start → first 200: cold (compiling) {:.0} ms, warm cache {:.0} ms ({:.1}× faster)",
        cold.as_secs_f64() * 1e3,
        warm.as_secs_f64() * 1e3,
        cold.as_secs_f64() / warm.as_secs_f64()
    );

    // Damage every cache entry: each is noticed, ignored and rebuilt.
    for entry in std::fs::read_dir(state.join("compiled")).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }
    let log = dir.0.join("third.log");
    let (host, _) = start_timed(&topology, &state, &log);
    assert_eq!(served_version(host.router).await, v2);
    drop(host);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("ignoring a compiled-cache entry"), "{text}");
}

/// A deployed version a start cannot rebuild (its model blob gone) is held,
/// not forgotten: the file's version serves meanwhile, and once the file is
/// back a start serves the deployed version again, with its rollback. (The
/// start that could not rebuild it overwrote its record with the file's
/// version and collected its remaining files.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: measures or restarts a hadr-host process"]
async fn a_deployed_version_a_start_cannot_rebuild_is_held_for_the_next() {
    let dir = TempDir::new("held");
    let state = dir.0.join("state");
    let topology = free_ports("2-active.json");
    let model = repo().join("models/digits-v2.onnx");
    let (host, _) = start_timed(&topology, &state, &dir.0.join("first.log"));
    let v1 = versions(&host.topology().await)[0].clone();
    let model_arg = format!("digits={}", model.display());
    let v2 = deploy(&host, &["--model", &model_arg])["instances"]["predict1"]
        .as_str()
        .unwrap()
        .to_string();
    drop(host); // kill -9

    let digest = hadr_state::blobs::digest(&std::fs::read(&model).unwrap());
    let blob = state.join("blobs").join(digest);
    let aside = dir.0.join("model-blob");
    std::fs::rename(&blob, &aside).unwrap();
    let log = dir.0.join("second.log");
    let (host, _) = start_timed(&topology, &state, &log);
    let t = host.topology().await;
    assert_eq!(t["predict1"]["held"]["deployed"], v2.as_str(), "{t}");
    assert_eq!(served_version(host.router).await, v1);
    drop(host);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("the deployed version cannot be restored"),
        "{text}"
    );

    std::fs::rename(&aside, &blob).unwrap();
    let (host, _) = start_timed(&topology, &state, &dir.0.join("third.log"));
    assert_eq!(served_version(host.router).await, v2);
    drop(host);

    // Held again; then a deploy of the version serving meanwhile says it
    // is the one wanted: the held one is let go, even with its file back.
    std::fs::rename(&blob, &aside).unwrap();
    let (host, _) = start_timed(&topology, &state, &dir.0.join("fourth.log"));
    let files = format!("digits={}", repo().join("models/digits.onnx").display());
    assert_eq!(deploy(&host, &["--model", &files])["action"], "unchanged");
    drop(host);
    std::fs::rename(&aside, &blob).unwrap();
    let (host, _) = start_timed(&topology, &state, &dir.0.join("fifth.log"));
    assert_eq!(versions(&host.topology().await), vec![v1; 3]);
}

/// A new example for the topology file's own version is kept across a
/// restart (the start rebuilt the version as the file's, example and all,
/// and collected the saved one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: measures or restarts a hadr-host process"]
async fn a_new_example_for_the_files_version_survives_a_restart() {
    let dir = TempDir::new("file-example");
    let state = dir.0.join("state");
    let topology = free_ports("single.json");
    let host = Host::start_with(&topology, Some(&state), Some(&dir.0.join("first.log")), &[]);
    let v1 = versions(&host.topology().await)[0].clone();
    let example = inputs(&[cases("digits")["cases"][9]["input"].clone()]);
    let file = dir.write("example.json", std::str::from_utf8(&example).unwrap());
    let model = format!("digits={}", repo().join("models/digits.onnx").display());
    let outcome = deploy(
        &host,
        &["--model", &model, "--example", file.to_str().unwrap()],
    );
    assert_eq!(outcome["instances"]["predict1"], v1.as_str(), "{outcome}");
    let (_, _, of_example) = post(host.router, "/predict", example).await;
    drop(host);
    let host = Host::start_with(
        &topology,
        Some(&state),
        Some(&dir.0.join("second.log")),
        &[],
    );
    let (s, _, got) = get(host.router, "/predict").await;
    assert_eq!(s, StatusCode::OK, "{got}");
    assert_eq!(got["outputs"], of_example["outputs"], "{got}");
}

/// `serve --only` serves some entries of a file whose others another process
/// serves: their saved state stays (it was dropped, their deployed version
/// and its files with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: measures or restarts a hadr-host process"]
async fn serving_only_some_entries_keeps_the_others_state() {
    let dir = TempDir::new("only");
    let state = dir.0.join("state");
    let topology = free_ports("2-active.json");
    let log = dir.0.join("first.log");
    let host = Host::start_with(&topology, Some(&state), Some(&log), &[]);
    let model_arg = format!("digits={}", repo().join("models/digits-v2.onnx").display());
    let v2 = deploy(&host, &["--model", &model_arg])["instances"]["predict2"]
        .as_str()
        .unwrap()
        .to_string();
    drop(host);
    let log = dir.0.join("second.log");
    let only = Host::start_with(&topology, Some(&state), Some(&log), &["--only", "predict1"]);
    assert_eq!(served_version(only.router).await, v2);
    drop(only);
    let log = dir.0.join("third.log");
    let host = Host::start_with(&topology, Some(&state), Some(&log), &[]);
    assert_eq!(versions(&host.topology().await), vec![v2; 3]);
}

/// A canary judged only by calls whose clients gave up waiting is still
/// judged: with every call on the blocking pool (`--offload-above 0s`), a
/// canary that hangs on a request runs to its deadline after the client
/// hung up, and that fault counts against the canary (before, it counted
/// for the instance only, and a canary failing only such clients never
/// tripped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_only_clients_that_hung_up_is_still_aborted() {
    let dir = TempDir::new("canary-hang-ups");
    let host = Host::start(
        &free_ports("single.json"),
        &["--deadline", "300ms", "--offload-above", "0s"],
    );
    let (safe, _) = safe_and_deadly_rows();
    let example = dir.write(
        "safe.json",
        &String::from_utf8(inputs(std::slice::from_ref(&safe))).unwrap(),
    );
    let faulty = faulty_guest();
    let armed = 3;
    let min_calls = armed.to_string();
    deploy(
        &host,
        &[
            "--module",
            faulty.to_str().unwrap(),
            "--canary",
            "100",
            "--min-calls",
            &min_calls,
            "--example",
            example.to_str().unwrap(),
        ],
    );
    let addr = host.instance_addr("predict1").await;
    let hang = inputs(&[hanging_row(&safe)]);
    let busy = |t: &serde_json::Value| t["predict1"]["sandboxes"]["busy"].clone();
    for sent in 1..=armed {
        let client = send_unread(addr, &hang).await;
        host.wait_for("the canary's call to start", |t| busy(t) == 1)
            .await;
        drop(client);
        host.wait_for("the hang to reach its deadline", |t| {
            busy(t) == 0 && t["predict1"]["traps"] == sent
        })
        .await;
    }
    // The rollout that watches the canary aborts it on its own task.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = deployments(&host).await;
        if has_event(&d, "auto-abort") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{armed} faults in {armed} canary calls did not abort it: {d}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = host.topology().await;
    assert!(t["predict1"].get("canary").is_none(), "{t}");
}

/// A request that faults the version in force as well as the canary is the
/// request's fault, not the canary's: a client sending such requests cannot
/// abort a rollout. Both versions here are the faulty guest, which traps on
/// the same rows; before, every canary fault counted against the canary, and
/// these requests alone aborted it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_fault_both_versions_do_not_abort_a_canary() {
    let dir = TempDir::new("canary-poison");
    let host = Host::start(&with_faulty_guest("single.json", &[]), &[]);
    let v1 = versions(&host.topology().await)[0].clone();
    let (safe, deadly) = safe_and_deadly_rows();
    let example = dir.write(
        "safe.json",
        &String::from_utf8(inputs(std::slice::from_ref(&safe))).unwrap(),
    );
    let canary = variant_of(&dir, &faulty_guest(), b"faulty-v2");
    let outcome = deploy(
        &host,
        &[
            "--module",
            canary.to_str().unwrap(),
            "--canary",
            "50",
            "--min-calls",
            "5",
            "--example",
            example.to_str().unwrap(),
        ],
    );
    assert_eq!(outcome["action"], "canary", "{outcome}");
    let v2 = host.topology().await["predict1"]["canary"]["version"]
        .as_str()
        .unwrap()
        .to_string();
    // Half of these go to the canary: 10 calls, twice --min-calls.
    let mut on_canary = 0;
    for _ in 0..20 {
        let (s, _, b) = post(
            host.router,
            "/predict",
            inputs(std::slice::from_ref(&deadly)),
        )
        .await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{b}");
        assert_eq!(b["error"], "instance_fault", "{b}");
        let message = b["message"].as_str().unwrap();
        on_canary += usize::from(message.contains("canary and again on its version in force"));
    }
    let d = deployments(&host).await;
    assert!(
        !has_event(&d, "auto-abort"),
        "the requests' faults aborted the canary: {d}"
    );
    assert_eq!(on_canary, 10, "the canary took half of the requests");
    let t = host.topology().await;
    assert_eq!(t["predict1"]["canary"]["version"], v2.as_str(), "{t}");
    // The canary still serves its share of rows it can answer.
    let mut answered = Vec::new();
    for _ in 0..10 {
        let (s, _, b) = post(host.router, "/predict", inputs(std::slice::from_ref(&safe))).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        answered.push(b["version"].as_str().unwrap().to_string());
    }
    assert!(
        answered.contains(&v2) && answered.contains(&v1),
        "{answered:?}"
    );
}

/// A canary that refuses what the version in force accepts (here: a model
/// with another input shape, whose own smoke test passes) costs no client a
/// failure: the version in force answers, and the canary is aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_refuses_good_requests_is_aborted_and_clients_never_see_it() {
    let host = Host::start(&free_ports("2-active.json"), &[]);
    let v1 = versions(&host.topology().await)[0].clone();
    let model = format!(
        "digits={}",
        repo().join("models/breast_cancer.onnx").display()
    );
    let outcome = deploy(&host, &["--model", &model, "--canary", "50"]);
    assert_eq!(outcome["action"], "canary", "{outcome}");
    for _ in 0..100 {
        let (s, _, b) = post(host.router, "/predict", one_row()).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(
            b["version"],
            v1.as_str(),
            "only the version in force answers: {b}"
        );
    }
    let d = deployments(&host).await;
    assert!(has_event(&d, "auto-abort"), "{d}");
    // Bad input is still the client's: 422, from the version in force.
    let (s, _, b) = post(host.router, "/predict", "{\"inputs\": [[1, 2, 3]]}").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
}

/// A deploy whose client hangs up mid-request still completes or undoes as
/// one unit: here the canary ends up running on every instance with its
/// event recorded, and `--abort` stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_whose_client_hangs_up_completes_as_one_unit() {
    use tokio::io::AsyncWriteExt;
    let host = Host::start(&free_ports("2-active.json"), &[]);
    let dir = TempDir::new("hangup");
    let bytes = std::fs::read(variant_guest(&dir)).unwrap();
    let digest = hadr_state::blobs::digest(&bytes);
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let path = format!("/admin/blobs/{digest}");
    let (s, _, b) = request_with(host.admin, Method::PUT, &path, bytes.into(), Some(&auth)).await;
    assert!(s.is_success(), "{b}");
    // The request, then the connection closed before any answer.
    let body = serde_json::json!({"module": digest, "to": "all", "canary": 50}).to_string();
    let head = format!(
        "POST /admin/deploy HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(host.admin).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(20);
    let d = loop {
        let d = deployments(&host).await;
        if has_event(&d, "canary") {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "the deploy was lost with its client: {d}"
        );
        tokio::time::sleep(common::POLL).await;
    };
    for name in ["predict1", "predict2", "predict3"] {
        assert!(
            d["instances"][name]["canary"].is_object(),
            "{name} runs the canary the event records: {d}"
        );
    }
    let (code, _, stderr) = cli(&host, &["deploy", "--abort"]);
    assert_eq!(code, Some(0), "{stderr}");
    let d = deployments(&host).await;
    assert!(d["instances"]["predict1"]["canary"].is_null(), "{d}");
}

/// A 200-byte ONNX model whose `ConstantOfShape` declares 128M floats
/// (512 MiB), the audit's hostile model.
fn hostile_model() -> Vec<u8> {
    use prost::Message;
    use tract_onnx::pb::tensor_proto::DataType;
    use tract_onnx::pb::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto};
    let shape = TensorProto {
        name: "shape".into(),
        dims: vec![1],
        data_type: DataType::Int64 as i32,
        int64_data: vec![128 << 20],
        ..Default::default()
    };
    let node = NodeProto {
        op_type: "ConstantOfShape".into(),
        input: vec!["shape".into()],
        output: vec!["y".into()],
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(GraphProto {
            node: vec![node],
            initializer: vec![shape],
            ..Default::default()
        }),
        ..Default::default()
    };
    model.encode_to_vec()
}

/// The peak resident memory of process `pid`, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

/// A fault armed in a sandbox that a deploy replaces before the fault
/// fires goes with that sandbox: `/topology` stops showing it, nothing
/// counts it as fired, and the next fault can be armed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_armed_in_a_replaced_sandbox_goes_with_it() {
    let dir = TempDir::new("disarm");
    let guest = variant_guest(&dir);
    let host = Host::start(&free_ports("single.json"), &[]);
    let (s, _, b) = common::chaos(&host, "predict1", "trap").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(host.topology().await["predict1"]["armed_fault"], "trap");
    let outcome = deploy(&host, &["--module", guest.to_str().unwrap()]);
    assert_eq!(outcome["action"], "deployed", "{outcome}");
    host.wait_for("the fault to go with its sandbox", |t| {
        t["predict1"].get("armed_fault").is_none()
    })
    .await;
    let t = host.topology().await;
    assert_eq!(t["predict1"]["faults_fired"], 0, "{t}");
    let (s, _, b) = common::chaos(&host, "predict1", "hang").await;
    assert_eq!(s, StatusCode::OK, "a new fault can be armed: {b}");
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// The digits model with metadata that makes the faulty guest refuse to
/// start between `from` and `until` (Unix ms).
fn model_refusing_to_start(dir: &TempDir, from: u128, until: u128) -> PathBuf {
    use prost::Message;
    use tract_onnx::pb::{ModelProto, StringStringEntryProto};
    let bytes = std::fs::read(repo().join("models/digits.onnx")).unwrap();
    let mut model = ModelProto::decode(bytes.as_slice()).unwrap();
    model.metadata_props.push(StringStringEntryProto {
        key: "hadr.faulty.refuse-init".into(),
        value: format!("{from}..{until}"),
    });
    let path = dir.0.join("digits-refusing.onnx");
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    // Its smoke test's example: digits' own (the faulty guest traps on a
    // row of zeros).
    std::fs::copy(
        repo().join("models/digits.cases.json"),
        dir.0.join("digits-refusing.cases.json"),
    )
    .unwrap();
    path
}

/// Deploys the faulty guest with a model that makes every build fail for
/// `ms` milliseconds from 5 s after now (the deploy's own builds, its
/// smoke test and up to three instances' sandboxes, come first, on a
/// loaded machine), and waits until the window opens. Returns when it
/// closes (Unix ms).
async fn enter_a_build_failing_window(host: &Host, dir: &TempDir, ms: u128) -> u128 {
    let from = unix_ms() + 5000;
    let until = from + ms;
    let model = model_refusing_to_start(dir, from, until);
    let guest = faulty_guest();
    let model_arg = format!("digits={}", model.display());
    let outcome = deploy(
        host,
        &["--module", guest.to_str().unwrap(), "--model", &model_arg],
    );
    assert_eq!(outcome["action"], "deployed", "{outcome}");
    assert!(unix_ms() < from, "the deploy ended inside the window");
    let to_window = from.saturating_sub(unix_ms()) as u64;
    tokio::time::sleep(Duration::from_millis(to_window + 50)).await;
    until
}

/// An instance whose faulted sandbox cannot be replaced (every build fails
/// for a while: the faulty guest refuses to start during a window its model
/// names) is unready on its own port, where a balancer then sends it
/// nothing; once builds work again it is rebuilt without any request and is
/// ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_left_without_a_sandbox_is_rebuilt_without_traffic() {
    let dir = TempDir::new("repair");
    let host = Host::start(
        &common::with_faulty_guest("single.json", &[]),
        &["--warm-pool", "0", "--concurrency", "1"],
    );
    let p1 = host.instance_addr("predict1").await;
    // Builds fail for 5 s (the arm and three builds fit in it on a loaded
    // machine), starting 3 s from now: the deploy's own builds (its smoke
    // test, the instance's sandbox) come first.
    let until = enter_a_build_failing_window(&host, &dir, 5000).await;

    // A trap whose replacement cannot be built: the request fails, and the
    // instance is left without a sandbox.
    let (s, _, b) = common::chaos(&host, "predict1", "trap").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _, b) = post(p1, "/predict", one_row()).await;
    assert_ne!(s, StatusCode::OK, "{b}");
    let t = host.topology().await;
    assert_eq!(t["predict1"]["broken"], true, "{t}");
    let served = t["predict1"]["served"].clone();
    let (s, _, b) = common::get(p1, "/readyz").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("built again every"),
        "{b}"
    );

    // No request from here on: it is rebuilt once the window has passed.
    host.wait_for("the instance to be rebuilt", |t| {
        t["predict1"]["broken"] == false
    })
    .await;
    assert!(unix_ms() >= until, "rebuilt while builds still failed");
    let (s, _, b) = common::get(p1, "/readyz").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let t = host.topology().await;
    assert_eq!(t["predict1"]["served"], served, "no request was sent: {t}");
    let (s, _, b) = post(p1, "/predict", one_row()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

/// The router sends nothing to an instance left without a sandbox while
/// another can serve: a broken instance fails fast, so by load alone it
/// would win nearly every pick and each request would pay its failed build
/// and a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_passes_over_an_instance_left_without_a_sandbox() {
    let dir = TempDir::new("broken-routing");
    let host = Host::start(
        &common::with_faulty_guest("2-active.json", &[]),
        &["--warm-pool", "0", "--concurrency", "1"],
    );
    let until = enter_a_build_failing_window(&host, &dir, 6000).await;

    // predict1 traps and cannot be rebuilt; predict2 keeps its sandbox.
    let p1 = host.instance_addr("predict1").await;
    let (s, _, b) = common::chaos(&host, "predict1", "trap").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _, b) = post(p1, "/predict", one_row()).await;
    assert_ne!(s, StatusCode::OK, "{b}");
    let before = host.topology().await;
    assert_eq!(before["predict1"]["broken"], true, "{before}");

    const SENT: u64 = 20;
    for _ in 0..SENT {
        let (s, _, b) = post(host.router, "/predict", one_row()).await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    assert!(unix_ms() < until, "the requests ran past the window");
    let after = host.topology().await;
    let count = |t: &serde_json::Value, i: &str, c: &str| t[i][c].as_u64().unwrap();
    assert_eq!(
        count(&after, "predict1", "failed"),
        count(&before, "predict1", "failed"),
        "the broken instance was tried: {after}"
    );
    assert_eq!(
        count(&after, "predict2", "served") - count(&before, "predict2", "served"),
        SENT,
        "{after}"
    );
}

/// A request that pins a version is checked when it is routed, before its
/// body arrives; a deploy that replaces the version meanwhile gets it 404
/// `unknown_version`, never another version's answer, on the router and
/// on an instance's port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_version_replaced_while_the_body_arrives_is_not_answered_by_another() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = Host::start(&free_ports("2-active.json"), &[]);
    let version = served_version(host.router).await;
    let row = cases("digits")["cases"][0]["input"].clone();
    let body = serde_json::json!({"inputs": [{"name": "float_input", "shape": [1, 64], "datatype": "FP32", "data": row}]})
        .to_string();
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);
    let p1 = host.instance_addr("predict1").await;
    let mut streams = Vec::new();
    for addr in [host.router, p1] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /v2/models/digits/versions/{version}/infer HTTP/1.1\r\nhost: hadr\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(first).await.unwrap();
        streams.push(stream);
    }
    let guest = faulty_guest();
    let outcome = deploy(&host, &["--module", guest.to_str().unwrap()]);
    assert_eq!(outcome["action"], "deployed", "{outcome}");
    assert_ne!(served_version(host.router).await, version);
    for mut stream in streams {
        stream.write_all(rest).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
            .await
            .expect("answered")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        assert!(answer.contains("no longer in force"), "{answer}");
    }
}
