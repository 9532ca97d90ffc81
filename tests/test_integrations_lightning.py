"""pydl.integrations.lightning.ActivationStatsCallback inside a real Lightning Trainer.fit, on CPU.

One tiny fit (synthetic data, 2 epochs x 4 batches, TensorBoard and CSV loggers) with the callback recording
every 2nd batch, grad flow and dead units on, and the plain pydl.debug.ActivationStats (every 2nd forward)
on the same network. The LightningModule's training_step calls ``self.net(x)``, not ``self(x)``: the
callback must not depend on the module's own forward being called.
"""
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch", reason="lightning not installed (pip install 'pydl[lightning]')")
pytest.importorskip("tensorboard", reason="tensorboard not installed (pip install 'pydl[lightning]')")
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from pydl.debug import ActivationStats, leaf_modules  # noqa: E402
from pydl.integrations.lightning import ActivationStatsCallback  # noqa: E402

N_BATCHES, EPOCHS, EVERY = 4, 2, 2


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4))

    def forward(self, x):  # used by dead_units only
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lightning")
    torch.manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(16 * N_BATCHES, 3, 8, 8) * 3,
                                        torch.randint(0, 4, (16 * N_BATCHES,)))
    train = torch.utils.data.DataLoader(ds, batch_size=16)
    val = torch.utils.data.DataLoader(ds, batch_size=16)
    module = Tiny()
    cb = ActivationStatsCallback(every_n_steps=EVERY, grad_flow=True, dead_units=True, chunk=3)
    tb = TensorBoardLogger(str(tmp), name="tb")
    csv = CSVLogger(str(tmp), name="csv")
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=EPOCHS, limit_val_batches=1, num_sanity_val_steps=1,
                         logger=[tb, csv], callbacks=[cb], enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, log_every_n_steps=1)
    # the plain recorder counts forwards of module.net, the callback training batches: the same here
    with ActivationStats(module.net, modules=leaf_modules(module), every=EVERY) as plain:
        trainer.fit(module, train, val)
    # what dead_units must have seen: the last recorded batch (batch 6) through the trained net in eval mode,
    # taken now, before a test's forward in training mode moves the batch-norm running statistics
    x = ds[16 * (EPOCHS * N_BATCHES - EVERY) % len(ds):][0][:16]
    with torch.no_grad():
        relu_out = module.eval().net[:3](x)
    return dict(relu_out=relu_out, cb=cb, plain=plain, tb=tb, csv=csv, trainer=trainer, module=module)


def test_records_the_same_as_the_plain_recorder(run):
    a, b = run["cb"].data, run["plain"].data
    assert a.steps.tolist() == list(range(0, EPOCHS * N_BATCHES, EVERY))  # no sanity/validation batch
    assert len(a.names) == 3 and a.names == [f"net.{i}" for i in (0, 1, 4)]
    np.testing.assert_array_equal(a.steps, b.steps)
    np.testing.assert_array_equal(a.fstats, b.fstats)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.hist, b.hist)
    assert a.epoch_steps == [N_BATCHES, 2 * N_BATCHES]
    n = len(a)
    run["module"].train()(torch.randn(2, 3, 8, 8))
    assert len(run["cb"].data) == n, "hooks must be gone after the fit"


def test_tensorboard_histograms_and_scalars(run):
    data = run["cb"].data
    acc = EventAccumulator(run["tb"].log_dir, size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for name in data.names:
        h = acc.Histograms(f"activations/{name}")
        # every record logged once, in chunks of 3 and the rest at the end, at its batch's global step
        # (one optimizer step per batch here, so global step == batch index)
        assert [e.step for e in h] == data.steps.tolist()
        j = data.layer(name)
        for t, e in enumerate(h):
            counts = np.array(e.histogram_value.bucket)
            # below, the 40 device-made bins, above: exactly the recorded counts
            np.testing.assert_array_equal(counts, np.concatenate([[data.below[t, j]], data.hist[t, j],
                                                                  [data.above[t, j]]]))
            assert e.histogram_value.num == data.finite[t, j]
        means = [e.value for e in acc.Scalars(f"activations_mean/{name}")]
        np.testing.assert_allclose(means, data.mean[:, j], rtol=1e-6)  # TensorBoard stores float32
    grad_tags = sorted(t for t in tags["scalars"] if t.startswith("grad_"))
    assert grad_tags == [f"grad_{k}/net.{i}.weight" for k in ("max", "mean") for i in (0, 1, 4)]  # no biases
    assert [e.step for e in acc.Scalars("grad_mean/net.0.weight")] == data.steps.tolist()
    # dead units: the activation layers (the ReLU), share of channels dead on >= 99% of the last batch
    rep = run["cb"].dead_report
    (dead,) = acc.Scalars("dead_units/net.2")
    assert dead.step == run["trainer"].global_step
    assert dead.value == pytest.approx(len(rep.dead()["net.2"]) / 8, abs=1e-7)


def test_csv_logger_gets_scalars(run):
    import csv
    path = os.path.join(run["csv"].log_dir, "metrics.csv")
    rows = list(csv.DictReader(open(path)))
    data = run["cb"].data
    got = [(int(r["step"]), float(r["activations_std/net.4"])) for r in rows if r.get("activations_std/net.4")]
    assert [s for s, _ in got] == data.steps.tolist()
    np.testing.assert_allclose([v for _, v in got], data.std[:, 2], rtol=1e-12)


def test_pngs_and_dead_units(run):
    cb = run["cb"]
    assert cb.colorful_path == os.path.join(run["trainer"].log_dir, "colorful_dimension.png")
    assert os.path.getsize(cb.colorful_path) > 1000
    assert os.path.getsize(os.path.join(run["trainer"].log_dir, "dead_units.png")) > 1000
    rep = cb.dead_report
    assert rep.names == ["net.2"] and rep.dead_frac["net.2"].shape == (8,)
    expected = (run["relu_out"] == 0).double().mean((0, 2, 3)).numpy()
    np.testing.assert_allclose(rep.dead_frac["net.2"], expected, rtol=1e-12)


def test_argument_checks():
    with pytest.raises(ValueError, match="every_n_steps"):
        ActivationStatsCallback(every_n_steps=0)
    with pytest.raises(ValueError, match="prefix"):
        ActivationStatsCallback(prefix="")
    with pytest.raises(RuntimeError, match="trainer.fit"):
        ActivationStatsCallback().data  # noqa: B018 - reading the property is what raises

    class NoForward(Tiny):
        forward = pl.LightningModule.forward

    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         callbacks=[ActivationStatsCallback(dead_units=True)])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 3, 8, 8),
                                                                        torch.zeros(4, dtype=torch.long)), batch_size=4)
    with pytest.raises(ValueError, match="define forward"):
        trainer.fit(NoForward(), loader)


def test_missing_lightning_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "pydl.integrations.lightning")
    with pytest.raises(ImportError, match=r"pip install 'pydl\[lightning\]'"):
        import pydl.integrations.lightning  # noqa: F401
