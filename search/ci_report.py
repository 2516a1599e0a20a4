"""docs/search.md's generated tables, rendered from the committed evaluation JSON.

`adgen ci report` rewrites every `<!-- generated: search-... -->` block of the document from the JSON that
`adgen ci experiment` wrote; the test suite renders them again and fails when the document differs, so a
figure in the page is always one the JSON holds. The markers are the same as the other documents' (see
adgen/bench_report.py), so these renderers can join a shared registry unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

BLOCK = re.compile(
    r"<!-- generated: (?P<name>search-[\w.-]+) -->\n(?P<body>.*?)<!-- end generated: (?P=name) -->", re.DOTALL
)
VALUE = re.compile(
    r"<!-- value: (?P<source>docs/data/search/\S+) (?P<path>\S+)(?: (?P<fmt>\S+))? -->"
    r"(?P<body>[^\n]*?)<!-- end value -->"
)
_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]|\[([^=\]]+)=([^\]]+)\]")


def _f(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def quality_table(payload: Mapping[str, Any]) -> str:
    """The test table: every method on the same never-seen queries, and whether the served path wins."""
    head = ["method", "HR@10", "HR@50", "NDCG@10", "MAP", "ACR", "CIs/query", "ads/query", "ms/query (p50)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in payload["rows"]:
        cells = [
            r["method"],
            _f(r["hr"]["HR@10"]),
            _f(r["hr"]["HR@50"]),
            _f(r["ndcg10"]),
            _f(r["map"]),
            _f(r["acr"]),
            f"{r['avg_cis_per_query']:.1f}",
            f"{r['avg_ads_per_query']:.1f}",
            f"{r['ms_p50']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    v = payload["verdict"]
    yes = {True: "**yes**", False: "**no**"}
    lines.append("")
    lines.append(
        f"Served CI path >= best baseline on {payload['split']} ({payload['queries']} queries): "
        f"NDCG@10 {yes[v['served_ndcg10_at_least_best_baseline']]} (best baseline: {v['best_baseline_ndcg10']}), "
        f"HR@50 {yes[v['served_hr50_at_least_best_baseline']]} (best baseline: {v['best_baseline_hr50']})."
    )
    return "\n".join(lines)


def _setting(settings: Mapping[str, object]) -> str:
    return ", ".join(f"{k} {'none' if v is None else v}" for k, v in settings.items())


def levers_table(payload: Mapping[str, Any]) -> str:
    """Validation rows of the serving search, stage by stage; the kept setting of each stage in bold."""
    rows = payload["tuning_rows"]
    lines = ["| stage | setting | NDCG@10 | HR@50 | objective |", "|---|---|---|---|---|"]
    for stage in ("decoding", "ads", "fusion"):
        stage_rows = [r for r in rows if r["stage"] == stage]
        if not stage_rows:
            continue
        best = max(stage_rows, key=lambda r: r["objective"])
        shown = stage_rows if stage != "fusion" else _fusion_summary(stage_rows)
        for r in shown:
            mark = "**" if r is best else ""
            cells = [stage, _setting(r["settings"]), _f(r["ndcg10"]), _f(r["hr50"]), _f(r["objective"], 4)]
            lines.append("| " + " | ".join(f"{mark}{c}{mark}" for c in cells) + " |")
    return "\n".join(lines)


def _fusion_summary(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The best fusion row per lexical weight (the full grid is in the JSON)."""
    best: dict[object, Mapping[str, Any]] = {}
    for r in rows:
        key = r["settings"]["lexical_weight"]
        if key not in best or r["objective"] > best[key]["objective"]:
            best[key] = r
    return [best[k] for k in sorted(best)]  # type: ignore[type-var]


def variants_table(payload: Mapping[str, Any]) -> str:
    """Build variants (settings that need a retrained model), each judged on validation."""
    lines = [
        "| build variant | CIs | epochs (best) | pure NDCG@10 | pure HR@50 | served NDCG@10 | served HR@50 | chosen |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in payload.get("variants", []):
        cells = [
            v["name"],
            str(v["cis"]),
            f"{v['epochs_trained']} ({v['best_epoch']})",
            _f(v["pure_valid"]["ndcg10"]),
            _f(v["pure_valid"]["hr"]["HR@50"]),
            _f(v["served_valid"]["ndcg10"]),
            _f(v["served_valid"]["hr"]["HR@50"]),
            "yes" if v["name"] == payload.get("chosen_variant") else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def setup_text(payload: Mapping[str, Any]) -> str:
    """The facts of the run: data, split sizes, leak check, what the build chose, load average."""
    sizes = payload["split_sizes"]
    build = payload["build"]
    serving = payload["serving"]
    hybrid = payload["valid"]["hybrid"] or {}
    return "\n".join(
        [
            f"- data: `{payload['data']}`, {payload['ads']} live ads; labelled queries split train / validation / "
            f"test = {sizes['train']} / {sizes['valid']} / {sizes['test']}; held-out queries sharing a normalised "
            f"text or an intent with another split: {len(payload['split_leaks'])}.",
            f"- relevant = grade >= {payload['min_grade']}; NDCG@10 uses every grade (gain 2^grade - 1).",
            f"- CI set: {build['cis']} CIs, {build['avg_cis_per_ad']:.1f} CIs per ad; "
            f"{build['query_targets']} training queries mapped to a CI; {len(build['templates'])} query templates "
            f"mined; CI model trained {build['epochs_trained']} format epochs, epoch {build['best_epoch']} kept "
            f"(best on validation).",
            f"- served settings (validation): beams {serving['beams']}, score floor {serving['score_floor']}, "
            f"top {serving['top_cis']} model CIs, {serving['cis_per_ad']} model CIs per ad at weight "
            f"{serving['model_weight']}, lexical weight {serving['lexical_weight']} (top {serving['lexical_top']}, "
            f"templates stripped: {serving['strip_templates']}), query-ad match weight {serving['ad_match_weight']}; "
            f"hybrid baseline: RRF k {hybrid.get('k')}, lexical weight {hybrid.get('lexical_weight')}.",
            f"- load average at start / end: {', '.join(f'{x:.1f}' for x in payload['loadavg_start'])} / "
            f"{', '.join(f'{x:.1f}' for x in payload['loadavg_end'])} (latencies are one query at a time, one "
            "torch thread, on the shared 2-core machine).",
        ]
    )


RENDERERS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "search-quality": quality_table,
    "search-levers": levers_table,
    "search-variants": variants_table,
    "search-setup": setup_text,
}


def render_document(text: str, payload: Mapping[str, Any]) -> str:
    """`text` with every generated search block re-rendered from `payload`; unknown names are an error."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in RENDERERS:
            raise KeyError(f"no renderer for generated block {name!r}; known: {sorted(RENDERERS)}")
        return f"<!-- generated: {name} -->\n{RENDERERS[name](payload).rstrip()}\n<!-- end generated: {name} -->"

    return BLOCK.sub(replace, text)


def lookup(data: Any, path: str) -> Any:
    """The value at `a.b[2].c[key=value]` inside `data`; KeyError names the first missing step."""
    node, pos = data, 0
    while pos < len(path):
        if path[pos] == ".":
            pos += 1
        match = _STEP.match(path, pos)
        if match is None:
            raise KeyError(f"bad path {path!r} at character {pos}")
        key, index, sel_key, sel_value = match.groups()
        if key is not None:
            node = node[key]
        elif index is not None:
            node = node[int(index)]
        else:
            hits = [x for x in node if isinstance(x, dict) and str(x.get(sel_key)) == sel_value]
            if len(hits) != 1:
                raise KeyError(f"{path!r}: {len(hits)} items with {sel_key}={sel_value}")
            node = hits[0]
        pos = match.end()
    return node


def render_values(text: str, load: Callable[[str], Any]) -> str:
    """Every `<!-- value: docs/data/search/X.json path [format] -->...<!-- end value -->` re-rendered;
    `load(source)` returns the parsed JSON of a source. The same marker as the other documents' values."""

    def replace(match: re.Match[str]) -> str:
        value = lookup(load(match.group("source")), match.group("path"))
        shown = format(value, match.group("fmt")) if match.group("fmt") else str(value)
        head = match.group(0)[: match.start("body") - match.start(0)]
        return f"{head}{shown}<!-- end value -->"

    return VALUE.sub(replace, text)
