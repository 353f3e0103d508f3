"""Installing t2idemo as its users do, in one fresh virtual environment outside the repository (module-scoped, so
the wheel test and the Colab test share it and pip installs each dependency once).

The environment starts with torch (the CPU wheel, installed first and on its own as the README says) and a kernel
(ipykernel), nothing else. Then:

- test_wheel_*: ``pip install`` of the wheel built from a copy of this checkout must bring every dependency
  t2idemo imports: ``python -m t2idemo run --preset shapes-small`` runs there, and a reward model pushed to the
  (fake) Hub loads there as its model card says.
- test_colab_*: each notebook's Colab branch, top to bottom at the small size, in that environment's kernel with a
  stand-in ``google.colab`` imported at start (as Colab does), run from a folder outside the repository, with
  T2IDEMO_REPO pointing the Setup cell at the wheel instead of the network.

Nothing reaches the network but the package index pip is configured with.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from test_hub import TOKEN, fake_hub, save_reward_model  # noqa: F401 (fake_hub is a fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow
TORCH = "torch==2.13.0"  # the README's: the CPU wheel, installed on its own first


def clean_env(**extra) -> dict:
    """The environment of a new user's shell: no PYTHONPATH into the repository, no token, offline Hub."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", MPLBACKEND="Agg")
    env.update(extra)
    return env


def sh(args, timeout=900, **kwargs) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kwargs)
    command = " ".join(map(str, args))
    assert r.returncode == 0, f"{command} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    """The wheel built from a copy of this checkout (its tracked and untracked, not ignored, files)."""
    tmp = tmp_path_factory.mktemp("wheel")
    files = sh(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT).stdout.split("\0")
    src = tmp / "src"
    for name in filter(None, files):
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(src / os.path.dirname(name), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), src / name)
    sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp / "dist", src], env=clean_env())
    (whl,) = os.listdir(tmp / "dist")
    return str(tmp / "dist" / whl)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> str:
    """A fresh virtual environment with torch and a kernel only; returns its python."""
    d = tmp_path_factory.mktemp("venv") / "env"
    sh([sys.executable, "-m", "venv", d])
    python = str(d / "bin" / "python")
    t0 = time.time()
    sh([python, "-m", "pip", "install", "-q", TORCH], env=clean_env())
    sh([python, "-m", "pip", "install", "-q", "ipykernel"], env=clean_env())
    print(f"\nfresh venv with {TORCH} and ipykernel: {time.time() - t0:.0f} s")
    return python


def test_wheel_installs_and_runs_outside_the_repository(venv, wheel, tmp_path, fake_hub):  # noqa: F811
    t0 = time.time()
    sh([venv, "-m", "pip", "install", "-q", wheel], env=clean_env())
    print(f"pip install of the wheel and its dependencies: {time.time() - t0:.0f} s")
    sh([venv, "-m", "pip", "check"], env=clean_env())
    where = sh(
        [venv, "-c", "import t2idemo, os; print(os.path.dirname(t2idemo.__file__))"], cwd=tmp_path, env=clean_env()
    ).stdout.strip()
    assert where.startswith(os.path.dirname(os.path.dirname(venv))) and not where.startswith(ROOT), where

    t0 = time.time()
    r = sh([venv, "-m", "t2idemo", "run", "--preset", "shapes-small", "--out", "run"], cwd=tmp_path, env=clean_env())
    print(f"python -m t2idemo run --preset shapes-small: {time.time() - t0:.0f} s")
    assert "report in" in r.stdout, r.stdout[-2000:]
    assert os.path.isfile(tmp_path / "run" / "report" / "results.json"), os.listdir(tmp_path / "run")

    # a reward model pushed to the Hub loads with the installed t2idemo, as the model card says
    from t2idemo import hub
    from t2idemo.generate import BASE_MODEL

    reward = save_reward_model(tmp_path / "reward")
    hub.push(
        hub.PushConfig(repo_id="alice/pushed", model=BASE_MODEL, reward=reward, endpoint=fake_hub.url),
        TOKEN,
        log=lambda s: None,
    )
    code = (
        "from huggingface_hub import snapshot_download\nfrom PIL import Image\n"
        "from t2idemo.reward import RewardModel\n"
        "path = snapshot_download('alice/pushed')\n"
        "reward = RewardModel.from_pretrained(f'{path}/reward', clip=f'{path}/reward/clip')\n"
        "scores = reward([Image.new('RGB', (32, 32), 'red')], ['one red square on sand'])\n"
        "print('SCORE', float(scores[0]))\n"
    )
    r = sh(
        [venv, "-c", code],
        cwd=tmp_path,
        env=clean_env(HF_HUB_OFFLINE="0", HF_ENDPOINT=fake_hub.url, HF_HOME=str(tmp_path / "hf")),
    )
    assert 0 <= float(r.stdout.split("SCORE")[1]) <= 1, r.stdout


COLAB_STUB = '''"""Stand-in for Colab's google.colab (tests/test_install.py): the kernel imports it at start, as
Colab does."""
import types

output = types.SimpleNamespace(enable_custom_widget_manager=lambda: print("custom widget manager enabled"))
'''


def test_colab_setup_cell_runs_every_notebook(venv, wheel, tmp_path, monkeypatch):
    """Each notebook's Colab branch, top to bottom at the small size: a kernel of the fresh environment (torch and
    ipykernel only) that imports a stand-in google.colab at start, in a folder outside the repository (Colab's
    /content), with T2IDEMO_REPO pointing the Setup cell at the wheel instead of GitHub."""
    import time

    nbclient = pytest.importorskip("nbclient")
    from test_notebooks import NOTEBOOKS, TIMEOUT, read, results

    stub = tmp_path / "stub" / "google" / "colab"  # google/ is a namespace package, as on Colab
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(COLAB_STUB)
    startup = tmp_path / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-colab.py").write_text("import google.colab\n")
    kernel = tmp_path / "jupyter" / "kernels" / "colab"
    kernel.mkdir(parents=True)
    argv = [venv, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (kernel / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Colab", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    content, work = tmp_path / "content", tmp_path / "work"
    content.mkdir()
    env = clean_env(
        PYTHONPATH=str(tmp_path / "stub"),
        IPYTHONDIR=str(tmp_path / "ipython"),
        T2IDEMO_SMALL="1",
        T2IDEMO_WORK=str(work),
        T2IDEMO_REPO=wheel,
    )
    for name in NOTEBOOKS:
        nb = read(name)
        t0 = time.time()
        nbclient.NotebookClient(
            nb, timeout=TIMEOUT, kernel_name="colab", resources={"metadata": {"path": str(content)}}
        ).execute(env=env)
        setup = "".join(o.get("text", "") for o in nb.cells[[c.cell_type for c in nb.cells].index("code")].outputs)
        print(f"{name}: {time.time() - t0:.1f} s; {setup.strip().splitlines()[-1]}")
        assert "custom widget manager enabled" in setup and "Colab: True" in setup, setup
        assert f"t2idemo from {os.path.dirname(os.path.dirname(venv))}" in setup, setup  # installed, not the checkout
        assert results(nb), f"{name} printed no RESULT line"
