import os
import sys
import tempfile

# tests import their helper models as a plain module
sys.path.insert(0, os.path.dirname(__file__))

# Tests never read or write the user's real store; subprocesses inherit this.
os.environ["IPEX_AUTOTUNE_STORAGE"] = "sqlite:///" + os.path.join(
    tempfile.mkdtemp(prefix="autotune-tests-"), "store.db")
