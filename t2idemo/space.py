"""Deploy the app as a Hugging Face Space in one command (run it from a clone of this repository):

    HF_TOKEN=hf_... python -m t2idemo space --repo-id alice/t2idemo

It creates the Gradio Space (or updates it) with ``HfApi.create_repo(repo_type="space", space_sdk="gradio")`` and
uploads, in one ``upload_folder`` commit (large files go to the Hub's storage; no git LFS set-up here):

    app.py, t2idemo/ (the library and its shipped models; no tests, notebooks or docs)
    requirements.txt   what the app imports: the CPU build of torch (pytorch.org's CPU index, ``torch==X+cpu``: a
                       CPU Space has no use for the multi-GB CUDA build) and pyproject.toml's dependencies; no gradio
                       (the SDK version in the front matter is the one the Space installs)
    README.md          front matter: sdk gradio, sdk_version (the gradio installed here), python_version, app_file,
                       hf_oauth (visitors share with "Sign in with Hugging Face"; see t2idemo/spacesync.py)

With ``--labels`` (the default) it also creates the private dataset repo OWNER/NAME-labels and stores the token as
the Space's HF_TOKEN secret, so the Space saves what visitors label there and restores it after a restart
(t2idemo/spacesync.py). The token is read from the environment variable --token-env names, used in memory only,
never printed, logged or written to disk; error text is scrubbed of it (as ``t2idemo.hub.push``).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass

from .config import parse_config
from .hub import PushError, check_repo_id, check_token, run_with_token, scrub
from .hub_files import _front_matter, _link, link_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.dirname(os.path.abspath(__file__))
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
NOT_ON_A_SPACE = ("gradio", "datasets")  # the SDK brings gradio; datasets only reads the kit's sets in the tests
OAUTH_SCOPES = ["write-repos", "manage-repos"]  # Share: create the visitor's repos and push to them
LABELS_SUFFIX = "-labels"  # the dataset repo of a Space's labels: OWNER/NAME-labels


@dataclass
class SpaceConfig:
    # 'owner/name' of the Space
    repo_id: str = ""
    # create the Space private (an existing one keeps its visibility)
    private: bool = False
    # save visitors' labels to the private dataset OWNER/NAME-labels (the token -> Space secret)
    labels: bool = True
    # torch version of the Space's CPU wheel; "" = the one installed here, e.g. 2.13.0
    torch: str = ""
    # Hub URL; "" = huggingface_hub's default (HF_ENDPOINT, else https://huggingface.co)
    endpoint: str = ""
    # the environment variable holding a write token (never the token itself)
    token_env: str = "HF_TOKEN"

    def __post_init__(self):
        check_repo_id(self.repo_id)
        if self.torch and not re.fullmatch(r"\d+\.\d+(\.\d+)?", self.torch):
            raise ValueError(
                f"torch={self.torch!r} is not a release number; use e.g. 2.13.0, or '' for the installed one"
            )
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(
                f"endpoint={self.endpoint!r} is not a URL; use e.g. https://huggingface.co, or '' for the default"
            )
        if not os.path.isfile(os.path.join(ROOT, "app.py")):
            raise ValueError(
                f"repo_id={self.repo_id!r}: no app.py next to {PACKAGE}; run `python -m t2idemo space` "
                f"from a clone of the t2idemo repository"
            )


def labels_repo(space_id: str) -> str:
    """The dataset repo that keeps a Space's labels."""
    return space_id + LABELS_SUFFIX


def dependencies(pyproject: str = os.path.join(ROOT, "pyproject.toml")) -> list:
    """pyproject.toml's [project] dependencies, in order (the one list of them)."""
    with open(pyproject, encoding="utf-8") as f:
        m = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", f.read(), flags=re.M | re.S)
    if not m:
        raise ValueError(f"pyproject={pyproject!r} has no [project] dependencies list")
    return re.findall(r'^\s*"([^"]+)"', m.group(1), flags=re.M)


def requirements(torch_version: str = "") -> str:
    """The Space's requirements.txt: CPU torch from pytorch.org's index, then what the app imports."""
    if not torch_version:
        import torch

        torch_version = torch.__version__.split("+")[0]
    deps = [d for d in dependencies() if re.split(r"[<>=!~ \[;]", d)[0].lower() not in ("torch",) + NOT_ON_A_SPACE]
    return "\n".join([f"--extra-index-url {TORCH_CPU_INDEX}", f"torch=={torch_version}+cpu", *deps, ""])


def space_card(repo_id: str, labels: bool) -> str:
    """The Space's README.md: the front matter a Space build reads, then a few lines for visitors."""
    import platform

    try:
        import gradio
    except ImportError as e:
        raise ImportError(
            "python -m t2idemo space pins the Space's gradio to the one installed here; install it "
            "with: pip install gradio (or pip install -r requirements.txt)"
        ) from e

    meta = {
        "title": repo_id.split("/")[1],
        "emoji": "🔺",
        "colorFrom": "blue",
        "colorTo": "yellow",
        "sdk": "gradio",
        "sdk_version": gradio.__version__,
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "app_file": "app.py",
        "hf_oauth": True,
        "hf_oauth_scopes": OAUTH_SCOPES,
        "pinned": False,
        "license": "apache-2.0",
        "short_description": "Label images, tune a text-to-image model on them",
    }
    saved = (
        f"Labels are saved to the private dataset [{labels_repo(repo_id)}](https://huggingface.co/datasets/"
        f"{labels_repo(repo_id)}) every minute and restored when the Space restarts."
        if labels
        else "Labels live on the Space's disk only: a restart loses them."
    )
    return "\n".join(
        [
            _front_matter(meta),
            "# t2idemo",
            "",
            "Aligning a text-to-image model with human feedback (Lee et al. 2023) in the shapes world: "
            "**Label** images, **Train** a reward model and tune the model on your labels, **Compare**, "
            "**Share** (sign in with Hugging Face).",
            "",
            saved,
            "",
        ]
    )


def stage(out: str, cfg: SpaceConfig) -> int:
    """The Space's files in ``out`` (links, no copies); returns the number of files."""
    os.makedirs(out)
    _link(os.path.join(ROOT, "app.py"), os.path.join(out, "app.py"))
    n = 1 + link_tree(PACKAGE, os.path.join(out, "t2idemo"))
    with open(os.path.join(out, "requirements.txt"), "w", encoding="utf-8") as f:
        f.write(requirements(cfg.torch))
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(space_card(cfg.repo_id, cfg.labels))
    return n + 2


def deploy(cfg: SpaceConfig, token: str, log=print) -> dict:
    """Create or update the Space (and its labels dataset) -> {"space": url, "labels": url or None, "files": n}."""
    from huggingface_hub import HfApi, constants

    token = check_token(token)
    if constants.is_offline_mode():
        raise ValueError(
            "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, so huggingface_hub makes no network "
            "requests; unset it in the environment of this process to deploy"
        )
    api = HfApi(endpoint=cfg.endpoint or None, token=token, library_name="t2idemo")
    out, step = {"space": None, "labels": None, "files": 0}, "staging the files"
    try:
        with tempfile.TemporaryDirectory(prefix="t2idemo-space-") as tmp:
            n = stage(os.path.join(tmp, "space"), cfg)
            step = f"creating the Space {cfg.repo_id}"
            url = api.create_repo(
                cfg.repo_id, repo_type="space", space_sdk="gradio", private=cfg.private or None, exist_ok=True
            )
            if cfg.labels:
                step = f"creating the labels dataset {labels_repo(cfg.repo_id)}"
                out["labels"] = str(
                    api.create_repo(labels_repo(cfg.repo_id), repo_type="dataset", private=True, exist_ok=True)
                )
                step = f"setting the Space's HF_TOKEN secret of {cfg.repo_id}"
                api.add_space_secret(cfg.repo_id, "HF_TOKEN", token, description="t2idemo: saves the labels")
            step = f"uploading {n} files to the Space {cfg.repo_id}"
            log(f"{step} ...")
            api.upload_folder(
                repo_id=cfg.repo_id,
                repo_type="space",
                folder_path=os.path.join(tmp, "space"),
                commit_message="t2idemo app",
                delete_patterns=["t2idemo/**"],
            )
            out["space"], out["files"] = str(url), n
    except Exception as e:  # the Hub's answer, with the token scrubbed; the chain is dropped for the same reason
        raise PushError(scrub(f"deploy failed while {step}: {type(e).__name__}: {e}", token)) from None
    log(f"deployed {out['space']}" + (f"; labels saved to {out['labels']}" if out["labels"] else ""))
    return out


def main(argv=None):
    cfg = parse_config(
        SpaceConfig,
        argv,
        prog="python -m t2idemo space",
        description="Create or update a Gradio Space running the app (CPU), and the dataset that "
        "keeps its labels. The token is read from the environment variable --token-env "
        "names (HF_TOKEN by default).",
    )
    run_with_token(deploy, cfg)
    return 0
