"""Building the native kernels on first use: torch's cpp_extension and ninja (a groundup dependency, from
PyPI) compile ``csrc/`` into a shared library of torch operators, kept in a cache directory keyed by the torch
version, the machine and a hash of the sources, so a build happens once per machine and torch.

The library holds every instruction-set variant: each is compiled with ``__attribute__((target(...)))`` on its
functions, never with -march=native, and the operators choose among them at run time by what the CPU reports.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
from pathlib import Path

import torch

SOURCES = ("ops.cpp", "generic.cpp", "avx2.cpp", "attention.cpp")
HEADERS = ("blocks.h",)
CSRC = Path(__file__).resolve().parent / "csrc"
FLAGS = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno"]  # OpenMP: at::parallel_for runs on torch's pool


def cache_dir() -> Path:
    """Where built kernels live: $GROUNDUP_CACHE/kernels, else ~/.cache/groundup/kernels."""
    root = Path(os.environ.get("GROUNDUP_CACHE") or Path.home() / ".cache" / "groundup")
    return root / "kernels"


def build_key() -> str:
    """torch version, machine and a hash of the sources and flags: a change to any rebuilds."""
    h = hashlib.sha256(" ".join(FLAGS).encode())
    for name in (*SOURCES, *HEADERS):
        h.update((CSRC / name).read_bytes())
    version = torch.__version__.replace("+", "_")
    return f"torch{version}-{platform.machine()}-{h.hexdigest()[:12]}"


def missing_tools() -> str | None:
    """What the build lacks (a C++ compiler, ninja), as the sentence of a warning; None when nothing."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None and shutil.which("g++") is None:
        return f"no C++ compiler ({compiler}) found: install g++ (e.g. apt install g++) or set CXX"
    try:
        import ninja  # the PyPI wheel carries the binary; cpp_extension looks for it on PATH
    except ImportError:
        return "ninja is not installed: pip install ninja"
    bin_dir = getattr(ninja, "BIN_DIR", None)
    if bin_dir and bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    return None


def build(verbose: bool = False) -> Path:
    """Compile (or find already compiled) the kernel library and load its operators into torch.ops.groundup;
    returns the build directory. Raises RuntimeError (or the compiler's error) when it cannot."""
    from torch.utils import cpp_extension  # the build machinery, only when a build is asked for

    problem = missing_tools()
    if problem is not None:
        raise RuntimeError(problem)
    key = build_key()
    out = cache_dir() / key
    out.mkdir(parents=True, exist_ok=True)
    name = "groundup_kernels_" + key.rsplit("-", 1)[-1]
    cpp_extension.load(name=name, sources=[str(CSRC / s) for s in SOURCES], extra_cflags=FLAGS,
                       extra_ldflags=["-fopenmp"], extra_include_paths=[str(CSRC)], build_directory=str(out),
                       is_python_module=False, verbose=verbose)
    return out


if __name__ == "__main__":  # python -m groundup.kernels.build: build now, printing the compiler's lines
    print(build(verbose="-v" in sys.argv))
