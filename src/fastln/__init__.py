"""fastln: fast, accurate Layer Normalization for NumPy.

Cython/OpenMP kernels, parallel over rows, with a fused backward and a float64 NumPy reference
(`fastln.reference`) that specifies every op. See ``python -m fastln info``.
"""

__version__ = "0.1.0"

try:
    from fastln import _cpu
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "fastln's compiled extension (fastln._cpu) could not be imported: " + str(exc) + ". "
        "Reinstall from source with a C compiler available: pip install --force-reinstall "
        "--no-binary fastln fastln (or `pip install .` in a checkout)."
    ) from exc

from fastln import reference
from fastln._ops import (
    add_layer_norm,
    add_layer_norm_backward,
    add_layer_norm_forward,
    add_rms_norm,
    add_rms_norm_backward,
    add_rms_norm_forward,
    layer_norm,
    layer_norm_backward,
    layer_norm_forward,
    rms_norm,
    rms_norm_backward,
    rms_norm_forward,
    set_output_pool,
)
from fastln._threads import get_num_threads, set_num_threads
from fastln.modules import LayerNorm, RMSNorm

__all__ = [
    "LayerNorm",
    "RMSNorm",
    "add_layer_norm",
    "add_layer_norm_backward",
    "add_layer_norm_forward",
    "add_rms_norm",
    "add_rms_norm_backward",
    "add_rms_norm_forward",
    "bfloat16",
    "rms_norm",
    "rms_norm_backward",
    "rms_norm_forward",
    "get_num_threads",
    "layer_norm",
    "layer_norm_backward",
    "layer_norm_forward",
    "reference",
    "set_num_threads",
    "set_output_pool",
    "__version__",
]


def __getattr__(name):
    # fastln.bfloat16: ml_dtypes' bfloat16 dtype, or an ImportError saying what to install.
    if name == "bfloat16":
        from fastln._ops import bfloat16_dtype

        return bfloat16_dtype()
    raise AttributeError(f"module 'fastln' has no attribute {name!r}")
