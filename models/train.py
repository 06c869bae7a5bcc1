#!/usr/bin/env python3
"""Train and export the example models that hadr serves, plus their test cases.

Everything is deterministic (fixed random_state everywhere) and uses only data
shipped inside scikit-learn, so nothing is downloaded.

    python3 -m venv /tmp/models-venv
    /tmp/models-venv/bin/pip install -r models/requirements.txt
    /tmp/models-venv/bin/python models/train.py            # writes the files
    /tmp/models-venv/bin/pip install -r models/requirements-verify.txt
    /tmp/models-venv/bin/python models/train.py --verify   # also checks them with onnxruntime
    /tmp/models-venv/bin/python models/train.py --verify-only  # checks the files already written

Writes, next to this script:
    digits.onnx, digits.cases.json, digits-v2.onnx, digits-v2.cases.json,
    breast_cancer.onnx, breast_cancer.cases.json
"""

import argparse
import json
import os
import sys

import numpy as np
import sklearn
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType

HERE = os.path.dirname(os.path.abspath(__file__))

INPUT_NAME = "float_input"
# Widely supported opsets: tract-onnx 0.23 must load these graphs.
TARGET_OPSET = {"": 15, "ai.onnx.ml": 3}
MAX_ABS_DIFF = 1e-5


def split(X, y):
    return train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)


def digits_split():
    ds = load_digits()
    # Raw pixel intensities 0..16; integers, so exact in float32 and float64.
    X = ds.data.astype(np.float64)
    y = ds.target.astype(np.int64)
    return split(X, y)


def build_digits():
    X_train, X_test, y_train, y_test = digits_split()
    model = MLPClassifier(hidden_layer_sizes=(64,), max_iter=1000, random_state=0)
    model.fit(X_train, y_train)
    return "digits", model, X_test, y_test, 0.95


def build_digits_v2():
    """A second version of `digits` (same data, split, inputs and outputs, a wider
    network), for demonstrating a hot-swapped model upgrade."""
    X_train, X_test, y_train, y_test = digits_split()
    model = MLPClassifier(hidden_layer_sizes=(128,), max_iter=1000, random_state=1)
    model.fit(X_train, y_train)
    return "digits-v2", model, X_test, y_test, 0.95


def build_breast_cancer():
    ds = load_breast_cancer()
    # Cast to float32 up front: training, predict_proba and the cases file all use
    # exactly the float32 values that the ONNX model sees.
    X = ds.data.astype(np.float32)
    y = ds.target.astype(np.int64)
    X_train, X_test, y_train, y_test = split(X, y)
    model = RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0)
    model.fit(X_train, y_train)
    return "breast_cancer", model, X_test, y_test, 0.90


def label_from_probabilities(onx):
    """Compute the `label` output as ArgMax(probabilities, axis=1) -> int64 [N].

    The classes are 0..n-1 (asserted in train_all), so the argmax index is the class,
    exactly as sklearn's predict = classes_[argmax(predict_proba)], and ties go to the
    first index in both. skl2onnx builds the label in other ways, and tract-onnx 0.23
    mishandles both of them:
    - the binary forest's TreeEnsembleClassifier `label` is always class 0 in tract,
      because with skl2onnx's one-column binary layout tract takes the argmax over
      that one column;
    - the MLP's ArgMax -> ArrayFeatureExtractor(classes) -> Reshape -> Cast(int64)
      chain comes out of tract with datum type TDim, not I64.
    The `probabilities` output is left untouched.
    """
    from onnx import helper

    g = onx.graph
    for node in g.node:
        node.output[:] = ["skl2onnx_label" if o == "label" else o for o in node.output]
    g.node.append(helper.make_node("ArgMax", ["probabilities"], ["label"], name="label_argmax",
                                   axis=1, keepdims=0, select_last_index=0))
    # Drop what only fed the old label: dead nodes, then unused initializers.
    needed = {o.name for o in g.output}
    keep = []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    del g.node[:]
    g.node.extend(reversed(keep))
    inits = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    # The forest's node keeps its (now unused) label output; ONNX allows that.
    used_domains = {n.domain for n in g.node}
    for o in list(onx.opset_import):
        if o.domain not in ("", "ai.onnx") and o.domain not in used_domains:
            onx.opset_import.remove(o)


def export_onnx(name, model, n_features):
    onx = to_onnx(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        options={id(model): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    label_from_probabilities(onx)
    # skl2onnx may list the same opset twice (it does for the forest); keep one
    # entry per domain, the highest version, so every loader sees a clean header.
    opsets = {}
    for o in onx.opset_import:
        opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    del onx.opset_import[:]
    for domain in sorted(opsets):
        entry = onx.opset_import.add()
        entry.domain, entry.version = domain, opsets[domain]
    # Name the batch dimension: skl2onnx leaves it blank (no value, no name), and
    # tract then wants the caller to give an input fact; with "N" it can load the
    # model as it is, with a symbolic batch.
    for vi in list(onx.graph.input) + list(onx.graph.output):
        dim = vi.type.tensor_type.shape.dim[0]
        if not dim.HasField("dim_value") and not dim.dim_param:
            dim.dim_param = "N"
    onx.graph.name = name
    onx.doc_string = (
        f"hadr example model '{name}': {type(model).__name__} trained by models/train.py "
        f"with scikit-learn {sklearn.__version__}"
    )
    path = os.path.join(HERE, f"{name}.onnx")
    with open(path, "wb") as f:
        f.write(onx.SerializeToString())
    return path


def as_number(v):
    """A float32-representable value written as a plain JSON number, exactly."""
    return float(np.float32(v))


def write_cases(name, model, X_test, y_test, accuracy):
    proba = model.predict_proba(X_test)  # float64
    labels = model.predict(X_test)
    n_features = X_test.shape[1]
    doc = {
        "model": name,
        "features": int(n_features),
        "classes": int(len(model.classes_)),
        "sklearn_version": sklearn.__version__,
        "heldout_accuracy": float(accuracy),
        "example": {"inputs": [[as_number(v) for v in X_test[0]]]},
        "cases": [
            {
                "input": [as_number(v) for v in row],
                "target": int(t),
                "probabilities": [float(p) for p in pr],
                "label": int(lab),
            }
            for row, t, pr, lab in zip(X_test, y_test, proba, labels)
        ],
    }
    path = os.path.join(HERE, f"{name}.cases.json")
    with open(path, "w") as f:
        json.dump(doc, f, separators=(",", ":"), allow_nan=False)
        f.write("\n")
    return path


def train_all():
    for build in (build_digits, build_digits_v2, build_breast_cancer):
        name, model, X_test, y_test, min_acc = build()
        assert list(model.classes_) == list(range(len(model.classes_))), model.classes_
        accuracy = model.score(X_test, y_test)
        print(f"{name}: {type(model).__name__}, held-out accuracy {accuracy:.4f} "
              f"on {len(y_test)} rows")
        assert accuracy >= min_acc, f"{name}: accuracy {accuracy} < {min_acc}"
        onnx_path = export_onnx(name, model, X_test.shape[1])
        cases_path = write_cases(name, model, X_test, y_test, accuracy)
        for p in (onnx_path, cases_path):
            print(f"  wrote {os.path.relpath(p)} ({os.path.getsize(p)} bytes)")


def verify_all():
    """Run every case through onnxruntime and compare with sklearn's output."""
    import onnx
    import onnxruntime as ort

    ok = True
    for name in ("digits", "digits-v2", "breast_cancer"):
        onnx_path = os.path.join(HERE, f"{name}.onnx")
        with open(os.path.join(HERE, f"{name}.cases.json")) as f:
            doc = json.load(f)
        m = onnx.load(onnx_path)
        onnx.checker.check_model(m, full_check=True)
        sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        X = np.array([c["input"] for c in doc["cases"]], dtype=np.float32)
        assert X.shape[1] == doc["features"]
        expected_proba = np.array([c["probabilities"] for c in doc["cases"]])
        expected_label = np.array([c["label"] for c in doc["cases"]])
        targets = np.array([c["target"] for c in doc["cases"]])
        label, proba = sess.run(["label", "probabilities"], {INPUT_NAME: X})
        assert label.dtype == np.int64 and proba.dtype == np.float32, (label.dtype, proba.dtype)
        assert proba.shape == (len(X), doc["classes"]), proba.shape
        diff = float(np.max(np.abs(proba.astype(np.float64) - expected_proba)))
        label_mismatch = int(np.sum(label != expected_label))
        onnx_acc = float(np.mean(label == targets))
        ex = sess.run(["probabilities"], {INPUT_NAME: np.array(doc["example"]["inputs"], dtype=np.float32)})[0]
        ex_diff = float(np.max(np.abs(ex.astype(np.float64) - expected_proba[:1])))
        ops = sorted({f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in m.graph.node})
        print(f"{name}: {len(X)} cases, max |onnxruntime - sklearn| probabilities = {diff:.3g}, "
              f"example diff {ex_diff:.3g}, label mismatches {label_mismatch}, "
              f"onnxruntime accuracy {onnx_acc:.4f} (sklearn {doc['heldout_accuracy']:.4f})")
        print(f"  opsets {[(o.domain or 'ai.onnx', o.version) for o in m.opset_import]}, "
              f"ir_version {m.ir_version}, ops {ops}")
        if diff >= MAX_ABS_DIFF or label_mismatch or ex_diff >= MAX_ABS_DIFF:
            print(f"  FAIL: {name} does not reproduce sklearn", file=sys.stderr)
            ok = False
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--verify", action="store_true",
                    help="after writing the files, check them with onnxruntime")
    ap.add_argument("--verify-only", action="store_true",
                    help="only check the files already written, with onnxruntime")
    args = ap.parse_args()
    if not args.verify_only:
        train_all()
    if args.verify or args.verify_only:
        if not verify_all():
            sys.exit(1)
        print("verify: OK")


if __name__ == "__main__":
    main()
