"""`pydl demo --quick` end to end: a report whose files exist and whose numbers are sane."""
import json
import os
import re

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


def _check_report(out, report):
    assert os.path.isfile(report)
    html = open(report).read()
    refs = re.findall(r"src='([^']+)'", html)
    assert refs, "the report shows no images"
    for r in refs:
        path = os.path.join(out, r)
        assert os.path.isfile(path), f"report.html references a missing file {r}"
        assert os.path.getsize(path) > 2000, f"{r} is (nearly) empty"
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", f"{r} is not a PNG"
    return html


@pytest.mark.slow  # the whole demo end to end (training, every figure, layer timing): the suite's longest test
def test_cnn_demo_quick(tmp_path, capsys):
    import pydl
    from pydl.demo import run_cnn

    out = str(tmp_path / "demo")
    # The demo's backend holds for the run only: the caller's (here a context of its own) is back afterwards.
    with pydl.backend("reference"):
        res = run_cnn(out, quick=True, backend="auto")
        assert pydl.get_backend() == "reference"
    printed = capsys.readouterr().out
    html = _check_report(out, res["report"])
    assert res["valid_acc"] > 0.5, res["valid_acc"]  # chance is 0.1; two quick epochs reach ~0.95
    for key in ("colorful", "layer_stats", "gradcam", "occlusion", "top_patches", "landscape_1d", "landscape_2d",
                "grad_flow", "curves"):
        assert key in res["files"], f"missing figure {key}"
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["valid_acc"] == res["valid_acc"]
    assert summary["backend"] == "auto"
    assert summary["layer_timing"] and all(r["pydl_ms"] > 0 and r["torch_ms"] > 0 for r in summary["layer_timing"])
    assert any(r["module"].startswith("Conv2d(") for r in summary["layer_timing"])
    # every ratio comes with its spread (interleaved rounds), and the machine it was measured on is named
    for r in summary["layer_timing"]:
        assert r["rounds"] >= 5 and r["speedup_q1"] <= r["speedup"] <= r["speedup_q3"], r
        assert f"{r['speedup']:.2f}x ({r['speedup_q1']:.2f}-{r['speedup_q3']:.2f})" in html
    assert summary["machine"]["cpu"] and summary["machine"]["cpu"] in html
    if summary["machine"]["warning"]:
        assert summary["machine"]["warning"] in html and summary["machine"]["warning"] in printed
    # no silent minutes: the kernels are warmed before training (its rate and ETA exclude compiling) and
    # each report stage says when it starts
    assert printed.index("warming up the kernels") < printed.index("epoch 1:")
    for stage in ("training curves", "Grad-CAM", "loss landscape 2D", "timing this model's layers", "what ran where"):
        assert f"report: {stage}" in printed, stage
    assert os.path.isfile(os.path.join(out, "activation_stats.npz"))
    assert os.path.isfile(os.path.join(out, "loss_landscape_2d.npz"))
    assert "pydl doctor" in html and "Validation accuracy" in html


@pytest.mark.slow
def test_rnn_demo_quick(tmp_path):
    from pydl.demo import run_rnn

    out = str(tmp_path / "rnn")
    res = run_rnn(out, quick=True, quiet=True, steps=25)
    _check_report(out, res["report"])
    assert res["final_loss"] < res["first_loss"] - 0.5, (res["first_loss"], res["final_loss"])
    assert res["sample"].startswith("The ") and len(res["sample"]) > 100


def test_demo_cli_image_folder(tmp_path):
    """--data DIR with an ImageFolder-style tree (images made here: two classes of bars)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, axis in (("horizontal", 0), ("vertical", 1)):
        d = tmp_path / "data" / c
        d.mkdir(parents=True)
        for i in range(24):
            img = rng.integers(0, 40, (20, 20)).astype(np.uint8)
            k = rng.integers(4, 16)
            if axis == 0:
                img[k:k + 3, :] = 255
            else:
                img[:, k:k + 3] = 255
            Image.fromarray(img).save(d / f"{i}.png")
    from pydl.demo import load_image_folder

    xtr, ytr, xva, yva, classes = load_image_folder(str(tmp_path / "data"), size=16)
    assert classes == ["horizontal", "vertical"] and xtr.shape[1:] == (1, 16, 16)
    assert len(xtr) + len(xva) == 48 and set(ytr.tolist()) == {0, 1}


def test_every_demo_run_ends_the_same_way(tmp_path, capsys):
    """What the three demos share (pydl/demo/run.py): the run's folder, its voice, its backend for its own
    duration only, and its ending -- summary.json, then report.html with the doctor's section last."""
    import pydl
    from pydl.demo.report import img
    from pydl.demo.run import DemoRun, backend_scope
    from pydl.doctor import doctor_report

    before = pydl.get_backend()
    with backend_scope("reference"):
        assert pydl.get_backend() == "reference"
    assert pydl.get_backend() == before
    run = DemoRun(str(tmp_path / "run"), seed=0, quiet=True)
    run.say("not shown")
    doc = doctor_report()
    res = run.finish({"valid_acc": 0.5}, "a <title>", [("Curves", img(run.path("curves.png"), "a note"))], doc)
    assert capsys.readouterr().out == ""
    assert json.load(open(run.path("summary.json"))) == {"valid_acc": 0.5}
    html = open(res["report"]).read()
    assert res["report"] == run.path("report.html") and "<title>a &lt;title&gt;</title>" in html
    assert "<img src='curves.png'" in html and "a note" in html
    assert html.index("<h2>Curves</h2>") < html.index("<h2>What ran where (pydl doctor)</h2>")
    assert doc["pydl"] in html
