"""Drop-in modules: same constructor, parameters, buffers and state_dict keys as their torch.nn twins.

``pydl.convert(model)`` swaps them in (and ``convert(model, to="torch")`` back). Every module has a
``backend`` attribute (None = the current default) choosing which kernels its forward runs.
"""
from .activation import GeneralRelu
from .convert import convert, register

__all__ = ["GeneralRelu", "convert", "register"]

# Each op's modules register themselves with convert() on import. Import errors are real errors.
from .batchnorm import *  # noqa: E402,F401,F403
from .conv import *  # noqa: E402,F401,F403
from .rnn import *  # noqa: E402,F401,F403
from .syncbatchnorm import SyncBatchNorm  # noqa: E402
from . import batchnorm as _bn, conv as _conv, rnn as _rnn  # noqa: E402

__all__ += list(getattr(_bn, "__all__", [])) + list(getattr(_conv, "__all__", [])) + list(getattr(_rnn, "__all__", []))
__all__ += ["SyncBatchNorm"]
