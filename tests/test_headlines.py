"""One number for one thing: the headline figures (the base's and the tuned model's unseen and seen combination
scores of the main job, and the shipped aligned model's) live in docs/headlines.json; every copy of them in the
README, docs/guide.md, the opening of docs/findings.md and the notebooks' markdown must agree with it.

How a copy is found (docs/headlines.json, "about", says the same to the writer):
- a markdown table row whose first cell is one of a figure's "rows" labels, in the column headed "combinations":
  its value and, when given, its [CI];
- a sentence that names "unseen combinations" or "seen combinations" and then "base N%", "tuned N%" (or "tuned
  model N%") or "tiny-sd-aligned N%": the nearest such split before the number (else the first after it) says which
  figure (up to 40 characters without a digit may stand between the name and the number); sentences that name
  another sample ("other_samples": fewer images, the small size, float32, ...) are skipped;
- a notebook's "What to expect" table, whose full-size column gives the RESULT keys of "result_keys" as fractions.
"""

import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADLINES = json.load(open(os.path.join(ROOT, "docs", "headlines.json"), encoding="utf-8"))
FIGURES = HEADLINES["figures"]
MODEL = {  # how a sentence names each model of the headline figures
    "base": r"\bbase\b",
    "tuned": r"\btuned\b",
    "tiny-sd-aligned": r"\btiny-sd-aligned\b",
}
GAP = r"[^\d%.;]{0,40}?"  # what may stand between the model's name and its figure: no number, no sentence end
SPLIT = re.compile(r"\b(unseen|seen) combinations?\b", re.I)
VALUE = r"(\d+(?:\.\d+)?)%"


def figure_of(model: str, split: str) -> str | None:
    return next((k for k, f in FIGURES.items() if f["model"] == model and f["split"] == split.lower()), None)


def table_copies(text: str) -> list[tuple[str, str, float, list | None]]:
    """(figure, row label, value, [lo, hi] or None) of every table row labelled as a headline figure."""
    found, rows_of = [], {label: k for k, f in FIGURES.items() for label in f["rows"]}
    header = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = [c.strip("* ").lower() for c in cells]
            continue
        label = cells[0].replace("*", "").replace("`", "").strip().lower()
        if label in rows_of and "combinations" in header:
            cell = cells[header.index("combinations")].replace("*", "")
            m = re.match(r"(\d+(?:\.\d+)?)(?: \[(\d+(?:\.\d+)?), (\d+(?:\.\d+)?)\])?", cell)
            assert m, f"row {label!r}: no number under 'combinations': {cell!r}"
            ci = [float(m.group(2)), float(m.group(3))] if m.group(2) else None
            found.append((rows_of[label], cells[0], float(m.group(1)), ci))
    return found


def sentences(text: str) -> list[str]:
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    prose = "\n".join(ln for ln in prose.splitlines() if not ln.startswith("|"))
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n|\n(?=- |\d+\. )", prose)]
    return [s for p in paragraphs for s in re.split(r"(?<=[.!?])\s+(?=[A-Z(*`\[])", p) if s]


def prose_copies(text: str) -> list[tuple[str, str, float, None]]:
    """(figure, sentence, value, None) of every sentence quoting a headline figure."""
    found = []
    for s in sentences(text):
        if any(marker in s for marker in HEADLINES["other_samples"]):
            continue
        splits = [(m.start(), m.group(1)) for m in SPLIT.finditer(s)]
        if not splits:
            continue
        for model, pattern in MODEL.items():
            for m in re.finditer(pattern + GAP + VALUE, s):
                before = [sp for pos, sp in splits if pos < m.start()]
                split = before[-1] if before else splits[0][1]
                key = figure_of(model, split)
                if key:
                    found.append((key, s, float(m.group(1)), None))
    return found


def notebook_copies(name: str) -> list[tuple[str, str, float, None]]:
    nbformat = pytest.importorskip("nbformat")
    from test_notebooks import NB_DIR, expected

    nb = nbformat.read(os.path.join(NB_DIR, name + ".ipynb"), as_version=4)
    text = "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    found = table_copies(text) + prose_copies(text)
    for key, want in expected(nb).items():
        if key in HEADLINES["result_keys"] and want["full"] is not None:
            found.append((HEADLINES["result_keys"][key], f"What to expect: {key}", 100 * want["full"], None))
    return found


def docs() -> dict:
    """{document: its copies of the headline figures}."""
    from test_notebooks import NOTEBOOKS

    read = lambda *p: open(os.path.join(ROOT, *p), encoding="utf-8").read()  # noqa: E731
    findings = read("docs", "findings.md").split("\n\n")[1]  # "Where things stand", the log's opening paragraph
    out = {
        "README.md": table_copies(read("README.md")) + prose_copies(read("README.md")),
        "docs/guide.md": table_copies(read("docs", "guide.md")) + prose_copies(read("docs", "guide.md")),
        "docs/findings.md (where things stand)": prose_copies(findings),
    }
    out.update({f"notebooks/{n}.ipynb": notebook_copies(n) for n in NOTEBOOKS})
    return out


def disagreements(copies: dict) -> list[str]:
    bad = []
    for doc, found in copies.items():
        for key, where, value, ci in found:
            f = FIGURES[key]
            if abs(value - f["value"]) > 0.051 or (ci is not None and ci != f["ci"]):
                shown = f"{value:g}" + (f" {ci}" if ci else "")
                bad.append(f"{doc}: {key} is {f['value']} {f['ci']} ({f['run']} run), here {shown}: {where[:160]}")
    return bad


def test_every_copy_of_a_headline_figure_agrees():
    bad = disagreements(docs())
    assert not bad, "headline figures that disagree with docs/headlines.json:\n" + "\n".join(bad)


def test_the_docs_quote_the_headline_figures():
    """The check would pass vacuously if the docs stopped quoting the figures in a form it reads."""
    seen = {doc: {key for key, *_ in found} for doc, found in docs().items()}
    assert seen["README.md"] == set(FIGURES), seen["README.md"]
    assert {"base_unseen", "tuned_unseen"} <= seen["docs/guide.md"], seen["docs/guide.md"]
    assert {"base_unseen", "tuned_unseen", "shipped_unseen"} <= seen["docs/findings.md (where things stand)"]
    for nb, keys in (
        ("00_quickstart", {"base_unseen", "shipped_unseen"}),
        ("04_evaluate_and_share", {"base_unseen", "shipped_unseen"}),
        ("05_beyond_the_paper", {"base_unseen", "tuned_unseen"}),
    ):
        assert keys <= seen[f"notebooks/{nb}.ipynb"], (nb, seen[f"notebooks/{nb}.ipynb"])


def test_an_edited_copy_is_found():
    """The reader's own check: a stale copy in each form is reported, another sample is not."""
    text = (
        "On unseen combinations the main job goes from base 32.6% -> tuned 58.0%.\n\n"
        "| | count | combinations |\n|---|---|---|\n| tuned, seen prompts | 90.0 | 63.1 [59.0, 67.3] |\n\n"
        "On 256 unseen combination images the base draws 32.0%.\n\n"
        "Seen combinations: `tiny-sd-aligned` 77.9%, and unseen combinations: base 32.8%."
    )
    bad = disagreements({"text": table_copies(text) + prose_copies(text)})
    assert len(bad) == 2, bad
    assert any("tuned_seen" in b and "63.1" in b for b in bad) and any("base_unseen" in b and "32.6" in b for b in bad)
    assert {k for k, *_ in prose_copies(text)} == {"base_unseen", "tuned_unseen", "shipped_seen"}
