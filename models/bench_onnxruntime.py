#!/usr/bin/env python3
"""onnxruntime's time per prediction for the placement model: the baseline for hadr.

Runs in the placement environment (models/requirements-placement.txt):

    /tmp/placement-venv/bin/python models/bench_onnxruntime.py            # text
    /tmp/placement-venv/bin/python models/bench_onnxruntime.py --json     # one JSON object

One single-threaded session (intra_op_num_threads=1, inter_op_num_threads=1,
sequential execution, default graph optimisations). Two measurements, each after a
warm-up:
  - one row: the cases file's first vector (the article's candidate), batch of 1,
    `--iters` calls;
  - a batch of `--rows` rows (the cases' vectors, repeated as needed), enough calls to
    cover about `--iters` rows, reported per row and per call.
Each call is timed on its own with perf_counter_ns, and the median and mean are
reported in microseconds. The times include the Python binding's cost of one
InferenceSession.run (building the input, returning numpy arrays), as a caller from
Python pays it. Both outputs (label, probabilities) are fetched.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))


def time_calls(sess, feed, calls, warmup):
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    clock = time.perf_counter_ns
    run = sess.run
    for _ in range(calls):
        t0 = clock()
        run(None, feed)
        times.append(clock() - t0)
    return statistics.median(times) / 1e3, statistics.fmean(times) / 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(HERE, "placement.onnx"),
                    help="ONNX model (default: %(default)s)")
    ap.add_argument("--cases", default=None,
                    help="cases file with `vector`s (default: <model without .onnx>.cases.json)")
    ap.add_argument("--rows", type=int, default=64, help="batch size of the batch measurement (default 64)")
    ap.add_argument("--iters", type=int, default=20000,
                    help="calls for one row; the batch runs about iters/rows calls (default 20000)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    cases_path = args.cases or os.path.splitext(args.model)[0] + ".cases.json"
    with open(cases_path) as f:
        doc = json.load(f)
    vectors = [c["vector"] for c in doc["cases"]]
    one = np.array(vectors[:1], dtype=np.float32)
    batch = np.array([vectors[i % len(vectors)] for i in range(args.rows)], dtype=np.float32)

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    sess = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
    input_name = sess.get_inputs()[0].name

    # Sanity: the answer for the timed row is the cases file's.
    probs = sess.run(None, {input_name: one})[-1]
    if "probability" in doc["cases"][0]:
        assert abs(float(probs[0, 1]) - doc["cases"][0]["probability"]) < 1e-5, probs

    one_iters = max(1, args.iters)
    one_med, one_mean = time_calls(sess, {input_name: one}, one_iters, warmup=min(2000, one_iters))
    batch_calls = max(20, args.iters // max(1, args.rows))
    b_med, b_mean = time_calls(sess, {input_name: batch}, batch_calls, warmup=min(50, batch_calls))

    result = {
        "runtime": "onnxruntime",
        "version": ort.__version__,
        "python": platform.python_version(),
        "model": os.path.basename(args.model),
        "threads": 1,
        "single_row": {"iters": one_iters, "median_us": round(one_med, 3), "mean_us": round(one_mean, 3)},
        "batch": {
            "rows": args.rows,
            "iters": batch_calls,
            "median_us_per_row": round(b_med / args.rows, 3),
            "mean_us_per_row": round(b_mean / args.rows, 3),
            "median_us_per_call": round(b_med, 3),
            "mean_us_per_call": round(b_mean, 3),
        },
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"onnxruntime {ort.__version__}, {result['model']}, 1 thread")
        print(f"  1 row:     median {one_med:.2f} us, mean {one_mean:.2f} us per call ({one_iters} calls)")
        print(f"  {args.rows} rows:   median {b_med / args.rows:.2f} us, mean {b_mean / args.rows:.2f} us per row "
              f"(median {b_med:.1f} us per call, {batch_calls} calls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
