import os
import sys
import tempfile

# tests import their helper models as a plain module
sys.path.insert(0, os.path.dirname(__file__))

# Tests never read or write the user's real store or engine cache; subprocesses inherit this.
_scratch = tempfile.mkdtemp(prefix="autotune-tests-")
os.environ["IPEX_AUTOTUNE_STORAGE"] = "sqlite:///" + os.path.join(_scratch, "store.db")
os.environ["IPEX_AUTOTUNE_CACHE"] = os.path.join(_scratch, "engine-cache")


import itertools

import pytest

_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres_server_url():
    from pg_server import postgres_server
    with postgres_server() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server_url):
    """A fresh, empty PostgreSQL database for one test."""
    from pg_server import create_database
    return create_database(postgres_server_url, f"test_{os.getpid()}_{next(_databases)}")


@pytest.fixture(scope="session", autouse=True)
def inductor_weight_packing_as_in_a_fresh_process():
    """Inductor registers its weight-packing patterns once per process, at the first frozen
    compile, with that compile's weights_prepack (backend/inductor.py). Register them now as a
    default process would, so that no test's weights_prepack=False decides what later tests see
    (the knob probes for max_autotune and pattern_matcher failed after test_backend.py's)."""
    from torch._inductor import config
    from torch._inductor.fx_passes import freezing_patterns

    with config.patch({"cpp.weight_prepack": True}):
        freezing_patterns.lazy_init()
