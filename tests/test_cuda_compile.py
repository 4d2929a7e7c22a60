"""The CUDA kernels compile, with no GPU needed: every instantiation fastln._gpu launches, with
nvcc for sm_80 and sm_90 (skipped without nvcc) and with NVRTC as CuPy compiles them (skipped
where no libnvrtc is found; ``pip install nvidia-cuda-nvrtc`` brings one).

nvcc also reports each kernel's registers and spills: a kernel whose registers spill more than a
few words to local memory is a performance bug (a register array indexed at run time, say).

CI sets FASTLN_REQUIRE_NVCC=1 and FASTLN_REQUIRE_NVRTC=1, which turn those skips into failures.
"""

import ctypes
import ctypes.util
import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

from fastln import _gpu

ARCHS = ["sm_80", "sm_90"]
# Bytes of spill stores per thread a kernel may have (the backward's 1024-thread blocks cap
# registers at 64, and a few words spill in some instantiations).
MAX_SPILL_BYTES = 64


def _missing(tool, how):
    """Skip, or fail where CI requires `tool` (FASTLN_REQUIRE_<TOOL>=1)."""
    message = f"{tool} not found ({how})"
    if os.environ.get(f"FASTLN_REQUIRE_{tool.upper()}") == "1":
        pytest.fail(message + f", and FASTLN_REQUIRE_{tool.upper()}=1")
    pytest.skip(message)


def _instantiating_source():
    """A .cu that includes the kernels and instantiates each one fastln._gpu may launch."""
    lines = [f'#include "{_gpu.SOURCE}"', "", "void* fastln_kernels[] = {"]
    lines += [f"    (void*)&{name}," for name in _gpu.kernel_names()]
    lines += ["};", ""]
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_nvcc_compiles_every_kernel(tmp_path, arch):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        _missing("nvcc", "not on PATH")
    src = tmp_path / "kernels.cu"
    src.write_text(_instantiating_source())
    cmd = [nvcc, f"-arch={arch}", "-cubin", "-Xptxas", "-v", "-Werror", "all-warnings",
           "-o", str(tmp_path / "kernels.cubin"), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout}{r.stderr}"
    report = _ptxas_report(r.stdout + r.stderr)
    assert len(report) == len(_gpu.kernel_names()), r.stderr
    spilling = {name: spills for name, (regs, spills) in report.items()
                if spills > MAX_SPILL_BYTES}
    assert not spilling, f"kernels spilling more than {MAX_SPILL_BYTES} bytes: {spilling}"
    print(f"\n{arch}: {len(report)} kernels, registers {min(r for r, _ in report.values())}-"
          f"{max(r for r, _ in report.values())}, most spilled "
          f"{max(s for _, s in report.values())} bytes")


def _ptxas_report(text):
    """{mangled kernel name: (registers, spill store bytes)} from ptxas -v."""
    report, name, spills = {}, None, 0
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            name = m.group(1)
        m = re.search(r"(\d+) bytes spill stores", line)
        if m:
            spills = int(m.group(1))
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            report[name] = (int(m.group(1)), spills)
            name, spills = None, 0
    return report


# ---------------------------------------------------------------------------------------------
# NVRTC, called as CuPy calls it: the source as is, the kernels named by name expressions

def _find_nvrtc():
    candidates = []
    for root in sys.path:   # the nvidia-cuda-nvrtc wheels
        candidates += sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib", "libnvrtc.so*")))
        candidates += sorted(glob.glob(os.path.join(root, "nvidia", "cuda_nvrtc", "lib",
                                                    "libnvrtc.so*")))
    for cuda in filter(None, [os.environ.get("CUDA_PATH"), "/usr/local/cuda",
                              *sorted(glob.glob("/usr/local/cuda-*"))]):
        candidates += sorted(glob.glob(os.path.join(cuda, "lib64", "libnvrtc.so*")))
    found = ctypes.util.find_library("nvrtc")
    if found:
        candidates.append(found)
    for path in candidates:
        if "builtins" in path:
            continue
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def _nvrtc_compile(lib, source, names, options):
    """Compile with NVRTC; returns (ok, log)."""
    prog = ctypes.c_void_p()
    check = _nvrtc_checker(lib)
    check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"layer_norm.cu", 0,
                                 None, None))
    try:
        for name in names:
            check(lib.nvrtcAddNameExpression(prog, name.encode()))
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        status = lib.nvrtcCompileProgram(prog, len(options), opts)
        size = ctypes.c_size_t()
        check(lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)))
        log = ctypes.create_string_buffer(size.value)
        check(lib.nvrtcGetProgramLog(prog, log))
        if status == 0:
            for name in names:   # every name expression resolved to a kernel
                lowered = ctypes.c_char_p()
                check(lib.nvrtcGetLoweredName(prog, name.encode(), ctypes.byref(lowered)))
        return status == 0, log.value.decode(errors="replace")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def _nvrtc_checker(lib):
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def check(status):
        if status != 0:
            raise RuntimeError(f"NVRTC: {lib.nvrtcGetErrorString(status).decode()}")
    return check


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_nvrtc_compiles_every_kernel(arch):
    lib = _find_nvrtc()
    if lib is None:
        _missing("nvrtc", "no libnvrtc: pip install nvidia-cuda-nvrtc, or a CUDA toolkit")
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    with open(_gpu.SOURCE) as f:
        source = f.read()
    # CuPy's options for RawModule: its defaults plus the device's architecture.
    options = [f"-arch={arch}", "-std=c++17", "-ftz=true", "--device-as-default-execution-space"]
    ok, log = _nvrtc_compile(lib, source, _gpu.kernel_names(), options)
    assert ok, f"NVRTC {major.value}.{minor.value} {' '.join(options)}:\n{log}"
