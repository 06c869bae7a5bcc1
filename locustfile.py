"""Locust load test for hadr's POST /predict, using the real digits cases.

    locust -f locustfile.py --headless -u 10 -r 10 -t 30s --host http://127.0.0.1:8000

Environment: HADR_CASES (default models/digits.cases.json next to this file),
HADR_ROWS (rows per request, default 1). Each request posts random real cases and
fails unless the answer is 200 with one label per row. See docs/locust.md.
"""

import json
import os
import random
from pathlib import Path

from locust import HttpUser, constant, task

CASES_PATH = os.environ.get(
    "HADR_CASES", Path(__file__).resolve().parent / "models" / "digits.cases.json"
)
ROWS = int(os.environ.get("HADR_ROWS", "1"))

with open(CASES_PATH) as f:
    INPUTS = [case["input"] for case in json.load(f)["cases"]]


class PredictUser(HttpUser):
    wait_time = constant(0)

    @task
    def predict(self):
        rows = random.choices(INPUTS, k=ROWS)
        with self.client.post("/predict", json={"inputs": rows}, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return
            try:
                labels = resp.json()["labels"]
            except (ValueError, KeyError, TypeError) as err:
                resp.failure(f"bad body: {err!r}")
                return
            if len(labels) != ROWS:
                resp.failure(f"{len(labels)} labels for {ROWS} rows")
