//! One prediction through the guest against the same work done natively
//! (predict-core + tract), side by side: `guest` is the path `/predict`
//! takes (the host parses the JSON and calls the guest's `predict-rows`),
//! `guest-json` the guest's own `predict` (JSON parsed and written in wasm).
//!
//! Run: `cargo bench -p hadr-host --bench predict` (after scripts/build-guest).

mod common;

use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hadr_server::sandbox::deployment::Deployment;
use hadr_server::sandbox::engine::{HostRuntime, Limits};
use hadr_server::sandbox::nn::LoadedModel;

fn body(rows: usize) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/digits.cases.json");
    let cases: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let inputs: Vec<_> = (0..rows)
        .map(|i| cases["cases"][i]["input"].clone())
        .collect();
    serde_json::to_vec(&serde_json::json!({ "inputs": inputs })).unwrap()
}

fn native(model: &LoadedModel, body: &[u8]) -> Vec<u8> {
    let batch = predict_core::parse_request(body, model.graph.features()).unwrap();
    let outputs = model.graph.run(batch.rows, &batch.data).unwrap();
    let (_, probabilities) = outputs.iter().find(|(n, _)| n == "probabilities").unwrap();
    let values: Vec<f32> = probabilities
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let answer = predict_core::write_answer(
        &values,
        values.len() / batch.rows,
        predict_core::Labels::Argmax,
    )
    .expect("the digits model's outputs are finite");
    let origin = predict_core::Origin {
        model: "digits",
        instance: "native",
        version: "native",
    };
    answer.with_origin(origin)
}

fn predictions(c: &mut Criterion) {
    let runtime = HostRuntime::new(Limits::default(), 1).unwrap();
    let (model, module) = common::default_model_and_guest(&runtime);
    let deployment = Deployment::new(module, model.clone(), 0, None);
    // Guest calls are async (WASI's blocking calls must not block_on inside a
    // task); a current-thread runtime drives them, as a request task would.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut live = rt
        .block_on(deployment.instantiate(&runtime, "bench"))
        .unwrap();
    let mut parsing_guest = rt
        .block_on(deployment.instantiate(&runtime, "bench"))
        .unwrap();
    parsing_guest.parse_in_guest();

    let mut group = c.benchmark_group("predict");
    for rows in [1usize, 32] {
        let body = body(rows);
        group.throughput(Throughput::Elements(rows as u64));
        // The guest's answer plus who answered, as the host sends it.
        let origin = predict_core::Origin {
            model: "digits",
            instance: "bench",
            version: "bench",
        };
        group.bench_with_input(BenchmarkId::new("guest", rows), &body, |b, body| {
            b.iter(|| {
                let answer = rt.block_on(live.predict(body)).unwrap();
                answer.with_origin(origin).unwrap()
            })
        });
        group.bench_with_input(BenchmarkId::new("guest-json", rows), &body, |b, body| {
            b.iter(|| {
                let answer = rt.block_on(parsing_guest.predict(body)).unwrap();
                answer.with_origin(origin).unwrap()
            })
        });
        group.bench_with_input(BenchmarkId::new("native", rows), &body, |b, body| {
            b.iter(|| native(&model, body))
        });
        let batch = predict_core::parse_request(&body, 64).unwrap();
        group.bench_with_input(BenchmarkId::new("tract-only", rows), &batch, |b, batch| {
            b.iter(|| model.graph.run(batch.rows, &batch.data).unwrap())
        });
    }
    // The fixed cost of a call into the sandbox: the guest refuses at once.
    group.bench_function("guest-refused", |b| {
        b.iter(|| rt.block_on(parsing_guest.predict(b"{}")).unwrap_err())
    });
    group.finish();

    c.bench_function("instantiate/cold", |b| {
        b.iter(|| {
            rt.block_on(deployment.instantiate(&runtime, "bench"))
                .unwrap()
        })
    });
}

criterion_group!(benches, predictions);
criterion_main!(benches);
