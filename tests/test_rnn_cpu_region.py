"""The C++ CPU backend's one-parallel-region recurrence (csrc/cpu/rnn.cpp, "a whole sequence in one parallel
region"): fp32/fp64 sequences split the hidden units over the threads, pack each thread's gate columns of
W_hh into register-block panels and run a hand-written GEMM micro-kernel per step.

What can go wrong there and not in the per-step path: a split of H that leaves a thread fewer units than a
panel is wide (padding columns), more threads than hidden units, a batch that is not a multiple of the
micro-kernel's row block, the first and last step of each direction (h0/c0 and the seeds grad_hn/grad_cn), and
the scratch buffers of inference. Each is checked against torch.nn.LSTM/GRU in float64 (1e-10, as in
tests/test_rnn.py) at several thread counts -- more threads than this machine has cores is fine: the region
just runs a larger team.
"""
import pytest
import torch
from helpers import require_backend
from test_rnn import OP, assert_close, make_torch, seq_case

import pydl


@pytest.fixture
def threads():
    """Set torch's intra-op thread count for one test, restored afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


# (T, B, I, H): H odd / not divisible by the thread count / below it, B not a multiple of the 6-row block,
# T = 1, B = 1, and an H whose per-thread gate columns span several panels with a partial last one.
SHAPES = [(1, 1, 1, 1), (1, 3, 2, 5), (4, 1, 3, 2), (3, 7, 4, 7), (2, 13, 5, 3), (3, 6, 3, 37), (2, 2, 70, 70)]


@pytest.mark.parametrize("nthreads", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_region_parity_fp64_thread_counts(threads, kind, nthreads):
    require_backend("cpu", "cpu", OP)
    threads(nthreads)
    for i, (T, B, I, H) in enumerate(SHAPES):
        for L, bidir, bias in ((1, False, True), (2, True, False)):
            got, want = seq_case(kind, "cpu", T=T, B=B, I=I, H=H, L=L, bidir=bidir, bias=bias, seed=i)
            assert_close(got, want, 1e-10, f"{kind} threads={nthreads} T{T} B{B} I{I} H{H} L{L} {bidir} {bias}")


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_region_fp32_larger(threads, kind):
    """fp32 at a size where every thread has several full panels and row blocks, plus a ragged split."""
    require_backend("cpu", "cpu", OP)
    for nthreads, H in ((2, 96), (3, 61)):
        threads(nthreads)
        got, want = seq_case(kind, "cpu", T=5, B=17, I=11, H=H, L=1, bidir=True, bias=True, dtype=torch.float32)
        assert_close(got, want, 2e-5, f"{kind} threads={nthreads} H={H}")


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_region_inference_matches_training_forward(threads, kind, batch_first):
    """Under no_grad the region keeps gates and c in per-thread scratch (c ping-pongs between two rows): the
    outputs and final states must be bit-identical to a forward that saves the reserve."""
    require_backend("cpu", "cpu", OP)
    threads(3)
    torch.manual_seed(5)
    T, B, I, H, L = 5, 7, 4, 11, 2
    m = make_torch(kind, I, H, L, True, True)
    ws = list(m._flat_weights)
    x = torch.randn(B, T, I, dtype=torch.float64) if batch_first else torch.randn(T, B, I, dtype=torch.float64)
    fn = pydl.lstm if kind == "lstm" else pydl.gru
    with torch.no_grad():
        lean = fn(x, ws, num_layers=L, bidirectional=True, batch_first=batch_first, backend="cpu")
    full = fn(x, [w.detach().requires_grad_() for w in ws], num_layers=L, bidirectional=True,
              batch_first=batch_first, backend="cpu")
    def flat(r):
        return [r[0], *(r[1] if kind == "lstm" else (r[1],))]

    for a, b in zip(flat(lean), flat(full)):
        assert torch.equal(a, b.detach())
    m.batch_first = batch_first
    with torch.no_grad():
        want = m(x)
    for a, b in zip(flat(lean), flat(want)):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_region_reads_strided_weights(threads, kind):
    """The region packs W_hh and reads b_hh through raw pointers: weights in another memory layout (a
    transposed copy, every other element of a wider tensor) must give the same numbers as dense ones."""
    require_backend("cpu", "cpu", OP)
    threads(2)
    torch.manual_seed(11)
    T, B, I, H = 3, 4, 3, 5
    m = make_torch(kind, I, H, 1, True, True)
    dense = [w.detach() for w in m._flat_weights]
    strided = [w.t().contiguous().t() if w.dim() == 2 else torch.stack([w, w], 1)[:, 0] for w in dense]
    assert not any(w.is_contiguous() for w in strided)
    x = torch.randn(T, B, I, dtype=torch.float64)
    fn = pydl.lstm if kind == "lstm" else pydl.gru
    want = fn(x, dense, bidirectional=True, backend="cpu")[0]
    got = fn(x, strided, bidirectional=True, backend="cpu")[0]
    assert torch.equal(got, want)
    with torch.no_grad():
        assert torch.allclose(got, m(x)[0], atol=1e-12)


# The forward region makes the input projection x_t W_ih^T inside its time loop while a thread's packed W_ih
# and W_hh gate columns together fit in 1 MB, else as one GEMM over all steps before the loop (csrc/cpu/rnn.cpp,
# kInRegionBytes); the biases go into the step GEMM's prologue either way. A thread packs its G*n gate columns
# (padded to the panel width: at most 32 in fp64), I + H rows deep, 8 bytes each in fp64.
def _packed_bytes(kind, I, H, nthreads, pad):
    G = 4 if kind == "lstm" else 3
    n = -(-H // nthreads)
    return (I + H) * (-(-G * n // pad) * pad) * 8


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_region_input_projection_in_region_and_up_front(threads, kind, bias):
    """Both sides of the 1 MB limit, fp64 against torch: layer 0 with a wide input goes up front, the second
    layer (input 2H) stays in the region -- one model runs both paths, each direction, first and last step."""
    require_backend("cpu", "cpu", OP)
    H, I_wide = 33, 2700
    for nthreads in (1, 2):
        threads(nthreads)
        # on these sides of the limit whatever the panel width (unpadded vs the widest padding)
        assert _packed_bytes(kind, I_wide, H, nthreads, 1) > 1 << 20 >= _packed_bytes(kind, 2 * H, H, 1, 32)
        got, want = seq_case(kind, "cpu", T=3, B=7, I=I_wide, H=H, L=2, bidir=True, bias=bias, seed=nthreads)
        assert_close(got, want, 1e-10, f"{kind} threads={nthreads} bias={bias}")


@pytest.mark.parametrize("I", [5, 2100])  # fp32: the input projection in the region / up front (> 1 MB)
def test_region_lstm_fp32_both_projections(threads, I):
    """fp32 (16-lane vectors: the fp64 tests above cover 8) with units per thread not a multiple of a vector
    (a partial last panel), an odd batch (a partial row block), both projection paths (up front, the step copies
    its columns of the projection plus the bias), training (gates saved, then the backward) and inference (no
    reserve) against torch."""
    require_backend("cpu", "cpu", OP)
    for nthreads, H in ((1, 21), (2, 37)):
        threads(nthreads)
        got, want = seq_case("lstm", "cpu", T=3, B=5, I=I, H=H, L=1, bidir=True, bias=True, dtype=torch.float32)
        assert_close(got, want, 2e-5, f"threads={nthreads} I={I} H={H}")
        torch.manual_seed(nthreads)
        m = make_torch("lstm", I, H, 1, True, True).float()
        x = torch.randn(3, 5, I)
        with torch.no_grad():
            lean = pydl.lstm(x, list(m._flat_weights), bidirectional=True, backend="cpu")
            ref = m(x)
        for a, b in zip((lean[0], *lean[1]), (ref[0], *ref[1])):
            assert torch.allclose(a, b, atol=2e-5, rtol=0)


def _out_and_grads(fn, x, ws, backend, go):
    ws = [w.detach().requires_grad_() for w in ws]
    xr = x.detach().requires_grad_()
    out = fn(xr, ws, bidirectional=True, backend=backend)[0]
    return [out.detach(), *torch.autograd.grad(out, [xr, *ws], go)]


# The region keeps each call's packed weights (csrc/cpu/rnn.cpp, "the packed-weight cache", keyed on the
# weights' addresses and shapes) and reuses them once each thread has found its weights bitwise unchanged.
@pytest.mark.parametrize("I", [3, 2700])  # the input projection in the region (W_ih packed too) / up front
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_region_packed_weight_cache(threads, kind, I):
    """Repeated calls (cache hits) give bit-identical results; weights changed in place -- through an in-place
    op, through `.data` (which bumps no version counter), in one element of the last thread's columns -- or
    swapped for new tensors give the new weights' results, forward and backward."""
    require_backend("cpu", "cpu", OP)
    threads(2)
    torch.manual_seed(3)
    T, B, H = 3, 5, 7
    fn = pydl.lstm if kind == "lstm" else pydl.gru
    ws = [w.detach().clone() for w in make_torch(kind, I, H, 1, True, True)._flat_weights]
    x = torch.randn(T, B, I, dtype=torch.float64)
    go = torch.randn(T, B, 2 * H, dtype=torch.float64)

    def check(ws, what):
        got = _out_and_grads(fn, x, ws, "cpu", go)
        want = _out_and_grads(fn, x, ws, "reference", go)
        for i, (a, b) in enumerate(zip(got, want)):
            assert (a - b).abs().max().item() <= 2.5e-10, f"{what}: output/grad {i}"
        return got

    first = check(ws, "first call")
    for a, b in zip(first, check(ws, "hit")):
        assert torch.equal(a, b)
    with torch.no_grad():
        ws[1].mul_(0.5)  # W_hh, forward direction: in place
    check(ws, "in-place W_hh")
    ws[0].data.add_(0.25)  # W_ih through .data
    ws[5].data[-1, -1] += 1.0  # one element of the reverse direction's W_hh, the last thread's columns
    check(ws, ".data updates")
    check([w.clone() + 0.125 for w in ws], "swapped weights")
