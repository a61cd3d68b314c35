"""The lookup order, each case in a fresh process through plain torch.compile(backend="ipex"):
explicit options, then the store (exact graph, then nearest batch size), then optimize()'s knobs,
then the defaults."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import backend as ipex
from backend import BackendConfig, compiler
from backend.fingerprint import hardware_info, hardware_key
from backend.store import ConfigStore, TunedRecord

from models import build
from tuning import worker_pythonpath

pytestmark = pytest.mark.parallel  # times nothing: runs beside other tests

CHILD = textwrap.dedent("""
    import json, sys, torch
    import backend as ipex
    from models import build

    batch, optimize_kwargs, options = int(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
    model, x = build("cnn")
    x = torch.randn(batch, *x.shape[1:])
    if optimize_kwargs is not None:
        model = ipex.optimize(model, **optimize_kwargs)
    with torch.no_grad():
        torch.compile(model, backend="ipex", options=options or None)(x)
    applied = ipex.last_compile()
    print(json.dumps({"config": applied["config"].to_dict(), "source": applied["source"]}))
""")

# what optimize() records, and two stored configs that differ from it and from each other
OPTIMIZE = {"weights_prepack": False}
STORED = BackendConfig({"path": "torchscript", "onednn_fusion": False, "weights_prepack": True})
NEAREST = BackendConfig({"path": "inductor", "freezing": True})


def keys_of(batch: int) -> dict:
    """The store keys of the plain cnn's graph (what `autotune run` tunes), captured in this
    process without compiling it. The children compile the model optimize() returns: its
    records must be these."""
    model, x = build("cnn")
    x = torch.randn(batch, *x.shape[1:])
    found = []

    def capture(gm, example_inputs):
        found.append(compiler.graph_keys(gm, example_inputs))
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend=capture)(x)
    torch._dynamo.reset()
    [keys] = found
    return keys


def record(keys: dict, config: BackendConfig, median_ms: float) -> TunedRecord:
    stats = {"median_ms": median_ms, "p10_ms": median_ms, "p90_ms": median_ms, "iqr_ms": 0.0,
             "runs": 10}
    return TunedRecord(workload_key=keys["workload_key"], hardware_key=hardware_key(),
                       family_key=keys["family_key"], batch_size=keys["batch_size"],
                       model_label="cnn", config=config.to_dict(), config_id=config.config_id,
                       latency=stats, baselines={}, speedup=1.5, torch_version=torch.__version__,
                       study_name="order", hardware=hardware_info())


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    """Records for the cnn: at batch 2 (STORED) and, faster, at batch 1 (NEAREST)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('order') / 'store.db'}"
    with ConfigStore(url) as store:
        store.put(record(keys_of(2), STORED, median_ms=5.0))
        store.put(record(keys_of(1), NEAREST, median_ms=0.1))
    return url


def compile_in_fresh_process(url, batch, optimize_kwargs, options=None) -> dict:
    env = {**os.environ, "PYTHONPATH": worker_pythonpath(), "IPEX_AUTOTUNE_STORAGE": url}
    child = subprocess.run([sys.executable, "-c", CHILD, str(batch), json.dumps(optimize_kwargs),
                            json.dumps(options)], capture_output=True, text=True, timeout=300, env=env)
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.splitlines()[-1])


def test_the_store_wins_over_optimize_knobs_and_the_exact_batch_over_the_nearest(store_url):
    # batch 2 has its own record; batch 1's is faster but for another batch size
    applied = compile_in_fresh_process(store_url, 2, OPTIMIZE)
    assert applied["source"].startswith("store (exact"), applied["source"]
    assert applied["config"] == STORED.to_dict()
    assert applied["config"]["weights_prepack"] is True, "optimize() asked for False"


def test_the_nearest_batch_wins_over_optimize_knobs_when_no_exact_record_exists(store_url):
    applied = compile_in_fresh_process(store_url, 4, OPTIMIZE)
    assert applied["source"].startswith("store (nearest tuned batch size 2"), applied["source"]
    assert applied["config"] == STORED.to_dict()


def test_explicit_options_win_over_the_store_and_optimize_knobs(store_url):
    applied = compile_in_fresh_process(store_url, 2, OPTIMIZE, {"weights_prepack": True,
                                                                "channels_last": False})
    assert applied["source"] == "options"
    config = applied["config"]
    assert config["weights_prepack"] is True and config["channels_last"] is False
    assert config["onednn_fusion"] is True, "the store's onednn_fusion=False must not leak in"
