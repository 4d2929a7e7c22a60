"""A stand-in for the part of CuPy that fastln._gpu uses, running the real CUDA kernels on the CPU.

Tests put this module in ``sys.modules["cupy"]`` (see the ``gpu`` fixture in test_gpu.py), so
fastln._gpu runs unchanged -- its checks, its choice of kernel and launch sizes, its arguments --
and its kernels run in tests/cuda_emulator.h: the .cu source is compiled by the host's C++
compiler with every CUDA thread as a fiber. "Device" arrays are NumPy arrays (a subclass, 256-byte
aligned like CuPy's), so that results can be compared directly. The emulator checks what a GPU
would not: each kernel argument's size and kind, every global memory access against the arrays
passed, barriers that not every thread reaches.

It is slow (about a microsecond per thread per barrier): tests keep to small shapes, and the
multiprocessor count is 4 so that the backward's partial rows stay few. The few other CuPy calls
that benchmarks/gpu_bench.py makes are here too, so that a test can run it: events time on the
host, and a RawKernel compiled from source (the benchmark's spin kernel) does nothing.
"""

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import types

import numpy as np

__version__ = "emulated"
EMULATOR_H = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_emulator.h")
MULTIPROCESSORS = 4

float16, float32, float64 = np.float16, np.float32, np.float64


def compiler():
    """The C++ compiler that builds the emulator, or None."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")


# ---------------------------------------------------------------------------------------------
# Arrays

class _Pointer:
    __slots__ = ("ptr",)

    def __init__(self, ptr):
        self.ptr = ptr

    def copy_from_device_async(self, src, size, stream=None):
        ctypes.memmove(self.ptr, src.ptr, size)


class _Device:
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)
        self.attributes = {"MultiProcessorCount": MULTIPROCESSORS, "ClockRate": 1_000_000}

    def synchronize(self):
        pass


class ndarray(np.ndarray):  # noqa: N801 - CuPy's name
    """A NumPy array posing as a device array: ``.data.ptr`` and ``.device`` as in CuPy."""

    @property
    def data(self):
        return _Pointer(self.__array_interface__["data"][0])

    @property
    def device(self):
        return _Device(0)

    def get(self):
        return asnumpy(self)


def empty(shape, dtype=np.float64):
    dtype = np.dtype(dtype)
    shape = (shape,) if np.ndim(shape) == 0 else tuple(shape)
    size = int(np.prod(shape, dtype=np.int64))
    raw = np.empty(size * dtype.itemsize + 256, np.uint8)
    start = -raw.__array_interface__["data"][0] % 256
    flat = raw[start:start + size * dtype.itemsize].view(dtype)
    return flat.reshape(shape).view(ndarray)


def zeros(shape, dtype=np.float64):
    a = empty(shape, dtype)
    a[...] = 0
    return a


def asarray(a, dtype=None):
    a = np.asarray(a, dtype)
    out = empty(a.shape, a.dtype)
    out[...] = a
    return out


def ascontiguousarray(a):
    return a if a.flags.c_contiguous else asarray(a)


def asnumpy(a):
    return np.array(np.asarray(a))


def ones_like(a):
    out = empty(a.shape, a.dtype)
    out[...] = 1
    return out


def empty_like(a):
    return empty(a.shape, a.dtype)


def copyto(dst, src):
    dst[...] = src


class _Generator:
    def __init__(self, seed):
        self._rng = np.random.default_rng(seed)

    def standard_normal(self, size=None, dtype=np.float64):
        return asarray(self._rng.standard_normal(size, dtype=dtype))


random = types.SimpleNamespace(default_rng=_Generator)


# ---------------------------------------------------------------------------------------------
# CUDA runtime

def _properties(device):
    return {"name": b"CPU emulator", "major": 9, "minor": 0,
            "multiProcessorCount": MULTIPROCESSORS, "totalGlobalMem": 1 << 30}


class _Event:
    def __init__(self):
        self.time = None

    def record(self, stream=None):
        self.time = time.perf_counter()

    def synchronize(self):
        pass


cuda = types.SimpleNamespace(
    Device=_Device,
    Event=_Event,
    get_elapsed_time=lambda start, end: (end.time - start.time) * 1e3,
    runtime=types.SimpleNamespace(
        getDeviceCount=lambda: 1,
        getDeviceProperties=_properties,
        runtimeGetVersion=lambda: 12080,
        driverGetVersion=lambda: 12080,
    ),
)


# ---------------------------------------------------------------------------------------------
# Kernels

_library = None   # the built emulator: (ctypes.CDLL, {name expression: entry point name})


def build(source, names):
    """Compile `source` (a .cu file) with the emulator, exporting one launcher per name
    expression in `names`. The library is cached by content in the temp directory."""
    global _library
    wrapper = [f'#include "{EMULATOR_H}"', f'#include "{os.path.abspath(source)}"', ""]
    entries = {}
    for i, name in enumerate(names):
        entries[name] = f"fastln_emu_launch_{i}"
        wrapper.append(
            f'extern "C" int fastln_emu_launch_{i}(unsigned g, unsigned b, void** a, '
            f"const size_t* s, const char* k, int n, const uintptr_t* r, int nr, char* e, "
            f"size_t ne) {{ return fastln_emu::launch(&{name}, g, b, a, s, k, n, r, nr, e, ne); }}")
    text = "\n".join(wrapper) + "\n"
    flags = ["-std=c++17", "-O1", "-shared", "-fPIC", "-ffp-contract=off", "-w"]
    digest = hashlib.sha256()
    for part in (text, open(EMULATOR_H).read(), open(source).read(), " ".join(flags)):
        digest.update(part.encode())
    cache = os.path.join(tempfile.gettempdir(), "fastln-cuda-emulator")
    os.makedirs(cache, exist_ok=True)
    lib = os.path.join(cache, digest.hexdigest()[:24] + ".so")
    if not os.path.exists(lib):
        with tempfile.TemporaryDirectory() as tmp:
            cpp = os.path.join(tmp, "kernels.cpp")
            with open(cpp, "w") as f:
                f.write(text)
            out = os.path.join(tmp, "kernels.so")
            subprocess.run([compiler(), *flags, "-o", out, cpp], check=True,
                           capture_output=True, text=True)
            shutil.move(out, lib + f".{os.getpid()}")
            os.replace(lib + f".{os.getpid()}", lib)
    _library = (ctypes.CDLL(lib), entries)


class RawModule:
    def __init__(self, code=None, *, options=(), name_expressions=None, **kwargs):
        self.code = code

    def get_function(self, name):
        if _library is None or name not in _library[1]:
            raise RuntimeError(f"{name} was not built into the emulator (fake_cupy.build)")
        return _EmulatedKernel(name, getattr(_library[0], _library[1][name]))


class RawKernel:
    """A kernel compiled from source by the caller: runs nothing here."""

    def __init__(self, code, name, **kwargs):
        self.name = name

    def __call__(self, grid, block, args, *, shared_mem=0):
        pass


class _EmulatedKernel:
    num_regs = 64

    def __init__(self, name, entry):
        self.name = name
        self._entry = entry
        self.launches = []

    def __call__(self, grid, block, args, *, shared_mem=0):
        if len(grid) != 1 or len(block) != 1:
            raise ValueError(f"fastln launches 1-D grids and blocks, got {grid} and {block}")
        values, sizes, kinds, ranges = [], [], [], []
        for i, a in enumerate(args):
            if isinstance(a, ndarray):
                if not a.flags.c_contiguous:
                    raise ValueError(f"{self.name}: argument {i} is not C-contiguous")
                value, kind = ctypes.c_void_p(a.data.ptr), "p"
                ranges += [a.data.ptr, a.nbytes]
            elif isinstance(a, np.ndarray):
                raise TypeError(f"{self.name}: argument {i} is a host array")
            elif isinstance(a, np.unsignedinteger) and a.itemsize == 8 and a == 0:
                value, kind = ctypes.c_void_p(0), "p"   # how fastln passes a null pointer
            elif isinstance(a, (bool, int, float)):
                # CuPy passes Python ints and floats as 8-byte values
                value = ctypes.c_int64(a) if isinstance(a, int) else ctypes.c_double(a)
                kind = "f" if isinstance(a, float) else "i"
            elif isinstance(a, np.generic):
                value = (ctypes.c_char * a.itemsize).from_buffer_copy(a.tobytes())
                kind = {"f": "f", "i": "i", "u": "u", "b": "u"}[a.dtype.kind]
            else:
                raise TypeError(f"{self.name}: argument {i} of type {type(a)}")
            values.append(value)
            sizes.append(ctypes.sizeof(value))
            kinds.append(kind)
        pointers = (ctypes.c_void_p * len(values))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        error = ctypes.create_string_buffer(1024)
        self.launches.append((grid[0], block[0]))
        status = self._entry(
            ctypes.c_uint(grid[0]), ctypes.c_uint(block[0]), pointers,
            (ctypes.c_size_t * len(sizes))(*sizes), ctypes.c_char_p("".join(kinds).encode()),
            ctypes.c_int(len(values)), (ctypes.c_size_t * max(1, len(ranges)))(*ranges),
            ctypes.c_int(len(ranges) // 2), error, ctypes.c_size_t(len(error)))
        if status != 0:
            raise RuntimeError(f"{self.name}<<<{grid[0]}, {block[0]}>>>: "
                               f"{error.value.decode()}")
