"""Share a run on the Hugging Face Hub: the model folder, the reward model, the labels dataset and a model card.

    HF_TOKEN=hf_... python -m t2idemo push --repo-id alice/t2idemo-aligned --model runs/aligned \\
        --reward runs/reward --data data/feedback

What goes where (the Gradio app's Share tab calls the same ``push``; the staging folders and the cards are
``t2idemo.hub_files``):

    model repo   REPO_ID           the StableDiffusionPipeline folder at the root (diffusers loads it as is),
                                   reward/ (the reward head, its config and, when it is a local folder, its
                                   frozen CLIP in reward/clip/), README.md (the model card written here)
    dataset repo REPO_ID           data/ (the images and metadata.jsonl, whose "label" field is the majority
                 (type dataset)    vote of the label store), labels/labels.jsonl (every labeler's current
                                   label), README.md (the dataset card written here)

A model repo and a dataset repo may share a name on the Hub, so both use REPO_ID. Each repo gets one
commit (``HfApi.upload_folder`` of a staging folder of symbolic links, so nothing large is copied).

The token. It is an argument of ``push`` and nothing else: it is never a config field (configs are
printed), never written to disk (no ``login()``; it goes to ``HfApi(token=...)`` in memory only), never
printed or logged, and any error text is scrubbed of it. The command line reads it from an environment
variable (``--token-env``, default HF_TOKEN), never from a flag that would land in the shell history.
``--endpoint`` (or HF_ENDPOINT) points at another Hub, such as the local fake one of the tests.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from .config import parse_config
from .generate import ALIGNED_MODEL
from .hub_files import dataset_card, model_card, stage_dataset, stage_model
from .label_store import default_store_path
from .reward import CONFIG_FILE as REWARD_CONFIG_FILE
from .reward import REWARD_MODEL


class PushError(RuntimeError):
    """The Hub refused or failed a push; the message names the step and never holds the token."""


@dataclass
class PushConfig:
    # 'owner/name'; the model repo and the labels dataset repo both get this id
    repo_id: str = ""
    # StableDiffusionPipeline folder pushed at the repo root
    model: str = ALIGNED_MODEL
    # reward model folder (reward_config.json + head); "" pushes none
    reward: str = REWARD_MODEL
    # dataset folder whose labels.sqlite is exported as the labels dataset; "" pushes none
    data: str = ""
    # create the repos private (an existing repo keeps its visibility)
    private: bool = False
    # push the labelers' names with their labels; False replaces them by 'labeler 1', ...
    # (the app passes the set of labelers who agreed themselves: only they are named)
    labeler_names: bool = True
    # Hub URL; "" = huggingface_hub's default (HF_ENDPOINT, else https://huggingface.co)
    endpoint: str = ""
    # CLI only: the environment variable holding the token (never the token itself)
    token_env: str = "HF_TOKEN"

    def __post_init__(self):
        check_repo_id(self.repo_id)
        if not os.path.isfile(os.path.join(self.model, "model_index.json")):
            raise ValueError(
                f"model={self.model!r} is not a StableDiffusionPipeline folder (no model_index.json); "
                f"pass the folder of a trained pipeline, e.g. t2idemo/assets/tiny-sd"
            )
        if self.reward and not os.path.isfile(os.path.join(self.reward, REWARD_CONFIG_FILE)):
            raise ValueError(
                f"reward={self.reward!r} holds no {REWARD_CONFIG_FILE}; pass a folder written by "
                f"`python -m t2idemo reward train`, or '' to push no reward model"
            )
        if self.data and not os.path.isfile(default_store_path(self.data)):
            raise ValueError(
                f"data={self.data!r} has no {os.path.basename(default_store_path(self.data))}; label "
                f"some images first (the app's Label tab, the notebook Labeler or `python -m t2idemo "
                f"label`), or pass '' to push no labels"
            )
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(
                f"endpoint={self.endpoint!r} is not a URL; use e.g. https://huggingface.co, or '' for the default"
            )


def check_repo_id(repo_id) -> str:
    """Return ``repo_id`` if it is 'owner/name' as the Hub allows, else raise a ValueError saying why."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    allowed = (
        "use 'owner/name' with letters, digits, '-', '_' and '.' (no '--' or '..', at most 96 "
        "characters), e.g. 'alice/t2idemo-aligned'"
    )
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id={repo_id!r} is not allowed; {allowed}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f"repo_id={repo_id!r} is not allowed ({e}); {allowed}") from None
    return repo_id


def check_token(token) -> str:
    """Return the stripped token, or raise a ValueError that never echoes it."""
    if not isinstance(token, str) or not token.strip():
        raise ValueError(
            "token is empty; paste a Hugging Face access token with write access "
            "(https://huggingface.co/settings/tokens). It is used for this push only, never saved"
        )
    token = token.strip()
    if any(c.isspace() for c in token) or not token.isprintable():
        raise ValueError("token=<hidden> contains spaces or control characters; paste the token alone")
    return token


def scrub(text: str, token: str | None) -> str:
    """``text`` with every occurrence of the token replaced by '<token>'."""
    return text.replace(token, "<token>") if token else text


# ----------------------------------------------------------------------------- push
def push(cfg: PushConfig, token: str, log=print) -> dict:
    """Create the repos (or reuse them) and upload: one commit to the model repo, one to the dataset repo.
    Returns {"model": url, "dataset": url or None, "files": {"model": n, "dataset": n}}."""
    from huggingface_hub import HfApi, constants

    token = check_token(token)
    if constants.is_offline_mode():
        raise ValueError(
            "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, so huggingface_hub makes no network "
            "requests; unset it in the environment of this process to push"
        )
    api = HfApi(endpoint=cfg.endpoint or None, token=token, library_name="t2idemo")
    out = {"model": None, "dataset": None, "files": {}}
    step = "staging the files"
    try:
        with tempfile.TemporaryDirectory(prefix="t2idemo-push-") as tmp:
            stats = None
            if cfg.data:
                stats = stage_dataset(cfg.data, os.path.join(tmp, "dataset"), cfg.labeler_names)
                n = sum(len(f) for _, _, f in os.walk(os.path.join(tmp, "dataset")))
                with open(os.path.join(tmp, "dataset", "README.md"), "w", encoding="utf-8") as f:
                    f.write(dataset_card(cfg.repo_id, stats, cfg.repo_id))
                step = f"creating the dataset repo {cfg.repo_id}"
                url = api.create_repo(cfg.repo_id, repo_type="dataset", private=cfg.private or None, exist_ok=True)
                step = f"uploading {n + 1} files to the dataset repo {cfg.repo_id}"
                log(f"{step} ...")
                api.upload_folder(
                    repo_id=cfg.repo_id,
                    repo_type="dataset",
                    folder_path=os.path.join(tmp, "dataset"),
                    commit_message="Labels from t2idemo's label store",
                )
                out["dataset"], out["files"]["dataset"] = str(url), n + 1
            step, model_dir = "staging the model files", os.path.join(tmp, "model")
            n = stage_model(cfg.model, cfg.reward, model_dir)
            with open(os.path.join(model_dir, "README.md"), "w", encoding="utf-8") as f:
                f.write(model_card(cfg.repo_id, cfg.model, cfg.reward, stats, cfg.repo_id if cfg.data else None))
            step = f"creating the model repo {cfg.repo_id}"
            url = api.create_repo(cfg.repo_id, repo_type="model", private=cfg.private or None, exist_ok=True)
            step = f"uploading {n + 1} files to the model repo {cfg.repo_id}"
            log(f"{step} ...")
            api.upload_folder(
                repo_id=cfg.repo_id,
                repo_type="model",
                folder_path=model_dir,
                commit_message="Model, reward model and card from t2idemo",
            )
            out["model"], out["files"]["model"] = str(url), n + 1
    except Exception as e:  # the Hub's answer, with the token scrubbed; the chain is dropped for the same reason
        raise PushError(scrub(f"push failed while {step}: {type(e).__name__}: {e}", token)) from None
    log(f"pushed {out['model']}" + (f" and {out['dataset']}" if out["dataset"] else ""))
    return out


def main(argv=None):
    cfg = parse_config(
        PushConfig,
        argv,
        prog="python -m t2idemo push",
        description="Push a model folder, its reward model, the labels dataset and a model card to "
        "the Hugging Face Hub. The token is read from the environment variable "
        "--token-env names (HF_TOKEN by default).",
    )
    return run_with_token(push, cfg)


def run_with_token(action, cfg):
    """The push and space commands' ending: ``action(cfg, token)`` with the token read from the environment variable
    ``cfg.token_env`` names (never from the command line, so it stays out of the shell's history), its errors as one
    line (exit status 1)."""
    token = os.environ.get(cfg.token_env, "")
    if not token.strip():
        raise SystemExit(
            f"error: token_env={cfg.token_env!r}: that environment variable is not set or empty; "
            f"export {cfg.token_env}=<a token with write access> (https://huggingface.co/settings/tokens)"
        )
    try:
        return action(cfg, token)
    except (ValueError, PushError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
