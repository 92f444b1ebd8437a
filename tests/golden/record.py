"""Record the golden numbers of every "what does layer ℓ predict" consumer.

Run once before a change to the readout path (``python tests/golden/record.py``), commit the
JSON, then ``tests/unit/engine/test_golden.py`` checks that the new code reproduces it (float32,
within 1e-5). The numbers come from tiny seeded models (llama; gemma2 for a soft-capped head),
random tuned lenses and a word-level tokenizer, so they are the same on every machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

from tiny_models import random_lens, tiny_model  # noqa: E402

GOLDEN = HERE / "readout.json"
PROMPT = "w5 w17 w3 w99 w42 w8 w61"
OTHER = "w5 w17 w3 w99 w40 w8 w61"
SUITE = [
    ("w1 w2 w3", "w4"),
    ("w10 w20 w30 w40", "w50"),
    ("w7 w7 w7 w7 w7", "w7"),
    ("w100 w3", "w9"),
]


def tokenizer():
    """The word-level tokenizer of tests/conftest.py (w0..w123 after four specials)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<bos>", "<eos>", "<unk>"] + [f"w{i}" for i in range(124)]
    inner = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=inner,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    )


def setup(model_type: str):
    """The seeded tiny model and random lens every golden number is computed with."""
    model = tiny_model(model_type)
    torch.manual_seed(0)
    return model, random_lens(model)


def suite_file(path: Path) -> Path:
    lines = [json.dumps({"prompt": p, "answer": " " + a, "category": "c"}) for p, a in SUITE]
    path.write_text("\n".join(lines) + "\n")
    return path


def _floats(values) -> list:
    return torch.as_tensor(values, dtype=torch.float64).tolist()


def record(model_type: str, work: Path) -> dict:
    """Numbers from predict, trajectories, the notebook facade, evaluate and layer_kl."""
    from tunedlens import LogitLens, evaluate, load_prompts
    from tunedlens.engine import layer_kl
    from tunedlens.predict import predict_layers
    from tunedlens.view.notebook import Lensed

    model, lens = setup(model_type)
    tok = tokenizer()
    out: dict = {}
    for name, chosen in (("logit", LogitLens(model)), ("tuned", lens)):
        rows = predict_layers(model, tok, PROMPT, chosen, top_k=5, position=-2)
        out[f"predict/{name}"] = [
            # Recorded as before rows had labels: the row index below the output row.
            {
                "layer": "output" if r.label == "output" else r.row,
                "ids": [t.id for t in r.top],
                "probs": [t.prob for t in r.top],
            }
            for r in rows
        ]
        viewer = Lensed(model, tok)
        trajectory = viewer.trajectory(PROMPT, chosen)
        other = viewer.trajectory(OTHER, chosen)
        for stat in ("entropy", "kl", "ce", "max-prob", "rank"):
            out[f"trajectory/{name}/{stat}"] = _floats(trajectory.stat(stat).values)
        out[f"trajectory/{name}/top1"] = trajectory.top_tokens()
        out[f"trajectory/{name}/js"] = _floats(trajectory.js_divergence(other).values)
        out[f"trajectory/{name}/kl_pair"] = _floats(trajectory.kl_divergence(other).values)
        out[f"trajectory/{name}/tv"] = _floats(trajectory.total_variation(other).values)
        # The facade at each position of the prompt, regrouped as recorded: row index (the
        # output row is L) -> per position -> top-3 [id, prob].
        length = len(tok(PROMPT).input_ids)
        read = [
            viewer.logit_lens(PROMPT, top_k=3, position=position)
            if name == "logit"
            else viewer.tuned_lens(PROMPT, chosen, top_k=3, position=position)
            for position in range(length)
        ]
        out[f"notebook/{name}"] = {
            str(row): [[[t.id, t.prob] for t in rows[row].top] for rows in read]
            for row in range(len(read[0]))
        }
    ids = torch.randint(4, 128, (3, 12), generator=torch.Generator().manual_seed(7))
    report = evaluate(
        model,
        {"tuned": lens},
        ids,
        tokenizer=tok,
        prompts=load_prompts(suite_file(work / "s.jsonl")),
        bootstrap=50,
        transfer=True,
    )
    metrics = report.metrics
    for lens_name, entry in metrics["lenses"].items():
        for key, value in entry.items():
            if key != "kind" and value is not None:
                out[f"evaluate/{lens_name}/{key}"] = value
    out["evaluate/baseline"] = metrics["baseline"]
    out["layer_kl/tuned"] = _floats(layer_kl(lens, model, ids, batch_size=2, chunk_rows=16))
    out["evaluate/kpis"] = metrics["kpis"]
    out["evaluate/records"] = [
        {k: v for k, v in r.items() if k not in ("token", "top1_token")} for r in report.records
    ]
    out["evaluate/next_token"] = [
        {k: v for k, v in r.items() if k not in ("top1_token", "answer", "category")}
        for r in report.next_token
    ]
    return out


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        golden = {kind: record(kind, Path(work)) for kind in ("llama", "gemma2")}
    GOLDEN.write_text(json.dumps(golden, indent=1))
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    main()
