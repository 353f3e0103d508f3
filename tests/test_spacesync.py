"""The app on a simulated Space (SPACE_ID, HF_TOKEN and HF_ENDPOINT -> the fake Hub of tests/test_hub.py): labels are
kept in the Space's dataset repo and survive SIGKILL and a wiped disk; Share signs in with Hugging Face; a labeler is
named on the Hub only by their own consent."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from test_hub import TOKEN, fake_hub  # noqa: F401 (fake_hub is a fixture)

from t2idemo import consent, hub_files, share_page, spacesync

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPACE, DATASET = "alice/demo", "alice/demo-labels"

# The app process: app.main()'s start-up (spacesync.start, App, the scheduler) without serving the page; it labels
# with the Label tab's backend calls, prints what the store holds, then waits to be killed.
CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
import app as t2iapp
from t2idemo import spacesync
from t2idemo.consent import set_consent
cfg = t2iapp.AppConfig(loop=t2iapp.LoopConfig(images_per_draw=6))
schedule = spacesync.start(cfg)
app = t2iapp.App(cfg)
schedule(app)
for line in sys.stdin:  # commands: draw N | label I LABEL WHO | consent WHO | show
    cmd = line.split()
    if cmd[0] == "draw":
        app.label_draw(int(cmd[1]))
    elif cmd[0] == "label":
        app.save_label(int(cmd[1]), cmd[2], cmd[3])
    elif cmd[0] == "consent":
        set_consent(app.label_dir, cmd[1], True)
    labels = {{who: app.store.labels(who) for who in app.store.labelers()}}
    print("STATE " + json.dumps({{"rows": len(app.rows), "labels": labels}}), flush=True)
"""


class AppProcess:
    def __init__(self, cwd, env):
        self.p = subprocess.Popen(
            [sys.executable, "-c", CHILD.format(root=ROOT)],
            cwd=cwd,
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def do(self, command: str) -> dict:
        self.p.stdin.write(command + "\n")
        self.p.stdin.flush()
        self.printed = []
        for line in self.p.stdout:
            if line.startswith("STATE "):
                return json.loads(line[6:])
            self.printed.append(line)
        raise AssertionError("".join(self.printed) + self.p.stderr.read()[-3000:])

    def kill(self) -> str:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(timeout=30)
        return self.p.stderr.read()


def hub_labels(server, tmp_path) -> dict:
    """{labeler: {image: label}} of the store backup in the fake Hub's dataset repo."""
    from t2idemo.label_store import LabelStore

    data = server.files(DATASET, "dataset").get("labelling/labels.sqlite.backup")
    if data is None:
        return {}
    path = tmp_path / f"backup-{time.time_ns()}.sqlite"
    path.write_bytes(data)
    with LabelStore(str(path)) as store:
        return {who: store.labels(who) for who in store.labelers()}


def wait_for(fn, want, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        got = fn()
        if got == want:
            return got
        time.sleep(0.3)
    assert fn() == want


@pytest.mark.slow
def test_labels_survive_sigkill_and_a_wiped_disk(fake_hub, tmp_path):  # noqa: F811
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PYTHONPATH")}
    env.update(
        SPACE_ID=SPACE,
        HF_TOKEN=TOKEN,
        HF_ENDPOINT=fake_hub.url,
        HF_HOME=str(tmp_path / "hf"),
        T2IDEMO_SYNC_MINUTES="0.01",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    space_dir = tmp_path / "space"
    space_dir.mkdir()

    # 1. a fresh Space: draw, label, the scheduler commits; two more labels, SIGKILL at once
    a = AppProcess(space_dir, env)
    assert a.do("draw 6")["rows"] == 6
    a.do("label 0 good ana")
    a.do("label 1 bad ana")
    state = a.do("label 2 good ben")
    wait_for(lambda: hub_labels(fake_hub, tmp_path), state["labels"])
    a.do("consent ana")
    a.do("label 3 bad ana")
    latest = a.do("label 4 skip ben")["labels"]
    err = a.kill()
    assert TOKEN not in err

    # 2. the process restarts on the same disk (a crash, a restart of the app): nothing lost, then all committed
    b = AppProcess(space_dir, env)
    assert b.do("show") == {"rows": 6, "labels": latest}
    wait_for(lambda: hub_labels(fake_hub, tmp_path), latest)
    assert TOKEN not in b.kill()

    # 3. the Space restarts on a wiped disk: the labelling folder comes back from the dataset
    shutil.rmtree(space_dir / "runs")
    c = AppProcess(space_dir, env)
    assert c.do("show") == {"rows": 6, "labels": latest}
    assert consent.consenting(str(space_dir / "runs" / "app" / "labelling")) == {"ana"}
    c.kill()
    files = fake_hub.files(DATASET, "dataset")
    assert "labelling/metadata.jsonl" in files and sum(k.endswith(".png") for k in files) == 6
    assert not any(k.endswith((".sqlite", "-wal", "-shm")) for k in files)  # live store files never uploaded
    assert not any(TOKEN.encode() in b for b in files.values())


def test_locally_nothing_changes(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)

    class Cfg:
        workdir = "runs/app"

    cfg = Cfg()
    assert spacesync.start(cfg)(object()) is None and cfg.workdir == "runs/app"
    monkeypatch.setenv("SPACE_ID", SPACE)
    monkeypatch.setenv("T2IDEMO_SYNC_MINUTES", "soon")
    with pytest.raises(ValueError, match=r"T2IDEMO_SYNC_MINUTES='soon' is not allowed; use a number of minutes > 0"):
        spacesync.sync_minutes()


def test_restore_of_a_missing_dataset_restores_nothing(fake_hub, tmp_path, monkeypatch):  # noqa: F811
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.url)
    assert spacesync.restore(str(tmp_path / "labelling"), "nobody/none-labels") == []


def test_names_go_only_with_each_labelers_own_consent(tmp_path):
    from conftest import make_render_dataset

    from t2idemo.label_store import LabelStore, default_store_path

    d = str(tmp_path / "data")
    rows = make_render_dataset(d)
    with LabelStore(default_store_path(d)) as store:
        for who in ("ana", "ben", "kim"):
            store.add(rows[0]["file_name"], "good", who)
    with pytest.raises(ValueError, match="labeler='' is not allowed"):
        consent.set_consent(d, "", True)
    consent.set_consent(d, "kim", True)
    consent.set_consent(d, "ben", True)
    assert consent.set_consent(d, "ben", False) == {"kim"} == consent.consenting(d)
    hub_files.stage_dataset(d, str(tmp_path / "out"), consent.consenting(d))
    names = {json.loads(line)["labeler"] for line in open(tmp_path / "out" / "labels" / "labels.jsonl")}
    assert names == {"kim", "labeler 1", "labeler 2"}


def test_share_tab_signs_in_on_a_space_and_takes_a_token_locally(monkeypatch):
    gr = pytest.importorskip("gradio")
    import gradio.oauth
    import gradio.routes

    attached = []  # Sign in with Hugging Face: the OAuth routes a Space's OAUTH_* variables configure (authlib)
    monkeypatch.setattr(gradio.oauth, "attach_oauth", attached.append)
    monkeypatch.setattr(gradio.routes, "attach_oauth", attached.append, raising=False)

    class FakeApp:
        cfg = type("Cfg", (), {"share_shipped": False})()
        label_dir = ""
        pushed = []

        def share(self, *args):
            self.pushed.append(args)
            return "ok"

        @staticmethod
        def session(state):
            return dict(state or {})

    def ids(on_space):
        app = FakeApp()
        with gr.Blocks() as demo:
            share_page.share_tab(app, gr, gr.State({}), lambda fn, gr: fn, on_space)
        blocks = list(demo.blocks.values())
        fns = [f.fn for f in demo.fns.values()]
        return app, {b.elem_id for b in blocks if getattr(b, "elem_id", None)}, blocks, fns

    _, local, _, _ = ids(False)
    assert "share-token" in local and "share-login" not in local
    assert not attached
    app, space, blocks, fns = ids(True)
    assert attached
    assert "share-token" not in space and any(isinstance(b, gr.LoginButton) for b in blocks)
    push = next(f for f in fns if getattr(f, "__name__", "") == "push_signed_in")
    with pytest.raises(ValueError, match="sign in with Hugging Face first"):
        push("a/b", False, True, True, True, {}, None)
    assert push("a/b", False, True, True, True, {}, gr.OAuthToken(token=TOKEN, scope="", expires_at=0)) == "ok"
    assert app.pushed[-1][1] == TOKEN
