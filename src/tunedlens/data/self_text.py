"""Text sampled from the model itself (``--data self``), cached on disk with its provenance.

For a model whose pretraining data is unknown (a chat model, a model of a closed corpus), the
closest text to its training distribution is what it writes itself. Documents are sampled with the
model's KV cache, a batch at a time, each from the start token (BOS, else EOS) followed by a
prefix (none by default). Document ``i`` draws its random numbers from its own generator seeded by
``(seed, i)`` on the CPU, so the text is fixed by the model, the settings and the seed, and a
cache can be extended by sampling the next documents.

The cache is one ``.jsonl.gz`` file per model and settings, in ``--self-cache`` (default
``$TUNEDLENS_CACHE/self`` or ``~/.cache/tunedlens/self``), named
``<model fingerprint>-<settings hash>.jsonl.gz``. Its first line is the provenance (model
fingerprint and name, settings, seed, package versions); each further line is a document,
``{"text": ..., "index": ..., ...}``. A file whose provenance disagrees with the model or the
settings is refused, never overwritten. Any other command reads it as ordinary ``.jsonl.gz`` data
(``--data PATH``; the provenance line is skipped).
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tunedlens.errors import InputError

SELF_SPEC = "self"
FORMAT = "tunedlens-self-text"
"""The ``format`` of a cache file's provenance line (files of other data are never that)."""
VERSION = 1
DEFAULT_DOC_TOKENS = 512
SAVE_EVERY_S = 60.0
"""A long sampling run writes what it has this often, so an interruption loses little."""
SEEDS = Path(__file__).parent / "seeds"
"""Cache files shipped with tunedlens (text the demo model wrote with the default settings): a
cache that lacks its file starts from the shipped one, named alike, so the demo trains at once."""


class SelfTextMismatch(InputError):
    """A cached self-text file was sampled from another model or with other settings."""


def default_cache_dir() -> Path:
    """``$TUNEDLENS_CACHE/self``, else ``~/.cache/tunedlens/self`` (beside converted models)."""
    return Path(os.environ.get("TUNEDLENS_CACHE", Path.home() / ".cache" / "tunedlens")) / "self"


@dataclass(frozen=True)
class SelfTextSettings:
    """How ``--data self`` samples (each field is set by the ``--self-*`` option of its name)."""

    tokens: int | None = None
    """Tokens to sample, counted as packing counts them (a document's tokens and its EOS);
    ``None``: as many as the command packs."""
    temperature: float = 1.0
    """Divides the logits before sampling; > 0."""
    top_p: float = 1.0
    """Nucleus sampling: the smallest set of tokens holding this much probability; in (0, 1]."""
    prefixes: tuple[str, ...] = ()
    """Texts that start the documents, in turn (document i takes prefix i mod n); none: each
    document starts from the start token alone."""
    seed: int = 0
    """Seeds document i's own random generator with (seed, i)."""
    doc_tokens: int | None = None
    """New tokens per document at most (a document also ends at EOS); ``None``: 512, or less
    where the model's context is shorter."""
    batch_size: int = 32
    """Documents sampled together: on a CPU, 32 cost 5x the forward pass per token and 8 cost
    15x (benchmarks/results/self_data_cost.md); the KV cache grows with it."""
    cache_dir: str | Path | None = field(default=None, compare=False)
    """Folder of the cache files; ``None``: :func:`default_cache_dir`."""

    def __post_init__(self) -> None:
        if isinstance(self.prefixes, str):
            object.__setattr__(self, "prefixes", (self.prefixes,))
        else:
            object.__setattr__(self, "prefixes", tuple(self.prefixes))
        if self.tokens is not None and self.tokens < 1:
            raise InputError(f"--self-tokens must be at least 1, got {self.tokens}")
        if not self.temperature > 0:  # also refuses NaN
            raise InputError(
                f"--self-temperature must be > 0 (1 samples the model's own distribution), got "
                f"{self.temperature}"
            )
        if not 0 < self.top_p <= 1:
            raise InputError(
                f"--self-top-p must be in (0, 1] (1 keeps every token), got {self.top_p}"
            )
        if self.doc_tokens is not None and self.doc_tokens < 1:
            raise InputError(f"--self-doc-tokens must be at least 1, got {self.doc_tokens}")
        if self.batch_size < 1:
            raise InputError(f"--self-batch-size must be at least 1, got {self.batch_size}")
        if any(not isinstance(prefix, str) for prefix in self.prefixes):
            raise InputError("--self-prefix takes text")

    @property
    def cache_folder(self) -> Path:
        """Where the cache files go."""
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def check(self) -> None:
        """Refuse, before any model is loaded, a cache folder that cannot be one."""
        folder = self.cache_folder
        if folder.exists() and not folder.is_dir():
            raise InputError(
                f"--self-cache {str(folder)!r} is a file, not a directory; name a folder for the "
                "cached self-generated text."
            )
        existing = folder
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise InputError(
                f"--self-cache {str(folder)!r} lies under the file {str(existing)!r}; name a folder."
            )


def _sampling_record(settings: SelfTextSettings, doc_tokens: int) -> dict:
    """What fixes the text besides the model: compared field by field with a cache file's."""
    record = asdict(settings)
    for key in ("tokens", "cache_dir"):
        record.pop(key)
    record["prefixes"] = list(settings.prefixes)
    record["doc_tokens"] = doc_tokens
    return record


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


@torch.no_grad()
def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every weight's name, shape, 64 evenly spaced values and (rounded) sum.

    Unlike the unembedding fingerprint of lens files, a fine-tune that leaves the head alone
    changes it. The sampled values are exact (as float32) and the sums are rounded to 6
    significant digits, so it is the same on every device; weights held in another dtype give
    another fingerprint, as they give other text.
    """
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        if not torch.is_tensor(tensor) or not tensor.is_floating_point():
            continue
        flat = tensor.detach().reshape(-1)
        count = min(64, flat.numel())  # integer spacing: float steps overrun large tensors
        picks = torch.arange(count) * (flat.numel() - 1) // max(count - 1, 1)
        values = flat[picks.to(flat.device)].to("cpu", torch.float32).numpy().tobytes()
        total = float(flat.sum(dtype=torch.float64))
        digest.update(f"{name}{tuple(tensor.shape)}{total:.6g}".encode())
        digest.update(values)
    return digest.hexdigest()


@dataclass(frozen=True)
class SelfText:
    """Self-generated text ready to pack: the cache file and what it holds."""

    path: Path
    provenance: dict
    """The file's provenance line."""
    n_documents: int
    """The documents used: the first whole batches that hold the tokens asked for (a larger
    cache gives the same text as one sampled for this run alone)."""
    n_tokens: int
    """Their tokens, as packing counts them."""
    sampled_documents: int
    """Documents sampled by this call (0: all reused from the cache)."""
    sampling_s: float
    cached_documents: int
    """Documents in the cache file (at least ``n_documents``)."""

    @property
    def spec(self) -> str:
        """The cache file (pack it with ``TextSource.from_self_text``)."""
        return str(self.path)

    def record(self) -> dict:
        """What a lens's or report's provenance says about its data."""
        return {
            "cache_file": str(self.path),
            "model_fingerprint": self.provenance["model"]["fingerprint"],
            "model": self.provenance["model"].get("name"),
            "sampling": self.provenance["sampling"],
            "documents": self.n_documents,
            "tokens": self.n_tokens,
            "cached_documents": self.cached_documents,
            "sampled_now": self.sampled_documents,
            "sampling_s": self.sampling_s,
        }


def _start_ids(tokenizer) -> list[int]:
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else None
    if start is None:
        start = tokenizer.eos_token_id
    if start is None:
        raise InputError(
            "--data self: the tokenizer has neither a BOS nor an EOS token to start documents "
            "from; give text to start from with --self-prefix."
        )
    return [start]


def _stop_ids(model, tokenizer) -> set[int]:
    stops = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        stops.add(configured)
    elif isinstance(configured, Sequence):
        stops.update(int(token) for token in configured)
    return stops


def _row_generator(seed: int, index: int) -> torch.Generator:
    digest = hashlib.sha256(f"tunedlens-self:{seed}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _sample(logits: torch.Tensor, settings: SelfTextSettings, generators) -> torch.Tensor:
    """One token per row from ``logits`` ``(batch, vocab)``, by inverse CDF on the CPU."""
    probs = (logits.to("cpu", torch.float32) / settings.temperature).softmax(-1)
    order = None
    if settings.top_p < 1:  # keep the head up to and including the token that reaches top_p
        probs, order = probs.sort(-1, descending=True)
        probs = probs * ((probs.cumsum(-1) - probs) < settings.top_p)
    cumulative = probs.cumsum(-1)
    draws = torch.stack([torch.rand((), generator=g) for g in generators])
    target = draws[:, None] * cumulative[:, -1:]
    picked = torch.searchsorted(cumulative, target, right=True).clamp(max=probs.shape[-1] - 1)
    if order is None:
        return picked[:, 0]
    # rounding must not land in the cut tail: at most the last kept token
    picked = torch.minimum(picked, (probs > 0).sum(-1, keepdim=True) - 1)
    return order.gather(-1, picked)[:, 0]


@torch.no_grad()
def sample_documents(
    model,
    tokenizer,
    settings: SelfTextSettings,
    first: int,
    count: int,
    *,
    doc_tokens: int,
    on_token: Callable[[int], None] | None = None,
) -> list[dict]:
    """Sample documents ``first .. first + count - 1`` together, with the model's KV cache.

    Prompts of different lengths are left-padded (masked, positions counted from each prompt's
    first real token). A row ends at an EOS token or after ``doc_tokens`` new tokens; the batch
    ends when every row has. ``on_token(n)`` is called after each step with the new tokens of the
    rows still running.
    """
    device = next(model.parameters()).device
    start = _start_ids(tokenizer)
    stops = _stop_ids(model, tokenizer)
    indices = list(range(first, first + count))
    prefixes = [
        settings.prefixes[i % len(settings.prefixes)] if settings.prefixes else "" for i in indices
    ]
    prompts = [
        start + (tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else [])
        for prefix in prefixes
    ]
    width = max(len(prompt) for prompt in prompts)
    pad = start[0]
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    generators = [_row_generator(settings.seed, index) for index in indices]
    new: list[list[int]] = [[] for _ in indices]
    stopped = [False] * count
    past = None
    step_ids = ids
    # transformers 5 renamed past_key_values to cache (the old name warns, then goes)
    cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else None
    cache_name = cache_name or "past_key_values"
    for step in range(doc_tokens):
        output = model(
            input_ids=step_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{cache_name: past},
        )
        past = getattr(output, cache_name)
        tokens = _sample(output.logits[:, -1], settings, generators).tolist()
        running = 0
        for row, token in enumerate(tokens):
            if stopped[row]:
                continue
            running += 1
            if token in stops:
                stopped[row] = True
            else:
                new[row].append(token)
        if on_token is not None:
            on_token(running)
        if all(stopped) or step == doc_tokens - 1:
            break
        step_ids = torch.tensor(tokens, device=device)[:, None]
        mask = torch.cat([mask, mask.new_ones(count, 1)], dim=1)
        positions = positions[:, -1:] + 1
    documents = []
    for row, index in enumerate(indices):
        prompt = prompts[row][len(start) :]
        text = tokenizer.decode(
            prompt + new[row], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        documents.append(
            {
                "text": text,
                "index": index,
                "prefix": prefixes[row],
                "new_tokens": len(new[row]),
                "stop": "eos" if stopped[row] else "length",
            }
        )
    return documents


def _packed_tokens(tokenizer, texts: list[str]) -> list[int]:
    """Tokens each document gives when packed: its tokens and its EOS (an empty one: none)."""
    if not texts:
        return []
    encoded = tokenizer([text or " " for text in texts], add_special_tokens=False)["input_ids"]
    return [len(ids) + 1 if text else 0 for text, ids in zip(texts, encoded, strict=True)]


def _used(counts: list[int], target: int, batch_size: int) -> int:
    """The fewest whole batches of documents whose tokens reach ``target`` (else all)."""
    total = 0
    for end in range(batch_size, len(counts) + batch_size, batch_size):
        total = sum(counts[:end])
        if total >= target:
            return min(end, len(counts))
    return len(counts)


def read_cache(path: Path) -> tuple[dict, list[dict]]:
    """A cache file's provenance line and documents."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            lines = [json.loads(line) for line in handle if line.strip()]
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SelfTextMismatch(
            f"{path} is not a readable self-text cache ({error}); delete it to sample again."
        ) from None
    if not lines or not isinstance(lines[0], dict) or lines[0].get("format") != FORMAT:
        raise SelfTextMismatch(
            f"{path} is not a self-text cache (no {FORMAT!r} provenance line); delete it or "
            "choose another --self-cache."
        )
    return lines[0], lines[1:]


def _differences(found: dict, expected: dict) -> list[str]:
    names = {"temperature": "--self-temperature", "top_p": "--self-top-p"}
    names |= {"prefixes": "--self-prefix", "seed": "--self-seed"}
    names |= {"doc_tokens": "--self-doc-tokens", "batch_size": "--self-batch-size"}
    return [
        f"{names.get(key, key)} {found.get(key)!r} (this run: {value!r})"
        for key, value in expected.items()
        if found.get(key) != value
    ]


def check_provenance(header: dict, model_record: dict, sampling: dict, path: Path) -> None:
    """Refuse a cache file of another model or other settings, naming the difference."""
    if header.get("version") != VERSION:
        raise SelfTextMismatch(
            f"{path} is a self-text cache of format version {header.get('version')!r}, this "
            f"version reads {VERSION}; delete it to sample again."
        )
    found = header.get("model", {})
    if found.get("fingerprint") != model_record["fingerprint"]:
        raise SelfTextMismatch(
            f"{path} was sampled from another model: {found.get('name')!r} "
            f"({found.get('dtype')}, fingerprint {str(found.get('fingerprint'))[:16]}), not "
            f"{model_record['name']!r} ({model_record['dtype']}, fingerprint "
            f"{model_record['fingerprint'][:16]}); it is not reused. Delete it or choose another "
            "--self-cache."
        )
    differences = _differences(header.get("sampling", {}), sampling)
    if differences:
        raise SelfTextMismatch(
            f"{path} was sampled with other settings: {', '.join(differences)}; it is not "
            "reused. Delete it or choose another --self-cache."
        )


def _write_cache(path: Path, header: dict, documents: list[dict]) -> None:
    """Write the whole file beside ``path`` and rename it into place (never half-written)."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    os.chmod(temporary, 0o644)  # text for the user's other tools, not a secret
    try:
        with gzip.open(temporary, "wt", encoding="utf-8") as out:
            out.write(json.dumps(header, ensure_ascii=False) + "\n")
            for document in documents:
                out.write(json.dumps(document, ensure_ascii=False) + "\n")
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def _context(model) -> int | None:
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "max_position_embeddings", None)


def _doc_tokens(model, tokenizer, settings: SelfTextSettings) -> int:
    longest = len(_start_ids(tokenizer)) + max(
        (len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in settings.prefixes),
        default=0,
    )
    context = _context(model)
    if settings.doc_tokens is None:
        room = DEFAULT_DOC_TOKENS if context is None else context - longest
        if room < 1:
            raise InputError(
                f"--self-prefix: the longest prefix takes {longest} tokens of the model's context "
                f"of {context}; shorten it."
            )
        return min(DEFAULT_DOC_TOKENS, room)
    if context is not None and settings.doc_tokens + longest > context:
        raise InputError(
            f"--self-doc-tokens {settings.doc_tokens} and the longest prompt ({longest} tokens) "
            f"exceed the model's context of {context} tokens; lower --self-doc-tokens to at most "
            f"{context - longest}."
        )
    return settings.doc_tokens


def _plan(model, tokenizer, settings: SelfTextSettings, model_name: str | None = None):
    sampling = _sampling_record(settings, _doc_tokens(model, tokenizer, settings))
    config = getattr(model, "config", None)
    model_record = {
        "fingerprint": model_fingerprint(model),
        "name": model_name or getattr(config, "name_or_path", None),
        "model_type": getattr(config, "model_type", None),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }
    name = f"{model_record['fingerprint'][:16]}-{_digest(sampling)[:16]}.jsonl.gz"
    return settings.cache_folder / name, model_record, sampling


def cache_path(model, tokenizer, settings: SelfTextSettings) -> Path:
    """The cache file of ``model``'s text sampled with ``settings``: MODEL-SETTINGS.jsonl.gz."""
    return _plan(model, tokenizer, settings)[0]


def sample_self_text(
    model,
    tokenizer,
    settings: SelfTextSettings,
    *,
    tokens_needed: int,
    progress: Callable[[int, int], None] | None = None,
    status: Callable[[str], None] | None = None,
    model_name: str | None = None,
) -> SelfText:
    """The model's own text, at least ``settings.tokens`` (else ``tokens_needed``) tokens of it.

    Reuses the cache file of this model and these settings, sampling only the documents it lacks
    (whole batches, appended in order, so the file is the same as one sampled in one go).
    ``progress(done, total)`` counts tokens, the cached ones included.

    Raises:
        InputError: a tokenizer is missing, or the settings do not fit the model.
        SelfTextMismatch: the cache file was sampled from another model or with other settings.
    """
    if tokenizer is None:
        raise InputError(
            "--data self samples text from the model and needs its tokenizer; pass --tokenizer "
            "ID_OR_DIR (the model has no tokenizer files)."
        )
    settings.check()
    target = settings.tokens if settings.tokens is not None else tokens_needed
    path, model_record, sampling = _plan(model, tokenizer, settings, model_name)
    doc_tokens = sampling["doc_tokens"]
    parameter = next(model.parameters())
    folder = path.parent
    documents: list[dict] = []
    found = None
    say = status or (lambda message: None)
    shipped = SEEDS / path.name
    if not path.exists() and shipped.exists():
        found, documents = read_cache(shipped)
        check_provenance(found, model_record, sampling, shipped)
        folder.mkdir(parents=True, exist_ok=True)
        _write_cache(path, found, documents)
        say(
            f"starting from the {len(documents)} documents of this model's text shipped with "
            f"tunedlens (sampled with these settings on {found.get('created', '?')[:10]})"
        )
    if path.exists():
        found, documents = read_cache(path)
        check_provenance(found, model_record, sampling, path)
    counts = _packed_tokens(tokenizer, [d["text"] for d in documents])
    have = sum(counts)
    reused = len(documents)
    if have >= target:
        say(f"reusing {have:,} tokens of self-generated text from {path}")
    elif reused:
        say(f"{path} holds {have:,} of {target:,} tokens; sampling the rest")
    else:
        say(f"sampling {target:,} tokens from the model into {path}")
    from tunedlens.provenance import environment

    header = {
        "format": FORMAT,
        "version": VERSION,
        "model": model_record,
        "sampling": sampling,
        "device": str(parameter.device),
        **environment(),
    }
    began = time.perf_counter()
    if have < target:
        folder.mkdir(parents=True, exist_ok=True)
        if progress is not None:
            progress(have, target)
        saved = time.monotonic()
        done = [have]

        def on_token(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress(min(done[0], target - 1), target)

        while have < target:
            done[0] = have
            batch = sample_documents(
                model,
                tokenizer,
                settings,
                len(documents),
                settings.batch_size,
                doc_tokens=doc_tokens,
                on_token=on_token,
            )
            added = _packed_tokens(tokenizer, [d["text"] for d in batch])
            if not sum(added):
                raise InputError(
                    f"the model ended all {len(batch)} documents of a batch at once (EOS first); "
                    "give text to start from with --self-prefix, or raise --self-temperature."
                )
            documents += batch
            counts += added
            have += sum(added)
            if time.monotonic() - saved > SAVE_EVERY_S and have < target:
                _write_cache(path, {**header, "documents": len(documents)}, documents)
                saved = time.monotonic()
        _write_cache(path, {**header, "documents": len(documents)}, documents)
        if progress is not None:
            progress(target, target)
    elapsed = time.perf_counter() - began
    if found is not None and len(documents) == reused:
        header = found
    used = _used(counts, target, settings.batch_size)
    return SelfText(
        path,
        header,
        used,
        sum(counts[:used]),
        len(documents) - reused,
        elapsed,
        len(documents),
    )
