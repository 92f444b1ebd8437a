"""Lens collections: a hub dataset tree of lenses with an ``INDEX.json`` of checksums.

Layout (what ``tunedlens hub package`` writes and ``hub verify`` checks)::

    INDEX.json                      # every lens: where, what, for which model, file checksums
    README.md                       # dataset card: YAML front matter, licence, models x lenses
    lenses/<model id>/<lens name>/  # the lens files, provenance.json, eval/metrics.json, README.md

Packaging is deterministic: files are copied byte for byte, JSON is written with sorted keys,
and nothing records the time of packaging, so the same inputs give byte-identical trees.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from tunedlens.lenses.io.formats import PACKAGERS, detect_format
from tunedlens.lenses.io.index import (
    INDEX_NAME,
    INDEX_SCHEMA,
    LENSES_DIR,
    CollectionError,
    check_lens_files,
    read_index,
    sha256_file,
)
from tunedlens.outputs import OutputKind, atomic_write, check_out_place, publish_dir, staging_dir

__all__ = ["CollectionError", "package_lenses", "verify_collection"]

CARD_NAME = "README.md"
EVAL_FILE = "eval/metrics.json"


def _dumps(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"


def lens_record(path: Path) -> tuple[dict, list[Path]]:
    """What the index says of the lens at ``path``, and the files that make it up.

    Every lens format is recognised from its files (:data:`~tunedlens.lenses.io.formats.PACKAGERS`);
    a lens that records no model id is refused by :func:`package_lenses`.
    """
    return PACKAGERS[detect_format(path)](path)


def _headline(metrics: dict, name: str, where: Path | str = "the evaluation") -> dict:
    """Mean KL (bits) and the gates (A–E) of lens ``name`` from an evaluation report."""
    lenses = {key: value for key, value in metrics.get("lenses", {}).items() if key != "logit"}
    key = name if name in lenses else (next(iter(lenses)) if len(lenses) == 1 else None)
    if key is None and not lenses:
        raise CollectionError(
            f"{where} reports only the logit lens, so it says nothing of {name!r}; attach the "
            f"report of a 'tunedlens eval ... --lens' run that evaluated {name!r}."
        )
    if key is None:
        raise CollectionError(
            f"{where} reports the lenses {', '.join(sorted(lenses))}; none is called {name!r}. "
            "Attach a report of this lens (or one with a single lens)."
        )
    kl = [x for x in lenses[key].get("kl_bits", []) if x is not None]
    gates = metrics.get("gates", {}).get(key, {})
    return {
        "mean_kl_bits": sum(kl) / len(kl) if kl else None,
        "eval_tokens": metrics.get("tokens"),
        "gates": {gate: bool(result.get("pass")) for gate, result in sorted(gates.items())},
    }


def package_lenses(
    lens_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    evals: dict[str, str | os.PathLike] | None = None,
    update: bool = False,
    license: str = "apache-2.0",
    title: str = "Lenses",
) -> Path:
    """Build (or, with ``update``, extend) a lens collection tree at ``out``.

    Every lens is staged beside its folder before any folder is replaced, so a lens may be
    packaged again from its own place in the tree (its attached evaluation is kept unless
    ``evals`` names another).

    Args:
        lens_dirs: Lens directories or J-lens files; each is filed under its model id and its
            directory name (the lens name).
        out: The tree's root: a new or empty directory, or one this function made (``update``).
        evals: Lens name -> evaluation report directory (its ``metrics.json`` is attached).
        update: Add to (or replace lenses of the same path in) an existing tree.
        license: The dataset card's licence.
        title: The dataset card's title.

    Raises:
        CollectionError: two lenses with the same path, a lens without a model id, an ``out``
            that holds other files, an evaluation naming no packaged lens, a lens folder to
            replace that holds files the index does not list for it.
        OutputError: a lens folder to replace that is (or holds) the current folder.
    """
    out, evals = Path(out), dict(evals or {})
    index = {"schema": INDEX_SCHEMA, "lenses": {}}
    if out.exists() and not out.is_dir():
        raise CollectionError(f"--out {str(out)!r} is a file; pass the collection's directory.")
    if out.exists() and any(out.iterdir()):
        if not (out / INDEX_NAME).is_file():
            present = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
            raise CollectionError(
                f"--out {str(out)!r} already holds {', '.join(present[:4])}"
                f"{' ...' if len(present) > 4 else ''} and is not a lens collection (no "
                f"{INDEX_NAME}); choose a new or empty directory (--update adds only to a tree "
                "made by 'tunedlens hub package'; nothing was overwritten)."
            )
        if not update:
            raise CollectionError(
                f"--out {str(out)!r} already holds files; pass --update to add to a collection made "
                "by 'tunedlens hub package', or choose a new directory (nothing was overwritten)."
            )
        index = read_index(out)
    staged: dict[str, tuple[dict, list[Path], Path]] = {}
    for lens_dir in map(Path, lens_dirs):
        record, files = lens_record(lens_dir)
        name = lens_dir.stem if lens_dir.is_file() else lens_dir.name
        if not record.get("model"):
            raise CollectionError(
                f"{lens_dir} records no model id, so it cannot be filed under lenses/<model id>/; "
                "save it with the model's hub id (base_model_name_or_path)."
            )
        rel = f"{LENSES_DIR}/{record['model']}/{name}"
        if rel in staged:
            raise CollectionError(
                f"two lenses would be packaged at {rel}: {staged[rel][2]} and {lens_dir}; rename one directory."
            )
        staged[rel] = (record, files, lens_dir)
    unknown = set(evals) - {Path(rel).name for rel in staged}
    if unknown:
        raise CollectionError(
            f"--eval names {sorted(unknown)}, which are not among the packaged lenses."
        )
    reports = {}  # read now: a report that cannot be attached fails before anything is written
    for rel in staged:
        name = Path(rel).name
        if name in evals:
            reports[rel] = _read_report(Path(evals[name]), name)
    kinds = {rel: _packaged(index, rel) for rel in staged}
    for rel, (_record, _files, source) in staged.items():
        target = out / rel
        check_out_place(target, what="the lens folder to replace")
        if target.exists() and not target.is_dir():
            raise CollectionError(f"{target} is a file where the lens {rel} goes; move it away.")
        foreign = kinds[rel].foreign(target) if target.is_dir() else []
        if foreign:
            raise CollectionError(
                f"{target} holds {', '.join(foreign)}, which {INDEX_NAME} does not list for {rel}; "
                "move them away before packaging this lens again (nothing was overwritten)."
            )
        name = Path(rel).name
        inside = (
            source.resolve() == target.resolve() or target.resolve() in source.resolve().parents
        )
        if inside and name not in evals and (target / EVAL_FILE).is_file():
            # Re-packaged in place: keep its report.
            reports[rel] = _read_report(target / Path(EVAL_FILE).parent, name)
    # Every lens is copied before any folder is replaced: a source may lie in the tree itself.
    stagings: dict[str, Path] = {}
    try:
        for rel, (record, files, _source) in sorted(staged.items()):
            stagings[rel] = staging = staging_dir(out / rel)
            _stage_lens(staging, rel, record, files, reports.get(rel))
            index["lenses"][rel] = {
                key: value for key, value in sorted(record.items()) if value is not None
            }
        for rel, staging in sorted(stagings.items()):
            publish_dir(staging, out / rel, kinds[rel])
    finally:
        for staging in stagings.values():
            shutil.rmtree(staging, ignore_errors=True)
    atomic_write(out / INDEX_NAME, lambda handle: handle.write(_dumps(index).encode()))
    card = _dataset_card(index, license, title)
    atomic_write(out / CARD_NAME, lambda handle: handle.write(card.encode()))
    return out


def _packaged(index: dict, rel: str) -> OutputKind:
    """The files the index lists for lens ``rel``: what packaging it again may replace."""
    listed = [Path(name).parts for name in index["lenses"].get(rel, {}).get("files", {})]
    files = tuple(sorted({glob.escape(parts[0]) for parts in listed if len(parts) == 1}))
    folders = tuple(sorted({parts[0] for parts in listed if len(parts) > 1}))
    return OutputKind(f"the lens {rel} packaged earlier", files, folders=folders)


def _read_report(folder: Path, name: str) -> tuple[Path, dict]:
    """The ``metrics.json`` in ``folder`` and its headline numbers for lens ``name``."""
    report = folder / "metrics.json"
    try:
        metrics = json.loads(report.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CollectionError(f"cannot read the evaluation {report}: {error}") from None
    return report, _headline(metrics, name, report)


def _stage_lens(staging: Path, rel: str, record: dict, files: list[Path], report) -> None:
    """Fill ``staging`` with lens ``rel``: its files, its evaluation (if any), its card."""
    for file in files:
        shutil.copyfile(file, staging / file.name)
    if report is not None:
        path, headline = report
        record["metrics"] = headline
        (staging / "eval").mkdir()
        shutil.copyfile(path, staging / EVAL_FILE)
    (staging / CARD_NAME).write_text(_lens_card(rel, record))
    record["files"] = {
        path.relative_to(staging).as_posix(): {
            "sha256": sha256_file(path),
            "size": path.stat().st_size,
        }
        for path in sorted(staging.rglob("*"))
        if path.is_file()
    }


def _lens_card(rel: str, record: dict) -> str:
    lines = [f"# {rel.split('/')[-1]}", "", f"A {record['kind']} lens for `{record['model']}`.", ""]
    for key in (
        "format",
        "translator",
        "n_prompts",
        "data",
        "data_content_hash",
        "package_version",
    ):
        if record.get(key) is not None:
            lines.append(f"- {key}: `{record[key]}`")
    metrics = record.get("metrics")
    if metrics:
        lines.append(f"- mean KL to the model: {metrics['mean_kl_bits']:.3f} bits")
    location = f"hf:datasets/ORG/REPO/{rel}"
    lines += [
        "",
        f"Load it with `tunedlens predict MODEL PROMPT --lens {location}` (your repository).",
        "",
    ]
    return "\n".join(lines)


def _dataset_card(index: dict, license: str, title: str) -> str:
    models = sorted({entry["model"] for entry in index["lenses"].values()})
    lines = [
        "---",
        f"license: {license}",
        "tags:",
        "- interpretability",
        "- tuned-lens",
        "- jacobian-lens",
        "configs: []",
        "---",
        "",
        f"# {title}",
        "",
        f"{len(index['lenses'])} lenses for {len(models)} model(s), packaged with tunedlens. "
        f"`{INDEX_NAME}` lists every file with its sha256 and size; check a download with "
        "`tunedlens hub verify`.",
        "",
        "| model | lens | kind | mean KL (bits) | gates |",
        "| --- | --- | --- | ---: | --- |",
    ]
    for rel, entry in sorted(index["lenses"].items()):
        metrics = entry.get("metrics", {})
        kl = metrics.get("mean_kl_bits")
        gates = " ".join(f"{g}{'✓' if ok else '✗'}" for g, ok in metrics.get("gates", {}).items())
        lines.append(
            f"| `{entry['model']}` | `{rel.split('/')[-1]}` | {entry['kind']} | "
            f"{'' if kl is None else f'{kl:.3f}'} | {gates} |"
        )
    return "\n".join(lines) + "\n"


def verify_collection(tree: str | os.PathLike, *, load: bool = True) -> dict:
    """Check every file of ``tree`` against its ``INDEX.json``; return the index.

    Missing files, files not in the index, wrong sizes and sha256 mismatches are refused with
    the file named, as is a lens filed under another model's folder; with ``load`` every lens
    is also read back (without a model). Folder links are followed (their files must be listed
    too); a link that leads out of the collection, or back into its own folder, is refused.
    """
    tree = Path(tree)
    index = read_index(tree)
    present = set(_tree_files(tree, LENSES_DIR))  # first: a link out of the tree is not read
    listed = set()
    for rel, entry in sorted(index["lenses"].items()):
        listed |= check_lens_files(tree, rel, entry)
        if load:
            record, _ = lens_record(tree / rel)
            if record.get("model") != entry.get("model"):
                raise CollectionError(
                    f"{rel}: the lens files record model {record.get('model')!r}, the index "
                    f"{entry.get('model')!r}."
                )
    extra = sorted(present - listed)
    if extra:
        raise CollectionError(
            f"{extra[0]} is in the tree but not listed in {INDEX_NAME}{f' (and {len(extra) - 1} more)' if len(extra) > 1 else ''}."
        )
    return index


def _tree_files(tree: Path, top: str) -> list[str]:
    """Every file under ``tree/top`` as a tree-relative path, following links.

    ``Path.rglob`` does not descend into linked folders, so an unlisted file behind a folder link
    would pass unseen. A link whose target lies outside the collection is refused (it would be
    checked, and uploaded, as part of a collection it does not belong to), except that a tree
    in the Hugging Face cache (``<repo>/snapshots/<commit>``) links its files to ``<repo>/blobs``.
    """
    root = tree.resolve()
    blobs = root.parent.parent / "blobs" if root.parent.name == "snapshots" else None
    found: list[str] = []

    def visit(path: Path, rel: str, ancestors: frozenset[Path]) -> None:
        if path.is_symlink():
            try:
                target = path.resolve()
            except (RuntimeError, OSError):  # Python < 3.13 raises RuntimeError on a link loop
                raise CollectionError(
                    f"{rel} is a link that leads back to itself; remove it."
                ) from None
            if not target.exists():
                raise CollectionError(
                    f"{rel} is a broken link (to {target}); remove it or copy the file in."
                )
            inside = target == root or target.is_relative_to(root)
            cached = blobs is not None and target.is_file() and target.is_relative_to(blobs)
            if not (inside or cached):
                raise CollectionError(
                    f"{rel} is a link to {target}, outside the collection {tree}; copy the files "
                    "into the collection instead of linking to them."
                )
        if not path.is_dir():
            found.append(rel)
            return
        real = path.resolve()
        if real in ancestors:
            raise CollectionError(
                f"{rel} is a link back to its own folder {real} (a loop); remove the link."
            )
        for child in sorted(path.iterdir()):
            visit(child, f"{rel}/{child.name}", ancestors | {real})

    if (tree / top).exists() or (tree / top).is_symlink():
        visit(tree / top, top, frozenset())
    return found
