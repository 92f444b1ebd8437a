"""What J-lens parts may be merged, and the provenance of the merged lens.

A merge is a mean weighted by prompts, so it is right only for parts that computed the same
thing (same model, rows, estimator settings and model dtype) on disjoint prompts of the same
packed data. A part fitted by ``fit-jlens`` records all of that in its metadata: the settings,
``data_content_hash`` (the prompts packed for the whole fit, before ``--part`` slices them),
``prompt_range`` (its slice of those prompts) and ``prompts_hash`` (the token ids it averaged).

Files that do not record some of these (the published artifacts, files written before they were
recorded) are checked on what they do record, and every pair of parts is compared by content as
well: the fit is deterministic, so the same prompts give the same matrices, and a part given
twice is caught whatever its files say. Only parts of different ``--part`` splits that record no
``prompt_range`` are refused for what is missing, since whether they overlap cannot be told.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tunedlens.errors import InputError, LensFileError, LensMismatch
from tunedlens.lenses.io.jlens_files import StoredJLens, read_stored_jlens
from tunedlens.lenses.io.load import LensLocation, resolve_location
from tunedlens.lenses.jacobian import JacobianLens, bind_jlens
from tunedlens.lenses.unembed import Unembed

FIT_SETTINGS = {
    "estimator": "the estimator",
    "skip_first": "--skip-first",
    "dtype": "--dtype",
    "seq_len": "--seq-len",
    "seed": "--seed",
    "packed_prompts": "--prompts",
    "data_content_hash": "--data, or the text it names",
}
"""Metadata every part must share (where recorded) -> what sets it, for the refusal."""
PART_KEYS = ("part", "prompt_range", "prompts_hash")
"""Metadata that tells a part's prompts apart from the others'."""
MERGE_KEYS = ("parts", "n_prompts", "prompt_ranges")
"""Metadata a merge writes about all its parts (not copied down to each)."""


class MergeError(InputError):
    """J-lenses that must not be merged into one (the same prompts twice, other settings)."""


@dataclass(frozen=True)
class MergePart:
    """One J-lens to merge, as stored or loaded.

    Attributes:
        label: How the user named it (its location), for messages.
        matrices: Our row -> ``(d_model, d_model)`` matrix.
        n_prompts: Prompts averaged into it (its weight).
        metadata: Its provenance; a merged lens lists its own parts under ``"parts"``.
        unembed_hash: The fingerprint of the model's unembedding, or None when not recorded.
    """

    label: str
    matrices: dict[int, torch.Tensor]
    n_prompts: int
    metadata: dict
    unembed_hash: str | None

    @classmethod
    def of_lens(cls, lens: JacobianLens, index: int) -> MergePart:
        """A loaded lens, named by its source (else ``lens {index}``)."""
        label = lens.source or f"lens {index}"
        return cls(label, lens.matrices, lens.n_prompts, lens.metadata, lens.unembed.hash())

    @classmethod
    def of_stored(cls, stored: StoredJLens, label: str) -> MergePart:
        """A lens as read from its files (no model), named ``label``."""
        fingerprint = stored.model_info.get("unembed_hash")
        return cls(label, stored.matrices, stored.n_prompts, stored.metadata, fingerprint)

    def leaves(self) -> list[dict]:
        """The fitted slices this part holds: itself, or the parts of an earlier merge."""
        if isinstance(self.metadata.get("parts"), list):
            return [leaf for leaf in self.metadata["parts"] if isinstance(leaf, dict)]
        own = {key: self.metadata[key] for key in PART_KEYS if key in self.metadata}
        return [{"source": self.label, "n_prompts": self.n_prompts, **own}]


def check_mergeable(parts: Sequence[MergePart]) -> None:
    """Raise :class:`MergeError` unless ``parts`` are disjoint slices of one fit.

    Refused: a part without prompts; other rows, width or model; other fit settings
    (:data:`FIT_SETTINGS`); the same part twice (by ``prompts_hash`` or by content);
    overlapping ``prompt_range`` or repeated ``--part`` slices.
    """
    first = parts[0]
    shape = tuple(next(iter(first.matrices.values())).shape)
    for part in parts:
        if part.n_prompts <= 0:
            raise MergeError(f"{part.label} records no prompts, so it has no weight in a merge.")
        if sorted(part.matrices) != sorted(first.matrices):
            raise MergeError(
                f"{part.label} has rows {sorted(part.matrices)}, {first.label} has "
                f"{sorted(first.matrices)}; merge parts fitted on the same rows."
            )
        if tuple(next(iter(part.matrices.values())).shape) != shape:
            raise MergeError(f"{part.label} and {first.label} are J-lenses of different widths.")
    recorded = [part for part in parts if part.unembed_hash is not None]
    for part in recorded[1:]:
        if part.unembed_hash != recorded[0].unembed_hash:
            raise MergeError(
                f"{part.label} is for another model than {recorded[0].label} (their "
                "unembeddings differ)."
            )
    _check_settings(parts)
    _check_duplicates(parts)
    _check_slices(parts)


def _check_settings(parts: Sequence[MergePart]) -> None:
    differing = {}
    for key, option in FIT_SETTINGS.items():
        recorded = [(part, part.metadata[key]) for part in parts if key in part.metadata]
        if len({json.dumps(value, sort_keys=True) for _, value in recorded}) > 1:
            values = " vs ".join(
                f"{key}={_short(value)} ({part.label})" for part, value in recorded
            )
            differing[key] = f"{values} [set by {option}]"
    if {"seq_len", "seed", "packed_prompts"} & set(differing):
        differing.pop("data_content_hash", None)  # other prompts follow from the setting named
    if differing:
        raise MergeError(
            f"cannot merge parts fitted with different settings: {'; '.join(differing.values())}. "
            "Merge the parts of one fit: the same fit-jlens command with only --part changed."
        )


def _labelled_leaves(parts: Sequence[MergePart]) -> list[tuple[str, dict]]:
    """Every fitted slice with a name for messages (``a (in merged)`` for an earlier merge's)."""
    labelled = []
    for part in parts:
        for leaf in part.leaves():
            source = leaf.get("source")
            inner = source != part.label and isinstance(source, str)
            labelled.append((f"{source} (in {part.label})" if inner else part.label, leaf))
    return labelled


def _check_duplicates(parts: Sequence[MergePart]) -> None:
    seen: dict[str, str] = {}
    for label, leaf in _labelled_leaves(parts):
        digest = leaf.get("prompts_hash")
        if not isinstance(digest, str):
            continue
        if digest in seen:
            what = (
                f"{label} is given twice"
                if seen[digest] == label
                else (f"{label} and {seen[digest]} were fitted on the same prompts (prompts_hash)")
            )
            raise MergeError(f"{what}; each part may be merged once.")
        seen[digest] = label
    for index, part in enumerate(parts):
        for earlier in parts[:index]:
            if part.n_prompts == earlier.n_prompts and all(
                _same(part.matrices[row], earlier.matrices[row]) for row in part.matrices
            ):
                raise MergeError(
                    f"{part.label} holds the same matrices as {earlier.label}: the same part "
                    "given twice; each part may be merged once."
                )


def _same(first: torch.Tensor, second: torch.Tensor) -> bool:
    """Equal in the coarser dtype of the two (a part saved as an fp16 artifact is the same)."""
    coarse = min(first.dtype, second.dtype, key=lambda dtype: dtype.itemsize)
    return torch.equal(first.to(coarse), second.to(coarse))


def _check_slices(parts: Sequence[MergePart]) -> None:
    leaves = _labelled_leaves(parts)
    ranged = [(label, leaf) for label, leaf in leaves if _range(leaf) is not None]
    for index, (label, leaf) in enumerate(ranged):
        start, stop = _range(leaf)
        for other_label, other in ranged[:index]:
            other_start, other_stop = _range(other)
            if start < other_stop and other_start < stop:
                shared = _prompts_text(max(start, other_start), min(stop, other_stop))
                raise MergeError(
                    f"{label} ({_slice_name(leaf)}) and {other_label} ({_slice_name(other)}) "
                    f"share {shared} of the fit; merge disjoint --part slices (0/N, 1/N, ... of "
                    "one N)."
                )
    named = [
        (label, leaf["part"])
        for label, leaf in leaves
        if _range(leaf) is None and isinstance(leaf.get("part"), str)
    ]
    for index, (label, part) in enumerate(named):
        for other_label, other in named[:index]:
            if part == other:
                raise MergeError(
                    f"{label} and {other_label} are both --part {part}; each slice may be merged "
                    "once."
                )
            if part.partition("/")[2] != other.partition("/")[2]:
                raise MergeError(
                    f"{label} (--part {part}) and {other_label} (--part {other}) are slices of "
                    "different splits, and their files record no prompt_range to tell whether "
                    "they overlap; merge the slices of one split (0/N, 1/N, ...)."
                )


def _prompts_text(start: int, stop: int) -> str:
    return f"prompt {start}" if stop - start == 1 else f"prompts {start}..{stop - 1}"


def _range(leaf: dict) -> tuple[int, int] | None:
    value = leaf.get("prompt_range")
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in value)
    ):
        return value[0], value[1]
    return None


def _slice_name(leaf: dict) -> str:
    where = _prompts_text(*_range(leaf))
    return f"--part {leaf['part']}, {where}" if isinstance(leaf.get("part"), str) else where


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 24 else text[:21] + "..."


def merged_metadata(parts: Sequence[MergePart]) -> dict:
    """The provenance of the merge of ``parts`` (checked by :func:`check_mergeable`).

    What every part shares (model, data, fit settings) is kept as is; ``parts`` lists each
    fitted slice (its source, prompts, ``--part``, ``prompt_range``, ``prompts_hash`` and what
    else differs between the parts), ``n_prompts`` and ``skipped_prompts`` are the totals, and
    ``prompt_ranges`` is the union of the slices, where every part records one.
    """
    first = parts[0].metadata
    common = {
        key: value
        for key, value in first.items()
        if key not in ("skipped_prompts", *MERGE_KEYS, *PART_KEYS)
        and all(key in part.metadata and part.metadata[key] == value for part in parts)
    }
    leaves = []
    for part in parts:
        own = {
            key: value
            for key, value in part.metadata.items()
            if key not in common and key not in (*MERGE_KEYS, *PART_KEYS)
        }
        leaves += [
            {**leaf, **{k: v for k, v in own.items() if k not in leaf}} for leaf in part.leaves()
        ]
    skipped = sum(_count(part.metadata.get("skipped_prompts")) for part in parts)
    metadata = {
        **common,
        "n_prompts": sum(part.n_prompts for part in parts),
        "skipped_prompts": skipped,
    }
    ranges = [_range(leaf) for leaf in leaves]
    if all(ranges):
        metadata["prompt_ranges"] = _union(ranges)
    metadata["parts"] = leaves
    return metadata


def _count(value) -> int:
    """A count from metadata; 0 when it records none (or something that is not a count)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _union(ranges: list[tuple[int, int]]) -> list[list[int]]:
    """Half-open ranges ``[start, stop)`` joined where they touch, in order."""
    joined: list[list[int]] = []
    for start, stop in sorted(ranges):
        if joined and start <= joined[-1][1]:
            joined[-1][1] = max(joined[-1][1], stop)
        else:
            joined.append([start, stop])
    return joined


def read_parts(parts: Sequence[str | LensLocation]) -> list[StoredJLens]:
    """The parts' files, read without the model and checked to be parts of one fit.

    A part already resolved (:func:`~tunedlens.lenses.io.load.resolve_location`) is not
    resolved again.
    """
    resolved = [resolve_location(part) for part in parts]
    for location in resolved:
        if location.is_logit:
            raise LensFileError("'logit' is the logit lens, not a J-lens; merge J-lens parts only.")
    stored = [read_stored_jlens(location.path) for location in resolved]
    check_mergeable(
        [
            MergePart.of_stored(one, location.text)
            for location, one in zip(resolved, stored, strict=True)
        ]
    )
    return stored


def part_for_model(
    part: str, stored: StoredJLens, model: nn.Module, model_spec: str
) -> JacobianLens:
    """A part for MODEL; one fitted for another model is refused with advice for ``lens merge``."""
    recorded = stored.model_info.get("unembed_hash")
    if recorded and recorded != Unembed(model).hash():
        fitted_for = stored.model_info.get("base_model_name_or_path") or "another model"
        raise LensMismatch(
            f"{part} was fitted for {fitted_for}, whose unembedding differs from {model_spec!r}'s "
            "(fingerprint mismatch); pass as MODEL the model the parts were fitted for."
        )
    lens = bind_jlens(stored, model)
    lens.source = part
    return lens
