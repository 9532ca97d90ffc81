"""pydl's training debuggers inside the training loops people already use.

=====================================  =============================================================
``pydl.integrations.fastai``           ``ActivationStats``: a drop-in for fastai's callback of that name
                                       (``pip install pydl[fastai]``)
``pydl.integrations.lightning``        ``ActivationStatsCallback`` for ``lightning.pytorch.Trainer``
                                       (``pip install pydl[lightning]``)
=====================================  =============================================================

Importing this package imports nothing: fastai and Lightning are optional extras, and a user of one should
never pay for (or need) the other. Each submodule imports its framework when it is imported itself and
raises an ImportError naming the extra to install when the framework is missing.
"""

__all__ = ["fastai", "lightning"]


def require(module: str, extra: str, what: str):
    """Import ``module`` or raise an ImportError that says which pydl extra brings it. A module that is
    installed but fails to import (a broken install) keeps its own error as the cause."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{what} needs the `{module}` package: pip install 'pydl[{extra}]'") from e
