"""Drop-in modules: same constructor, parameters, buffers and state_dict keys as their torch.nn twins.

``pydl.convert(model)`` swaps them in (and ``convert(model, to="torch")`` back). Every module has a
``backend`` attribute (None = the current default) choosing which kernels its forward runs. Each module file
registers its classes with convert() when it is imported, which these imports do.
"""
from .activation import GeneralRelu
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .conv import Conv2d, ConvBnAct, fold_conv_bn, fuse_conv_bn_act, fuse_model
from .convert import convert, register
from .rnn import GRU, LSTM, GRUCell, LSTMCell
from .syncbatchnorm import SyncBatchNorm

__all__ = [
    "GeneralRelu", "convert", "register",
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
    "Conv2d", "ConvBnAct", "fold_conv_bn", "fuse_conv_bn_act", "fuse_model",
    "GRU", "LSTM", "GRUCell", "LSTMCell",
    "SyncBatchNorm",
]
