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
    breast_cancer.onnx, breast_cancer.cases.json          (scikit-learn, skl2onnx)
    lgbm_cancer.onnx, lgbm_cancer.cases.json,
    lgbm_wine.onnx, lgbm_wine.cases.json                  (LightGBM, onnxmltools)
    xgb_diabetes.onnx, xgb_diabetes.cases.json            (XGBoost, onnxmltools)
"""

import os
import sys

import numpy as np
import sklearn
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from export_common import (as_number, clean_header, cli, dump_cases, load_checked, save_onnx,
                           sklearn_to_onnx)

HERE = os.path.dirname(os.path.abspath(__file__))

INPUT_NAME = "float_input"
# Widely supported opsets: tract-onnx 0.23 must load these graphs.
TARGET_OPSET = {"": 15, "ai.onnx.ml": 3}
MAX_ABS_DIFF = 1e-5
MAX_REL_DIFF = 1e-5  # regression outputs
# onnxmltools takes one opset number (it writes the lowest opsets each graph needs).
BOOSTED_TARGET_OPSET = 15

SKLEARN_MODELS = ("digits", "digits-v2", "breast_cancer")
BOOSTED_CLASSIFIERS = ("lgbm_cancer", "lgbm_wine")
BOOSTED_REGRESSORS = ("xgb_diabetes",)


def split(X, y):
    return train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)


def digits_split():
    ds = load_digits()
    # Raw pixel intensities 0..16; integers, so exact in float32 and float64.
    X = ds.data.astype(np.float64)
    y = ds.target.astype(np.int64)
    return split(X, y)


def build_digits():
    model = MLPClassifier(hidden_layer_sizes=(64,), max_iter=1000, random_state=0)
    return fitted("digits", model, digits_split(), 0.95)


def build_digits_v2():
    """A second version of `digits` (same data, split, inputs and outputs, a wider
    network), for demonstrating a hot-swapped model upgrade."""
    model = MLPClassifier(hidden_layer_sizes=(128,), max_iter=1000, random_state=1)
    return fitted("digits-v2", model, digits_split(), 0.95)


def float32_split(ds):
    # Cast to float32 up front: training, predict_proba and the cases file all use
    # exactly the float32 values that the ONNX model sees.
    return split(ds.data.astype(np.float32), ds.target.astype(np.int64))


def fitted(name, model, data, min_score):
    """`model` fitted on the training part of `data`: what every build_* returns."""
    X_train, X_test, y_train, y_test = data
    model.fit(X_train, y_train)
    return name, model, X_test, y_test, min_score


def build_breast_cancer():
    model = RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0)
    return fitted("breast_cancer", model, float32_split(load_breast_cancer()), 0.90)


def lgbm_classifier():
    import lightgbm

    # Small, single-threaded and deterministic: the same trees on every run.
    return lightgbm.LGBMClassifier(
        n_estimators=50, num_leaves=15, learning_rate=0.1, random_state=0,
        deterministic=True, force_row_wise=True, n_jobs=1, verbose=-1,
    )


def build_lgbm_cancer():
    return fitted("lgbm_cancer", lgbm_classifier(), float32_split(load_breast_cancer()), 0.90)


def build_lgbm_wine():
    return fitted("lgbm_wine", lgbm_classifier(), float32_split(load_wine()), 0.90)


def build_xgb_diabetes():
    import xgboost

    ds = load_diabetes()
    X = ds.data.astype(np.float32)
    y = ds.target.astype(np.float64)
    # Not stratified: the target is continuous.
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0)
    model = xgboost.XGBRegressor(n_estimators=100, max_depth=4, learning_rate=0.05,
                                 n_jobs=1, random_state=0)
    model.fit(X_train, y_train)
    # This split of the diabetes data is hard: a plain LinearRegression gets r2 0.33.
    return "xgb_diabetes", model, X_test, y_test, 0.15


def library_version(model):
    """"lightgbm 4.7.0" / "xgboost 3.2.0": the library that trained the model."""
    mod = type(model).__module__.split(".")[0]
    return f"{mod} {sys.modules[mod].__version__}"


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
    onx = sklearn_to_onnx(model, n_features, INPUT_NAME, TARGET_OPSET)
    label_from_probabilities(onx)
    clean_header(onx)
    onx.graph.name = name
    onx.doc_string = (
        f"hadr example model '{name}': {type(model).__name__} trained by models/train.py "
        f"with scikit-learn {sklearn.__version__}"
    )
    return save_onnx(name, onx)


def export_boosted(name, model, n_features):
    """Convert a LightGBM or XGBoost model with onnxmltools. The graph is kept as the
    converter writes it (outputs included); only the header is cleaned."""
    from onnxmltools import convert_lightgbm, convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType as MLFloatTensorType

    initial_types = [(INPUT_NAME, MLFloatTensorType([None, n_features]))]
    lib = library_version(model)
    doc = (f"hadr example model '{name}': {type(model).__name__} trained by models/train.py "
           f"with {lib}")
    # An explicit name: without one onnxmltools names the graph with a random uuid.
    if lib.startswith("lightgbm"):
        onx = convert_lightgbm(model, name=name, initial_types=initial_types, doc_string=doc,
                               target_opset=BOOSTED_TARGET_OPSET, zipmap=False)
    else:
        onx = convert_xgboost(model, name=name, initial_types=initial_types, doc_string=doc,
                              target_opset=BOOSTED_TARGET_OPSET)
    clean_header(onx)
    onx.graph.name = name
    onx.doc_string = doc
    return save_onnx(name, onx)


def write_cases(name, model, X_test, y_test, accuracy, **extra):
    """A classifier's cases file: every held-out row with the library's own
    probabilities and label (`extra`: more header fields, e.g. the library)."""
    proba = model.predict_proba(X_test)  # float64, the library's own
    labels = model.predict(X_test)
    doc = {
        "model": name,
        "features": int(X_test.shape[1]),
        "classes": int(len(model.classes_)),
        "sklearn_version": sklearn.__version__,
        **extra,
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
    return dump_cases(name, doc)


def write_regressor_cases(name, model, X_test, y_test, r2):
    pred = model.predict(X_test)  # the library's own (float32 for XGBoost)
    doc = {
        "model": name,
        "features": int(X_test.shape[1]),
        "library": library_version(model),
        "targets": 1,
        "heldout_r2": float(r2),
        "example": {"inputs": [[as_number(v) for v in X_test[0]]]},
        "cases": [
            {
                "input": [as_number(v) for v in row],
                "target": float(t),
                "prediction": float(p),
            }
            for row, t, p in zip(X_test, y_test, pred)
        ],
    }
    return dump_cases(name, doc)


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
    for build in (build_lgbm_cancer, build_lgbm_wine, build_xgb_diabetes):
        name, model, X_test, y_test, min_score = build()
        if name in BOOSTED_CLASSIFIERS:
            assert list(model.classes_) == list(range(len(model.classes_))), model.classes_
            score = model.score(X_test, y_test)
            print(f"{name}: {type(model).__name__} ({library_version(model)}), held-out "
                  f"accuracy {score:.4f} on {len(y_test)} rows")
            def write(*args, model=model):
                return write_cases(*args, library=library_version(model))
        else:
            score = model.score(X_test, y_test)  # r2
            print(f"{name}: {type(model).__name__} ({library_version(model)}), held-out "
                  f"r2 {score:.4f} on {len(y_test)} rows")
            write = write_regressor_cases
        assert score >= min_score, f"{name}: score {score} < {min_score}"
        onnx_path = export_boosted(name, model, X_test.shape[1])
        cases_path = write(name, model, X_test, y_test, score)
        for p in (onnx_path, cases_path):
            print(f"  wrote {os.path.relpath(p)} ({os.path.getsize(p)} bytes)")


ELEM_TYPES = {1: "float32", 6: "int32", 7: "int64", 8: "string", 11: "float64"}


def describe_graph(m):
    """Print what hadr has to handle: op types, outputs, and the attributes of each
    TreeEnsemble* node that decide how its scores become outputs."""
    from onnx import helper

    ops = sorted({f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in m.graph.node})
    print(f"  opsets {[(o.domain or 'ai.onnx', o.version) for o in m.opset_import]}, "
          f"ir_version {m.ir_version}, ops {ops}")
    print(f"  nodes: {' -> '.join(n.op_type for n in m.graph.node)}")
    for vi in list(m.graph.input) + list(m.graph.output):
        t = vi.type.tensor_type
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]
        kind = "input" if vi in m.graph.input else "output"
        print(f"  {kind} {vi.name}: {ELEM_TYPES.get(t.elem_type, t.elem_type)} {dims}")
    for n in m.graph.node:
        if not n.op_type.startswith("TreeEnsemble"):
            continue
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        ids = "class_ids" if "class_ids" in a else "target_ids"
        info = {
            "post_transform": a.get("post_transform", b"NONE").decode(),
            "aggregate_function": a.get("aggregate_function", b"SUM").decode()
            if "aggregate_function" in a else "(absent: SUM)",
            "base_values": [round(v, 6) for v in a["base_values"]] if "base_values" in a else "(absent)",
            "trees": len(set(a["nodes_treeids"])),
            "nodes": len(a["nodes_treeids"]),
            "leaf weights": len(a[ids.replace("_ids", "_weights")]),
            f"{ids} used": sorted(set(a[ids])),
        }
        if "classlabels_int64s" in a:
            info["classlabels_int64s"] = list(a["classlabels_int64s"])
        if "n_targets" in a:
            info["n_targets"] = a["n_targets"]
        modes = sorted({m_.decode() for m_ in a["nodes_modes"]})
        info["nodes_modes"] = modes
        print(f"  {n.op_type} {list(n.input)} -> {list(n.output)}: {info}")


def verify_all():
    """Run every case through onnxruntime and compare with the training library's
    output: probabilities to MAX_ABS_DIFF and identical labels for the classifiers,
    predictions to MAX_REL_DIFF for the regressor. Prints each graph's ops and outputs."""
    ok = True
    for name in SKLEARN_MODELS + BOOSTED_CLASSIFIERS:
        doc, m, sess, X = load_checked(name, INPUT_NAME)
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
        lib = doc.get("library", "sklearn").split()[0]
        print(f"{name}: {len(X)} cases, max |onnxruntime - {lib}| probabilities = {diff:.3g}, "
              f"example diff {ex_diff:.3g}, label mismatches {label_mismatch}, "
              f"onnxruntime accuracy {onnx_acc:.4f} ({lib} {doc['heldout_accuracy']:.4f})")
        describe_graph(m)
        # `not x < limit`, not `x >= limit`: a NaN difference must fail.
        if not (diff < MAX_ABS_DIFF and ex_diff < MAX_ABS_DIFF) or label_mismatch:
            print(f"  FAIL: {name} does not reproduce {doc.get('library', 'sklearn')}", file=sys.stderr)
            ok = False
    for name in BOOSTED_REGRESSORS:
        doc, m, sess, X = load_checked(name, INPUT_NAME)
        expected = np.array([c["prediction"] for c in doc["cases"]])
        targets = np.array([c["target"] for c in doc["cases"]])
        assert len(sess.get_outputs()) == 1, [o.name for o in sess.get_outputs()]
        (out,) = sess.run(None, {INPUT_NAME: X})
        assert out.dtype == np.float32 and out.shape == (len(X), doc["targets"]), (out.dtype, out.shape)
        got = out[:, 0].astype(np.float64)
        rel = float(np.max(np.abs(got - expected) / np.maximum(np.abs(expected), 1e-30)))
        absd = float(np.max(np.abs(got - expected)))
        r2 = 1.0 - float(np.sum((targets - got) ** 2) / np.sum((targets - targets.mean()) ** 2))
        ex = sess.run(None, {INPUT_NAME: np.array(doc["example"]["inputs"], dtype=np.float32)})[0]
        ex_rel = abs(float(ex[0, 0]) - expected[0]) / abs(expected[0])
        print(f"{name}: {len(X)} cases, max relative |onnxruntime - {doc['library']}| = {rel:.3g} "
              f"(absolute {absd:.3g}), example relative diff {ex_rel:.3g}, onnxruntime r2 {r2:.4f} "
              f"({doc['library'].split()[0]} {doc['heldout_r2']:.4f})")
        describe_graph(m)
        if not (rel < MAX_REL_DIFF and ex_rel < MAX_REL_DIFF):
            print(f"  FAIL: {name} does not reproduce {doc['library']}", file=sys.stderr)
            ok = False
    return ok


def main():
    cli(__doc__, lambda args: train_all(), verify_all)


if __name__ == "__main__":
    main()
