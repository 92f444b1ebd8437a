"""Terminal tables (rich) of what commands return: the CLI's presentation, kept out of the library.

Every table fits an 80-column terminal: a cell never wraps a token away from its probability
(long tokens are shortened with ``…`` instead), titles fit on one line, and what does not fit a
table (the whole provenance record) is one ``--json`` away.
"""

from __future__ import annotations

from tunedlens.serialize import dumps

WIDTH = 80
"""The narrowest terminal the tables are laid out for (wider ones get the same tables)."""


def _table(title: str, **options):
    """A rich table whose title stays on one line (the table is at least as wide as its title)."""
    from rich.table import Table

    return Table(title=_plain(title), min_width=min(len(title) + 2, WIDTH), **options)


def _short(text, length: int) -> str:
    text = str(text)
    return text if len(text) <= length else text[: length - 1] + "…"


def _plain(text) -> str:
    """``text`` as rich prints it literally (a token ``[/INST]`` is no markup tag)."""
    from rich.markup import escape

    return escape(str(text))


def _hash(value) -> str:
    return _short(value, 17) if value else "none recorded"


def _data_line(data, content_hash) -> str:
    if not data:
        return "not recorded"
    return f"{data} (sha256 {_hash(content_hash)})"


# ---------------------------------------------------------------------------------------------
# lens info


def _model_line(model, source: dict | None) -> str:
    if not source:
        return str(model or "not recorded")
    what = source.get("model_id") or source.get("file")
    return f"{model} = {what} ({source.get('quantisation', '')})".replace(" ()", "")


def _tuned_facts(info: dict) -> list[tuple[str, str]]:
    provenance = info.get("provenance") or {}
    training = provenance.get("training") or {}
    config = training.get("config") or {}
    options = [name for name in ("use_bias", "use_temperature") if info.get(name)]
    facts = [
        ("kind", f"tuned lens, {info['translator']} translator, {info['points']} points"),
        (
            "model",
            _model_line(
                training.get("model_spec") or info.get("base_model_name_or_path"),
                training.get("model_source"),
            ),
        ),
        (
            "size",
            f"{info['n_blocks']} blocks, d_model {info['d_model']}, "
            f"{info['parameters']:,} parameters"
            + (f" ({', '.join(o.removeprefix('use_') for o in options)})" if options else ""),
        ),
        ("format", str(info["format"])),
    ]
    if training:
        trained, planned = training.get("trained_tokens"), training.get("train_tokens")
        tokens = f"{trained:,} trained" if trained is not None else "not recorded"
        if planned not in (None, trained):
            tokens += f" of {planned:,} planned"
        if training.get("val_tokens"):
            tokens += f", {training['val_tokens']:,} validation"
        facts += [
            ("data", _data_line(training.get("data"), training.get("data_content_hash"))),
            ("tokens", tokens),
            (
                "recipe",
                f"{config.get('recipe', '?')}: {config.get('objective', '?')} objective, "
                f"{config.get('optimizer', '?')}, lr {config.get('lr', '?')}",
            ),
        ]
        val_kl = training.get("val_kl_bits")
        if val_kl:
            facts.append(("validation", f"KL {sum(val_kl) / len(val_kl):.3f} bits (mean of rows)"))
    else:
        facts.append(("training", "not recorded (a lens from another tool)"))
    return facts


def _jacobian_facts(info: dict) -> list[tuple[str, str]]:
    provenance = info.get("provenance") or {}
    rows = info["rows_with_matrix"]
    seq_len = provenance.get("seq_len")
    tokens = f"{info['n_prompts']} prompts" + (
        f" of {seq_len} tokens" if seq_len is not None else ""
    )
    if provenance.get("skip_first") is not None:
        tokens += f" (first {provenance['skip_first']} positions left out)"
    return [
        ("kind", f"Jacobian lens, a matrix at row{'s' * (len(rows) > 1)} {_rows_text(rows)}"),
        ("model", _model_line(provenance.get("model"), provenance.get("model_source"))),
        (
            "size",
            f"{info['n_blocks'] if info['n_blocks'] is not None else '?'} blocks, "
            f"d_model {info['d_model']}, {info['dtype']}",
        ),
        ("format", str(info["format"])),
        ("data", _data_line(provenance.get("data"), provenance.get("data_content_hash"))),
        ("tokens", tokens),
        ("note", info["note"]),
    ]


def _rows_text(rows: list[int]) -> str:
    if rows and rows == list(range(rows[0], rows[-1] + 1)):
        return f"{rows[0]}..{rows[-1]}" if len(rows) > 1 else str(rows[0])
    return _short(", ".join(map(str, rows)), 40)


def lens_facts(info: dict) -> list[tuple[str, str]]:
    """The few lines ``lens info`` shows of a lens: what it is, for which model, from what data.

    ``info`` is :func:`~tunedlens.lenses.io.info.describe_lens`'s result; the whole record
    (every setting, every version) is its ``--json``.
    """
    kind = info.get("kind")
    if kind == "logit":
        return [("kind", "the logit lens")] + [
            (key, str(info[key])) for key in ("decodes", "trained", "parameters", "format", "use")
        ]
    facts = _jacobian_facts(info) if kind == "jacobian" else _tuned_facts(info)
    provenance = info.get("provenance") or {}
    if provenance.get("created") or provenance.get("tunedlens_version"):
        sha = provenance.get("git_sha")
        facts.append(
            (
                "created",
                f"{provenance.get('created', '?')} by tunedlens "
                f"{provenance.get('tunedlens_version', '?')}" + (f" ({sha[:10]})" if sha else ""),
            )
        )
    if info.get("unembed_hash"):
        facts.append(("checksum", f"unembedding sha256 {_hash(info['unembed_hash'])}"))
    return facts


def info_tables(info: dict) -> list:
    """``tunedlens lens info`` as rich tables: the key facts, then the size of each row's map."""
    summary = _table(f"lens {_short(info['path'], WIDTH - 8)}", show_header=False)
    summary.add_column("what", no_wrap=True, style="bold")
    summary.add_column("value")
    for key, value in lens_facts(info):
        summary.add_row(key, _plain(value))
    summary.add_row("more", "every setting and version: tunedlens lens info … --json")
    if not info["rows"]:
        return [summary]
    if info.get("kind") == "jacobian":
        rows = _table("size per row: Frobenius norm of J − I")
        columns = {"row": "label", "‖J − I‖": "update_norm"}
    else:
        rows = _table("size per row: Frobenius norms of the learned map")
        columns = {"row": "label", "‖update‖": "update_norm"}
        if info.get("use_bias"):
            columns["‖bias‖"] = "bias_norm"
        if any("temperature" in row for row in info["rows"]):
            columns["temperature"] = "temperature"
    for column in columns:
        rows.add_column(column, justify="right", no_wrap=True)
    for row in info["rows"]:
        rows.add_row(
            *(row[key] if key == "label" else f"{row[key]:.4g}" for key in columns.values())
        )
    return [summary, rows]


# ---------------------------------------------------------------------------------------------
# predict


def percent(prob: float) -> str:
    """A probability in at most four characters: ``77%``, ``3%``, ``<1%``, ``100%``."""
    return "<1%" if 0 < prob < 0.005 else f"{prob * 100:.0f}%"


def predict_table(run, width: int = WIDTH):
    """``tunedlens predict`` as a rich table: one row per lens row, one column per rank.

    A cell is the token (whitespace made visible: ``␣`` space, ``↵`` newline) and its
    probability in percent; tokens too long for ``width`` columns are shortened with ``…``, so a
    cell never wraps.
    """
    from rich import box

    from tunedlens.lenses.lens import kind_title
    from tunedlens.view.tokens import visible

    name = kind_title(run.kind) + ("" if run.lens == run.kind else f" {run.lens}")
    k = len(run.rows[0].top)
    label_width = max(len(row.label) for row in run.rows)
    # Each column: its text, one space of padding and one of separator.
    cell = (max(width, WIDTH) - (label_width + 2)) // k - 2
    title = _short(f"{name} · position {run.position} · {run.model}", WIDTH - 2)
    table = _table(
        title,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),
        caption="next-token probabilities; ␣ is a space, ↵ a newline",
    )
    table.add_column("row", justify="right", no_wrap=True)
    for rank in range(1, k + 1):
        table.add_column(f"#{rank}", no_wrap=True)
    for row in run.rows:
        cells = []
        for top in row.top:
            prob = percent(top.prob)
            token = _short(visible(top.token), max(3, cell - len(prob) - 1))
            cells.append(f"{_plain(token)} {prob}")
        table.add_row(row.label, *cells, style="bold" if row.label == "output" else None)
    return table


# ---------------------------------------------------------------------------------------------
# lens list


def lens_list_table(rows: list[dict], model: str | None):
    """``tunedlens lens list`` as a rich table: the ``--lens`` location, kind, whether it is here.

    The model is the title when one was asked for, else beside the location where the location
    does not already name it; where each lens comes from goes below the table, once per source.
    """
    from rich import box
    from rich.markup import escape

    sources = list(dict.fromkeys(row["source"] for row in rows))
    caption = [f"[{i}] {source}" for i, source in enumerate(sources, 1)]
    caption.append("here: folder = on this machine, cached = downloaded, no = not yet; [n]: source")
    table = _table(
        f"lenses for {model}" if model else "known lenses",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        caption=escape("\n".join(caption)),
        caption_justify="left",
    )
    # As wide as the legend below it (which would otherwise wrap to a narrow table's width).
    table.min_width = min(WIDTH, max(table.min_width or 0, *map(len, caption)))
    table.add_column("--lens location" + ("" if model else " (model)"), overflow="fold")
    table.add_column("kind", no_wrap=True)
    table.add_column("here", no_wrap=True)
    # One line per location: a lens published for one model under two hub names is one lens.
    models: dict[str, list[str]] = {}
    for row in rows:
        models.setdefault(row["location"], []).append(row["model"])
    shown: set[str] = set()
    for row in rows:
        location = row["location"]
        if location in shown:
            continue
        shown.add(location)
        named = location.partition(":")[2].lower()
        names = [m for m in dict.fromkeys(models[location]) if m.lower() != named]
        if not model and names:
            location += f" ({', '.join(names)})"
        source = sources.index(row["source"]) + 1
        kind = "J-lens" if row["kind"] == "jacobian" else row["kind"]
        table.add_row(escape(location), kind, escape(f"{row.get('local', '')} [{source}]"))
    return table


# ---------------------------------------------------------------------------------------------
# eval


def eval_tables(metrics: dict) -> list:
    """``tunedlens eval``'s terminal summary: per row, each lens's KL, then its top-1 agreement.

    Two narrow tables rather than one wide one (which would not fit 80 columns with three lenses);
    lens names are shortened (a path to its last part), the full names are in ``summary.md``.
    """
    from rich import box

    from tunedlens.evaluation.report import row_labels

    names = list(metrics["lenses"])
    short = {name: _short(name.rstrip("/").rsplit("/", 1)[-1] or name, 12) for name in names}
    tables = []
    for key, title, digits in (
        ("kl_bits", "KL(model ‖ lens) in bits", 3),
        ("top1_agree", "top-1 agreement with the model", 3),
    ):
        table = _table(title, box=box.SIMPLE_HEAD)
        table.add_column("row", justify="right", no_wrap=True)
        for name in names:
            table.add_column(_plain(short[name]), justify="right", no_wrap=True)
        for index, label in enumerate(row_labels(metrics)):
            table.add_row(label, *(f"{metrics['lenses'][n][key][index]:.{digits}f}" for n in names))
        tables.append(table)
    return tables


def gate_lines(metrics: dict) -> list[str]:
    """One line per lens and gate: pass or FAIL, with the measured value and its threshold."""
    import textwrap

    from tunedlens.evaluation.report import gate_numbers

    lines = []
    for name, gates in metrics.get("gates", {}).items():
        lines.append(f"gates for {name} (against the logit lens):")
        for gate, result in gates.items():
            verdict = "pass" if result["pass"] else "FAIL"
            lines += textwrap.wrap(
                f"{gate} {verdict}: {gate_numbers(gate, result)}",
                WIDTH,
                initial_indent="  ",
                subsequent_indent="      ",
            )
    return lines


def wrapped(text: str, indent: str = "  ") -> str:
    """``text`` wrapped to :data:`WIDTH` columns, continuation lines indented."""
    import textwrap

    return "\n".join(
        textwrap.wrap(
            text, WIDTH, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False
        )
    )


def dump(value) -> str:
    """JSON for ``--json`` output (non-ASCII kept, so tokens read as text)."""
    return dumps(value, indent=2, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# analyze prune / detect


def prune_tables(data: dict) -> list:
    """``analyze prune``'s terminal summary: methods at ``k = K`` best first, then the scores."""
    from rich import box

    k_max = data["max_remove"]
    methods = _table(
        f"{k_max} of {data['n_blocks']} blocks removed, best first (bits)", box=box.SIMPLE_HEAD
    )
    for column, justify in (
        ("method", "left"),
        ("removed", "left"),
        ("CE", "right"),
        ("ΔCE", "right"),
        ("KL", "right"),
        ("top-1", "right"),
    ):
        methods.add_column(column, justify=justify, overflow="fold")
    ends = sorted(
        ((name, curve[k_max]) for name, curve in data["curves"].items()),
        key=lambda item: item[1]["ce_bits"],
    )
    for name, point in ends:
        methods.add_row(
            _plain(_short(name, 24)),
            _short(", ".join(map(str, point["removed"])) or "none", 16),
            f"{point['ce_bits']:.3f}",
            f"{point['delta_ce_bits']:+.3f}",
            f"{point['kl_bits']:.3f}",
            f"{point['top1_agree']:.3f}",
        )
    scores = _table("how each score ranks the blocks (Spearman ρ)", box=box.SIMPLE_HEAD)
    scores.add_column("score")
    scores.add_column("ρ with ΔCE", justify="right", no_wrap=True)
    scores.add_column("ρ with KL", justify="right", no_wrap=True)
    for name, rho in sorted(data["spearman"].items(), key=lambda i: -(i[1]["delta_ce"] or -2.0)):
        scores.add_row(
            _plain(_short(name, 40)),
            *("–" if rho[key] is None else f"{rho[key]:.3f}" for key in ("delta_ce", "kl")),
        )
    return [methods, scores]


def detect_tables(report) -> list:
    """``analyze detect``'s terminal summary: per task, the attack's success and each detector.

    The benign controls' columns are in ``summary.md`` (they do not fit 80 columns).
    """
    from rich import box

    hidden_row = report.settings["hidden_row"]
    tables = []
    for name, task in report.tasks.items():
        attack = task["attack"]
        changed = attack["answers_changed"]
        table = _table(
            f"{name}: AUROC of anomalous vs normal prompts",
            box=box.SIMPLE_HEAD,
            show_edge=False,
            caption=f"answers changed by the anomaly: "
            f"{'–' if changed is None else f'{changed:.0%}'}"
            + (" (the attack failed: see summary.md)" if attack["warning"] else ""),
        )
        for column in ("lens", "features", "detector"):
            table.add_column(column, no_wrap=True)
        table.add_column("AUROC [95% CI]", justify="right", no_wrap=True)
        table.add_column("TPR@1%", justify="right", no_wrap=True)
        for row in (r for r in report.results if r["task"] == name):
            interval = row["auroc_ci95"]
            auroc = "–" if row["auroc"] is None else f"{row['auroc']:.2f}"
            if interval:
                auroc += f" [{interval[0]:.2f}, {interval[1]:.2f}]"
            tpr = row["tpr_at_1pct_fpr"]
            table.add_row(
                _plain(_short(row["lens"], 20))
                if row["lens"] is not None
                else f"states, row {hidden_row}",
                row["features"],
                row["detector"],
                auroc,
                "–" if tpr is None else f"{tpr:.0%}",
            )
        tables.append(table)
    return tables
