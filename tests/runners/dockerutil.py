"""A stand-in harness for runner tests that need a real process or container."""

from __future__ import annotations

# A stand-in harness for fault tests: behaves as told by LLEM_FAKE_MODE, writes files the way
# the real harness does. It runs in any image with python3 (no llenergymeasure inside).
FAKE_HARNESS = r"""
import json, os, sys, time
mode = os.environ.get("LLEM_FAKE_MODE", "ok")
rdir = os.environ["LLEM_RESULTS_DIR"]
print("fake harness", mode, "uid", os.getuid(), flush=True)
if mode == "ok":
    with open(os.path.join(rdir, "result.json"), "w") as fh:
        fh.write(os.environ["LLEM_FAKE_RESULT"])
    sys.exit(0)
if mode == "error":
    with open(os.path.join(rdir, "error.json"), "w") as fh:
        json.dump({"phase": "load", "error_class": "OSError", "message": "no weights",
                   "occurred_at": "2026-11-22T00:00:00Z"}, fh)
    sys.exit(1)
if mode == "crash":
    os.kill(os.getpid(), 11)
if mode == "oom":
    hog = []
    while True:
        hog.append(bytearray(16 * 1024 * 1024))
if mode == "hang":
    time.sleep(600)
if mode == "slow":
    time.sleep(float(os.environ.get("LLEM_FAKE_SLEEP", "1")))
    with open(os.path.join(rdir, "result.json"), "w") as fh:
        fh.write(os.environ["LLEM_FAKE_RESULT"])
    sys.exit(0)
sys.exit(5)
"""

FAKE_COMMAND = ("python3", "-c", FAKE_HARNESS)
