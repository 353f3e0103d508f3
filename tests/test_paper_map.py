"""docs/guide.md's "The paper in the code": every function it names exists, every notebook step it names exists
and calls that row's module, and every departure from the paper it flags says why, with a link to the measurement.
A rename in t2idemo/ or a renumbered notebook step fails here until the table follows."""

import importlib
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDE = os.path.join(ROOT, "docs", "guide.md")
NB_DIR = os.path.join(ROOT, "notebooks")
# departures the table must flag (a word each must appear in the last column): the default filter instead of the
# paper's reward weights, the reward loss's extra term, the short session's reward model, the unlabelled images of
# unseen prompts, the judge in place of people, the FID's features
DEPARTURES = (
    "filter instead of reward weights",
    "`mlp_penalty`",
    "Not the paper's reward model",
    "unseen ones included",
    "the judge",
    "FID on the tiny CLIP",
)


def table() -> list[dict]:
    """The rows of the table under "## The paper in the code", as {column header: cell}."""
    text = open(GUIDE, encoding="utf-8").read()
    section = text.split("## The paper in the code", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    head, rows = split[0], split[2:]
    assert head == ["the paper", "functions", "notebook", "departure from the paper, and why"], head
    return [dict(zip(head, r)) for r in rows]


def functions(cell: str) -> list[tuple[str, str]]:
    """(module, attribute path) of every `module.name` or `module.Class.method` in a cell."""
    found = [(m.group(1), m.group(2)) for m in re.finditer(r"`(\w+)\.([\w.]+)`", cell)]
    return [(m, a) for m, a in found if a not in ("json", "py", "md", "png")]  # a file name is not a function


def steps(cell: str) -> list[tuple[str, int]]:
    """(notebook number, step) of every "NN, step K" in a cell."""
    return [(m.group(1), int(m.group(2))) for m in re.finditer(r"\b(\d\d), step (\d+)", cell)]


def step_code(number: str, step: int) -> str:
    """The code cells of notebook NUMBER_*.ipynb from its "Step STEP:" heading to its next heading."""
    nbformat = pytest.importorskip("nbformat")
    (name,) = [f for f in os.listdir(NB_DIR) if f.startswith(number + "_") and f.endswith(".ipynb")]
    nb = nbformat.read(os.path.join(NB_DIR, name), as_version=4)
    code, inside = [], False
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            heads = [ln for ln in cell.source.splitlines() if ln.startswith("#")]
            if any(re.match(rf"#+ Step {step}:", h) for h in heads):
                inside = True
            elif heads and inside:
                break
        elif inside:
            code.append(cell.source)
    assert code, f"{name} has no code under a 'Step {step}:' heading"
    return "\n".join(code)


def test_the_table_covers_the_paper():
    rows = table()
    parts = " ".join(r["the paper"] for r in rows).lower()
    for part in (
        "feedback",
        "reward model",
        "prompt classification",
        "pseudo-labelling",
        "eq. 2",
        "d_pre",
        "evaluation",
        "rejection sampling",
    ):
        assert part in parts, f"no row of the paper-to-code table for {part!r}"
    assert all(functions(r["functions"]) for r in rows), "a row names no `module.function`"


def test_every_named_function_exists():
    missing = []
    for r in table():
        for cell in (r["functions"], r["departure from the paper, and why"]):
            for module, attr in functions(cell):
                try:
                    obj = importlib.import_module(f"t2idemo.{module}")
                except ModuleNotFoundError:
                    missing.append(f"t2idemo.{module} (module)")
                    continue
                for part in attr.split("."):
                    if not hasattr(obj, part):
                        missing.append(f"t2idemo.{module}.{attr}")
                        break
                    obj = getattr(obj, part)
    assert not missing, f"docs/guide.md, The paper in the code, names what t2idemo/ lacks: {missing}"


def test_every_notebook_step_runs_its_row():
    bad = []
    for r in table():
        names = {n for m, a in functions(r["functions"]) for n in (m, a.split(".")[-1])}
        for number, step in steps(r["notebook"]):
            code = step_code(number, step)
            if not any(re.search(rf"\b{re.escape(n)}\b", code) for n in names):
                bad.append(f"notebook {number}, step {step} calls none of {sorted(names)}")
    assert not bad, "\n".join(bad)
    assert sum(len(steps(r["notebook"])) for r in table()) >= 10


def test_every_departure_is_flagged_with_its_reason():
    rows = table()
    last = " ".join(r["departure from the paper, and why"] for r in rows)
    for d in DEPARTURES:
        assert d in last, f"the paper-to-code table does not flag {d!r}"
    for r in rows:
        cell = r["departure from the paper, and why"]
        assert cell, f"row {r['the paper']!r}: say 'As the paper' or flag the departure"
        if not cell.startswith(("As the paper", "Not in the paper")):
            assert re.search(r"\d", cell) and "](" in cell or "`python -m t2idemo" in cell, (
                f"row {r['the paper']!r}: a departure needs its measured reason and a link to it: {cell}"
            )
