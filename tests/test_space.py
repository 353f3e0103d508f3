"""``python -m t2idemo space``: the app as a Gradio Space, deployed to the fake Hub of tests/test_hub.py."""

import logging
import os
import subprocess
import sys

import pytest
import yaml
from test_hub import TOKEN, fake_hub, repo_files  # noqa: F401 (fake_hub is a fixture)

from t2idemo import space

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def front_matter(card: str) -> dict:
    assert card.startswith("---\n"), card[:100]
    return yaml.safe_load(card.split("---\n")[1])


def test_deploy_writes_a_space_that_a_space_build_accepts(fake_hub, capsys, caplog):  # noqa: F811
    import gradio
    import torch

    cfg = space.SpaceConfig(repo_id="alice/t2idemo", endpoint=fake_hub.url)
    with caplog.at_level(logging.DEBUG):
        out = space.deploy(cfg, TOKEN)
    assert out["space"] == f"{fake_hub.url}/spaces/alice/t2idemo" and out["labels"].endswith("alice/t2idemo-labels")
    files = fake_hub.files("alice/t2idemo", "space")

    # the app, the library with its shipped models, byte for byte; nothing else of the repository
    package = {
        f"t2idemo/{k}": v
        for k, v in repo_files(os.path.join(ROOT, "t2idemo")).items()
        if "__pycache__" not in k and not k.endswith(".pyc")
    }
    assert set(files) == set(package) | {"app.py", "requirements.txt", "README.md"}
    assert all(files[k] == v for k, v in package.items())
    assert files["app.py"] == open(os.path.join(ROOT, "app.py"), "rb").read()
    assert "t2idemo/assets/tiny-sd-aligned/unet/diffusion_pytorch_model.safetensors" in files

    # the front matter: the SDK and its version, the Python version, the app file, OAuth for Share
    meta = front_matter(files["README.md"].decode())
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__
    assert meta["app_file"] == "app.py" and meta["app_file"] in files
    assert meta["hf_oauth"] is True and "write-repos" in meta["hf_oauth_scopes"]
    assert str(meta["python_version"]) == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert meta["title"] == "t2idemo" and meta["emoji"] == "🔺" and len(meta["short_description"]) <= 60

    # requirements.txt: CPU torch from pytorch.org's CPU index, pyproject's dependencies, no gradio (the SDK's)
    reqs = files["requirements.txt"].decode().splitlines()
    assert reqs[:2] == [
        "--extra-index-url https://download.pytorch.org/whl/cpu",
        f"torch=={torch.__version__.split('+')[0]}+cpu",
    ]
    assert not any(r.startswith(("gradio", "datasets", "ipy", "nb")) for r in reqs)
    assert set(reqs[2:]) == {d for d in space.dependencies() if not d.startswith(("torch", "gradio", "datasets"))}

    # the labels dataset (private) and the Space's HF_TOKEN secret that writes to it; the token nowhere else
    assert ("dataset", "alice/t2idemo-labels") in fake_hub.repos
    create = [b for m, p, _, b in fake_hub.requests if p == "/api/repos/create"]
    assert b'"visibility":"private"' in create[1] and b'"sdk":"gradio"' in create[0]
    assert fake_hub.secrets["alice/t2idemo"] == {"HF_TOKEN": TOKEN}
    printed = capsys.readouterr()
    assert TOKEN not in printed.out + printed.err + caplog.text and "deployed" in printed.out
    assert not any(TOKEN.encode() in b for m, p, _, b in fake_hub.requests if "secrets" not in p)

    # again: the same repos, one more commit; a module gone from the package is deleted from the Space
    fake_hub.repos[("space", "alice/t2idemo")]["t2idemo/removed.py"] = b"x"
    space.deploy(cfg, TOKEN, log=lambda s: None)
    again = fake_hub.files("alice/t2idemo", "space")
    assert "t2idemo/removed.py" not in again and set(again) == set(files)
    assert len([c for c in fake_hub.commits if c[0] == "space"]) == 2


def test_deploy_without_labels_sets_no_secret(fake_hub):  # noqa: F811
    out = space.deploy(
        space.SpaceConfig(repo_id="bob/app", labels=False, endpoint=fake_hub.url), TOKEN, log=lambda s: None
    )
    assert out["labels"] is None and "bob/app" not in fake_hub.secrets
    assert ("dataset", "bob/app-labels") not in fake_hub.repos
    assert "disk only" in fake_hub.files("bob/app", "space")["README.md"].decode()


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match=r"repo_id='nope' is not allowed"):
        space.SpaceConfig(repo_id="nope")
    with pytest.raises(ValueError, match=r"torch='latest' is not a release number"):
        space.SpaceConfig(repo_id="a/b", torch="latest")
    with pytest.raises(ValueError, match=r"endpoint='hf.co' is not a URL"):
        space.SpaceConfig(repo_id="a/b", endpoint="hf.co")
    with pytest.raises(ValueError, match="token is empty"):
        space.deploy(space.SpaceConfig(repo_id="a/b"), " ")


def test_cli_reads_the_token_from_the_environment(fake_hub):  # noqa: F811
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
    args = [sys.executable, "-m", "t2idemo", "space", "--repo-id", "carol/app", "--endpoint", fake_hub.url]
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode != 0 and "token_env='HF_TOKEN'" in r.stderr
    r = subprocess.run(args, env={**env, "HF_TOKEN": TOKEN}, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert TOKEN not in r.stdout + r.stderr and "deployed" in r.stdout
    assert "app.py" in fake_hub.files("carol/app", "space")


def test_the_readmes_front_matter_says_what_the_space_gets():
    readme = front_matter(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read())
    card = front_matter(space.space_card("alice/t2idemo", True))
    for key in ("sdk", "sdk_version", "python_version", "app_file", "hf_oauth", "hf_oauth_scopes"):
        assert str(readme[key]) == str(card[key]), f"README.md's front matter: {key}: {readme[key]} != {card[key]}"
