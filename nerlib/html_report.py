"""Self-contained HTML: the error report of an evaluation, and pages of tagged texts.

Both kinds of page share one style sheet and one colour per entity type, derived from the type's
name alone (`type_hue`), so PER has the same colour in every report and every tagged text. The
pages load nothing: no network, no external script, font or image; the report's filter is a few
lines of inline JavaScript.
"""

from __future__ import annotations

import html
import json
import os
import zlib
from typing import Iterable, Sequence
from urllib.parse import quote

from .analysis import ERROR_CLASSES, EXACT, OUTCOMES
from .errors import ConfigError

# Hues of MultiNERD's classes, far apart for the common ones; other types get one from their name.
TYPE_HUES = {"PER": 212, "ORG": 28, "LOC": 140, "ANIM": 275, "DIS": 350, "BIO": 175, "CEL": 52, "EVE": 320,
             "FOOD": 90, "INST": 195, "MEDIA": 300, "MYTH": 250, "PLANT": 110, "TIME": 230, "VEHI": 10}
OUTCOME_NAMES = {"exact": "exact", "wrong_type": "wrong type", "wrong_boundary": "wrong boundary",
                 "wrong_boundary_and_type": "wrong boundary and type", "missed": "missed", "spurious": "spurious"}
OUTCOME_COLOURS = {"exact": "#8fbf8f", "wrong_type": "#a77bca", "wrong_boundary": "#f0a04b",
                   "wrong_boundary_and_type": "#d9534f", "missed": "#7a8591", "spurious": "#c8a165"}

STYLE = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       max-width: 1180px; margin: 1.5rem auto 4rem; padding: 0 1rem; color: #1f2429; background: #fff;
       line-height: 1.45; font-size: 15px; }
h1 { font-size: 1.45rem; margin-bottom: .2rem; }
h2 { font-size: 1.15rem; margin-top: 2.2rem; padding-bottom: .2rem; border-bottom: 1px solid #d8dde2; }
h3 { font-size: 1rem; margin: 1.2rem 0 .3rem; }
p.meta, p.note { color: #59636e; margin: .2rem 0; }
p.note { font-size: .9em; max-width: 60rem; }
table { border-collapse: collapse; margin: .4rem 0 1rem; font-variant-numeric: tabular-nums; }
th, td { padding: .22rem .6rem; border-bottom: 1px solid #e6e9ec; text-align: right; white-space: nowrap; }
th { background: #f4f6f8; font-weight: 600; white-space: normal; vertical-align: bottom; }
th.group { text-align: center; border-bottom: 2px solid #d8dde2; }
th:first-child, td:first-child { text-align: left; }
tr.total td { font-weight: 600; border-top: 2px solid #c9d0d6; }
td.bar { width: 12rem; min-width: 8rem; }
.bar-track { display: flex; height: .8rem; background: #f0f2f4; border-radius: 3px; overflow: hidden; }
.bar-track span { display: block; height: 100%; }
.legend { display: flex; flex-wrap: wrap; gap: .4rem .9rem; margin: .5rem 0; font-size: .9em; }
.swatch { display: inline-block; width: .8rem; height: .8rem; border-radius: 2px; vertical-align: -.1rem;
          margin-right: .25rem; }
/* A word longer than the line breaks rather than widening the page; a right-to-left entity stays one
   run beside its left-to-right neighbours. */
.line, .text, ul.outcomes li { overflow-wrap: anywhere; }
mark.ent, .chip { unicode-bidi: isolate; }
mark.ent { background: hsl(var(--h) 85% 89%); border: 1px solid hsl(var(--h) 55% 45%); border-radius: 4px;
           padding: 0 .2rem; color: inherit; box-decoration-break: clone; -webkit-box-decoration-break: clone; }
mark.ent .tag { font-size: .68em; font-weight: 700; letter-spacing: .02em; color: hsl(var(--h) 65% 28%);
                margin-left: .3rem; vertical-align: .12em; }
.chip { background: hsl(var(--h) 85% 89%); border: 1px solid hsl(var(--h) 55% 45%); border-radius: 4px;
        padding: 0 .35rem; font-weight: 600; font-size: .85em; color: hsl(var(--h) 65% 24%); }
mark.ent.err { border: 2px dashed hsl(var(--h) 60% 38%); }
.sentence { border: 1px solid #e3e7eb; border-radius: 6px; padding: .5rem .8rem; margin: .6rem 0; }
.sentence .head { font-size: .85em; color: #59636e; display: flex; justify-content: space-between; gap: 1rem; }
.sentence .head a { color: #2c5d99; }
.line { margin: .3rem 0; line-height: 1.9; }
.line .side { display: inline-block; width: 5.2rem; font-size: .8em; color: #59636e; }
ul.outcomes { list-style: none; padding: 0; margin: .3rem 0 0; font-size: .88em; }
ul.outcomes li { display: inline-block; margin: 0 .8rem .2rem 0; }
.badge { display: inline-block; padding: 0 .35rem; border-radius: 3px; color: #fff; font-size: .8em;
         font-weight: 600; margin-right: .25rem; }
.filters { position: sticky; top: 0; background: #fffffff0; padding: .5rem 0; border-bottom: 1px solid #e3e7eb;
           z-index: 1; }
.filters label { margin-right: 1rem; }
.cm td { min-width: 3.2rem; }
.text { border-bottom: 1px solid #e6e9ec; padding: .6rem 0; line-height: 2; white-space: pre-wrap; }
.text .num { color: #8a949e; font-size: .8em; margin-right: .6rem; }
"""

FILTER_SCRIPT = """
(function () {
  var byClass = document.getElementById('filter-class'), byType = document.getElementById('filter-type');
  var shown = document.getElementById('shown');
  function apply() {
    var count = 0;
    document.querySelectorAll('.sentence').forEach(function (sentence) {
      var match = false;
      sentence.querySelectorAll('li.outcome').forEach(function (o) {
        if (o.dataset.class === 'exact') return;
        if (byClass.value && o.dataset.class !== byClass.value) return;
        if (byType.value && o.dataset.gold !== byType.value && o.dataset.pred !== byType.value) return;
        match = true;
      });
      sentence.hidden = !match;
      if (match) count++;
    });
    shown.textContent = count;
  }
  // A link may choose the filter: report.html#class=missed&type=LOC
  location.hash.slice(1).split('&').forEach(function (pair) {
    var kv = pair.split('='), value = decodeURIComponent(kv[1] || '');
    if (kv[0] === 'class') byClass.value = value;
    if (kv[0] === 'type') byType.value = value;
  });
  byClass.addEventListener('change', apply);
  byType.addEventListener('change', apply);
  apply();
})();
"""


def type_hue(name: str) -> int:
    """The hue (0-359) of an entity type: fixed for MultiNERD's classes, from the name's CRC32 otherwise."""
    return TYPE_HUES.get(name, zlib.crc32(name.encode("utf-8")) % 360)


def _escape(value) -> str:
    return html.escape(str(value), quote=True)


def entity_mark(type_name: str, text: str, title: str = "", error: bool = False) -> str:
    """One highlighted entity: its text, coloured by type, with the type as a small tag."""
    extra = " err" if error else ""
    return (f'<mark class="ent{extra}" data-type="{_escape(type_name)}" style="--h:{type_hue(type_name)}"'
            f' title="{_escape(title or type_name)}">{_escape(text)}<span class="tag">{_escape(type_name)}</span></mark>')


def type_chip(type_name: str) -> str:
    """A type's name in its colour (legends, table rows)."""
    return (f'<span class="chip" data-type="{_escape(type_name)}" style="--h:{type_hue(type_name)}">'
            f'{_escape(type_name)}</span>')


def highlight_text(text: str, spans: Sequence[tuple[str, int, int, str, bool]]) -> str:
    """A text with entities highlighted.

    Args:
        text: the plain text.
        spans: `(type, start, end, title, error)` of each entity, by character offsets into
            `text`, in order and not overlapping.

    Returns:
        HTML: the text escaped, each entity in a `mark.ent` element.
    """
    parts, position = [], 0
    for type_name, start, end, title, error in sorted(spans, key=lambda s: s[1]):
        parts.append(_escape(text[position:start]))
        parts.append(entity_mark(type_name, text[start:end], title, error))
        position = end
    parts.append(_escape(text[position:]))
    return "".join(parts)


def highlight_words(tokens: Sequence[str], spans: Sequence[tuple[str, int, int, str, bool]]) -> str:
    """Words joined by spaces with entities highlighted; spans are `(type, first_word, end_word, title, error)`."""
    offsets, position = [], 0
    for token in tokens:
        offsets.append(position)
        position += len(token) + 1
    char_spans = [(t, offsets[first], offsets[end - 1] + len(tokens[end - 1]), title, error)
                  for t, first, end, title, error in spans]
    return highlight_text(" ".join(tokens), char_spans)


def _page_head(title: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n")


def _page_tail(script: str = "") -> str:
    return (f"<script>{script}</script>\n" if script else "") + "</body>\n</html>\n"


def _number(value: float) -> str:
    # The full value rides along in data-value, so the page states exactly what the JSON and evaluate.py say.
    return f'<td data-value="{value!r}">{value:.4f}</td>'


def _type_legend(types: Iterable[str]) -> str:
    return '<div class="legend">' + "".join(type_chip(t) for t in types) + "</div>"


def _scores_table(lenient: dict, strict: dict | None, types: Sequence[str]) -> str:
    present = set(lenient["per_type"]) | set((strict or {}).get("per_type", {}))
    names = [t for t in types if t in present] + sorted(present - set(types))
    heads = ["lenient (seqeval default)"] + (["strict IOB2"] if strict else [])
    rows = ['<table class="scores"><thead><tr><th rowspan="2">type</th><th rowspan="2">support</th>'
            + "".join(f'<th colspan="3" class="group">{h}</th>' for h in heads) + "</tr><tr>"
            + "<th>precision</th><th>recall</th><th>F1</th>" * len(heads) + "</tr></thead><tbody>"]

    def cells(row: dict | None) -> str:
        row = row or {"precision": 0.0, "recall": 0.0, "f1": 0.0}
        return "".join(_number(row[k]) for k in ("precision", "recall", "f1"))

    for name in names:
        row = lenient["per_type"].get(name)
        support = row["support"] if row else strict["per_type"][name]["support"]
        rows.append(f'<tr data-type="{_escape(name)}"><td>{type_chip(name)}</td><td>{support}</td>'
                    + cells(row) + (cells(strict["per_type"].get(name)) if strict else "") + "</tr>")
    support = sum(row["support"] for row in lenient["per_type"].values())
    rows.append(f'<tr class="total" data-type="overall"><td>overall (micro)</td><td>{support}</td>'
                + cells(lenient) + (cells(strict) if strict else "") + "</tr></tbody></table>")
    return "".join(rows)


def _stacked_bar(counts: dict, keys: Sequence[str]) -> str:
    total = sum(counts[k] for k in keys)
    if not total:
        return '<div class="bar-track"></div>'
    return '<div class="bar-track">' + "".join(
        f'<span style="width:{100 * counts[k] / total:.2f}%;background:{OUTCOME_COLOURS[k]}" '
        f'title="{OUTCOME_NAMES[k]}: {counts[k]}"></span>' for k in keys if counts[k]) + "</div>"


def _outcomes_table(outcomes: dict) -> str:
    heads = "".join(f"<th>{OUTCOME_NAMES[k]}</th>" for k in OUTCOMES)
    rows = [f'<table class="outcomes"><thead><tr><th>type</th><th>gold</th><th>predicted</th>{heads}'
            "<th>shares</th></tr></thead><tbody>"]
    for name, counts in list(outcomes["per_type"].items()) + [("total", outcomes["total"])]:
        label = "total" if name == "total" else type_chip(name)
        rows.append(f'<tr{" class=total" if name == "total" else ""} data-type="{_escape(name)}"><td>{label}</td>'
                    f'<td>{counts["gold"]}</td><td>{counts["predicted"]}</td>'
                    + "".join(f'<td data-class="{k}">{counts[k]}</td>' for k in OUTCOMES)
                    + f'<td class="bar">{_stacked_bar(counts, OUTCOMES)}</td></tr>')
    rows.append("</tbody></table>")
    legend = '<div class="legend">' + "".join(
        f'<span><span class="swatch" style="background:{OUTCOME_COLOURS[k]}"></span>{OUTCOME_NAMES[k]}</span>'
        for k in OUTCOMES) + "</div>"
    return "".join(rows) + legend


def _confusion_table(confusion: dict) -> str:
    columns, counts = confusion["columns"], confusion["counts"]
    rows = ['<table class="cm"><thead><tr><th>gold \\ predicted</th>'
            + "".join(f"<th>{_escape(c) if c == 'missed' else type_chip(c)}</th>" for c in columns)
            + "</tr></thead><tbody>"]
    for name, row in zip(confusion["rows"], counts):
        total = sum(row) or 1
        label = _escape(name) if name == "spurious" else type_chip(name)
        cells = "".join(
            f'<td style="background:rgba(44,93,153,{0.85 * value / total:.3f});'
            f'color:{"#fff" if value / total > 0.55 else "inherit"}">{value}</td>' for value in row)
        rows.append(f"<tr><td>{label}</td>{cells}</tr>")
    rows.append("</tbody></table>")
    return "".join(rows)


def _slices_tables(slices: dict) -> str:
    parts = []
    for name, buckets in slices.items():
        parts.append(f"<h3>{_escape(name)}</h3><table class=\"slice\" data-slice=\"{_escape(name)}\"><thead><tr>"
                     "<th>bucket</th><th>gold</th><th>predicted</th><th>exact</th><th>precision</th><th>recall</th>"
                     "<th>F1</th><th></th></tr></thead><tbody>")
        for row in buckets:
            if row["gold"] or row["predicted"]:
                scores = _number(row["precision"]) + _number(row["recall"]) + _number(row["f1"])
                bar = (f'<div class="bar-track"><span style="width:{100 * row["f1"]:.1f}%;background:#2c5d99">'
                       '</span></div>')
            else:  # no entity on either side: nothing was scored, so no score is shown (the JSON says 0)
                scores, bar = '<td class="none" title="no entity in this bucket">&ndash;</td>' * 3, ""
            parts.append(f'<tr data-bucket="{_escape(row["name"])}"><td>{_escape(row["name"])}</td>'
                         f'<td>{row["gold"]}</td><td>{row["predicted"]}</td><td>{row["exact"]}</td>'
                         + scores + f'<td class="bar">{bar}</td></tr>')
        parts.append("</tbody></table>")
    return "".join(parts)


def _options(values: Sequence[str], names: Sequence[str]) -> str:
    return "".join(f'<option value="{_escape(v)}">{_escape(n)}</option>' for v, n in zip(values, names))


def _source_link(source: dict | None) -> str:
    if not source:
        return ""
    where = source.get("where") or f"{source['file']}:{source['line']}"
    if not os.path.isfile(source["file"]):  # a hub dataset's record, or a file since moved
        return _escape(where)
    href = "file://" + quote(os.path.abspath(source["file"]))
    return f'<a href="{_escape(href)}">{_escape(where)}</a>'


def _describe(outcome: dict, tokens: Sequence[str]) -> str:
    def words(span) -> str:
        return " ".join(tokens[span[1]:span[2]])

    gold, pred = outcome["gold"], outcome["pred"]
    if outcome["class"] == "missed":
        return f"{gold[0]} \u201c{words(gold)}\u201d not found"
    if outcome["class"] == "spurious":
        return f"{pred[0]} \u201c{words(pred)}\u201d not in the gold data"
    if outcome["class"] == EXACT:
        return f"{gold[0]} \u201c{words(gold)}\u201d"
    return f"gold {gold[0]} \u201c{words(gold)}\u201d, predicted {pred[0]} \u201c{words(pred)}\u201d"


def _sentence_block(sentence: dict) -> str:
    tokens = sentence["tokens"]
    kind_of_gold, kind_of_pred = {}, {}
    for outcome in sentence["outcomes"]:
        if outcome["gold"]:
            kind_of_gold[tuple(outcome["gold"])] = outcome["class"]
        if outcome["pred"]:
            kind_of_pred[tuple(outcome["pred"])] = outcome["class"]

    def spans(entities, kinds) -> list:
        found = []
        for span in entities:
            kind = kinds.get(tuple(span), EXACT)
            found.append((span[0], span[1], span[2], f"{span[0]}: {OUTCOME_NAMES[kind]}", kind != EXACT))
        return found

    items = "".join(
        f'<li class="outcome" data-class="{o["class"]}" data-gold="{_escape(o["gold"][0] if o["gold"] else "")}" '
        f'data-pred="{_escape(o["pred"][0] if o["pred"] else "")}"><span class="badge" '
        f'style="background:{OUTCOME_COLOURS[o["class"]]}">{OUTCOME_NAMES[o["class"]]}</span>'
        f'{_escape(_describe(o, tokens))}</li>'
        for o in sentence["outcomes"])
    return (f'<div class="sentence" data-index="{sentence["index"]}"><div class="head">'
            f'<span>sentence {sentence["index"] + 1}: {sentence["errors"]} error{"s" if sentence["errors"] != 1 else ""}'
            f'</span><span>{_source_link(sentence["source"])}</span></div>'
            f'<div class="line gold"><span class="side">gold</span>'
            f'{highlight_words(tokens, spans(sentence["gold"], kind_of_gold))}</div>'
            f'<div class="line pred"><span class="side">predicted</span>'
            f'{highlight_words(tokens, spans(sentence["pred"], kind_of_pred))}</div>'
            f'<ul class="outcomes">{items}</ul></div>')


def render_report(report: dict) -> str:
    """The error report as one self-contained HTML page.

    Args:
        report: what `nerlib.evaluation.error_report` returns (scores, outcomes, confusion,
            slices, sentences).

    Returns:
        The page.
    """
    lenient, strict = report["scores"]["lenient"], report["scores"].get("strict")
    totals = report["outcomes"]["total"]
    errors = {k: totals[k] for k in ERROR_CLASSES}
    error_count = sum(errors.values())
    summary = (f"F1 {lenient['f1']:.4f} (precision {lenient['precision']:.4f}, recall {lenient['recall']:.4f}) over "
               f"{totals['gold']} gold and {totals['predicted']} predicted entities; {totals[EXACT]} exact matches, "
               f"{error_count} errors")
    if error_count:
        top = max(ERROR_CLASSES, key=lambda k: errors[k])
        summary += f"; the most frequent error is <b>{OUTCOME_NAMES[top]}</b> ({errors[top]}, " \
                   f"{100 * errors[top] / error_count:.1f}% of errors)"
    types = report["types"]
    body = [
        f"<h1>Error report: {_escape(report.get('model', ''))}</h1>",
        f'<p class="meta">{_escape(report["split"])} split of {_escape(report["data"])}: {report["sentences"]} '
        f'sentences, {lenient["words"]} words scored'
        + (f'; fine-tuned from {_escape(report["base_model"])}' if report.get("base_model") else "")
        + f'; nerlib {_escape(report.get("nerlib_version", ""))}</p>',
        f'<p class="summary">{summary}.</p>',
        _type_legend(types),
        "<h2 id=\"scores\">Scores</h2>",
        '<p class="note">Entity-level precision, recall and F1 as <code>evaluate.py</code> prints them: lenient is '
        "seqeval's default reading of BIO tags (an <code>I-X</code> after <code>O</code> starts an entity), strict "
        "reads IOB2 strictly. Support: gold entities.</p>",
        _scores_table(lenient, strict, report["types"]),
        "<h2 id=\"outcomes\">What became of each entity</h2>",
        '<p class="note">Every gold entity and every predicted one has one outcome. Exact: same words, same type. '
        "Wrong type: same words, another type. Wrong boundary: overlapping words, same type. Wrong boundary and "
        "type: overlapping words, another type. Missed: a gold entity paired with no prediction. Spurious: a "
        "prediction paired with no gold entity. Pairs are one to one: a prediction spanning two gold entities pairs "
        "with the one it shares more words with, and the other is missed. Rows count by the gold type; spurious by "
        "the predicted type.</p>",
        _outcomes_table(report["outcomes"]),
        "<h2 id=\"confusion\">Type confusion</h2>",
        '<p class="note">Gold type (rows) against predicted type (columns) of every paired outcome: exact and '
        "wrong-boundary pairs on the diagonal, wrong types off it. Shading: share of the row.</p>",
        _confusion_table(report["confusion"]),
        "<h2 id=\"slices\">Slices</h2>",
        '<p class="note">Each gold and each predicted entity falls in a bucket by its own words (seen: its words '
        "are those of a gold entity of the training split), its length, its sentence's length, and how many windows "
        "its sentence was cut into. Recall: exact matches over gold entities of the bucket; precision: over "
        "predicted ones.</p>",
        _slices_tables(report["slices"]),
        "<h2 id=\"sentences\">Sentences with the most errors</h2>",
        f'<p class="note">{len(report["worst_sentences"])} of the {report["sentences_with_errors"]} sentences with at least '
        "one error, most errors first. Dashed boxes: entities with an error.</p>",
        '<div class="filters"><label>error <select id="filter-class"><option value="">any</option>'
        + _options(ERROR_CLASSES, [OUTCOME_NAMES[k] for k in ERROR_CLASSES]) + "</select></label>"
        '<label>type <select id="filter-type"><option value="">any</option>' + _options(types, types)
        + f'</select></label><span id="shown">{len(report["worst_sentences"])}</span> sentences shown</div>',
        "".join(_sentence_block(sentence) for sentence in report["worst_sentences"]),
    ]
    return _page_head(f"Error report: {report.get('model', '')}") + "\n".join(body) + "\n" + _page_tail(FILTER_SCRIPT)


def write_report(report: dict, html_path: str | None = None, json_path: str | None = None) -> None:
    """Write the report as HTML and/or JSON.

    Raises:
        ConfigError: a file cannot be written.
    """
    for path, text in ((html_path, lambda: render_report(report)),
                       (json_path, lambda: json.dumps(report, indent=1, ensure_ascii=False) + "\n")):
        if not path:
            continue
        try:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text())
        except OSError as exc:
            raise ConfigError(f"{path}: cannot write the report ({exc.strerror})") from None


def entity_page_head(title: str = "Tagged texts") -> str:
    """The start of a page of tagged texts (then `entity_page_text` for each text, then `entity_page_tail`)."""
    return _page_head(title) + f"<h1>{_escape(title)}</h1>\n"


def entity_page_text(number: int, text: str, entities: Sequence) -> str:
    """One tagged text: `entities` have `type`, `start`, `end` (character offsets) and `score`."""
    spans = [(e.type, e.start, e.end, f"{e.type} {e.score:.3f}", False) for e in entities]
    return f'<div class="text"><span class="num">{number}</span>{highlight_text(text, spans)}</div>\n'


def entity_page_tail(types: Iterable[str] = ()) -> str:
    """The end of a page of tagged texts, with a legend of the types."""
    return (_type_legend(types) if types else "") + _page_tail()
