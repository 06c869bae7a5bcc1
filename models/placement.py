#!/usr/bin/env python3
"""Convert the article's placement predictor to ONNX, with test cases.

The article's predictor server loads `project_one_model.pkl`, a pickled tuple
(DictVectorizer, RandomForestClassifier) made with scikit-learn 1.0, and answers
`{"Placement_Probability": predict_proba(dv.transform(body))[:, 1], "Placement": p > 0.5}`
for a JSON body that is a list of candidate records. scikit-learn 1.2.2 still
unpickles it (1.3 and later cannot), so this script runs in its own environment:

    python3 -m venv /tmp/placement-venv
    /tmp/placement-venv/bin/pip install -r models/requirements-placement.txt
    /tmp/placement-venv/bin/python models/placement.py            # writes the files
    /tmp/placement-venv/bin/python models/placement.py --verify   # also checks them with onnxruntime
    /tmp/placement-venv/bin/python models/placement.py --verify-only

Writes, next to this script:
    placement.onnx        the RandomForestClassifier (skl2onnx, no ZipMap), input
                          float_input float32 [N, 21], outputs `label` and
                          `probabilities` as skl2onnx writes them; the DictVectorizer's
                          vocabulary is in metadata_props (hadr.dict_vectorizer)
    placement.cases.json  records, sklearn's probabilities and the vectors
Everything is deterministic: a rerun writes the same bytes.
"""

import hashlib
import json
import os
import pickle
import random
import sys
import warnings

import numpy as np
import sklearn

from export_common import as_number, clean_header, cli, dump_cases, save_onnx, sklearn_to_onnx

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_PKL = os.path.join(REPO, "..", "shared", "seed", "article-repo", "project_one_model.pkl")
NAME = "placement"
INPUT_NAME = "float_input"
TARGET_OPSET = {"": 15, "ai.onnx.ml": 3}
MAX_ABS_DIFF = 1e-5
SEED = 20221
N_RANDOM = 60
SOURCE = ("article predictor project_one_model.pkl (DictVectorizer + RandomForestClassifier, "
          "512 trees, scikit-learn 1.0) from github.com/xprilion/dummy-topology-loadtest "
          "@d6fc6ebe98edac6dc64b639de43e869ae0ea5d63 (MIT)")

# The article's candidate, exactly as predict_test.py and router.py send it: the
# request body is a JSON list holding one record (key order kept).
CANDIDATE = [{
    "gender": "M",
    "ssc_p": 71.0,
    "ssc_b": "Central",
    "hsc_p": 90.66,
    "hsc_b": "Central",
    "hsc_s": "Science",
    "degree_p": 90.0,
    "degree_t": "Sci&Tech",
    "etest_p": 90.0,
    "mba_p": 90.3,
    "specialisation": "Mkt&Fin",
    "workex": "Yes",
}]
FIELDS = list(CANDIDATE[0])
# Plausible ranges for the numeric fields (percentages). The campus-recruitment data
# the model was trained on has ssc_p 41-89, hsc_p 37-98, degree_p 50-91, etest_p
# 50-98, mba_p 51-78. ssc_p weighs most in the forest; with these ranges both
# outcomes come up often (39 placed, 25 not, among the 64 cases).
NUMERIC_RANGES = {
    "ssc_p": (40.0, 80.0),
    "hsc_p": (40.0, 90.0),
    "degree_p": (45.0, 90.0),
    "etest_p": (45.0, 100.0),
    "mba_p": (48.0, 90.0),
}


def load_pickle(path):
    with warnings.catch_warnings():
        # "Trying to unpickle estimator ... from version 1.0": expected, once per tree.
        warnings.simplefilter("ignore", UserWarning)
        with open(path, "rb") as f:
            dv, model = pickle.load(f)
    return dv, model


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def categories(dv):
    """{field: [values]} for the one-hot fields of the vocabulary, in column order."""
    cats = {}
    for name in dv.feature_names_:
        if dv.separator in name:
            field, value = name.split(dv.separator, 1)
            cats.setdefault(field, []).append(value)
    return cats


def vectorize(record, feature_names, separator):
    """DictVectorizer.transform for one record, from the vocabulary alone: what hadr
    has to do with the metadata. A string value sets column `key<sep>value` to 1, a
    number sets column `key` to the number; keys, values and columns not in the
    vocabulary are ignored, missing ones stay 0."""
    index = {n: i for i, n in enumerate(feature_names)}
    row = [0.0] * len(feature_names)
    for key, value in record.items():
        if isinstance(value, str):
            col, v = index.get(f"{key}{separator}{value}"), 1.0
        else:
            col, v = index.get(key), float(value)
        if col is not None:
            row[col] += v
    return row


def make_records(dv):
    """N_RANDOM seeded records: each categorical value shows up at least twice (each
    field's values are dealt out evenly, then shuffled), numbers are drawn uniformly
    over NUMERIC_RANGES and rounded to 2 decimals like the data."""
    rng = random.Random(SEED)
    cats = categories(dv)
    assert set(cats) | set(NUMERIC_RANGES) == set(FIELDS), (cats, FIELDS)
    columns = {}
    for field, values in cats.items():
        dealt = [values[i % len(values)] for i in range(N_RANDOM)]
        rng.shuffle(dealt)
        columns[field] = dealt
    records = []
    for i in range(N_RANDOM):
        rec = {}
        for field in FIELDS:
            if field in NUMERIC_RANGES:
                lo, hi = NUMERIC_RANGES[field]
                rec[field] = round(rng.uniform(lo, hi), 2)
            else:
                rec[field] = columns[field][i]
        records.append(rec)
    return records


def edge_records():
    """DictVectorizer's edge rules, each on a copy of the article's candidate."""
    base = CANDIDATE[0]
    extra = dict(base, name="Asha", age=23)
    missing = {k: v for k, v in base.items() if k not in ("hsc_b", "etest_p", "workex")}
    unseen = dict(base, hsc_s="Engineering", degree_t="Law")
    return [
        (extra, "unknown extra keys (name, age): ignored"),
        (missing, "missing keys (hsc_b, etest_p, workex): their columns stay 0"),
        (unseen, "unseen categorical values (hsc_s=Engineering, degree_t=Law): "
                 "all hsc_s= and degree_t= columns 0"),
    ]


def case(dv, model, record, note=None):
    X = dv.transform([record])
    if hasattr(X, "toarray"):
        X = X.toarray()
    p = float(model.predict_proba(X)[0, 1])
    vector = [as_number(v) for v in X[0]]
    # The vocabulary in the ONNX metadata must be enough to rebuild the vector.
    assert vectorize(record, dv.feature_names_, dv.separator) == [float(v) for v in X[0]], record
    c = {"record": record, "probability": p, "placement": bool(p > 0.5), "vector": vector}
    if note:
        c["note"] = note
    return c


def export_onnx(dv, model, pkl_path):
    import onnx
    import skl2onnx

    onx = sklearn_to_onnx(model, len(dv.feature_names_), INPUT_NAME, TARGET_OPSET)
    # Only header changes (one opset entry per domain, a named batch dimension);
    # the outputs stay as skl2onnx writes them.
    clean_header(onx)
    onx.graph.name = NAME
    onx.doc_string = (f"hadr model '{NAME}': the article's RandomForestClassifier, converted by "
                      f"models/placement.py with scikit-learn {sklearn.__version__} and "
                      f"skl2onnx {skl2onnx.__version__}")
    positive = list(model.classes_).index(1)
    assert positive == 1, model.classes_  # predict_proba(X)[:, 1] is class 1's column
    props = {
        "hadr.dict_vectorizer": json.dumps(
            {"feature_names": list(dv.feature_names_), "separator": dv.separator},
            separators=(",", ":")),
        "hadr.positive_class": str(positive),
        "hadr.source": f"{SOURCE}, sha256 {sha256(pkl_path)}",
    }
    onnx.helper.set_model_props(onx, props)
    return save_onnx(NAME, onx)


def build(pkl_path):
    dv, model = load_pickle(pkl_path)
    assert len(dv.feature_names_) == 21 and model.n_features_in_ == 21
    print(f"{os.path.relpath(pkl_path)}: {type(dv).__name__} ({len(dv.feature_names_)} columns), "
          f"{type(model).__name__} ({len(model.estimators_)} trees, classes {list(model.classes_)})")
    cases = [case(dv, model, CANDIDATE[0])]
    cases += [case(dv, model, r) for r in make_records(dv)]
    cases += [case(dv, model, r, note) for r, note in edge_records()]
    # Every categorical value at least twice, and plenty of both outcomes.
    for field, values in categories(dv).items():
        for v in values:
            n = sum(1 for c in cases if c["record"].get(field) == v)
            assert n >= 2, (field, v, n)
    placed = sum(c["placement"] for c in cases)
    print(f"  {len(cases)} cases: {placed} placed, {len(cases) - placed} not placed; "
          f"article candidate p = {cases[0]['probability']:.6f}")
    assert min(placed, len(cases) - placed) >= 15, placed
    doc = {
        "model": NAME,
        "features": len(dv.feature_names_),
        "sklearn_version": sklearn.__version__,
        "feature_names": list(dv.feature_names_),
        "example": CANDIDATE,
        "example_probability": cases[0]["probability"],
        "cases": cases,
    }
    onnx_path = export_onnx(dv, model, pkl_path)
    cases_path = dump_cases(NAME, doc)
    for p in (onnx_path, cases_path):
        print(f"  wrote {os.path.relpath(p)} ({os.path.getsize(p)} bytes)")


def verify():
    """Run every case vector through onnxruntime and compare with sklearn's answers.
    True only when every check passes; each failed one is printed."""
    import onnx
    from onnx import helper
    import onnxruntime as ort

    onnx_path = os.path.join(HERE, f"{NAME}.onnx")
    with open(os.path.join(HERE, f"{NAME}.cases.json")) as f:
        doc = json.load(f)
    m = onnx.load(onnx_path)
    onnx.checker.check_model(m, full_check=True)
    props = {p.key: p.value for p in m.metadata_props}
    dvmeta = json.loads(props["hadr.dict_vectorizer"])
    pos = int(props["hadr.positive_class"])
    # The vocabulary in the metadata must rebuild every case's vector.
    rebuilt_mismatch = sum(
        1 for c in doc["cases"]
        if [as_number(x) for x in vectorize(c["record"], dvmeta["feature_names"], dvmeta["separator"])]
        != c["vector"])
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    X = np.array([c["vector"] for c in doc["cases"]], dtype=np.float32)
    expected = np.array([c["probability"] for c in doc["cases"]])
    placement = np.array([c["placement"] for c in doc["cases"]])
    label, proba = sess.run(["label", "probabilities"], {INPUT_NAME: X})
    assert proba.dtype == np.float32 and proba.shape == (len(X), 2), (proba.dtype, proba.shape)
    diff = float(np.max(np.abs(proba[:, pos].astype(np.float64) - expected)))
    sums = float(np.max(np.abs(proba.sum(axis=1) - 1.0)))
    label_mismatch = int(np.sum((label == 1) != placement))
    one = sess.run(["probabilities"], {INPUT_NAME: X[:1]})[0]
    ex_diff = abs(float(one[0, pos]) - doc["example_probability"])
    print(f"{NAME}: {len(X)} cases, max |onnxruntime - sklearn| probability = {diff:.3g}, "
          f"example (batch of 1) diff {ex_diff:.3g}, rows sum to 1 within {sums:.3g}, "
          f"label vs placement mismatches {label_mismatch}")
    ops = sorted({f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in m.graph.node})
    print(f"  opsets {[(o.domain or 'ai.onnx', o.version) for o in m.opset_import]}, "
          f"ir_version {m.ir_version}, ops {ops}, nodes: {' -> '.join(n.op_type for n in m.graph.node)}")
    for vi in list(m.graph.input) + list(m.graph.output):
        t = vi.type.tensor_type
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]
        print(f"  {'input' if vi in m.graph.input else 'output'} {vi.name}: "
              f"{onnx.TensorProto.DataType.Name(t.elem_type).lower()} {dims}")
    for n in m.graph.node:
        if n.op_type.startswith("TreeEnsemble"):
            a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
            print(f"  {n.op_type} -> {list(n.output)}: post_transform "
                  f"{a.get('post_transform', b'NONE').decode()}, base_values "
                  f"{'present' if 'base_values' in a else 'absent'}, class_ids used "
                  f"{sorted(set(a['class_ids']))}, classlabels {list(a.get('classlabels_int64s', []))}, "
                  f"trees {len(set(a['nodes_treeids']))}, nodes {len(a['nodes_treeids'])}, "
                  f"modes {sorted({x.decode() for x in a['nodes_modes']})}")
    print(f"  metadata keys {sorted(props)}; positive class {pos}")
    # Every check printed above decides the result (`not x < limit` also
    # fails on NaN); none is an assert, which `python -O` would drop.
    failures = [what for what, failed in [
        ("the metadata's vocabulary differs from the cases file's",
         dvmeta["feature_names"] != doc["feature_names"]),
        (f"{rebuilt_mismatch} case vectors differ from the ones the metadata rebuilds",
         rebuilt_mismatch != 0),
        (f"probabilities differ from sklearn's by {diff:.3g}", not diff < MAX_ABS_DIFF),
        (f"the example (batch of 1) differs by {ex_diff:.3g}", not ex_diff < MAX_ABS_DIFF),
        (f"rows sum to 1 only within {sums:.3g}", not sums < MAX_ABS_DIFF),
        (f"{label_mismatch} labels differ from sklearn's placement (p > 0.5)", label_mismatch != 0),
    ] if failed]
    for what in failures:
        print(f"  FAIL: {NAME}: {what}", file=sys.stderr)
    return not failures


def main():
    def pkl_argument(ap):
        ap.add_argument("pkl", nargs="?", default=DEFAULT_PKL,
                        help="the article's project_one_model.pkl (default: %(default)s)")

    cli(__doc__, lambda args: build(os.path.normpath(args.pkl)), verify, pkl_argument)


if __name__ == "__main__":
    main()
