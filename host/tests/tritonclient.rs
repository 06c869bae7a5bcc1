//! Acceptance: Triton's own Python HTTP client (`tritonclient[http]`, pinned
//! in clients/requirements-tritonclient.txt) talks to a running hadr-host,
//! on the router and on instance ports: health, server and model metadata,
//! readiness, and `infer` with JSON and binary inputs and outputs on the
//! digits, breast_cancer and placement models, each answer equal to
//! scikit-learn's and `/predict`'s to 1e-5 (clients/tritonclient_check.py).
//!
//! The client lives in a venv that `scripts/tritonclient-venv` creates
//! (`scripts/test` runs it first). Without it this test fails and says so:
//! a missing client is never a pass.

mod common;

use std::process::Command;

use common::{models_topology, repo, Host};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: Triton's Python client in a venv"]
async fn tritons_python_client_gets_scikit_learns_answers() {
    let python = std::env::var_os("HADR_TRITON_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            std::path::Path::new(&home).join(".cache/hadr/tritonclient-venv/bin/python")
        });
    assert!(
        python.exists(),
        "Triton's client is not installed at {}: run scripts/tritonclient-venv (scripts/test does), \
         or point HADR_TRITON_PYTHON at a python that has tritonclient[http]",
        python.display()
    );
    let host = Host::start(&models_topology(serde_json::json!({})), &[]);
    let digits = host.instance_addr("digits1").await;
    let placement = host.instance_addr("placement1").await;
    let router = host.router;
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(repo().join("clients/tritonclient_check.py"))
            .arg(router.to_string())
            .args(["--instance", &format!("{digits}=digits")])
            .args(["--instance", &format!("{placement}=placement")])
            .output()
            .expect("running the tritonclient check")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "tritonclient check failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("checks passed"), "{stdout}");
    drop(host);
}
