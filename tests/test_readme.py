"""Every code block in the README works as written.

A README recipe that fails as written costs a newcomer more than a missing one, so each fenced block is run:

* ```python blocks run whole, in a fresh interpreter in an empty folder (the checkout's pydl on the path);
* ```bash blocks: every ``pydl ...`` line must parse with the real CLI (its subcommand path answers
  ``--help``), every script it names must exist and be executable, and a ``torchrun ... train.py`` line needs the
  README's own ``train.py`` block (which runs here as a python block). The two install commands at the top are
  checked against .ci/run by tests/test_tooling.py and run by CI itself.
"""
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()
BLOCKS = [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w*)\n(.*?)```", README, re.S)]
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
BASH_LINES = [line.split("  #")[0].strip() for lang, code in BLOCKS if lang == "bash"
              for line in code.replace("\\\n", " ").splitlines() if line.strip() and not line.strip().startswith("#")]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("MPLBACKEND", "Agg")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):  # a plain, single-process run
        env.pop(k, None)
    return env


def test_readme_has_the_blocks_these_tests_expect():
    assert len(PYTHON) >= 2, "the README lost its python examples (Use it, train.py)"
    assert any(line.startswith("pydl ") for line in BASH_LINES)


@pytest.mark.parametrize("i", range(len(PYTHON)), ids=[f"python-block-{i}" for i in range(len(PYTHON))])
def test_python_block_runs(i, tmp_path):
    code = PYTHON[i]
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"README python block {i} failed:\n{code}\n--- stderr ---\n{r.stderr[-3000:]}"
    # what each block promises to leave behind
    for path in re.findall(r'path="([^"]+)"', code):
        assert (tmp_path / path).is_file(), f"block {i} promised {path}"
    if "rank_and_world" in code:
        assert "rank 0/1" in r.stdout, r.stdout


def _pydl_lines():
    out = []
    for line in BASH_LINES:
        for part in line.split("&&"):
            part = part.strip()
            if part.startswith("pydl "):
                out.append(part)
    return sorted(set(out))


@pytest.mark.parametrize("line", _pydl_lines())
def test_documented_pydl_command_parses(line):
    words = shlex.split(line)[1:]
    # the subcommand path is the leading words that are not options or placeholders (NAME, OPS..., A.json)
    path = []
    for w in words:
        if w.startswith("-") or not re.fullmatch(r"[a-z][a-z_]*", w):
            break
        path.append(w)
    r = subprocess.run([sys.executable, "-m", "pydl.cli", *path, "--help"], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"`pydl {' '.join(path)} --help` failed:\n{r.stderr[-2000:]}"
    # every documented option must be one the command really has
    for opt in [w.split("=")[0] for w in words if w.startswith("--")]:
        assert opt in r.stdout, f"README shows {opt!r} for `pydl {' '.join(path)}`, which does not list it"


def test_documented_scripts_exist():
    scripts = {shlex.split(line)[0] for line in BASH_LINES if line.startswith("scripts/")}
    assert scripts, "expected the GPU check script in the README"
    for s in scripts:
        path = os.path.join(ROOT, s)
        assert os.path.isfile(path) and os.access(path, os.X_OK), f"README names {s}, which is not an executable"


def test_torchrun_lines_have_their_script():
    if any("torchrun" in line and "train.py" in line for line in BASH_LINES):
        assert any("init_from_env" in code and "train.py" in README for code in PYTHON), \
            "the README runs train.py under torchrun but shows no train.py"


def test_plain_import_reaches_documented_subpackages():
    """`import pydl; pydl.distributed.init_from_env()` as the README writes it, while `import pydl` itself
    stays light (the subpackages load on first use)."""
    code = ("import sys, pydl\n"
            "eager = [m for m in ('pydl.debug', 'pydl.distributed', 'pydl.learn') if m in sys.modules]\n"
            "assert not eager, eager\n"
            "assert pydl.distributed.init_from_env() is False\n"
            "assert pydl.debug.ActivationStats and pydl.learn and pydl.kernels\n"
            "try:\n    pydl.no_such_thing\nexcept AttributeError as e:\n    assert 'no_such_thing' in str(e)\n"
            "else:\n    raise SystemExit('missing attribute did not raise')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
