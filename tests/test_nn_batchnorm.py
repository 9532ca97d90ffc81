"""pydl.nn.BatchNorm1d/2d/3d as drop-ins for torch's: constructor, parameters, buffers, state_dict, train/eval
behaviour, convert() both ways, fused activation, and a short training run that must track torch's losses.

Tolerances: outputs / running stats 2e-5 relative to max(1, |expected|) for float32 (fp32 accumulation over
<= ~1e4 values per channel, pairwise merged); the training run compares losses to 1e-4 relative: 30 steps of
SGD let fp32 rounding differences (different summation orders) grow, but only slowly at this learning rate.
"""
import io
import math

import pytest
import torch
import torch.nn as nn

import pydl
from pydl.nn import BatchNorm1d, BatchNorm2d, BatchNorm3d

from helpers import require_backend, slow

OP = "batch_norm"
PAIRS = [(BatchNorm1d, nn.BatchNorm1d, (4, 5, 7)), (BatchNorm1d, nn.BatchNorm1d, (6, 5)),
         (BatchNorm2d, nn.BatchNorm2d, (3, 5, 4, 7)), (BatchNorm3d, nn.BatchNorm3d, (2, 5, 3, 2, 3))]


def close(a, b, tol=2e-5):
    a, b = a.detach().double(), b.detach().double()
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    assert float((a - b).abs().max()) <= tol * scale if b.numel() else a.shape == b.shape


@pytest.mark.parametrize("kwargs", [dict(), dict(eps=1e-3, momentum=0.3), dict(momentum=None),
                                    dict(affine=False), dict(track_running_stats=False),
                                    dict(affine=False, track_running_stats=False)])
def test_same_parameters_buffers_and_state_dict(kwargs):
    for ours_cls, torch_cls, _ in PAIRS:
        ours, ref = ours_cls(5, **kwargs), torch_cls(5, **kwargs)
        assert isinstance(ours, torch_cls)
        assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
        assert [n for n, _ in ours.named_buffers()] == [n for n, _ in ref.named_buffers()]
        sd = ref.state_dict()
        assert list(ours.state_dict().keys()) == list(sd.keys())
        # torch -> pydl -> torch is exact (after perturbing everything so defaults cannot hide a mismatch)
        for v in sd.values():
            if v.is_floating_point():
                v.uniform_()
            else:
                v.fill_(7)
        ours.load_state_dict(sd)
        back = torch_cls(5, **kwargs)
        back.load_state_dict(ours.state_dict())
        for k, v in back.state_dict().items():
            assert torch.equal(v, sd[k]), k
        assert ours.backend is None
        assert repr(ref) in repr(ours) or repr(ours).startswith(type(ours).__name__)


def test_state_dict_through_bytes_and_dtype_device_args():
    m = BatchNorm2d(3, device="cpu", dtype=torch.float64)
    assert m.weight.dtype == torch.float64 and m.running_var.dtype == torch.float64
    buf = io.BytesIO()
    torch.save(nn.BatchNorm2d(3).double().state_dict(), buf)
    buf.seek(0)
    m.load_state_dict(torch.load(buf))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("kwargs", [dict(), dict(affine=False), dict(track_running_stats=False)])
def test_train_and_eval_match_torch(cpu_backend, momentum, kwargs):
    require_backend(cpu_backend, "cpu", OP)
    for ours_cls, torch_cls, shape in PAIRS:
        if slow(cpu_backend) and len(shape) > 4:
            continue
        ours = ours_cls(shape[1], momentum=momentum, backend=cpu_backend, **kwargs)
        ref = torch_cls(shape[1], momentum=momentum, **kwargs)
        if ours.affine:
            with torch.no_grad():
                ref.weight.uniform_(0.5, 1.5), ref.bias.uniform_(-1, 1)
            ours.load_state_dict(ref.state_dict())
        for step in range(2):  # a second step: running stats that are no longer the defaults
            x = torch.randn(shape) * 2 + step
            x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
            y1, y2 = ours(x1), ref(x2)
            close(y1, y2)
            dy = torch.randn(shape)
            y1.backward(dy), y2.backward(dy)
            close(x1.grad, x2.grad, 5e-5)
            if ours.affine:
                close(ours.weight.grad, ref.weight.grad, 5e-5), close(ours.bias.grad, ref.bias.grad, 5e-5)
            for k, v in ref.state_dict().items():
                close(ours.state_dict()[k], v)
        ours.eval(), ref.eval()
        x = torch.randn(shape)
        close(ours(x), ref(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_module_in_other_dtypes(cpu_backend, dtype):
    """Parameters and buffers in the module's dtype (not just fp32 with half activations)."""
    require_backend(cpu_backend, "cpu", OP)
    ours = BatchNorm2d(3, dtype=dtype, backend=cpu_backend)
    ref = nn.BatchNorm2d(3, dtype=dtype)
    tol = {torch.bfloat16: 1.6e-2, torch.float16: 2e-3, torch.float64: 1e-10}[dtype]
    for _ in range(2):
        x = torch.randn(4, 3, 3, 5).to(dtype)
        close(ours(x), ref(x), tol)
        assert ours.running_var.dtype == dtype
        close(ours.running_mean, ref.running_mean, tol), close(ours.running_var, ref.running_var, tol)


def test_pickle_and_deepcopy():
    import copy
    import pickle

    m = BatchNorm2d(3, momentum=None, act="relu", backend="reference")
    m(torch.randn(2, 3, 4, 4))
    for other in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert type(other) is BatchNorm2d and other.act == "relu" and other.backend == "reference"
        assert torch.equal(other.running_var, m.running_var) and int(other.num_batches_tracked) == 1


def test_input_rank_checked_like_torch():
    with pytest.raises(ValueError, match="expected 4D input"):
        BatchNorm2d(3)(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="expected 2D or 3D input"):
        BatchNorm1d(3)(torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        BatchNorm2d(3)(torch.randn(1, 3, 1, 1))
    m = BatchNorm2d(3).eval()
    assert m(torch.randn(1, 3, 1, 1)).shape == (1, 3, 1, 1)  # eval with running stats: fine


def test_convert_swaps_and_shares_tensors():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.BatchNorm1d(8)))
    bn2, bn1 = model[1], model[3][2]
    w, rm = bn2.weight, bn2.running_mean
    model.eval()
    pydl.convert(model, backend="reference")
    assert type(model[1]) is BatchNorm2d and type(model[3][2]) is BatchNorm1d
    assert model[1].weight is w and model[1].running_mean is rm, "same tensors, not copies"
    assert model[1].backend == "reference" and not model[1].training
    pydl.convert(model, to="torch")
    assert type(model[1]) is nn.BatchNorm2d and model[1].weight is w
    assert type(model[3][2]) is nn.BatchNorm1d and model[3][2].running_var is bn1.running_var


def test_fused_activation_module(cpu_backend):
    require_backend(cpu_backend, "cpu", OP)
    m = BatchNorm2d(3, act="general_relu", leak=0.1, sub=0.4, maxv=3.0, backend=cpu_backend)
    ref = nn.BatchNorm2d(3)
    x = torch.randn(2, 3, 3, 5)
    y = m(x)
    z = ref(x)
    want = (torch.nn.functional.leaky_relu(z, 0.1) - 0.4).clamp_max(3.0)
    close(y, want)
    assert "general_relu" in repr(m)
    with pytest.raises(ValueError, match="no torch twin"):
        m.to_torch()
    with pytest.raises(ValueError, match="act must be one of"):
        BatchNorm2d(3, act="gelu")


def test_torch_compile_module_fullgraph():
    for momentum in (0.1, None):
        m = BatchNorm2d(3, momentum=momentum)
        ref = nn.BatchNorm2d(3, momentum=momentum)
        f = torch.compile(m, fullgraph=True, backend="aot_eager")
        for _ in range(2):
            x = torch.randn(4, 3, 5, 5)
            close(f(x), ref(x))
        close(m.running_mean, ref.running_mean), close(m.running_var, ref.running_var)
        assert int(m.num_batches_tracked) == 2


def _cnn(bn_cls, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), bn_cls(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), bn_cls(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def test_short_training_run_tracks_torch():
    """A small CNN, 30 SGD steps, fixed seed: pydl's BatchNorm (auto backend) vs torch's, loss by loss."""
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(30, 12, 3, 8, 8, generator=g)
    # a learnable task: the class is the sign pattern of the first two channels' means
    ys = (xs[:, :, 0].mean((-1, -2)) > 0).long() + 2 * (xs[:, :, 1].mean((-1, -2)) > 0).long()
    losses = {}
    for name, cls in (("torch", nn.BatchNorm2d), ("pydl", BatchNorm2d)):
        model = _cnn(cls)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        out = []
        for i in range(30):
            loss = nn.functional.cross_entropy(model(xs[i]), ys[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
        model.eval()
        out.append(nn.functional.cross_entropy(model(xs[0]), ys[0]).item())  # eval uses the running stats
        losses[name] = torch.tensor(out)
    assert losses["torch"][-2] < losses["torch"][0], "the run must actually train"
    assert torch.allclose(losses["pydl"], losses["torch"], rtol=1e-4, atol=1e-5), (losses["pydl"], losses["torch"])


def test_module_arguments_are_named():
    """The module's attributes reach pydl.batch_norm's checks: errors name momentum / eps, not float()."""
    x = torch.randn(4, 3, 5)
    with pytest.raises(TypeError, match="momentum must be a finite float"):
        pydl.nn.BatchNorm1d(3, momentum="fast", backend="reference")(x)
    with pytest.raises(ValueError, match="eps must be > 0 in training"):
        pydl.nn.BatchNorm1d(3, eps=0.0, backend="reference")(x)
    m = pydl.nn.BatchNorm1d(3, eps=0.0, backend="reference").eval()  # eval: eps = 0 is allowed, as in torch
    assert torch.equal(m(x), torch.nn.functional.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias,
                                                            False, 0.1, 0.0))


@pytest.mark.parametrize("act", ["none", "relu"])
@pytest.mark.parametrize("affine", [True, False])
def test_eval_lean_path_matches_batch_norm(cpu_backend, act, affine):
    """In eval the modules take pydl.ops.batch_norm.eval_forward (fewer Python steps). It must give what
    pydl.batch_norm gives, bit for bit and with x's strides, in every rank and layout (size-1 dims too), keep
    x differentiable (the same gradients), leave the running stats alone, and build no autograd node when
    nothing needs a gradient."""
    require_backend(cpu_backend, "cpu", OP)
    g = torch.Generator().manual_seed(3)
    cases = [(BatchNorm1d, (6, 5)), (BatchNorm1d, (4, 5, 7)), (BatchNorm2d, (3, 5, 4, 7)), (BatchNorm2d, (2, 5, 1, 3)),
             (BatchNorm2d, (1, 5, 1, 1)), (BatchNorm3d, (2, 5, 3, 2, 3))]
    if cpu_backend not in ("cpu", "reference"):  # the interpreted backends: one case (the path is the same)
        cases = cases[2:3]
    for cls, shape in cases:
        for cl in (False, True) if len(shape) == 4 else (False,):
            m = cls(5, affine=affine, act=act, backend=cpu_backend).eval()
            with torch.no_grad():
                m.running_mean.uniform_(-1, 1, generator=g)
                m.running_var.uniform_(0.5, 2, generator=g)
                if affine:
                    m.weight.uniform_(0.5, 2, generator=g)
                    m.bias.uniform_(-1, 1, generator=g)
            rm0, rv0 = m.running_mean.clone(), m.running_var.clone()
            x = torch.randn(shape, generator=g)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            xg = x.clone().requires_grad_()
            y = m(xg)
            want = pydl.batch_norm(xg, m.running_mean, m.running_var, m.weight, m.bias, False, 0.1, m.eps, act,
                                   backend=cpu_backend)
            assert torch.equal(y, want) and y.stride() == want.stride() == x.stride(), (cls, shape, cl)
            dy = torch.randn(shape, generator=g)
            ins = [xg] + ([m.weight, m.bias] if affine else [])
            for a, b in zip(torch.autograd.grad(y, ins, dy), torch.autograd.grad(want, ins, dy)):
                assert torch.equal(a, b)
            assert torch.equal(m.running_mean, rm0) and torch.equal(m.running_var, rv0)
            with torch.no_grad():
                y0 = m(x)
            assert y0.grad_fn is None and torch.equal(y0, y.detach())
            if not affine:  # nothing needs a gradient, grad mode on: no node either
                assert m(x).grad_fn is None


def test_eval_lean_path_falls_back_and_keeps_errors(cpu_backend):
    """What the lean path does not take (GeneralRelu, eps not a float, a non-plain call) goes through
    pydl.batch_norm, and bad arguments raise the same errors as there."""
    require_backend(cpu_backend, "cpu", OP)
    from pydl.ops.batch_norm import eval_forward

    x = torch.randn(2, 3, 4)
    m = BatchNorm1d(3, act="general_relu", leak=0.1, sub=0.2, maxv=2.0, backend=cpu_backend).eval()
    assert eval_forward(x, m.running_mean, m.running_var, m.weight, m.bias, m.eps, m.act, m.leak, m.sub, m.maxv,
                        m.backend) is None
    assert torch.equal(m(x), pydl.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.1, m.eps,
                                             "general_relu", 0.1, 0.2, 2.0, backend=cpu_backend))
    m = BatchNorm1d(3, backend=cpu_backend).eval()
    m.eps = 0  # an int: general path, where eval allows eps = 0
    assert torch.equal(m(x), pydl.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, eps=0.0,
                                             backend=cpu_backend))
    m.eps = -1e-5
    with pytest.raises(ValueError, match="eps must be >= 0"):
        m(x)
    m.eps = 1e-5
    m.weight = nn.Parameter(torch.ones(3, 1))
    with pytest.raises(ValueError, match=r"pydl.batch_norm: weight must have shape \(3,\).*reshape"):
        m(x)
    m.weight = nn.Parameter(torch.ones(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="weight has dtype"):
        m(x)
    m.weight = nn.Parameter(torch.ones(3))
    with pytest.raises(TypeError, match="x must be float16"):
        m(torch.ones(2, 3, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="backend must be a str"):
        BatchNorm1d(3, backend=3).eval()(x)


def test_eval_cpp_node_matches_python_door(monkeypatch):
    """The C++ backend's eval takes one C++ op (csrc/cpu/batch_norm.cpp, bn_eval) that builds its autograd
    node in C++. Against the Python door (_EagerBatchNorm): the same values and first and second derivatives,
    bit for bit, for every subset of inputs that requires a gradient and mixed-precision parameters; no node
    when nothing needs one; gradcheck and gradgradcheck; bad arguments to the op itself named."""
    require_backend("cpu", "cpu", OP)
    import sys

    B = sys.modules["pydl.ops.batch_norm"]
    g = torch.Generator().manual_seed(5)
    BatchNorm2d(3, backend="cpu").eval()(torch.randn(2, 3, 2, 2))  # loads the library (first call: Python door)
    op = B._CPU_EVAL[1]
    assert op is not None

    def both(fn):
        monkeypatch.setattr(B, "_USE_CPP_EVAL", False)
        want = fn()
        monkeypatch.setattr(B, "_USE_CPP_EVAL", True)
        return fn(), want

    for xdt, pdt, act in ((torch.float32, torch.float32, "relu"), (torch.float64, torch.float64, "none"),
                          (torch.float16, torch.float16, "none"), (torch.bfloat16, torch.float32, "relu")):
        m = BatchNorm2d(3, act=act, backend="cpu", dtype=pdt).eval()
        with torch.no_grad():
            m.running_mean.uniform_(-1, 1, generator=g)
            m.running_var.uniform_(0.5, 2, generator=g)
            m.weight.uniform_(0.5, 2, generator=g)
            m.bias.uniform_(-1, 1, generator=g)
        x = torch.randn(2, 3, 3, 2, generator=g).to(xdt).contiguous(memory_format=torch.channels_last)
        dy = torch.randn(x.shape, generator=g).to(xdt)
        for need in ((True, True, True), (True, False, False), (False, True, False), (False, False, True),
                     (False, False, False)):
            xg = x.clone().requires_grad_(need[0])
            m.weight.requires_grad_(need[1])
            m.bias.requires_grad_(need[2])
            ins = [t for t, n in zip((xg, m.weight, m.bias), need) if n]

            def run(m=m, xg=xg, ins=ins, dy=dy):
                y = m(xg)
                return (y, y.grad_fn is not None) + (torch.autograd.grad(y, ins, dy) if ins else ())

            got, want = both(run)
            assert got[1] == want[1] == any(need), (xdt, need)
            assert got[0].stride() == want[0].stride()
            for a, b in zip(got[:1] + got[2:], want[:1] + want[2:]):
                assert a.dtype == b.dtype and torch.equal(a, b), (xdt, need)

    # second derivatives (create_graph=True: the registered backward op and its double backward)
    m = BatchNorm2d(3, act="relu", backend="cpu", dtype=torch.float64).eval()
    with torch.no_grad():
        m.running_mean.uniform_(-1, 1, generator=g)
        m.running_var.uniform_(0.5, 2, generator=g)
        m.weight.uniform_(0.5, 2, generator=g)
    x = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)

    def second():
        gx, gw = torch.autograd.grad(m(x).pow(2).sum(), (x, m.weight), create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum() + gw.sum(), (x, m.weight, m.bias))

    for a, b in zip(*both(second)):
        assert torch.equal(a, b)
    rm, rv = m.running_mean, m.running_var
    f = lambda x, w, b: op(x, w, b, rm, rv, 1e-5, "relu", 0.0, 0.0, math.inf, "cpu")  # noqa: E731
    args = (x, m.weight, m.bias)
    assert torch.autograd.gradcheck(f, args) and torch.autograd.gradgradcheck(f, args)

    # Op.override("cpu", ...) replaces the kernels: the C++ op (which calls its own) is not taken then
    assert type(m(x).grad_fn).__name__ == "CppFunction"
    with B.OP.override("cpu", B.Kernels(*B.kernels("cpu", "cpu"))):
        assert type(m(x).grad_fn).__name__ == "_EagerBatchNormBackward"

    xf = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="weight must have shape"):
        op(xf, torch.ones(4), None, torch.zeros(3), torch.ones(3), 1e-5, "none", 0.0, 0.0, math.inf, "cpu")
    with pytest.raises(ValueError, match="running_var must have shape"):
        op(xf, None, None, torch.zeros(3), torch.ones(2), 1e-5, "none", 0.0, 0.0, math.inf, "cpu")
    with pytest.raises(ValueError, match="act must be one of"):
        op(xf, None, None, torch.zeros(3), torch.ones(3), 1e-5, "gelu", 0.0, 0.0, math.inf, "cpu")
    with pytest.raises(ValueError, match="eps must be"):
        op(xf.requires_grad_(), None, None, torch.zeros(3), torch.ones(3), -1.0, "none", 0.0, 0.0, math.inf, "cpu")
