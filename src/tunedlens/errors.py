"""Exceptions raised by tunedlens.

Every error tells the user what was wrong and how to fix it, in one message. Whatever a user or a
caller can get wrong raises a :class:`TunedLensError`; the command line prints those as one
``error:`` line, and treats any other exception as a bug (traceback and a request to report it).

Bad arguments that Python code would catch as a built-in exception raise one of three classes that
are both: :class:`InputError` (a ``ValueError``), :class:`OutOfRange` (an ``IndexError``) and
:class:`InputTypeError` (a ``TypeError``). The specific classes below, and those beside the code
that raises them (``DataError``, ``OutputError``, ``MergeError``, ...), say more where they fit.
"""

from __future__ import annotations


class TunedLensError(Exception):
    """Base class of every error tunedlens raises on purpose."""


class InputError(TunedLensError, ValueError):
    """An argument (option, setting, tensor shape) has a value that is not accepted."""


class OutOfRange(TunedLensError, IndexError):
    """A row, layer or position lies outside those the model, lens or prompt has."""


class InputTypeError(TunedLensError, TypeError):
    """An argument is of the wrong kind (a string where a lens is expected, floats for token ids)."""


class ArchitectureNotFound(TunedLensError):
    """The model's decoder blocks, final norm or unembedding could not be located."""


class LensFileError(TunedLensError):
    """A lens file is missing, truncated, corrupt, or not a lens."""


class LensMismatch(TunedLensError):
    """A lens does not fit the model it is applied to (width, depth or vocabulary)."""


class ModelLoadError(TunedLensError):
    """A model spec (hub id, directory, ``.gguf`` file or ``demo``) could not be loaded."""


class MissingExtra(TunedLensError, ImportError):
    """An optional dependency is not installed; the message holds the pip command."""


def require(module: str, extra: str, *, pip_name: str | None = None):
    """Import an optional dependency or raise :class:`MissingExtra` with the install line.

    Args:
        module: Importable module name, e.g. ``"gguf"``.
        extra: The tunedlens extra that provides it, e.g. ``"gguf"``.
        pip_name: The distribution name when it differs from ``module``.

    Returns:
        The imported module.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtra(
            f"This feature needs the optional package '{pip_name or module}', which is not "
            f"installed.\n  Install it with: pip install 'tunedlens[{extra}]'"
        ) from error
