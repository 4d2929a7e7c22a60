"""Type stubs for the compiled CPU backend, fastln._cpu (see _cpu.pyx)."""

from collections.abc import Callable
from typing import TypedDict

import numpy as np
import numpy.typing as npt

class _BuildInfo(TypedDict):
    openmp: bool
    compiler: str
    flags: str
    compiled_paths: list[str]

def set_num_threads(n: int | None) -> None: ...
def get_num_threads() -> int: ...
def requested_num_threads() -> int | None: ...
def min_parallel_elements(n: int | None = None) -> int: ...
def simd_paths() -> list[str]: ...
def simd_path() -> str: ...
def use_simd_path(name: str) -> str: ...
def build_info() -> _BuildInfo: ...
KINDS: dict[str, int]
KEEP_CONSTANT_BYTES: int

def default_param(
    n: int, dtype: np.dtype[np.floating], value: int, no_rows: bool
) -> npt.NDArray[np.floating]: ...

def norm_forward(
    kind: int,
    x: npt.NDArray[np.generic],
    r: npt.NDArray[np.generic] | None,
    w: npt.NDArray[np.floating],
    b: npt.NDArray[np.floating] | None,
    s: npt.NDArray[np.generic] | None,
    y: npt.NDArray[np.generic],
    mean: npt.NDArray[np.floating] | None,
    rstd: npt.NDArray[np.floating] | None,
    eps: float,
    rms: bool,
) -> None: ...
def norm_backward(
    kind: int,
    dy: npt.NDArray[np.generic],
    x: npt.NDArray[np.generic],
    mean: npt.NDArray[np.floating] | None,
    rstd: npt.NDArray[np.floating],
    w: npt.NDArray[np.floating],
    ds: npt.NDArray[np.generic] | None,
    dx: npt.NDArray[np.generic],
    dw: npt.NDArray[np.floating] | None,
    db: npt.NDArray[np.floating] | None,
    rms: bool,
) -> None: ...
def plain(*arrays: object) -> bool: ...
def set_fast_path(
    dtypes: tuple[tuple[np.dtype[np.generic], np.dtype[np.floating], int, float], ...],
    constant: Callable[[int, np.dtype[np.floating], int], npt.NDArray[np.floating]],
    max_bytes: int,
) -> None: ...
def plain_forward(
    x: object,
    normalized_shape: object,
    weight: object,
    bias: object,
    eps: object,
    residual: object = None,
) -> tuple[tuple[int, ...], npt.NDArray[np.floating], npt.NDArray[np.floating]] | None: ...
def plain_backward(
    dy: object,
    x: object,
    mean: object,
    rstd: object,
    weight: object,
    dsum: object = None,
) -> tuple[tuple[int, ...], npt.NDArray[np.floating]] | None: ...
def forward(
    x: object,
    residual: object,
    normalized_shape: object,
    weight: object,
    bias: object,
    eps: object,
    out: object,
    sum_out: object,
    with_stats: bool,
    rms: bool,
) -> tuple[
    npt.NDArray[np.generic],
    npt.NDArray[np.generic] | None,
    npt.NDArray[np.floating] | None,
    npt.NDArray[np.floating] | None,
] | None: ...
def backward(
    dy: object,
    x: object,
    mean: object,
    rstd: object,
    weight: object,
    dsum: object,
    rms: bool,
) -> tuple[
    npt.NDArray[np.generic], npt.NDArray[np.floating] | None, npt.NDArray[np.floating] | None
] | None: ...
def overlap(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic]) -> int: ...
def can_write(
    out: npt.NDArray[np.generic],
    x: npt.NDArray[np.generic],
    *inputs: npt.NDArray[np.generic],
) -> bool: ...
def empty(
    a: npt.NDArray[np.generic], start: int, stop: int, dtype: object = None
) -> npt.NDArray[np.generic]: ...
def empty_near(
    a: npt.NDArray[np.generic], like: npt.NDArray[np.generic], period: int = 64, shift: int = 0
) -> npt.NDArray[np.generic]: ...
def moved_near(
    a: npt.NDArray[np.generic], like: npt.NDArray[np.generic], period: int, shift: int = 0
) -> npt.NDArray[np.generic]: ...
def same_offset(
    a: npt.NDArray[np.generic], b: npt.NDArray[np.generic], period: int = 64, shift: int = 0
) -> bool: ...
