"""pydl's benchmark cases: ``bench_<op>.py`` modules, each defining ``cases(quick, device) -> [Case]``, and
the method that times them against torch (``common.py``).

One package, imported one way. ``pydl bench`` imports ``benchmarks.bench_<op>`` from a source checkout (the
repository root on ``sys.path``: run from there, or an editable install) and ``pydl._benchmarks.bench_<op>``
from an installed wheel, which carries this folder under that name (setup.py). A single file runs from the
repository root as ``python -m benchmarks.bench_conv2d [--quick] [--threads N] [--interleaved]``.
"""
