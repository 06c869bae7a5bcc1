"""What models/train.py and models/placement.py share: the ONNX header clean-up, exact
float32 numbers for the cases files, and writing a cases file. Imports only numpy, so each
script's pinned venv can load it."""

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def clean_header(onx):
    """The only changes made to a converter's graph header."""
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
    # model as it is, with a symbolic batch. A fixed first dimension is left as it is
    # (onnxmltools declares LightGBM's `label` output as int64 [1]).
    for vi in list(onx.graph.input) + list(onx.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value") and not dims[0].dim_param:
            dims[0].dim_param = "N"


def sklearn_to_onnx(model, n_features, input_name, target_opset):
    """skl2onnx's graph of a scikit-learn model: float32 rows of `n_features`,
    probabilities as a plain tensor (no ZipMap)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    return to_onnx(
        model,
        initial_types=[(input_name, FloatTensorType([None, n_features]))],
        options={id(model): {"zipmap": False}},
        target_opset=target_opset,
    )


def save_onnx(name, onx):
    """Writes models/<name>.onnx; returns its path."""
    path = os.path.join(HERE, f"{name}.onnx")
    with open(path, "wb") as f:
        f.write(onx.SerializeToString())
    return path


def as_number(v):
    """A float32-representable value written as a plain JSON number, exactly."""
    return float(np.float32(v))


def dump_cases(name, doc):
    """Writes models/<name>.cases.json; returns its path."""
    path = os.path.join(HERE, f"{name}.cases.json")
    with open(path, "w") as f:
        json.dump(doc, f, separators=(",", ":"), allow_nan=False)
        f.write("\n")
    return path


def cli(description, build, verify, add_arguments=None):
    """The scripts' command line: write the files (`build(args)`), then check them with
    onnxruntime (`verify()`, true when they pass) when asked to."""
    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    if add_arguments:
        add_arguments(ap)
    ap.add_argument("--verify", action="store_true",
                    help="after writing the files, check them with onnxruntime")
    ap.add_argument("--verify-only", action="store_true",
                    help="only check the files already written, with onnxruntime")
    args = ap.parse_args()
    if not args.verify_only:
        build(args)
    if args.verify or args.verify_only:
        if not verify():
            sys.exit(1)
        print("verify: OK")


def load_checked(name, input_name):
    """models/<name>'s cases file, its ONNX model (checked), an onnxruntime session
    and the cases' inputs as float32 rows."""
    import onnx
    import onnxruntime as ort

    path = os.path.join(HERE, f"{name}.onnx")
    with open(os.path.join(HERE, f"{name}.cases.json")) as f:
        doc = json.load(f)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    X = np.array([c["input"] for c in doc["cases"]], dtype=np.float32)
    assert X.shape[1] == doc["features"]
    return doc, model, sess, X
