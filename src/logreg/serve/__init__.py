"""Optional extra: the trained model outside the template. ``logreg export`` writes it as one ONNX file,
``logreg serve`` answers ``POST /predict`` over HTTP with LitServe; both start from :func:`logreg.load_predictor`.

Installed with ``pip install -e ".[serve]"``; without it each command says so in one line.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from logreg.machinery.errors import ConfigError

INSTALL = 'pip install -e ".[serve]"'


def optional(name: str, command: str) -> ModuleType:
    """The module ``name`` of the serve extra, or a ConfigError naming the extra when it is not installed.

    >>> optional("json", "export").__name__
    'json'
    >>> optional("no_such_module", "export")
    Traceback (most recent call last):
    ...
    logreg.machinery.errors.ConfigError: logreg export needs no_such_module, of the optional serve extra: pip install -e ".[serve]" (or pip install "logreg[serve]").
    """
    try:
        return importlib.import_module(name)
    except ImportError as err:
        missing = err.name or name
        raise ConfigError(
            f'logreg {command} needs {missing}, of the optional serve extra: {INSTALL} (or pip install "logreg[serve]").'
        ) from None
