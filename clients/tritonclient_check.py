"""Drives a running hadr-host with Triton's own Python HTTP client (tritonclient[http]).

    python clients/tritonclient_check.py ROUTER [--instance ADDR=MODEL ...]

ROUTER is host:port of the router's listener; each --instance is an instance's own port and
the model it serves. The host must serve `digits`, `breast_cancer` and `placement` (the
article's model with its guest); host/tests/tritonclient.rs starts one so. Every answer is
compared with scikit-learn's (models/*.cases.json) and with /predict's, to 1e-5. Exits
non-zero on the first mismatch; prints how many checks passed.
"""

import argparse
import importlib.metadata
import json
import pathlib
import sys
import urllib.request

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

REPO = pathlib.Path(__file__).resolve().parent.parent
TOLERANCE = 1e-5
checks = 0


def check(condition, what):
    global checks
    if not condition:
        sys.exit(f"FAILED: {what}")
    checks += 1


def close(got, want, what):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    check(got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}")
    check(np.max(np.abs(got - want)) <= TOLERANCE, f"{what}: {got} vs {want}")


def cases(model):
    return json.loads((REPO / "models" / f"{model}.cases.json").read_text())["cases"]


def predict(address, body, model):
    """hadr's own /predict; a router serving several models is told which."""
    request = urllib.request.Request(
        f"http://{address}/predict?model={model}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


def row_model(model):
    """Rows of numbers in; scikit-learn's probabilities; /predict's scores."""
    cs = cases(model)
    rows = np.array([c["input"] for c in cs], dtype=np.float32)
    want = np.array([c["probabilities"] for c in cs], dtype=np.float64)
    return rows, want, lambda address: predict(address, {"inputs": rows.tolist()}, model)["outputs"]


def placement():
    """The article's model: feature rows, their positive-class probability."""
    cs = cases("placement")
    rows = np.array([c["vector"] for c in cs], dtype=np.float32)
    want = np.array([c["probability"] for c in cs], dtype=np.float64)
    return rows, want


def records():
    return [json.dumps(c["record"]) for c in cases("placement")]


def infer_rows(client, model, input_name, rows, binary_in, binary_out, **kw):
    tensor = httpclient.InferInput(input_name, list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary_in)
    outputs = [
        httpclient.InferRequestedOutput("label", binary_data=binary_out),
        httpclient.InferRequestedOutput("probabilities", binary_data=binary_out),
    ]
    return client.infer(model, [tensor], outputs=outputs, **kw)


def check_server(client):
    check(client.is_server_live(), "is_server_live")
    check(client.is_server_ready(), "is_server_ready")
    meta = client.get_server_metadata()
    check(meta["name"] == "hadr", f"server name: {meta}")
    check("binary_tensor_data" in meta["extensions"], f"extensions: {meta}")


def check_model(client, address, model):
    check(client.is_model_ready(model), f"is_model_ready({model})")
    meta = client.get_model_metadata(model)
    check(meta["name"] == model and meta["platform"] == "onnx", f"metadata: {meta}")
    (declared,) = meta["inputs"]
    check(declared["datatype"] == "FP32" and declared["shape"][0] == -1, f"inputs: {declared}")
    names = [o["name"] for o in meta["outputs"]]
    check(names == ["label", "probabilities"], f"outputs: {names}")
    if model == "placement":
        rows, want = placement()
        positive = lambda p: p[:, 1]  # noqa: E731
        from_predict = [p["Placement_Probability"] for p in
                        predict(address, json.loads("[" + ",".join(records()) + "]"), model)["predictions"]]
    else:
        rows, want, scores = row_model(model)
        positive = lambda p: p  # noqa: E731
        from_predict = scores(address)
    for binary_in in (False, True):
        for binary_out in (False, True):
            what = f"{model} binary in {binary_in}, out {binary_out}"
            answer = infer_rows(client, model, declared["name"], rows, binary_in, binary_out,
                                request_id="check-1")
            probabilities = answer.as_numpy("probabilities")
            close(positive(probabilities), want, f"{what}: against scikit-learn")
            close(positive(probabilities), from_predict, f"{what}: against /predict")
            check(answer.as_numpy("label").shape == (len(rows),), f"{what}: labels")
            response = answer.get_response()
            check(response["id"] == "check-1" and response["model_name"] == model, f"{what}: {response}")
    # No outputs named: the client asks for every one, binary.
    tensor = httpclient.InferInput(declared["name"], [1, rows.shape[1]], "FP32")
    tensor.set_data_from_numpy(rows[:1])
    answer = client.infer(model, [tensor])
    close(positive(answer.as_numpy("probabilities")), want[:1], f"{model}: all outputs")
    # A version pinned in the URL.
    version = meta["versions"][0]
    check(client.is_model_ready(model, version), f"{model} version {version} ready")
    answer = client.infer(model, [tensor], model_version=version)
    check(answer.get_response()["model_version"] == version, f"{model}: pinned version")


def check_records(client):
    """The placement guest also reads candidate records, as BYTES."""
    _, want = placement()
    items = np.array([r.encode() for r in records()], dtype=np.object_)
    for binary_in in (False, True):
        tensor = httpclient.InferInput("records", [len(items)], "BYTES")
        tensor.set_data_from_numpy(items, binary_data=binary_in)
        answer = client.infer("placement", [tensor])
        close(answer.as_numpy("probabilities")[:, 1], want, f"records, binary {binary_in}")


def check_errors(client):
    rows, _, _ = row_model("digits")
    tensor = httpclient.InferInput("float_input", [1, 64], "FP32")
    tensor.set_data_from_numpy(rows[:1])
    for what, call, status, words in [
        ("unknown model", lambda: client.infer("nope", [tensor]), "404", "unknown model"),
        ("unknown version", lambda: client.infer("digits", [tensor], model_version="7"), "404", "no version"),
        ("unknown metadata", lambda: client.get_model_metadata("nope"), "404", "unknown model"),
    ]:
        try:
            call()
            check(False, f"{what}: no error")
        except InferenceServerException as e:
            check(e.status() == status and words in e.message(), f"{what}: [{e.status()}] {e.message()}")
    wrong = httpclient.InferInput("float_input", [1, 32], "FP32")
    wrong.set_data_from_numpy(rows[:1, :32])
    try:
        client.infer("digits", [wrong])
        check(False, "wrong shape: no error")
    except InferenceServerException as e:
        check(e.status() == "400" and "[-1, 64]" in e.message(), f"wrong shape: {e}")
    check(not client.is_model_ready("nope"), "an unknown model is not ready")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("router")
    parser.add_argument("--instance", action="append", default=[], metavar="ADDR=MODEL")
    args = parser.parse_args()
    router = httpclient.InferenceServerClient(url=args.router, network_timeout=60)
    check_server(router)
    for model in ("digits", "breast_cancer", "placement"):
        check_model(router, args.router, model)
    check_records(router)
    check_errors(router)
    for instance in args.instance:
        address, model = instance.split("=")
        client = httpclient.InferenceServerClient(url=address, network_timeout=60)
        check_server(client)
        check_model(client, address, model)
    print(f"tritonclient {importlib.metadata.version('tritonclient')}: {checks} checks passed")


if __name__ == "__main__":
    main()
