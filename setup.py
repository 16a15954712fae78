"""Build script for fastui: the pure-Python package plus optional native modules (see csrc/ and DESIGN.md).

``kernels/`` is installed as the subpackage ``fastui.kernels``. Native modules are optional: a failed build never
breaks the install (switches ``FASTUI_BUILD_CPU`` / ``FASTUI_BUILD_CUDA`` = auto|0|1).
"""

from setuptools import find_packages, setup

packages = find_packages(include=["fastui", "fastui.*"]) + ["fastui.kernels"]

setup(
    name="fastui",
    version="0.1.0",
    description="One-step diffusion distillation with the Uni-Instruct family of losses, fused kernels and ZeRO",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"fastui.kernels": "kernels"},
    include_package_data=True,
    package_data={"fastui": ["assets/*", "assets/**/*"]},
    install_requires=["numpy", "torch"],
    extras_require={
        "triton": ["triton"],
        "deepspeed": ["deepspeed"],
        "data": ["webdataset==1.0.2", "pillow", "tqdm"],
        "eval": ["scipy", "pillow", "tqdm"],
        "dev": ["pytest", "ruff", "pybind11", "matplotlib", "scipy", "tqdm", "pillow"],
    },
    entry_points={"console_scripts": ["fastui=fastui.cli:main"]},
)
