//! Acceptance: an invalid topology stops start-up with exit code 2 and a
//! message naming the file, the instance and the field.

mod common;

use std::process::Command;

use common::{repo, TempDir};

/// Runs `hadr-host serve` on `topology` and returns (exit code, stderr).
fn refused(topology: &str) -> (Option<i32>, String) {
    let dir = TempDir::new("startup");
    let path = dir.write("bad.json", topology);
    let out = Command::new(env!("CARGO_BIN_EXE_hadr-host"))
        .args(["serve", path.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0", "--state-dir"])
        .arg(dir.0.join("state"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains("bad.json"),
        "the message must name the file: {stderr}"
    );
    (out.status.code(), stderr)
}

#[test]
#[ignore = "full suite: runs hadr-host processes to their exit"]
fn invalid_topologies_exit_2_naming_file_instance_and_field() {
    let cases = [
        ("{\"predict1\": ", "not a topology"),
        (
            r#"{"predict1": {"status": true, "colour": "red"}}"#,
            "instance `predict1`: unknown field `colour`",
        ),
        (
            r#"{"a": {"status": true, "port": "9696"}, "b": {"status": true, "port": 9696}}"#,
            "instance `b`: field `port`: 9696 is already the port of `a`",
        ),
        (
            r#"{"predict1": {"status": true, "model": "missing.onnx"}}"#,
            "instance `predict1`: field `model`: no such file",
        ),
        (
            r#"{"predict1": {"status": true, "port": "http"}}"#,
            "instance `predict1`: field `port`",
        ),
        (
            r#"{"predict1": {"status": true, "max_load": "ten"}}"#,
            "instance `predict1`: field `max_load`: invalid type: string \"ten\"",
        ),
        (r#"{"predict1": {"status": false}}"#, "no active instance"),
    ];
    for (topology, expected) in cases {
        let (code, stderr) = refused(topology);
        assert_eq!(code, Some(2), "{topology}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{topology}: expected {expected:?} in {stderr}"
        );
    }
}

/// Past what one process can reserve sandboxes for, start-up is a
/// configuration error, not an `mmap` failure.
#[test]
#[ignore = "full suite: runs hadr-host processes to their exit"]
fn more_instances_than_a_process_serves_is_a_configuration_error() {
    let entries: Vec<String> = (0..1025)
        .map(|i| format!("\"p{i}\": {{\"status\": true}}"))
        .collect();
    let (code, stderr) = refused(&format!("{{{}}}", entries.join(", ")));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("1025 instances with")
            && stderr.contains("one process serves at most 1024 instances"),
        "{stderr}"
    );
}

/// A concurrency whose sandbox count overflows is refused as too many
/// (it wrapped to 0, passed, and panicked in tokio's semaphore).
#[test]
#[ignore = "full suite: runs hadr-host processes to their exit"]
fn a_concurrency_past_what_a_process_reserves_is_a_configuration_error() {
    for concurrency in ["9223372036854775807", "18446744073709551615", "4000"] {
        let (code, stderr) = refused(&format!(
            r#"{{"predict1": {{"status": true, "concurrency": {concurrency}}}}}"#
        ));
        assert_eq!(code, Some(2), "{concurrency}: {stderr}");
        assert!(
            stderr.contains("one process serves at most 1024 instances and 6144 sandboxes"),
            "{concurrency}: {stderr}"
        );
    }
}

#[test]
#[ignore = "full suite: runs hadr-host processes to their exit"]
fn a_file_that_is_not_a_model_or_not_a_guest_is_refused_by_name() {
    let dir = TempDir::new("startup-files");
    for (key, file, why) in [
        ("model", "junk.onnx", "cannot load model"),
        ("module", "junk.wasm", "not a WebAssembly component"),
    ] {
        let junk = dir.write(file, "not a model, not wasm");
        let (code, stderr) = refused(&format!(
            r#"{{"predict1": {{"status": true, "{key}": {junk:?}}}}}"#
        ));
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(file) && stderr.contains(why), "{stderr}");
    }
}

#[test]
#[ignore = "full suite: runs hadr-host processes to their exit"]
fn a_missing_topology_file_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_hadr-host"))
        .args(["serve", "/nonexistent/topology.json"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/topology.json") && stderr.contains("cannot read topology"),
        "{stderr}"
    );
}

/// A reader that went away before the output (`hadr-host export haproxy … | head -0`) is no
/// panic: the command finishes and exits 0 (it panicked with "failed printing to stdout").
#[test]
fn output_to_a_closed_pipe_is_not_a_panic() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_hadr-host"))
        .args(["export", "haproxy"])
        .arg(repo().join("topologies/fleet/2-active.json"))
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Flags that cannot mean anything at zero are refused by name, not quietly raised. (Were one
/// taken, the host would start: it is killed after 10 s, on its own ports and state.)
#[test]
fn zero_valued_flags_that_mean_nothing_at_zero_are_refused() {
    let dir = TempDir::new("startup-zero");
    for (flag, value) in [
        ("--concurrency", "0"),
        ("--deadline", "0s"),
        ("--write-timeout", "0s"),
        ("--max-connections", "0"),
        ("--max-connections-per-client", "0"),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hadr-host"))
            .args(["serve", "topologies/single.json", flag, value])
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--state-dir",
            ])
            .arg(dir.0.join(flag.trim_start_matches('-')))
            .current_dir(repo())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > std::time::Duration::from_secs(10) {
                child.kill().unwrap();
                panic!("{flag} {value} was taken: the host started");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {stderr}");
        assert!(stderr.contains(flag), "{flag}: {stderr}");
    }
}
