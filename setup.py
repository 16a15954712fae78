"""Build script for fastui: the pure-Python package plus optional native modules (see csrc/ and DESIGN.md).

``kernels/`` is installed as the subpackage ``fastui.kernels``. Native modules are optional: a failed build never
breaks the install. Switches (environment variables, each ``auto`` | ``0`` | ``1``; ``1`` makes a failure an error):

- ``FASTUI_BUILD_CPU``: ``fastui._C`` (C++/OpenMP kernels); ``auto`` builds it when the C++ compiler works.
- ``FASTUI_BUILD_CUDA``: ``fastui._C_cuda`` (CUDA kernels, linked with the static CUDA runtime); ``auto`` builds it
  when ``nvcc`` is found (``$NVCC``, ``$CUDA_HOME/bin``, ``PATH``, ``/usr/local/cuda/bin``).
- ``FASTUI_CUDA_ARCHS``: semicolon list of compute capabilities, default ``80;90`` (PTX of the last is embedded too).

The modules take raw pointers (no torch C++ ABI), so plain pybind11 is enough: torch's ``CUDAExtension`` is not used
and the build works against a CPU-only torch.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = "csrc"
CPU_EXT, CUDA_EXT = "fastui._C", "fastui._C_cuda"


def _switch(name: str) -> str:
    value = os.environ.get(name, "auto").strip().lower() or "auto"
    if value not in ("auto", "0", "1"):
        raise SystemExit(f"{name} must be auto, 0 or 1, got {value!r}")
    return value


def _say(msg: str) -> None:
    print(f"fastui setup: {msg}", file=sys.stderr, flush=True)


def _pybind11_include() -> str:
    import pybind11  # build-system requirement (pyproject.toml); imported late so `setup.py --help` works without it

    return pybind11.get_include()


def find_nvcc() -> str | None:
    """The nvcc to use: ``$NVCC``, ``$CUDA_HOME/bin/nvcc``, ``nvcc`` on PATH, ``/usr/local/cuda/bin/nvcc``."""
    if os.environ.get("NVCC"):
        return os.environ["NVCC"]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    return "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None


def _cuda_lib_dir(nvcc: str) -> str:
    """Directory holding ``libcudart_static.a`` for this nvcc (nvcc may be a wrapper script, so ask it)."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
             os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))]
    try:
        dry = subprocess.run([nvcc, "-v", "--dryrun", "-c", "x.cu"], capture_output=True, text=True, timeout=60,
                             check=False)
        top = re.search(r"^#\$ TOP=(.*)$", dry.stdout + dry.stderr, re.MULTILINE)
        if top:
            homes.append(top.group(1).strip())
    except (OSError, subprocess.SubprocessError):
        pass
    homes.append("/usr/local/cuda")
    for home in filter(None, homes):
        for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib"),
                    os.path.join("targets", "sbsa-linux", "lib")):
            if os.path.exists(os.path.join(home, sub, "libcudart_static.a")):
                return os.path.join(home, sub)
    raise RuntimeError(f"libcudart_static.a not found next to {nvcc} (set CUDA_HOME)")


def _gencode(archs: str) -> list[str]:
    out = []
    items = [a.strip() for a in archs.replace(",", ";").split(";") if a.strip()]
    if not items or not all(re.fullmatch(r"\d+[af]?", a) for a in items):
        raise RuntimeError(f"FASTUI_CUDA_ARCHS must look like '80;90', got {archs!r}")
    for a in items:
        out.append(f"-gencode=arch=compute_{a},code=sm_{a}")
    out.append(f"-gencode=arch=compute_{items[-1]},code=compute_{items[-1]}")  # PTX: runs on newer GPUs too
    return out


class OptionalBuildExt(build_ext):
    """Builds each native module if its switch allows; a failure is a warning unless the switch is ``1``.

    Modules that were not built are dropped from ``self.extensions`` so that later steps (in-place copies of
    editable installs, wheel contents) only see the ones that exist.
    """

    def build_extensions(self):
        built = []
        for ext in self.extensions:
            switch = _switch("FASTUI_BUILD_CUDA" if ext.name == CUDA_EXT else "FASTUI_BUILD_CPU")
            if switch == "0":
                _say(f"{ext.name}: skipped ({'FASTUI_BUILD_CUDA' if ext.name == CUDA_EXT else 'FASTUI_BUILD_CPU'}=0)")
                continue
            start = time.perf_counter()
            try:
                if ext.name == CUDA_EXT:
                    self._prepare_cuda(ext)
                self._build_with_fallback(ext)
            except Exception as exc:  # optional native code never breaks the install (DESIGN.md "Native code")
                if switch == "1":
                    raise
                _say(f"{ext.name}: NOT built ({type(exc).__name__}: {str(exc).strip()[-2000:]}); "
                     "fastui works without it (dispatch falls back)")
                continue
            _say(f"{ext.name}: built in {time.perf_counter() - start:.1f} s")
            built.append(ext)
        self.extensions = built

    def _build_with_fallback(self, ext: Extension) -> None:
        try:
            self.build_extension(ext)
        except Exception:
            if "-fopenmp" not in ext.extra_compile_args:
                raise
            _say(f"{ext.name}: retrying without OpenMP (single-threaded kernels)")
            ext.extra_compile_args = [a for a in ext.extra_compile_args if a != "-fopenmp"]
            ext.extra_link_args = [a for a in ext.extra_link_args if a != "-fopenmp"]
            self.build_extension(ext)

    def _prepare_cuda(self, ext: Extension) -> None:
        """Compile csrc/core_cuda.cu with nvcc into an object linked into the pybind11 module."""
        nvcc = find_nvcc()
        if nvcc is None:
            raise RuntimeError("nvcc not found (set NVCC or CUDA_HOME)")
        archs = os.environ.get("FASTUI_CUDA_ARCHS", "80;90")
        lib_dir = _cuda_lib_dir(nvcc)
        os.makedirs(self.build_temp, exist_ok=True)
        obj = os.path.join(self.build_temp, "core_cuda.o")
        cmd = [nvcc, "-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden",
               "--threads", str(min(4, os.cpu_count() or 1)), "-lineinfo", f"-I{os.path.join(HERE, CSRC)}",
               *_gencode(archs), *shlex.split(os.environ.get("FASTUI_NVCC_FLAGS", "")),
               "-c", os.path.join(HERE, CSRC, "core_cuda.cu"), "-o", obj]
        _say(f"{CUDA_EXT}: {' '.join(cmd)}")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        ext.extra_objects = [obj]
        ext.library_dirs = [lib_dir]
        ext.libraries = ["cudart_static", "rt", "pthread", "dl"]
        ext.define_macros = [("FASTUI_CUDA_ARCHS", '"' + archs + '"')]


def _extensions() -> list[Extension]:
    if not os.path.isdir(os.path.join(HERE, CSRC)):  # an sdist without csrc/: pure Python
        return []
    common = ["-O3", "-g0", "-std=c++17", "-fvisibility=hidden"]  # -g0: no debug info (smaller, faster build)
    include = [CSRC]
    try:
        include.append(_pybind11_include())
    except ImportError:
        _say("pybind11 not importable: native modules skipped (it is a build requirement in pyproject.toml)")
        return []
    return [
        # -O3 without -march: the module must run on any x86-64; core_cpu.cpp adds an AVX2 copy chosen at run time.
        Extension(CPU_EXT, [os.path.join(CSRC, "core_cpu.cpp")], include_dirs=include, language="c++",
                  depends=[os.path.join(CSRC, f) for f in ("fastui_native.h", "core_cpu_kernels.h")],
                  extra_compile_args=[*common, "-fopenmp"], extra_link_args=["-fopenmp"]),
        Extension(CUDA_EXT, [os.path.join(CSRC, "bind_cuda.cpp")], include_dirs=include, language="c++",
                  depends=[os.path.join(CSRC, f) for f in ("core_cuda.cu", "core_cuda.h", "fastui_native.h")],
                  extra_compile_args=list(common)),
    ]


# fastui/assets holds data only (the demo teacher, FID reference statistics): listed as packages, so that setuptools
# ships them without warning about importable directories it was not told about
packages = find_packages(include=["fastui", "fastui.*"]) + ["fastui.kernels", "fastui.assets",
                                                             "fastui.assets.demo_teacher"]

setup(
    name="fastui",
    version="0.1.0",
    description="One-step diffusion distillation with the Uni-Instruct family of losses, fused kernels and ZeRO",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"fastui.kernels": "kernels"},
    include_package_data=True,
    package_data={"fastui.assets": ["*"], "fastui.assets.demo_teacher": ["*"]},
    install_requires=["numpy", "torch"],
    extras_require={
        "triton": ["triton"],
        "deepspeed": ["deepspeed"],
        "data": ["webdataset==1.0.2", "pillow", "tqdm", "mlxtend"],
        "eval": ["scipy", "pillow", "tqdm"],
        "dev": ["pytest", "ruff", "pybind11", "matplotlib", "scipy", "tqdm", "pillow"],
    },
    entry_points={"console_scripts": ["fastui=fastui.cli:main"]},
    ext_modules=_extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
    zip_safe=False,
)
