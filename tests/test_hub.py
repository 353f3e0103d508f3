"""Pushing to the Hub (t2idemo.hub), against FakeHub: a local HTTP server that speaks the part of the Hub
API that HfApi.create_repo and HfApi.upload_folder use. Nothing here reaches the real Hub."""

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import pytest
from conftest import make_render_dataset

from t2idemo import hub
from t2idemo.generate import BASE_MODEL
from t2idemo.label_store import LabelStore, default_store_path
from t2idemo.reward import resolve_clip

TOKEN = "hf_" + "fakeTokenForTests0123456789abcdef"  # fake; split so no scanner takes it for a real token


# ----------------------------------------------------------------------------- the fake Hub
class FakeHub(ThreadingHTTPServer):
    """In-memory Hub: POST /api/repos/create, /api/validate-yaml, /api/{type}s/{id}/preupload/{rev} (every file
    "regular", so contents come inline), /api/{type}s/{id}/commit/{rev} (NDJSON: files and deletions) and
    /api/spaces/{id}/secrets (``secrets``); GET /api/{type}s/{id}[/revision/{rev}], /api/{type}s/{id}/tree/{rev}
    and GET/HEAD /[{type}s/]{id}/resolve/{rev}/{path}, which is what snapshot_download and hf_hub_download read.
    Requires ``Bearer token`` for writes. ``repos[(type, repo_id)]`` is {path: bytes}; ``requests`` records
    (method, path, {lower-case header: value}, body)."""

    daemon_threads = True

    def __init__(self, token: str = TOKEN):
        self.token, self.repos, self.commits, self.requests, self.secrets = token, {}, [], [], {}
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def files(self, repo_id: str, repo_type: str = "model") -> dict:
        return self.repos[(repo_type, repo_id)]

    def close(self):
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def _reply(self, status: int, payload: dict, headers: dict | None = None):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head=False):
        hub_ = self.server
        hub_.requests.append(
            ("HEAD" if head else "GET", self.path, {k.lower(): v for k, v in self.headers.items()}, b"")
        )
        path = unquote(urlparse(self.path).path)
        m = re.fullmatch(
            r"/api/(model|dataset|space)s/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+)(/.*)?)?", path
        ) or re.fullmatch(r"/(?:(dataset|space)s/)?([^/]+/[^/]+)/(resolve)/([^/]+)/(.+)", path)
        if not m:
            return self._reply(404, {"error": f"{path} is not part of the fake Hub"})
        kind, repo_id, action, _revision, rest = m.groups()
        kind = kind or "model"
        files = hub_.repos.get((kind, repo_id))
        sha = next(
            (f"{i + 1:040x}" for i in reversed(range(len(hub_.commits))) if hub_.commits[i][:2] == (kind, repo_id)),
            "0" * 40,
        )
        if files is None:
            return self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if action == "resolve":
            if rest not in files:
                return self._reply(
                    404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha}
                )
            data = files[rest]
            self.send_response(200)
            for k, v in {
                "Content-Length": str(len(data)),
                "X-Repo-Commit": sha,
                "ETag": f'"{_git_oid(data)}"',
                "Content-Type": "application/octet-stream",
            }.items():
                self.send_header(k, v)
            self.end_headers()
            return None if head else self.wfile.write(data)
        tree = [{"type": "file", "path": p, "size": len(b), "oid": _git_oid(b)} for p, b in sorted(files.items())]
        if action == "tree":
            return self._reply(200, tree)
        return self._reply(
            200, {"id": repo_id, "sha": sha, "private": False, "siblings": [{"rfilename": f["path"]} for f in tree]}
        )

    def do_POST(self):
        hub_ = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        hub_.requests.append(("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        if self.headers.get("Authorization") != f"Bearer {hub_.token}":
            return self._reply(401, {"error": "Invalid credentials in Authorization header"})
        path = urlparse(self.path).path
        if path == "/api/validate-yaml":
            return self._reply(200, {"errors": [], "warnings": []})
        m = re.fullmatch(r"/api/spaces/([^/]+/[^/]+)/secrets", path)
        if m:
            req = json.loads(body)
            hub_.secrets.setdefault(m.group(1), {})[req["key"]] = req["value"]
            return self._reply(200, {})
        if path == "/api/repos/create":
            req = json.loads(body)
            kind, repo_id = req.get("type") or "model", f"{req['organization']}/{req['name']}"
            url = f"{hub_.url}/{'' if kind == 'model' else kind + 's/'}{repo_id}"
            if (kind, repo_id) in hub_.repos:
                return self._reply(409, {"error": f"You already created this {kind} repo", "url": url})
            hub_.repos[(kind, repo_id)] = {}
            return self._reply(200, {"url": url, "name": repo_id})
        m = re.fullmatch(r"/api/(model|dataset|space)s/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", path)
        if not m:
            return self._reply(404, {"error": f"{path} is not part of the fake Hub"})
        kind, repo_id, action, _revision = m.groups()
        if (kind, repo_id) not in hub_.repos:
            return self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if action == "preupload":
            files = json.loads(body)["files"]
            return self._reply(
                200,
                {
                    "files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files
                    ]
                },
            )
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        assert lines[0]["key"] == "header"
        for item in lines[1:]:
            if item["key"] == "deletedFile":
                hub_.repos[(kind, repo_id)].pop(item["value"]["path"], None)
                continue
            if item["key"] != "file" or item["value"].get("encoding") != "base64":
                return self._reply(400, {"error": f"the fake Hub takes inline base64 files only, got {item['key']}"})
            hub_.repos[(kind, repo_id)][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
        oid = f"{len(hub_.commits) + 1:040x}"
        hub_.commits.append((kind, repo_id, lines[0]["value"]["summary"]))
        return self._reply(
            200,
            {
                "commitUrl": f"{hub_.url}/{repo_id}/commit/{oid}",
                "commitOid": oid,
                "success": True,
                "pullRequestUrl": None,
            },
        )


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture
def fake_hub(monkeypatch):
    """A running FakeHub, with huggingface_hub's offline switch (set for the whole test suite) turned off."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    server = FakeHub()
    yield server
    server.close()


# ----------------------------------------------------------------------------- fixtures: a run to share
def save_reward_model(path) -> str:
    """An (untrained) reward model folder on the shipped tiny CLIP: what ``reward train`` writes."""
    from t2idemo.reward import RewardConfig, RewardModel

    RewardModel(RewardConfig(device="cpu")).save_pretrained(str(path), {"val_auc": 0.75})
    return str(path)


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    """(model, reward): a copy of the base pipeline with a finetune.json and a checkpoint to leave out."""
    root = tmp_path_factory.mktemp("run")
    model = root / "aligned"
    shutil.copytree(BASE_MODEL, model)
    (model / "finetune.json").write_text(
        json.dumps({"config": {"beta": 1.0, "steps": 400, "weight": "reward"}, "n_model": 968, "mean_weight": 0.61})
    )
    (model / "checkpoint").mkdir()
    (model / "checkpoint" / "optimizer.bin").write_bytes(b"x" * 100)
    return str(model), save_reward_model(root / "reward")


@pytest.fixture
def labelled(tmp_path):
    """A dataset of 6 renders labelled by two people: (folder, rows)."""
    d = str(tmp_path / "data")
    rows = make_render_dataset(d)
    names = [r["file_name"] for r in rows]
    with LabelStore(default_store_path(d)) as store:
        store.add_many([(names[0], "good"), (names[1], "bad"), (names[2], "skip")], "ana")
        store.add_many([(names[0], "good"), (names[1], "good"), (names[3], "bad")], "ben")
    return d, rows


def repo_files(folder: str) -> dict:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder).replace(os.sep, "/")] = f.read()
    return out


# ----------------------------------------------------------------------------- tests
def test_push_uploads_model_reward_labels_and_cards(fake_hub, run_dirs, labelled, capsys, caplog):
    model, reward = run_dirs
    data, rows = labelled
    before = open(os.path.join(data, "metadata.jsonl")).read()
    cfg = hub.PushConfig(repo_id="alice/shapes-aligned", model=model, reward=reward, data=data, endpoint=fake_hub.url)
    with caplog.at_level(logging.DEBUG):
        out = hub.push(cfg, TOKEN)
    assert out["model"] == f"{fake_hub.url}/alice/shapes-aligned"
    assert out["dataset"] == f"{fake_hub.url}/datasets/alice/shapes-aligned"

    # the model repo: the pipeline at the root (no checkpoint), reward/ with its CLIP, the card
    files = fake_hub.files("alice/shapes-aligned")
    expected = {k: v for k, v in repo_files(model).items() if not k.startswith("checkpoint/")}
    expected.update({f"reward/{k}": v for k, v in repo_files(reward).items()})
    clip = json.load(open(os.path.join(reward, "reward_config.json")))["clip"]  # the reward model's own CLIP
    expected.update({f"reward/clip/{k}": v for k, v in repo_files(resolve_clip(clip)).items()})
    assert set(files) == set(expected) | {"README.md"}
    assert all(files[k] == v for k, v in expected.items())  # byte for byte
    card = files["README.md"].decode()
    assert card.startswith('---\nlicense: "apache-2.0"') and 'pipeline_tag: "text-to-image"' in card
    assert 'from_pretrained("alice/shapes-aligned")' in card and "## Fine-tuning" in card and "| beta | 1.0 |" in card
    assert "validation AUC 0.75" in card and 'datasets:\n- "alice/shapes-aligned"' in card
    assert "4 of 6 images labelled by 2 labeler(s)" in card and "| ana | 1 | 1 | 1 |" in card

    # the dataset repo: images, metadata with the majority label, every labeler's labels, a card
    ds = fake_hub.files("alice/shapes-aligned", "dataset")
    names = [r["file_name"] for r in rows]
    assert set(ds) == {f"data/{n}" for n in names} | {"data/metadata.jsonl", "labels/labels.jsonl", "README.md"}
    meta = [json.loads(line) for line in ds["data/metadata.jsonl"].decode().splitlines()]
    assert [m["label"] for m in meta] == ["good", None, None, "bad", None, None]  # image 1: a 1-1 tie
    labels = [json.loads(line) for line in ds["labels/labels.jsonl"].decode().splitlines()]
    assert sorted((r["labeler"], r["image_id"], r["label"]) for r in labels) == sorted(
        [
            ("ana", names[0], "good"),
            ("ana", names[1], "bad"),
            ("ana", names[2], "skip"),
            ("ben", names[0], "good"),
            ("ben", names[1], "good"),
            ("ben", names[3], "bad"),
        ]
    )
    assert ds[f"data/{names[0]}"] == open(os.path.join(data, names[0]), "rb").read()
    assert open(os.path.join(data, "metadata.jsonl")).read() == before  # the source dataset is untouched
    assert len(fake_hub.commits) == 2  # one commit per repo

    # the token: in the Authorization header of every request and nowhere else
    from huggingface_hub import constants

    assert fake_hub.requests and all(h.get("authorization") == f"Bearer {TOKEN}" for _, _, h, _ in fake_hub.requests)
    assert not any(TOKEN in p or TOKEN.encode() in b for _, p, _, b in fake_hub.requests)
    printed = capsys.readouterr()
    assert TOKEN not in printed.out + printed.err + caplog.text
    assert "pushed" in printed.out
    assert not os.path.exists(constants.HF_TOKEN_PATH) or TOKEN not in open(constants.HF_TOKEN_PATH).read()
    for root, _, fs in os.walk(constants.HF_HOME):
        for name in fs:
            with open(os.path.join(root, name), "rb") as f:
                assert TOKEN.encode() not in f.read(), os.path.join(root, name)

    # pushing again reuses both repos (the Hub answers 409 to create) and commits again
    hub.push(cfg, TOKEN)
    assert len(fake_hub.commits) == 4 and len(fake_hub.repos) == 2


def test_push_without_reward_or_labels(fake_hub, run_dirs):
    model, _ = run_dirs
    out = hub.push(
        hub.PushConfig(repo_id="bob/base", model=model, reward="", endpoint=fake_hub.url), TOKEN, log=lambda s: None
    )
    assert out["dataset"] is None and ("dataset", "bob/base") not in fake_hub.repos
    files = fake_hub.files("bob/base")
    assert not any(k.startswith("reward/") for k in files) and "model_index.json" in files
    assert "## Reward model" not in files["README.md"].decode()


@pytest.mark.parametrize(
    "repo_id", ["", "noslash", "a/b/c", "/name", "owner/", "al ice/x", "a/b--c", "a/" + "x" * 100, None]
)
def test_bad_repo_ids_name_the_argument_and_what_is_allowed(repo_id):
    with pytest.raises(ValueError, match=r"repo_id=.* is not allowed.*'owner/name'"):
        hub.PushConfig(repo_id=repo_id, model=BASE_MODEL, reward="")


def test_bad_configs_and_tokens_fail_clearly(tmp_path, labelled, monkeypatch):
    with pytest.raises(ValueError, match=r"model='.*nowhere' is not a StableDiffusionPipeline folder"):
        hub.PushConfig(repo_id="a/b", model=str(tmp_path / "nowhere"), reward="")
    with pytest.raises(ValueError, match=r"reward='.*' holds no reward_config.json"):
        hub.PushConfig(repo_id="a/b", model=BASE_MODEL, reward=str(tmp_path))
    d = str(tmp_path / "unlabelled")
    make_render_dataset(d)
    with pytest.raises(ValueError, match=r"data='.*unlabelled' has no labels.sqlite"):
        hub.PushConfig(repo_id="a/b", model=BASE_MODEL, reward="", data=d)
    with pytest.raises(ValueError, match="endpoint='huggingface.co' is not a URL"):
        hub.PushConfig(repo_id="a/b", model=BASE_MODEL, reward="", endpoint="huggingface.co")
    cfg = hub.PushConfig(repo_id="a/b", model=BASE_MODEL, reward="", endpoint="http://127.0.0.1:9")
    for token in ("", "   ", None):
        with pytest.raises(ValueError, match="token is empty"):
            hub.push(cfg, token)
    with pytest.raises(ValueError, match=r"token=<hidden> contains spaces") as e:
        hub.push(cfg, "hf_abc def")
    assert "hf_abc" not in str(e.value)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        hub.push(cfg, TOKEN)


def test_hub_errors_name_the_step_and_never_hold_the_token(fake_hub, run_dirs):
    model, _ = run_dirs
    wrong = "hf_wrongToken987654321"
    with pytest.raises(hub.PushError, match=r"while creating the model repo a/b: .*401") as e:
        hub.push(
            hub.PushConfig(repo_id="a/b", model=model, reward="", endpoint=fake_hub.url), wrong, log=lambda s: None
        )
    assert wrong not in str(e.value) and e.value.__cause__ is None and e.value.__suppress_context__
    assert hub.scrub(f"header Bearer {wrong} echoed", wrong) == "header Bearer <token> echoed"


def test_cli_reads_the_token_from_the_environment(fake_hub, run_dirs, tmp_path):
    model, reward = run_dirs
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
    args = [
        sys.executable,
        "-m",
        "t2idemo.hub",
        "--repo-id",
        "carol/cli",
        "--model",
        model,
        "--reward",
        reward,
        "--endpoint",
        fake_hub.url,
    ]
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "token_env='HF_TOKEN'" in r.stderr and "not set" in r.stderr
    r = subprocess.run(args, env={**env, "HF_TOKEN": TOKEN}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert TOKEN not in r.stdout + r.stderr and "PushConfig" in r.stdout
    assert "reward/head.safetensors" in fake_hub.files("carol/cli")
    r = subprocess.run(
        args[:4] + ["bad id"] + args[5:], env={**env, "HF_TOKEN": TOKEN}, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and "repo_id='bad id' is not allowed" in r.stderr
