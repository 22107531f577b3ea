"""A stand-in harness for runner tests that need a real process or container."""

from __future__ import annotations

# A stand-in harness for fault tests: behaves as told by LLEM_FAKE_MODE, writes files the way
# the real harness does. It runs in any image with python3 (no llenergymeasure inside).
FAKE_HARNESS = r"""
import hashlib, json, os, sys, time
mode = os.environ.get("LLEM_FAKE_MODE", "ok")
rdir = os.environ["LLEM_RESULTS_DIR"]
run_id = os.environ["LLEM_RUN_ID"]
if os.environ.get("LLEM_FAKE_HANG_RUN") == run_id:
    mode = "hang"
print("fake harness", mode, "uid", os.getuid(), flush=True)

def write_result():
    # A template result made valid for this run; config_hash computed as ExperimentConfig does.
    result = json.loads(os.environ["LLEM_FAKE_RESULT"])
    config = json.loads(os.environ["LLEM_CONFIG_JSON"])
    ident = {k: v for k, v in config.items() if k != "name"}
    canonical = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    result.update(run_id=run_id, config=config, study_id=os.environ.get("LLEM_STUDY_ID"),
                  cycle=int(os.environ.get("LLEM_CYCLE", "1")),
                  config_hash=hashlib.sha256(canonical.encode()).hexdigest()[:16])
    tmp = os.path.join(rdir, ".result.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(result, fh)
    os.replace(tmp, os.path.join(rdir, "result.json"))

if mode == "ok":
    write_result()
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
    write_result()
    sys.exit(0)
sys.exit(5)
"""

FAKE_COMMAND = ("python3", "-c", FAKE_HARNESS)


def result_template() -> str:
    """A valid result.json for some tiny config; FAKE_HARNESS re-targets it to its run."""
    from llenergymeasure.config import ExperimentConfig
    from llenergymeasure.contract import HarnessEnv
    from llenergymeasure.testing.fake_docker import make_fake_result

    cfg = ExperimentConfig(model="tiny-llama", load_format="dummy", n_prompts=4)
    env = HarnessEnv(config=cfg, run_id="template", results_dir="/x", cycle=1).to_env()
    return str(make_fake_result(env).model_dump_json())
