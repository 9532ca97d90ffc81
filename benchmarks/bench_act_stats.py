"""act_stats vs what a training debugger does today.

Baselines (same process, same tensor, same threads):
* "vs eager fastai": the sequence fastai's ActivationStats runs per layer per batch --
  ``x.mean().item(); x.std().item(); (x <= eps).sum().item(); x.histc(40, 0, 10)`` -- four reads and three
  host syncs;
* "vs one x.sum()": a single reduction read of the tensor: the floor for any one-pass statistic; on post-ReLU
  data (the default) and on signed data (N(0, 1): half the values fall below lo = 0).
Per channel: torch's per-channel mean/std/min/max plus one histc per channel (what you would write).

Targets, 2-thread CPU, 64x64x32x32 fp32: >= 10x the eager sequence; within 4x of one x.sum() on post-ReLU
and on signed data.
"""
import torch

import pydl

from .common import Case, main_for


def _eager_fastai(x):
    x.mean().item()
    x.std().item()
    (x <= 0.05).sum().item()
    return x.histc(40, 0, 10)


def _per_channel_torch(x):
    dims = [0] + list(range(2, x.dim()))
    m, s = x.mean(dims), x.std(dims)
    mn, mx = x.amin(dims), x.amax(dims)
    h = torch.stack([x[:, c].histc(40, 0, 10) for c in range(x.shape[1])])
    return m, s, mn, mx, h


def cases(quick: bool, device: str):
    shapes = [(16, 32, 32, 32)] if quick else [(64, 64, 32, 32), (256, 512), (32, 256, 14, 14)]
    out = []
    backends = ("cpu",) if device == "cpu" else ("cuda", "triton")
    for shape in shapes:
        for dtype in ([torch.float32] if device == "cpu" else [torch.float32, torch.bfloat16]):
            def setup(shape=shape, dtype=dtype, layout="contiguous", signed=False):
                x = torch.randn(shape, device=device)
                return {"x": (x if signed else torch.relu(x)).to(dtype)}

            nbytes = torch.Size(shape).numel() * (4 if dtype == torch.float32 else 2)
            sname = "x".join(map(str, shape))
            dname = str(dtype).replace("torch.", "")

            def s_eager(shape=shape, dtype=dtype):
                x = setup(shape, dtype)["x"]
                return {"torch": lambda: _eager_fastai(x),
                        "pydl": lambda b: (lambda: (pydl.act_stats(x, backend=b).counts.sum().item()))}

            def s_sum(shape=shape, dtype=dtype):
                x = setup(shape, dtype)["x"]
                return {"torch": lambda: x.sum().item(),
                        "pydl": lambda b: (lambda: pydl.act_stats(x, backend=b).counts.sum().item())}

            def s_sum_signed(shape=shape, dtype=dtype):  # half the values below lo = 0: the "below" slot
                x = setup(shape, dtype, signed=True)["x"]
                return {"torch": lambda: x.sum().item(),
                        "pydl": lambda b: (lambda: pydl.act_stats(x, backend=b).counts.sum().item())}

            out.append(Case("act_stats", "vs eager fastai", sname, dname, s_eager, bytes=nbytes, backends=backends))
            out.append(Case("act_stats", "vs one x.sum()", sname, dname, s_sum, bytes=nbytes, backends=backends))
            out.append(Case("act_stats", "vs one x.sum(), signed data", sname, dname, s_sum_signed, bytes=nbytes,
                            backends=backends))
            if len(shape) == 4:
                def s_pc(shape=shape, dtype=dtype):
                    x = setup(shape, dtype)["x"]
                    return {"torch": lambda: [t.sum().item() for t in _per_channel_torch(x)][-1],
                            "pydl": lambda b: (lambda: pydl.act_stats(x, per_channel=True, backend=b)
                                               .counts.sum().item())}

                def s_pc_cl(shape=shape, dtype=dtype):
                    x = setup(shape, dtype)["x"].contiguous(memory_format=torch.channels_last)
                    return {"torch": lambda: [t.sum().item() for t in _per_channel_torch(x)][-1],
                            "pydl": lambda b: (lambda: pydl.act_stats(x, per_channel=True, backend=b)
                                               .counts.sum().item())}

                out.append(Case("act_stats", "per-channel vs torch", sname, dname, s_pc, bytes=nbytes,
                                backends=backends))
                out.append(Case("act_stats", "per-channel channels_last vs torch", sname, dname, s_pc_cl,
                                bytes=nbytes, backends=backends))
    return out


if __name__ == "__main__":
    main_for(cases)
