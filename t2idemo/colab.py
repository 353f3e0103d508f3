"""The notebooks' Colab badge and Setup cell, written from the one place that names the repository: pyproject.toml's
``[project.urls] Repository``.

    python -m t2idemo colab            # rewrite every notebook's badge and Setup cell from pyproject.toml
    python -m t2idemo colab --check    # exit 1, naming the notebooks, if one is out of date (tests/test_notebooks.py)

On Colab the Setup cell pip-installs ``t2idemo[colab]`` (t2idemo, its dependencies and ipywidgets 8) from the
repository: ``git+URL``, or, when T2IDEMO_REPO names a path (a local clone or a built wheel, as the tests do),
from there. Colab's own torch and kernel are kept. Locally it installs nothing.
"""

from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
BADGE = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"

SETUP_MD = """## Setup

Run the next cell once. **On Colab** (a minute or two) it installs `t2idemo` and what Colab lacks (Colab's own
torch stays) from {repo} (`T2IDEMO_REPO` in the environment points it at a fork or a local clone instead).
**Locally** it installs and downloads nothing: it imports `t2idemo` from the checkout this notebook lives in (run
`pip install torch==2.13.0 && pip install -r requirements.txt` in the repository once, as the README says)."""

SETUP = """import os, pathlib, subprocess, sys
from IPython.display import display

IN_COLAB = "google.colab" in sys.modules
REPO_URL = os.environ.get("T2IDEMO_REPO", "{repo}")  # or a fork's URL, a path

if IN_COLAB:  # install t2idemo with what Colab lacks; Colab's own torch stays
    src = pathlib.Path(REPO_URL).resolve().as_uri() if os.path.exists(REPO_URL) else "git+" + REPO_URL
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"t2idemo[colab] @ {src}"], check=True)
    from google.colab import output
    output.enable_custom_widget_manager()  # the labeling widget (ipywidgets) needs it
else:  # locally: find the repository root (this notebook sits in notebooks/) and import from it
    root = os.path.abspath("")
    while not os.path.isfile(os.path.join(root, "t2idemo", "__init__.py")) and os.path.dirname(root) != root:
        root = os.path.dirname(root)
    if os.path.isfile(os.path.join(root, "t2idemo", "__init__.py")) and root not in sys.path:
        sys.path.insert(0, root)

import torch
import t2idemo
print(f"t2idemo from {os.path.dirname(t2idemo.__file__)}; Colab: {IN_COLAB}; GPU: {torch.cuda.is_available()}")"""


def repo_url(pyproject: str = os.path.join(ROOT, "pyproject.toml")) -> str:
    """``[project.urls] Repository`` of pyproject.toml: the repository's one URL."""
    with open(pyproject, encoding="utf-8") as f:
        m = re.search(r'^\[project\.urls\][^\[]*?^Repository\s*=\s*"([^"]+)"', f.read(), flags=re.M | re.S)
    if not m:
        raise ValueError(
            f"pyproject={pyproject!r} has no Repository under [project.urls]; add "
            f'Repository = "https://github.com/OWNER/NAME"'
        )
    return m.group(1).rstrip("/")


def badge(repo: str, notebook: str) -> str:
    """The "Open in Colab" badge of ``notebooks/NOTEBOOK`` in a GitHub repository."""
    m = re.fullmatch(r"https://github\.com/([^/]+/[^/]+?)(\.git)?", repo)
    if not m:
        raise ValueError(
            f"repo={repo!r} is not a GitHub repository URL; Colab opens notebooks from https://github.com/OWNER/NAME"
        )
    return BADGE.format(url=f"https://colab.research.google.com/github/{m.group(1)}/blob/main/notebooks/{notebook}")


def sync(path: str, repo: str | None = None, write: bool = True) -> bool:
    """Write the badge (under the title) and the Setup cells of one notebook; True if it was (or, with
    ``write=False``, would be) changed."""
    import nbformat

    repo = repo or repo_url()
    nb = nbformat.read(path, as_version=4)
    md = next(c for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## Setup"))
    code = next(c for c in nb.cells if c.cell_type == "code")
    title = nb.cells[0].source.split("\n")[0]
    want = {
        id(nb.cells[0]): f"{title}\n\n{badge(repo, os.path.basename(path))}",
        id(md): SETUP_MD.format(repo=repo),
        id(code): SETUP.replace("{repo}", repo),
    }
    cells = {id(c): c for c in (nb.cells[0], md, code)}
    changed = any(cells[k].source != v for k, v in want.items())  # only what this writes: other cells as they are
    for k, v in want.items():
        cells[k].source = v
    if changed and write:
        nbformat.write(nb, path)
    return changed


def main(argv=None) -> int:
    from .config import Parser

    p = Parser(
        prog="python -m t2idemo colab",
        description="Write the notebooks' Colab badges and Setup cells "
        "from pyproject.toml's [project.urls] Repository.",
    )
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook is out of date")
    args = p.parse_args(argv)
    paths = sorted(os.path.join(NOTEBOOKS, f) for f in os.listdir(NOTEBOOKS) if f.endswith(".ipynb"))
    stale = [os.path.relpath(q, ROOT) for q in paths if sync(q, write=not args.check)]
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run python -m t2idemo colab")
        return 1
    print(f"{'checked' if args.check else 'wrote'} {len(paths)} notebooks: {repo_url()}")
    return 0
