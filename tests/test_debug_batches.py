"""pydl/debug/batches.py: the one way the debuggers (loss landscape, dead units, top patches) walk ``data``."""
import torch

from pydl.debug.batches import batch_inputs, is_one_batch, take_batches


def test_one_batch_is_taken_whole():
    x, y = torch.randn(4, 3), torch.arange(4)
    assert is_one_batch(x) and is_one_batch((x, y)) and is_one_batch((x, y, y))
    assert [b is x for b in take_batches(x, 3)] == [True]
    (b,) = take_batches((x, y), None)
    assert b[0] is x and b[1] is y
    assert batch_inputs(x) is x and batch_inputs((x, y)) is x and batch_inputs([x, y]) is x


def test_a_loader_is_read_for_the_first_n_batches_only():
    read = []

    def loader():
        for i in range(5):
            read.append(i)
            yield torch.full((2, 1), float(i)), torch.zeros(2)

    assert not is_one_batch([torch.randn(2)])  # a list is a sequence of batches, even of bare tensors
    got = [float(batch_inputs(b)[0, 0]) for b in take_batches(loader(), 2)]
    assert got == [0.0, 1.0] and read == [0, 1], "a batch beyond the first n was read from the loader"
    assert len(list(take_batches(loader(), None))) == 5
