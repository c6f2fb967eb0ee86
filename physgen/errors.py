"""One small exception hierarchy for everything physgen rejects.

Every error about a file names the file, the key (dataset, branch, tree) and,
where it helps, the closest valid keys, in the spirit of uproot's
``KeyInFileError``. Errors about in-memory data say what was expected and what
was received. Each class also derives from the builtin a caller would expect
(``ValueError``, ``LookupError``, ``OSError``) so generic handlers keep working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "PhysgenError",
    "DataFileError",
    "FileFormatError",
    "MissingKeyError",
    "GeometryError",
    "InvalidDataError",
    "CheckpointError",
    "ConfigError",
    "TrainingDivergedError",
    "UnknownNameError",
    "closest",
]


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The up-to-``n`` candidates nearest to ``name`` (difflib ratio ≥ 0.4)."""
    candidates = list(candidates)
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.4)
    if not found:
        # a case-insensitive prefix match catches 'muon_px' vs 'Muon_Px'
        found = [c for c in candidates if c.lower().startswith(name.lower()[:3])][:n]
    return found


class PhysgenError(Exception):
    """Base class of every error physgen raises on purpose."""


class DataFileError(PhysgenError, OSError):
    """A data file that cannot be read as asked.

    Attributes:
        file: the path of the offending file.
        key: the dataset / branch / tree concerned, or ``None``.
    """

    def __init__(self, message: str, *, file: str | Path | None = None, key: str | None = None):
        self.file = str(file) if file is not None else None
        self.key = key
        where = []
        if self.file is not None:
            where.append(f"file {self.file!r}")
        if key is not None:
            where.append(f"key {key!r}")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)

    def __str__(self) -> str:  # OSError's own __str__ would print errno fields
        return str(self.args[0])


class FileFormatError(DataFileError):
    """Not a readable file of any supported format (or of the format asked for)."""


class MissingKeyError(DataFileError, LookupError):
    """A dataset, branch or tree that is not in the file; lists the closest ones."""

    def __init__(
        self,
        *,
        file: str | Path,
        key: str,
        available: Iterable[str],
        what: str = "dataset",
    ):
        available = sorted(available)
        near = closest(key, available)
        hint = f"; did you mean {', '.join(repr(k) for k in near)}?" if near else ""
        shown = ", ".join(repr(k) for k in available[:12]) + (" ..." if len(available) > 12 else "")
        self.available = available
        self.nearest = near
        super().__init__(
            f"no {what} {key!r} in this file{hint} (available: {shown or 'none'})",
            file=file,
            key=key,
        )


class GeometryError(DataFileError, ValueError):
    """A calorimeter binning that is malformed or contradicts the data."""


class InvalidDataError(PhysgenError, ValueError):
    """Array contents or shapes that physgen cannot accept (NaN, negative energy, ...)."""


class CheckpointError(PhysgenError, OSError):
    """A checkpoint directory that is incomplete, unknown or from a newer format."""

    def __str__(self) -> str:
        return str(self.args[0])


class ConfigError(PhysgenError, ValueError):
    """An option that is unknown, of the wrong type or out of range; names the option and what was expected.

    Attributes:
        where: the component whose options were given (``"flow"``, ``"train"``, ``"suite"``, ...).
        key: the offending option, or ``None``.
        nearest: the closest valid option names, for an unknown key.
    """

    def __init__(self, message: str, *, where: str | None = None, key: str | None = None, nearest: Iterable[str] = ()):
        self.where, self.key, self.nearest = where, key, list(nearest)
        super().__init__(f"{where}: {message}" if where else message)

    def __str__(self) -> str:
        return str(self.args[0])

    @classmethod
    def unknown(cls, where: str, key: str, valid: Iterable[str], renamed: dict[str, str] | None = None, what: str = "option") -> ConfigError:
        """The error for an unknown ``what`` (an option, a key, a family): the nearest valid names, or the new name of a renamed one."""
        valid = sorted(valid)
        if renamed and key in renamed:
            return cls(f"{what} {key!r} is now called {renamed[key]!r}", where=where, key=key, nearest=[renamed[key]])
        near = closest(key, valid)
        hint = f"did you mean {' or '.join(repr(k) for k in near)}? " if near else ""
        return cls(f"unknown {what} {key!r}; {hint}(valid: {', '.join(valid)})", where=where, key=key, nearest=near)


class TrainingDivergedError(PhysgenError, RuntimeError):
    """The training loss became NaN/inf or exploded; nothing broken was saved."""


class ConditionRangeWarning(UserWarning):
    """Sampling at conditions outside the range the model was trained on (``strict=True`` makes it an error)."""


class UnknownNameError(PhysgenError, LookupError):
    """A name that is not in a closed registry; the message lists the valid ones."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]):
        valid = sorted(valid)
        near = closest(name, valid)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        self.valid = valid
        super().__init__(f"unknown {kind} {name!r}; valid: {', '.join(valid)}.{hint}")

    def __str__(self) -> str:
        return str(self.args[0])
