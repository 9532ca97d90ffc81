"""ActivationStats: every preset's numbers equal a plain-PyTorch computation of the same thing on a small
CNN being trained; stepping, every=N, eval forwards, chunked flushing, the memory cap, merging repeated
calls, files (NPZ/JSON/TensorBoard)."""
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from pydl.debug import PRESETS, ActivationStats, StatsData, StatsPreset


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True),          # in-place: stats must see conv's output
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))


def train(model, steps, stats=None, bs=6, eval_every=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # big steps: the statistics move between batches
    for i in range(steps):
        x = torch.randn(bs, 3, 10, 10) * 3
        y = torch.randint(0, 5, (bs,))
        model.train()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if eval_every and i % eval_every == 0:
            model.eval()
            with torch.no_grad():
                model(x)
            model.train()


def reference_stats(o: torch.Tensor, p: StatsPreset) -> dict:
    """What the fastai notebooks compute, in plain PyTorch (plus the counts pydl keeps)."""
    o = o.detach().float()
    h_in = o.abs() if p.abs else o
    hist = torch.histc(h_in, p.bins, p.lo, p.hi)
    a, b = p.dead_bins
    return {"mean": o.mean().item(), "std": o.std().item(), "min": o.min().item(), "max": o.max().item(),
            "near_zero": (o.abs() <= p.eps).float().mean().item(), "hist": hist.long().numpy(),
            "below": int((h_in < p.lo).sum()), "above": int((h_in > p.hi).sum()),
            "dead_all": (hist[a:b].sum() / o.numel()).item(), "dead_hist": (hist[a:b].sum() / hist.sum()).item()}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_equal_plain_pytorch(preset):
    torch.manual_seed(0)
    model = small_cnn()
    p = PRESETS[preset]
    mods = [model[0], model[1], model[2], model[3], model[7]]
    ref = {i: [] for i in range(len(mods))}
    handles = [m.register_forward_hook(lambda m_, i_, o, j=j: ref[j].append(reference_stats(o, p)) if m_.training
                                       else None)
               for j, m in enumerate(mods)]
    with ActivationStats(model, preset=preset, include_parameterless=True, chunk=2) as st:
        assert st.modules[:4] == mods[:4]  # conv, relu, conv, bn, (relu, pool, flatten), linear
        train(model, 5)
    for h in handles:
        h.remove()
    d = st.data
    assert len(d) == 5 and d.steps.tolist() == [0, 1, 2, 3, 4]
    cols = {id(m): i for i, m in enumerate(st.modules)}
    for j, m in enumerate(mods):
        c = cols[id(m)]
        for t in range(5):
            r = ref[j][t]
            assert d.hist[t, c].tolist() == r["hist"].tolist(), (preset, j, t)   # exact, as histc
            assert d.below[t, c] == r["below"] and d.above[t, c] == r["above"]
            assert math.isclose(d.mean[t, c], r["mean"], rel_tol=1e-4, abs_tol=1e-5)
            assert math.isclose(d.std[t, c], r["std"], rel_tol=1e-4)
            assert d.min[t, c] == pytest.approx(r["min"]) and d.max[t, c] == pytest.approx(r["max"])
            assert d.near_zero_frac[t, c] == pytest.approx(r["near_zero"])
            assert d.dead_fraction()[t, c] == pytest.approx(r["dead_all"])
            assert d.dead_fraction("hist")[t, c] == pytest.approx(r["dead_hist"])
    # every value is somewhere: bins + below + above + non-finite = count
    np.testing.assert_array_equal(d.hist.sum(-1) + d.below + d.above + d.nonfinite, d.count)
    # the first ReLU is in place: its stats are post-ReLU, the conv's are not
    c0, c1 = cols[id(model[0])], cols[id(model[1])]
    assert (d.min[:, c0] < 0).all() and (d.min[:, c1] == 0).all()


def test_reference_backend_gives_the_same_record():
    torch.manual_seed(0)
    m1 = small_cnn()
    m2 = small_cnn()
    m2.load_state_dict(m1.state_dict())
    with ActivationStats(m1) as a:
        torch.manual_seed(1)
        train(m1, 2)
    with ActivationStats(m2, backend="reference") as b:
        torch.manual_seed(1)
        train(m2, 2)
    np.testing.assert_array_equal(a.data.hist, b.data.hist)
    np.testing.assert_array_equal(a.data.counts, b.data.counts)
    np.testing.assert_allclose(a.data.fstats, b.data.fstats, rtol=1e-5, atol=1e-6)


def test_default_modules_are_leaves_with_parameters():
    model = small_cnn()
    with ActivationStats(model) as st:
        pass
    assert st.names == ["0", "2", "3", "7"]


def test_every_and_eval_forwards():
    torch.manual_seed(0)
    model = small_cnn()
    with ActivationStats(model, every=2) as st:
        train(model, 7, eval_every=1)  # an eval forward after every step: neither recorded nor counted
    assert st.step == 7
    assert st.data.steps.tolist() == [0, 2, 4, 6]
    with ActivationStats(model, train_only=False) as st2:
        train(model, 2, eval_every=1)
    assert st2.data.steps.tolist() == [0, 1, 2, 3]


def test_results_stay_on_device_until_a_chunk_is_full():
    torch.manual_seed(0)
    model = small_cnn()
    st = ActivationStats(model, chunk=4)
    train(model, 3)
    assert st._store.total == 0 and len(st._pending) == 3          # nothing copied to the host yet
    assert all(isinstance(t[0], torch.Tensor) for _, cur in st._pending for t in cur)
    train(model, 1)
    assert st._store.total == 4 and not st._pending                  # one flush for 4 steps x 4 layers
    train(model, 1)
    assert len(st) == 5 and len(st.data) == 5                        # reading flushes the rest
    st.remove()
    st.remove()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_memory_cap_decimate_and_ring():
    torch.manual_seed(0)
    model = small_cnn()
    with ActivationStats(model, chunk=1, max_records=4) as st:
        train(model, 10)
    d = st.data
    assert len(d) <= 4
    assert st.every == 4 and (d.steps % 4 == 0).all() and d.steps.tolist() == [0, 4, 8]
    with ActivationStats(model, chunk=3, max_records=4, on_full="ring") as st:
        train(model, 10)
    assert st.data.steps.tolist() == [6, 7, 8, 9]


def test_module_called_twice_is_merged_exactly():
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin(torch.tanh(self.lin(x)))

    model = Twice()
    x = torch.randn(5, 4) * 4
    with ActivationStats(model, preset="general_relu", eps=0.1) as st:
        model(x)
    o1 = lin(x)
    o2 = lin(torch.tanh(o1))
    both = torch.cat([o1.flatten(), o2.flatten()]).detach()
    d = st.data
    assert d.mean[0, 0] == pytest.approx(both.mean().item(), abs=1e-6)
    assert d.std[0, 0] == pytest.approx(both.std().item(), rel=1e-5)
    assert d.min[0, 0] == pytest.approx(both.min().item()) and d.max[0, 0] == pytest.approx(both.max().item())
    assert d.count[0, 0] == 40 and d.hist[0, 0].tolist() == torch.histc(both, 40, -7, 7).long().tolist()
    assert d.near_zero_frac[0, 0] == pytest.approx((both.abs() <= 0.1).float().mean().item())


def test_nonfinite_and_out_of_range_counted():
    class Id(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return x * self.w

    m = Id()
    x = torch.tensor([[-3.0, 0.0, 0.01, 5.0, 12.0, float("nan"), float("inf"), -float("inf")]])
    with ActivationStats(m) as st:
        m(x)
    d = st.data
    assert d.count[0, 0] == 8 and d.nonfinite[0, 0] == 3
    assert d.below[0, 0] == 1 and d.above[0, 0] == 1 and d.hist[0, 0].sum() == 3
    assert d.mean[0, 0] == pytest.approx((-3 + 0 + 0.01 + 5 + 12) / 5)
    assert d.outside_frac[0, 0] == pytest.approx(2 / 8)


def test_lstm_records_first_output_tensor():
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4, batch_first=True)
    x = torch.randn(2, 5, 3)
    with ActivationStats(lstm, preset="giomo") as st:
        out, _ = lstm(x)
    assert st.data.mean[0, 0] == pytest.approx(out.mean().item(), abs=1e-6)
    assert st.data.hist[0, 0].tolist() == torch.histc(out.detach(), 100, -1, 1).long().tolist()


def test_files_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = small_cnn()
    with ActivationStats(model, preset="course2022", steps_per_epoch=3) as st:
        train(model, 7)
    d = st.data
    assert d.epoch_steps == [3, 6]
    path = st.save_npz(tmp_path / "a.npz")
    e = StatsData.load_npz(path)
    assert e.names == d.names and e.preset == d.preset and e.epoch_steps == [3, 6]
    for k in ("steps", "fstats", "counts", "hist"):
        np.testing.assert_array_equal(getattr(e, k), getattr(d, k))
    text = st.to_json(tmp_path / "a.json")
    j = json.loads((tmp_path / "a.json").read_text())
    assert json.loads(text) == j
    assert j["preset"]["name"] == "course2022" and j["steps"] == list(range(7))
    assert j["layers"]["0"]["mean"] == pytest.approx(d.mean[:, 0].tolist())
    assert j["layers"]["7"]["hist"] == d.hist[:, 3].tolist()


def test_a_failed_forward_leaves_no_half_record():
    torch.manual_seed(0)
    model = small_cnn()
    with ActivationStats(model) as st:
        with pytest.raises(RuntimeError):
            model(torch.randn(2, 5, 10, 10))  # wrong channel count: fails inside the first conv
        train(model, 2)
    assert st.data.steps.tolist() == [1, 2]  # the failed forward counted as a step but left no record
    assert np.isfinite(st.data.mean).all()


def test_mark_epoch():
    model = small_cnn()
    with ActivationStats(model) as st:
        train(model, 2)
        st.mark_epoch()
        train(model, 3)
        st.mark_epoch()
    assert st.data.epoch_steps == [2, 5]


def test_tensorboard_calls_with_a_stand_in_writer():
    """The arguments add_histogram_raw gets, checked without tensorboard installed."""
    class Writer:
        def __init__(self):
            self.hist, self.scalars, self.flushed = [], [], False

        def add_histogram_raw(self, tag, **kw):
            self.hist.append((tag, kw))

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

        def flush(self):
            self.flushed = True

    class Id(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return x * self.w

    m = Id()
    x = torch.tensor([-1.0, 0.0, 0.1, 3.0, 12.0, float("nan")])
    with ActivationStats(m) as st:
        m(x)
        m(x + 1)
    w = st.to_tensorboard(Writer())
    assert w.flushed and len(w.hist) == 2 and len(w.scalars) == 6
    tag, kw = w.hist[0]
    assert tag == "activations/Id" and kw["global_step"] == 0
    assert kw["num"] == 5 and kw["min"] == -1.0 and kw["max"] == 12.0
    assert kw["sum"] == pytest.approx(14.1) and kw["sum_squares"] == pytest.approx(1 + 0.01 + 9 + 144)
    # below the range, the 40 bins, above the range; limits strictly increasing
    assert len(kw["bucket_counts"]) == len(kw["bucket_limits"]) == 42
    assert kw["bucket_counts"][0] == 1 and kw["bucket_counts"][-1] == 1 and sum(kw["bucket_counts"]) == 5
    assert np.all(np.diff(kw["bucket_limits"]) > 0)


def test_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    model = small_cnn()
    with ActivationStats(model) as st:
        train(model, 2)
    w = st.to_tensorboard(log_dir=str(tmp_path))
    w.close()
    assert any(p.name.startswith("events") for p in tmp_path.iterdir())


@pytest.mark.gpu
def test_cuda_records_match_cpu(exact_fp32):
    torch.manual_seed(0)
    m_cpu = small_cnn()
    m_gpu = small_cnn()
    m_gpu.load_state_dict(m_cpu.state_dict())
    m_gpu.cuda()
    x = torch.randn(4, 3, 10, 10)
    with ActivationStats(m_cpu) as a, ActivationStats(m_gpu) as b:
        m_cpu(x)
        m_gpu(x.cuda())
    np.testing.assert_allclose(a.data.fstats, b.data.fstats, rtol=1e-4, atol=1e-5)
    # histograms may differ where a value sits within rounding of a bin edge: compare totals and near-equality
    np.testing.assert_array_equal(a.data.count, b.data.count)
    assert np.abs(a.data.hist - b.data.hist).sum() <= 4


def test_bad_arguments():
    model = small_cnn()
    with pytest.raises(ValueError, match="preset"):
        ActivationStats(model, preset="fastai1999")
    with pytest.raises(ValueError, match="every"):
        ActivationStats(model, every=0)
    with pytest.raises(ValueError, match="on_full"):
        ActivationStats(model, on_full="explode")
    with pytest.raises(ValueError, match="dead_bins"):
        ActivationStats(model, dead_bins=(3, 99))
    with pytest.raises(ValueError, match="no modules"):
        ActivationStats(nn.ReLU())
    assert not any(m._forward_hooks for m in model.modules())  # failed constructions leave no hooks


def test_custom_overrides():
    torch.manual_seed(0)
    model = small_cnn()
    with ActivationStats(model, preset="fastai2019", bins=10, lo=-2, hi=2) as st:
        train(model, 1)
    assert st.preset.bins == 10 and st.data.hist.shape == (1, 4, 10) and st.preset.name.endswith("+custom")


# ---- the hooks' direct call of the backend kernel (the public act_stats only for the first call per case)

def _counting_public(monkeypatch):
    """Count the recorder's calls of the public pydl.act_stats (the checked, dispatcher-entering path)."""
    import pydl.debug.stats as stats_mod

    calls = []
    public = stats_mod.act_stats

    def counted(x, *args):
        calls.append((x.dtype, tuple(x.shape)))
        return public(x, *args)

    monkeypatch.setattr(stats_mod, "act_stats", counted)
    return calls


@pytest.mark.parametrize("preset", ["fastai2019", "course2022"])
def test_direct_kernel_calls_record_what_the_public_op_records(monkeypatch, preset):
    from torch.utils._python_dispatch import TorchDispatchMode

    class PassThrough(TorchDispatchMode):  # under a dispatch mode every call takes the public path
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    m1 = small_cnn()
    m2 = small_cnn()
    m2.load_state_dict(m1.state_dict())
    calls = _counting_public(monkeypatch)
    with ActivationStats(m1, preset=preset, chunk=2) as direct:
        torch.manual_seed(1)
        train(m1, 3)
    # one public call per (dtype, device, backend, bins): one for fastai2019, two (1 bin raw, 40 bins |x|)
    # for course2022, however many layers and steps followed
    assert len(calls) == (2 if preset == "course2022" else 1)
    calls.clear()
    with ActivationStats(m2, preset=preset, chunk=2) as public:
        torch.manual_seed(1)
        with PassThrough():
            train(m2, 3)
    assert len(calls) == 3 * 4 * (2 if preset == "course2022" else 1)
    for k in ("steps", "counts", "hist"):
        np.testing.assert_array_equal(getattr(direct.data, k), getattr(public.data, k))
    np.testing.assert_array_equal(direct.data.fstats, public.data.fstats)  # the same kernel: bit for bit


def test_direct_kernel_calls_follow_the_backend_and_overrides(monkeypatch):
    import pydl
    from pydl.backends import all_ops

    torch.manual_seed(0)
    model = small_cnn()
    calls = _counting_public(monkeypatch)
    seen = []
    op = all_ops()["act_stats"]
    reference = op.impl("reference")

    def spy(x, *args):
        seen.append(tuple(x.shape))
        return reference(x, *args)

    with ActivationStats(model) as st:
        train(model, 1)                                   # the default backend: one public call
        with pydl.backend("reference"), op.override("reference", spy):
            train(model, 2)                               # a new backend: checked once, then direct
    assert len(calls) == 2
    assert len(seen) == 2 * 4                             # the override saw every layer of both steps
    assert len(st.data) == 3


def test_direct_kernel_calls_keep_the_public_errors():
    """A range fine for float64 but not for float32 (which bins in float32): the float64 record is made,
    the float32 forward raises the public function's error, not a kernel's."""
    lin = nn.Linear(3, 3).double()
    with ActivationStats(lin, lo=0.0, hi=1e39) as st:
        lin(torch.randn(2, 3, dtype=torch.float64))
        lin(torch.randn(2, 3, dtype=torch.float64))
        lin.float()
        with pytest.raises(ValueError, match="float32's range"):
            lin(torch.randn(2, 3))
    assert len(st.data) == 2
