"""Reports: report.md, a self-contained report.html (tables, inline SVG charts), replies.jsonl
(every reply with its metrics) and summary.json (the numbers, written by the code that
measured them). Every file is written to a temporary name and renamed into place.
"""

import html
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshtune.errors import MeshtuneError
from meshtune.evaluate import metrics
from meshtune.files import json_text, write_files

if TYPE_CHECKING:
    from meshtune.evaluate import Comparison, EvalResult
    from meshtune.evaluate.gate import Verdict

WORST_ITEMS = 12
CLIP = 320  # characters of a reply shown in tables


def write_report(out: Path, result: "EvalResult") -> None:
    _mkdir(out)
    replies = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.rows)
    write_files(  # together or not at all: summary.json never describes other replies
        {
            out / "replies.jsonl": replies,
            out / "summary.json": json_text(result.summary),
            out / "report.md": render_markdown(result),
            out / "report.html": render_html(result),
        }
    )


def write_comparison(out: Path, comp: "Comparison") -> None:
    _mkdir(out)
    write_files(
        {
            out / "compare.json": json_text(comp.to_dict()),
            out / "compare.md": render_comparison(comp),
            out / "compare.html": render_comparison_html(comp),
        }
    )


def _mkdir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MeshtuneError(f"{out}: cannot create the report folder ({e.strerror})") from e


# ---------------------------------------------------------------- shared pieces


def _clip(text: str, n: int = CLIP) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def why(r: dict[str, Any]) -> str:
    """What failed in a reply, in words ("passes" when nothing did); a report written before
    replies carried reasons shows the failure codes."""
    return "; ".join(r.get("reasons") or r["failures"]) or "passes"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _run_line(s: dict[str, Any]) -> str:
    opts = ", ".join(f"{k} {v}" for k, v in s["options"].items())
    return (
        f"model {s['model']} · backend {s['backend']} · profile {s['profile']} ({opts}) · "
        f"suite {s['suite']} ({s['items']} items × {s['samples']} samples = {s['replies']} "
        f"replies) · {s['created']} · {s['wall_s']} s"
    )


def _numbers(s: dict[str, Any]) -> list[tuple[str, str]]:
    c = s["chars"]
    invented = ", ".join(f"{k} ×{v}" for k, v in list(s["invented_commands"].items())[:8])
    wrong = ", ".join(f"{k} ×{v}" for k, v in list(s.get("wrong_commands", {}).items())[:8])
    return [
        (
            "item pass rate",
            f"{s['pass_rate']:.3f} (items passing every sample: {s['items_always_pass']}, "
            f"never: {s['items_never_pass']}, of {s['items']})",
        ),
        ("loops", _pct(s["loop_rate"])),
        ("runaways (hit num_predict)", _pct(s["runaway_rate"])),
        ("invented commands", f"{_pct(s['invented_command_rate'])} {invented}".strip()),
        ("real commands for the wrong job", f"{_pct(s.get('wrong_command_rate'))} {wrong}".strip()),
        ("command dumps", _pct(s["command_dump_rate"])),
        ("canned replies", _pct(s["canned_rate"])),
        ("empty replies", _pct(s["empty_rate"])),
        ("reply chars p50 / p90 / max", f"{c['p50']:g} / {c['p90']:g} / {c['max']:g}"),
        ("replies of 80-150 chars", _pct(s["share_80_150_chars"])),
        ("replies in one 160-byte chunk", _pct(s["share_one_chunk"])),
        ("chunks per reply", ", ".join(f"{k}: {v}" for k, v in s["chunks"].items())),
        (
            "latency p50 / p90",
            f"{s['latency_s']['p50']:.2f} s / {s['latency_s']['p90']:.2f} s",
        ),
        ("tokens/s (generation incl. prompt)", f"{s['tokens_per_s']}"),
    ]


def by_kind(s: dict[str, Any], v: "Verdict") -> tuple[list[str], list[list[str]]]:
    """The criteria per request kind, as a table: the header and one row per criterion (and
    the items and the technical DM replies' three-way split)."""
    kinds = list(s.get("kinds", {}))
    rows = [["items", *(str(s["kinds"][k]["items"]) for k in kinds)]]
    for c in v.criteria:
        if c.by_kind:
            rows.append([c.name, *(f"{c.by_kind[k]:g}" if k in c.by_kind else "-" for k in kinds)])
    t = s.get("technical") or {}
    if t.get("replies"):
        split = (
            f"correct {_pct(t['correct'])}, pointer {_pct(t['pointer'])}, wrong {_pct(t['wrong'])}"
        )
        rows.append(["technical DM replies", *(split if k == "dm" else "-" for k in kinds)])
    knowledge = s.get("knowledge") or {}
    for name, cell in _KNOWLEDGE_ROWS:
        if knowledge:
            rows.append([name, *(cell(knowledge[k]) if k in knowledge else "-" for k in kinds)])
    return ["criterion", *kinds], rows


def _of_items(group: dict[str, Any], key: str) -> str:
    """A delivered or undelivered group's figure and how many items it is of."""
    figure = "-" if group[key] is None else f"{group[key]:g}"
    return f"{figure} of {group['items']} items"


# A knowledge kind's figures (metrics.knowledge_figures) as rows of the per-kind table.
_KNOWLEDGE_ROWS = (
    ("delivered: pass rate", lambda k: _of_items(k["delivered"], "pass_rate")),
    ("delivered: cites [n]", lambda k: _pct(k["delivered"]["citation_rate"])),
    ("undelivered: refusal", lambda k: _of_items(k["undelivered"], "refusal_rate")),
)


def worst_items(rows: list[dict[str, Any]], n: int = WORST_ITEMS) -> list[dict[str, Any]]:
    """The n items with the lowest pass rate, each with its worst and its typical reply
    (the sample of median length)."""
    by_item: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_item[r["item"]].append(r)
    rates = metrics.item_pass_rates(rows)
    order = sorted(by_item, key=lambda i: (rates[i], -max(r["chars"] for r in by_item[i])))
    out = []
    for item in order[:n]:
        samples = by_item[item]
        worst = min(samples, key=lambda r: (r["passed"], -len(r["failures"]), -r["chars"]))
        typical = sorted(samples, key=lambda r: r["chars"])[len(samples) // 2]
        out.append(
            {
                "item": item,
                "category": samples[0]["category"],
                "question": samples[0]["question"],
                "pass_rate": rates[item],
                "worst": worst,
                "typical": typical,
            }
        )
    return out


def _thresholds() -> str:
    m = metrics
    return (
        f"Loop: a {m.LOOP_NGRAM_WORDS}-word phrase {m.LOOP_NGRAM_REPEATS}+ times, a line of "
        f"{m.LOOP_LINE_WORDS}+ words {m.LOOP_LINE_REPEATS}+ times, a sentence of "
        f"{m.LOOP_SENTENCE_WORDS}+ words {m.LOOP_SENTENCE_REPEATS}+ times, or an "
        f"{m.LOOP_SPAN_CHARS}+ character span {m.LOOP_SPAN_REPEATS}+ times back to back. "
        f"Canned: the same reply to {m.CANNED_MIN_ITEMS}+ different prompts. Runaway: the reply "
        "hit num_predict without an end-of-turn token."
    )


# ---------------------------------------------------------------- markdown


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(result: "EvalResult") -> str:
    s = result.summary
    v = result.verdict
    lines = [
        f"# meshtune eval: {s['label']}, {v.label}",
        "",
        _run_line(s),
        "",
        f"## Verdict: {v.label}",
        "",
        "| criterion | value | limit | pass |",
        "| --- | --- | --- | --- |",
    ]
    for c in v.criteria:
        lines.append(f"| {c.name} | {c.value:g} | {c.limit} | {'yes' if c.ok else 'NO'} |")
    for c in v.failing:
        lines += ["", f"**{c.name}** ({c.what}): {c.value:g}, limit {c.limit}", ""]
        for r in c.examples:
            lines.append(
                f"- `{r['item']}` #{r['sample']} “{_md(_clip(r['question'], 80))}” -> "
                f"“{_md(_clip(r['reply']))}” [{_md(why(r))}]"
            )
    head, table = by_kind(s, v)
    lines += ["", "## By request kind", "", "| " + " | ".join(head) + " |"]
    lines += ["| " + " | ".join("---" for _ in head) + " |"]
    lines += ["| " + " | ".join(_md(x) for x in row) + " |" for row in table]
    lines += ["", "## Numbers", "", "| measure | value |", "| --- | --- |"]
    lines += [f"| {k} | {_md(val)} |" for k, val in _numbers(s)]
    lines += ["", "## Pass rate by category", "", "| category | items | pass rate |"]
    lines += ["| --- | --- | --- |"]
    for cat, c in s["categories"].items():
        lines.append(f"| {cat} | {c['items']} | {c['pass_rate']:.3f} |")
    lines += ["", "## Failures by kind (replies)", ""]
    lines += [f"- {k}: {n}" for k, n in s["failures"].items()] or ["- none"]
    lines += ["", f"## The {WORST_ITEMS} worst items: worst and typical reply", ""]
    for w in worst_items(result.rows):
        lines.append(
            f"- `{w['item']}` ({w['category']}, pass {w['pass_rate']:.2f}) "
            f"“{_md(_clip(w['question'], 100))}”"
        )
        for kind in ("worst", "typical"):
            r = w[kind]
            lines.append(
                f"  - {kind}: “{_md(_clip(r['reply']))}” ({r['chars']} chars; {_md(why(r))})"
            )
    lines += ["", "## Definitions", "", _thresholds(), ""]
    lines += [
        "A reply passes its item when expect_any / expect_all / forbid / max_chars / "
        "allow_commands / stance hold and it is not empty, a loop, a runaway, an "
        "invented-command, a wrong-command or a command-dump reply. A knowledge item "
        "(`/meshtastic`, follow-up) whose answer the retrieval did not deliver to the model "
        "passes only with the bot's refusal sentence; a delivered one fails with it.",
        "",
    ]
    return "\n".join(lines)


def render_verdict(result: "EvalResult") -> str:
    """What `meshtune eval` prints: the run, its numbers, each criterion, the failing ones'
    example replies, and READY or NOT READY."""
    s, v = result.summary, result.verdict
    c = s["chars"]
    lines = [
        f"{s['label']} on {s['suite']} ({s['items']} items x {s['samples']}) via {s['backend']}, "
        f"profile {s['profile']}, {s['wall_s']} s",
        f"pass rate {s['pass_rate']:.3f} | loops {s['loop_rate']:.1%} | runaways "
        f"{s['runaway_rate']:.1%} | invented commands {s['invented_command_rate']:.1%} | "
        f"chars p50 {c['p50']:g} p90 {c['p90']:g} | one chunk {s['share_one_chunk']:.1%}",
    ]
    for crit in v.criteria:
        mark = "ok  " if crit.ok else "FAIL"
        lines.append(f"  {mark} {crit.name:<18} {crit.value:<8g} (limit {crit.limit})")
    head, table = by_kind(s, v)
    # more than one kind, or a figure of one kind only (the technical split, knowledge items)
    if len(head) > 2 or s.get("technical", {}).get("replies") or s.get("knowledge"):
        lines.append("by request kind: " + " | ".join(head[1:]))
        lines += [f"  {row[0]:<20} " + " | ".join(row[1:]) for row in table]
    for crit in v.failing:
        lines.append(f"{crit.name}: {crit.what}; for example:")
        for r in crit.examples:
            reply = " ".join(r["reply"].split())
            reply = reply if len(reply) <= 160 else reply[:159] + "…"
            lines.append(f"  [{r['item']}] {r['question']!r} -> {reply!r}")
    lines.append(v.label)
    return "\n".join(lines)


def render_comparison(comp: "Comparison") -> str:
    a, b = comp.a.summary, comp.b.summary
    lines = [
        f"# meshtune compare: A {a['label']} vs B {b['label']}",
        "",
        f"suite {a['suite']} · profile {a['profile']} · A: {comp.a.verdict.label} · "
        f"B: {comp.b.verdict.label}",
        "",
        "| measure | A | B | B - A | better |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m in comp.metrics:
        lines.append(
            f"| {m['name']} | {_num(m['a'])} | {_num(m['b'])} | {_delta(m['delta'])} | "
            f"{m['better'].upper() or '-'} |"
        )
    lines += ["", "## Pass rate by category", "", "| category | items | A | B | B - A |"]
    lines += ["| --- | --- | --- | --- | --- |"]
    for c in comp.categories:
        lines.append(
            f"| {c['category']} | {c['items']} | {_num(c['a'])} | {_num(c['b'])} | "
            f"{_delta(c['delta'])} |"
        )
    for title, entries in (("Improved", comp.improved), ("Regressed", comp.regressed)):
        lines += ["", f"## {title} items ({len(entries)})", ""]
        lines += [
            f"- `{e['item']}` ({e['category']}) {e['a']:.2f} -> {e['b']:.2f} "
            f"“{_md(_clip(e['question'], 100))}”"
            for e in entries
        ] or ["- none"]
    return "\n".join(lines) + "\n"


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:g}"


def _delta(x: Any) -> str:
    return "-" if x is None else f"{x:+g}"


# ---------------------------------------------------------------- html


def _svg(fig: Any) -> str:
    """The figure as inline SVG: text stays text (no glyph definitions whose ids would clash
    between two charts on one page), no date, no XML prolog."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def length_histogram(rows: list[dict[str, Any]], max_chars: float | None = 200) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chars = [r["chars"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.axvspan(*metrics.TARGET_CHARS, color="#cde8cd", label="80-150 target")
    if max_chars is not None:
        ax.axvline(max_chars, color="#c0392b", linestyle="--", label=f"{max_chars:g} limit")
    top = max(chars, default=0)
    width = 10 if top <= 400 else 20
    ax.hist(chars, bins=range(0, top + 2 * width, width), color="#34495e")
    ax.set_xlim(left=0)
    ax.set_xlabel("reply characters")
    ax.set_ylabel("replies")
    ax.legend(loc="upper right", fontsize=8)
    return _svg(fig)


def category_bars(categories: dict[str, dict[str, Any]], floor: float | None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(categories)
    rates = [categories[c]["pass_rate"] for c in names]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(names) + 0.8))
    ax.barh(
        names, rates, color=["#27ae60" if floor is None or r >= floor else "#c0392b" for r in rates]
    )
    if floor is not None:
        ax.axvline(floor, color="#7f8c8d", linestyle="--", label=f"gate floor {floor:g}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("item pass rate")
    return _svg(fig)


CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f3f3f3}.ok{color:#1e7e34}.bad{color:#b02a37;
font-weight:bold}.verdict{font-size:1.6em}.reply{font-family:ui-monospace,monospace;
font-size:12px;max-width:640px;white-space:pre-wrap}small{color:#666}
"""


def render_html(result: "EvalResult") -> str:
    s, v = result.summary, result.verdict
    e = html.escape
    cfg = s.get("gate_config") or {}
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>meshtune eval: {e(s['label'])}</title><style>{CSS}</style></head><body>",
        f"<h1>meshtune eval: {e(s['label'])}</h1><p><small>{e(_run_line(s))}</small></p>",
        f"<p id='verdict' class='verdict {'ok' if v.ready else 'bad'}'>{v.label}</p>",
        "<table id='criteria'><tr><th>criterion</th><th>value</th><th>limit</th><th>pass</th></tr>",
    ]
    for c in v.criteria:
        cls = "ok" if c.ok else "bad"
        parts.append(
            f"<tr><td>{e(c.name)}<br><small>{e(c.what)}</small></td><td>{c.value:g}</td>"
            f"<td>{e(c.limit)}</td><td class='{cls}'>{'yes' if c.ok else 'NO'}</td></tr>"
        )
    parts.append("</table>")
    for c in v.failing:
        parts.append(f"<h3 class='bad'>{e(c.name)}: {c.value:g} (limit {e(c.limit)})</h3>")
        parts.append(_reply_table(c.examples))
    head, table = by_kind(s, v)
    parts.append("<h2>By request kind</h2><table id='by-kind'><tr>")
    parts += [f"<th>{e(h)}</th>" for h in head]
    parts.append("</tr>")
    parts += ["<tr>" + "".join(f"<td>{e(x)}</td>" for x in row) + "</tr>" for row in table]
    parts.append("</table>")
    parts.append("<h2>Numbers</h2><table>")
    parts += [f"<tr><th>{e(k)}</th><td>{e(val)}</td></tr>" for k, val in _numbers(s)]
    parts.append("</table><h2>Reply length</h2><figure id='length-histogram'>")
    parts.append(length_histogram(result.rows, cfg.get("max_p90_chars", 200)))
    parts.append("</figure><h2>Pass rate by category</h2><figure id='category-bars'>")
    parts.append(category_bars(s["categories"], cfg.get("min_pass_rate")))
    parts.append(f"</figure><h2>The {WORST_ITEMS} worst items</h2><table id='worst-items'>")
    parts.append(
        "<tr><th>item</th><th>question</th><th>worst reply</th><th>typical reply</th></tr>"
    )
    for w in worst_items(result.rows):
        cells = [
            f"<td>{e(w['item'])}<br><small>{e(w['category'])}, "
            f"pass {w['pass_rate']:.2f}</small></td>",
            f"<td>{e(w['question'])}</td>",
        ]
        for kind in ("worst", "typical"):
            r = w[kind]
            cells.append(
                f"<td><div class='reply'>{e(_clip(r['reply'], 600))}</div><small>{r['chars']} "
                f"chars; {e(why(r))}</small></td>"
            )
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table><h2>Definitions</h2>")
    parts.append(f"<p>{e(_thresholds())}</p>")
    system = s["system_prompt"] or "none (replies scored without a model)"
    parts.append(f"<p><small>System prompt: {e(system)}</small></p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def comparison_bars(comp: "Comparison") -> str:
    """Each category's item pass rate, A and B side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c["category"] for c in comp.categories]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 0.9))
    ys = range(len(names))
    for offset, side, color in ((-0.2, "a", "#95a5a6"), (0.2, "b", "#2c3e50")):
        rates = [c[side] or 0 for c in comp.categories]
        label = comp.a.summary["label"] if side == "a" else comp.b.summary["label"]
        ax.barh(
            [y + offset for y in ys],
            rates,
            height=0.4,
            color=color,
            label=f"{side.upper()} {label}",
        )
    ax.set_yticks(list(ys), names)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("item pass rate")
    ax.legend(loc="lower right", fontsize=8)
    return _svg(fig)


def render_comparison_html(comp: "Comparison") -> str:
    a, b = comp.a, comp.b
    e = html.escape
    title = f"meshtune compare: A {a.summary['label']} vs B {b.summary['label']}"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title><style>{CSS}</style></head><body><h1>{e(title)}</h1>",
        f"<p><small>suite {e(a.summary['suite'])} · profile {e(a.summary['profile'])}</small></p>",
    ]
    for tag, r in (("A", a), ("B", b)):
        parts.append(
            f"<p id='verdict-{tag.lower()}' class='verdict {'ok' if r.ready else 'bad'}'>{tag} "
            f"{e(r.summary['label'])}: "
            f"{r.verdict.label}</p>"
        )
    parts.append("<table id='measures'><tr><th>measure</th><th>A</th><th>B</th><th>B - A</th>")
    parts.append("<th>better</th></tr>")
    for m in comp.metrics:
        parts.append(
            f"<tr><td>{e(m['name'])}</td><td>{_num(m['a'])}</td><td>{_num(m['b'])}</td>"
            f"<td>{_delta(m['delta'])}</td><td>{m['better'].upper() or '-'}</td></tr>"
        )
    parts.append("</table><h2>Pass rate by category</h2><figure id='category-bars'>")
    parts.append(comparison_bars(comp))
    parts.append("</figure>")
    for title_, entries in (("Improved", comp.improved), ("Regressed", comp.regressed)):
        parts.append(f"<h2>{title_} items ({len(entries)})</h2><table id='{title_.lower()}'>")
        parts.append("<tr><th>item</th><th>category</th><th>A</th><th>B</th><th>question</th></tr>")
        parts += [
            f"<tr><td>{e(x['item'])}</td><td>{e(x['category'])}</td><td>{x['a']:.2f}</td>"
            f"<td>{x['b']:.2f}</td><td>{e(x['question'])}</td></tr>"
            for x in entries
        ]
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _reply_table(rows: list[dict[str, Any]]) -> str:
    e = html.escape
    out = ["<table><tr><th>item</th><th>question</th><th>reply</th><th>what failed</th></tr>"]
    for r in rows:
        out.append(
            f"<tr><td>{e(r['item'])} #{r['sample']}</td><td>{e(r['question'])}</td>"
            f"<td><div class='reply'>{e(_clip(r['reply'], 600))}</div></td>"
            f"<td>{e(why(r))}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)
