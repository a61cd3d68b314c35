"""ipex-autotune runtime: the ``ipex`` torch.compile backend, its knobs and optimize().

Mirrors Intel Extension for PyTorch's documented usage::

    import backend as ipex
    model = ipex.optimize(model, dtype=torch.bfloat16, weights_prepack=False)
    ipex._set_compiler_backend("inductor")
    compiled = torch.compile(model, backend="ipex")

and, for int8 by hand (``ipex.quantization``'s prepare / calibrate / convert)::

    prepared = ipex.prepare(model)
    for batch in calibration_batches:
        prepared(batch)
    compiled = torch.compile(ipex.convert(prepared), backend="ipex")
"""

from . import inductor, onnxruntime_path, openvino_path, torchscript  # noqa: F401  the compile paths: each registers itself
from .compiler import get_compiler_backend, ipex_backend, last_compile, set_compiler_backend
from .config import BackendConfig
from .errors import AutotuneError, KnobError, StoreError, UnsupportedOnThisCPU
from .knobs import KNOBS, Knob
from .optimize import optimize
from .quantization import convert, prepare

# Intel Extension for PyTorch's spelling.
_set_compiler_backend = set_compiler_backend
_get_compiler_backend = get_compiler_backend

__all__ = ["optimize", "prepare", "convert", "set_compiler_backend", "get_compiler_backend", "BackendConfig", "KNOBS",
           "Knob", "ipex_backend", "last_compile", "AutotuneError", "KnobError", "StoreError",
           "UnsupportedOnThisCPU"]
