"""pydl's build script.

By default this installs pure Python: the C++ (CPU) and CUDA extensions are JIT-compiled with ninja the first
time an op needs them (see pydl/_build.py) into a per-version cache. Set PYDL_BUILD_EXT=1 to build them here,
ahead of time, into pydl/_ext/ (needs torch importable at build time: use --no-build-isolation):

    PYDL_BUILD_EXT=1 pip install --no-build-isolation -e .

One shared object per op and device (csrc/cpu/<op>.cpp and its parts csrc/cpu/<op>/*.cpp -> pydl_cpu_<op>,
csrc/cuda/<op>.{cu,cpp} and csrc/cuda/<op>/*.cu -> pydl_cuda_<op>), exactly the units the JIT path builds, so a
broken op never takes the others down.
"""
import os

from setuptools import setup

# kernels/ sits at the top level (design card) but is installed as the subpackage pydl.kernels. A wheel also
# carries the C++/CUDA sources (for the JIT build) and the benchmark cases, as pydl/_csrc and pydl/_benchmarks;
# a source checkout (editable install) uses csrc/ and benchmarks/ where they are.
packages = ["pydl", "pydl.ops", "pydl.nn", "pydl.debug", "pydl.learn", "pydl.kernels", "pydl._csrc",
            "pydl._benchmarks", "pydl.transforms"]
package_dir = {"pydl.kernels": "kernels", "pydl._csrc": "csrc", "pydl._benchmarks": "benchmarks"}
package_data = {"pydl.learn": ["exercises/**/*", "*.h", "*.hpp"], "pydl._csrc": ["**/*"],
                "pydl._benchmarks": ["*.py", "results/**/*"]}


def _env_module():
    """pydl/_env.py (how every PYDL_* variable is read), loaded by path: importing the pydl package would
    import torch, which a plain install need not have at build time."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_pydl_env", os.path.join(os.path.dirname(os.path.abspath(__file__)), "pydl", "_env.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


kwargs = {}
if _env_module().flag("PYDL_BUILD_EXT"):
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from pydl import _build  # noqa: E402  (plain-Python module: no torch extension loads at import)

    kwargs = _build.setuptools_kwargs()

setup(packages=packages, package_dir=package_dir, package_data=package_data, include_package_data=True, **kwargs)
