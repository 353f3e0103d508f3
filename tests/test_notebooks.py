"""The notebooks in notebooks/: committed without outputs, written to one template, and executed top to bottom.

The slow tests execute each notebook with nbclient in a fresh python3 kernel, in notebooks/ (so the Setup cell
finds the repository as it does for a reader), with T2IDEMO_SMALL=1 (the CI sizes) and T2IDEMO_WORK pointing at a
temporary folder that the six notebooks share, in order. Each notebook prints ``RESULT key=value ...`` lines;
the tests read them from the outputs and check the numbers and the files they name.

Each notebook also says, before its first step, what to expect: a "What to expect" block with its time on 2 cores at
both sizes and a table of its RESULT values, at the small size (a value, and a tolerance after "±") and at full size.
A fast test checks that the block is there and lists every value the slow test reads; the slow test checks the
small-size column against the fresh small run, so a changed number in the markdown, or a change in behaviour, fails.
"""

import json
import os
import re
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = [
    "00_quickstart",
    "01_feedback",
    "02_reward_model",
    "03_finetune",
    "04_evaluate_and_share",
    "05_beyond_the_paper",
]
HEADINGS = ("What you'll learn", "Setup", "Step 1", "Exercises", "Summary")  # in this order, in every notebook
STRIP = "clear the outputs before committing: python -m t2idemo strip notebooks/*.ipynb"
TIMEOUT = 600  # seconds per cell; a small run takes well under a minute per notebook

nbformat = pytest.importorskip("nbformat", reason="pip install nbformat nbclient ipykernel (requirements.txt)")


def read(name):
    return nbformat.read(os.path.join(NB_DIR, name + ".ipynb"), as_version=4)


def markdown_headings(nb):
    return [
        line.lstrip("#").strip()
        for c in nb.cells
        if c.cell_type == "markdown"
        for line in c.source.splitlines()
        if line.startswith("#")
    ]


# what each notebook's "What to expect" table must list: every RESULT value its slow test reads
EXPECTED_KEYS = {
    "00_quickstart": (
        "quickstart_base_combination",
        "quickstart_tuned_combination",
        "quickstart_shipped_combination",
        "session_base",
        "session_yours",
    ),
    "01_feedback": ("feedback_images", "labelled", "good", "bad", "kappa_judge_noisy"),
    "02_reward_model": (
        "heldout_images",
        "reward_auc",
        "reward_auc_lambda0",
        "clipscore_auc",
        "noise_levels",
        "noise_auc_max_flip",
    ),
    "03_finetune": ("finetune_steps", "reward_base", "reward_tuned"),
    "04_evaluate_and_share": (
        "eval_models",
        "combination_base",
        "combination_tuned",
        "combination_shipped_aligned",
        "tradeoff_points",
        "push_files",
    ),
    "05_beyond_the_paper": (
        "overopt_points",
        "overopt_proxy_rise_beta1",
        "overopt_truth_rise_beta1",
        "dpo_combination",
        "reward_combination",
    ),
}
NUMBER = r"[-+]?\d+(?:\.\d+)?"


def expected(nb) -> dict:
    """{key: {"small": value, "tol": tolerance (0: exact), "full": value or None}} from the notebook's "What to expect"
    table: rows | `RESULT key` | what it is | small size: V or V ± T | full size: V (a note), or "not measured" |."""
    out = {}
    for cell in nb.cells:
        if cell.cell_type != "markdown" or "### What to expect" not in cell.source:
            continue
        for line in cell.source.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            m = re.fullmatch(r"`RESULT (\w+)`", cells[0]) if line.startswith("|") and len(cells) == 4 else None
            if not m:
                continue
            small = re.fullmatch(rf"({NUMBER})(?: ± ({NUMBER}))?", cells[2])
            assert small, f"{m.group(1)}: the small-size cell must be 'V' or 'V ± T', not {cells[2]!r}"
            full = re.match(NUMBER, cells[3])
            out[m.group(1)] = {
                "small": float(small.group(1)),
                "tol": float(small.group(2) or 0),
                "full": float(full.group(0)) if full else None,
            }
    return out


def expect_block(nb) -> str:
    return next((c.source for c in nb.cells if c.cell_type == "markdown" and "### What to expect" in c.source), "")


def check_expected(name, r: dict) -> None:
    """The fresh small run's RESULT values against the small-size column of the notebook's "What to expect" table."""
    want = expected(read(name))
    bad = [
        f"{k}: printed {r.get(k)}, the markdown says {w['small']} ± {w['tol']}"
        for k, w in want.items()
        if not isinstance(r.get(k), float) or abs(r[k] - w["small"]) > w["tol"] + 1e-9
    ]
    assert not bad, f"{name}: the 'What to expect' block is stale (fix the markdown or the code):\n" + "\n".join(bad)


# ----------------------------------------------------------------------------- fast: the committed files
def test_every_notebook_is_there():
    assert sorted(f[:-6] for f in os.listdir(NB_DIR) if f.endswith(".ipynb")) == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_outputs_are_stripped(name):
    nb = read(name)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name} cell {i}: {STRIP}"
    assert "widgets" not in nb.metadata, f"{name}: saved widget state; {STRIP}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_notebook_says_what_to_expect(name):
    """Before its first step each notebook shows what it prints at the small and the full size, and how long it
    takes on 2 cores at each; the slow tests hold the small-size numbers to a fresh run."""
    nb = read(name)
    block = expect_block(nb)
    assert block, f"{name}: no '### What to expect' markdown block"
    first_step = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and "## Step 1:" in c.source)
    assert nb.cells.index(next(c for c in nb.cells if c.source == block)) < first_step, f"{name}: expect before step 1"
    assert re.search(r"full size[^.|]*?\d+ (?:s|min|minutes|hours?)\b", block), f"{name}: the full-size time"
    assert re.search(r"small size[^.|]*?\d+ (?:s|min|minutes)\b", block), f"{name}: the small-size time"
    table = expected(nb)
    missing = [k for k in EXPECTED_KEYS[name] if k not in table]
    assert not missing, f"{name}: the 'What to expect' table lacks {missing}"
    assert all(w["full"] is not None or "not measured" in block for w in table.values()), f"{name}: full-size column"


def test_colab_badges_and_setup_cells_follow_pyproject():
    """pyproject.toml's [project.urls] Repository is the one place naming the repository; every notebook's
    "Open in Colab" badge and Setup cell are written from it (tests/test_install.py runs the cell's Colab branch)."""
    from t2idemo import colab

    repo = colab.repo_url()
    for name in NOTEBOOKS:
        assert not colab.sync(os.path.join(NB_DIR, name + ".ipynb"), write=False), f"{name}: python -m t2idemo colab"
        nb = read(name)
        assert colab.badge(repo, name + ".ipynb") in nb.cells[0].source
        assert f'os.environ.get("T2IDEMO_REPO", "{repo}")' in [c for c in nb.cells if c.cell_type == "code"][0].source
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert colab.badge(repo, "00_quickstart.ipynb") in readme and f"t2idemo @ git+{repo}" in readme, "README's URLs"
    with pytest.raises(ValueError, match=r"repo='https://gitlab.com/a/b' is not a GitHub repository URL"):
        colab.badge("https://gitlab.com/a/b", "x.ipynb")


def test_strip_outputs_clears_an_executed_notebook(tmp_path):
    from t2idemo import scales

    nb = read(NOTEBOOKS[0])
    nb.cells[3].outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    nb.cells[3].execution_count = 7
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    path = str(tmp_path / "nb.ipynb")
    nbformat.write(nb, path)
    assert scales.strip_main([path]) == 0
    clean = nbformat.read(path, as_version=4)
    assert clean.cells[3].outputs == [] and clean.cells[3].execution_count is None and "widgets" not in clean.metadata
    assert nbformat.writes(clean) == nbformat.writes(read(NOTEBOOKS[0]))
    assert not scales.strip_outputs(path)  # already clean: untouched


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_follows_the_template(name):
    nb = read(name)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "a title first"
    heads = markdown_headings(nb)
    found = [next((i for i, h in enumerate(heads) if h.startswith(want)), None) for want in HEADINGS]
    assert None not in found, f"{name}: headings {heads} lack one of {HEADINGS}"
    assert found == sorted(found), f"{name}: {HEADINGS} must come in this order, got {heads}"
    steps = [int(m.group(1)) for h in heads for m in [re.match(r"Step (\d+):", h)] if m]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 3, f"{name}: numbered steps 1, 2, 3, ...: {steps}"
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    setup = code[0]
    assert '"google.colab" in sys.modules' in setup and "REPO_URL" in setup and "enable_custom_widget_manager" in setup
    assert 'SCALE = "shapes"' in code[1] and "scales.settings(SCALE)" in code[1]
    assert all(len(c.splitlines()) <= 30 for c in code[1:]), f"{name}: a cell of more than 30 lines pastes too much"
    assert sum("RESULT" in c or "scales.result(" in c for c in code) >= 1, f"{name}: no RESULT line for the tests"


def test_scale_settings_are_the_main_jobs_presets(monkeypatch, tmp_path, capsys):
    """The notebooks' S is runconfig.preset(...): the very RunConfig of `python -m t2idemo run --preset NAME`, and
    each stage's config on the notebook folders is the main job's round derivation."""
    from t2idemo import runconfig as run
    from t2idemo import scales

    monkeypatch.delenv("T2IDEMO_SMALL", raising=False)
    assert scales.settings() == run.RunConfig() and not scales.small(scales.settings())
    monkeypatch.setenv("T2IDEMO_SMALL", "1")
    small, full = scales.settings("shapes"), scales.settings("shapes", small=False)
    assert small == run.preset("shapes-small") and scales.small(small)
    assert small.generate.max_prompts < 242 and small.finetune.train_steps < full.finetune.train_steps
    assert (small.generate.sample_steps, small.generate.guidance) == (
        full.generate.sample_steps,
        full.generate.guidance,
    )
    sd15 = scales.settings("sd15", small=False)
    assert (sd15.model, sd15.reward.clip, sd15.finetune.lora_rank, sd15.finetune.mixed_precision) == (
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "openai/clip-vit-large-patch14",
        8,
        "fp16",
    )
    assert (sd15.finetune.batch, sd15.finetune.pre_batch, sd15.finetune.encode_batch) == (
        4,
        4,
        8,
    )  # sd.py's 16 GB plan
    with pytest.raises(ValueError, match="scale='sdxl'"):
        scales.settings("sdxl")
    for S in (small, full, sd15, scales.settings("sd15")):
        P = scales.paths(S, work=str(tmp_path))
        assert P.feedback.startswith(str(tmp_path)) and P.work.endswith(S.preset)
        assert scales.feedback_config(S, P).guidance == S.generate.guidance  # the main job's sampler
        assert scales.feedback_config(S, P).out == P.feedback and scales.reward_config(S, P).run == P.reward
        assert scales.reward_config(S, P).lam == S.reward.lam
        assert scales.finetune_config(S, P).lr == S.finetune.lr
        assert scales.finetune_config(S, P, recipe="paper").weight == "reward"
    assert scales.paths(small, "quickstart", work=str(tmp_path)).work.endswith(
        os.path.join("shapes-small", "quickstart")
    )
    scales.result(auc=0.83123, model="x/y", n=3)
    assert capsys.readouterr().out.splitlines()[-1] == "RESULT auc=0.8312 model=x/y n=3"


# ----------------------------------------------------------------------------- slow: execute them
def results(nb) -> dict:
    """{key: value} of every ``RESULT key=value ...`` line the notebook printed (numbers as floats)."""
    out = {}
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream" and o.get("name") == "stdout":
                for line in re.findall(r"^RESULT (.+)$", o["text"], flags=re.M):
                    for k, v in (kv.split("=", 1) for kv in line.split()):
                        try:
                            out[k] = float(v)
                        except ValueError:
                            out[k] = v
    return out


def execute(name, work, patch=None, small=True) -> tuple[dict, float]:
    """Run notebooks/NAME.ipynb top to bottom in a fresh kernel; returns (its RESULT values, seconds).
    ``patch(nb)`` may edit the cells first (in memory); ``small=False`` runs the full sizes (for timing)."""
    nbclient = pytest.importorskip("nbclient")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}  # never push
    env.update(
        T2IDEMO_SMALL="1" if small else "0",
        T2IDEMO_WORK=str(work),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        MPLBACKEND="Agg",
        PYTHONPATH="",
    )  # PYTHONPATH "": the Setup cell must find the repository itself
    nb = read(name)
    if patch:
        patch(nb)
    t0 = time.time()
    nbclient.NotebookClient(
        nb, timeout=TIMEOUT, kernel_name="python3", resources={"metadata": {"path": NB_DIR}}
    ).execute(env=env)
    seconds = time.time() - t0
    res = results(nb)
    print(f"{name}: {seconds:.1f} s, {json.dumps(res)}")
    return res, seconds


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """One work folder for the six notebooks, so each reuses what the ones before it made (as a reader would)."""
    return tmp_path_factory.mktemp("notebooks")


def assert_pipeline(path):
    from diffusers import StableDiffusionPipeline

    assert os.path.isfile(os.path.join(path, "model_index.json")), path
    pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True)
    assert pipe(["a red square"], num_inference_steps=2).images[0].size == (32, 32)


@pytest.mark.slow
def test_00_quickstart(work):
    r, _ = execute("00_quickstart", work)
    check_expected("00_quickstart", r)
    assert_pipeline(r["quickstart_tuned_model"])
    assert 0 <= r["quickstart_base_combination"] <= 1 and 0 <= r["quickstart_tuned_combination"] <= 1
    assert 0 <= r["quickstart_shipped_combination"] <= 1  # the shipped aligned model, evaluated next to the loop
    assert_pipeline(r["session_model"])  # step 8: a short session through t2idemo.loop, the app's calls
    assert 0 <= r["session_base"] <= 1 and 0 <= r["session_yours"] <= 1


@pytest.mark.slow
def test_01_feedback(work):
    r, _ = execute("01_feedback", work)
    check_expected("01_feedback", r)
    assert r["feedback_images"] == r["labelled"] == r["good"] + r["bad"] > 0
    assert 0 < r["good"] < r["feedback_images"], "the reward model needs both good and bad images"
    assert 0 < r["kappa_judge_noisy"] < 1  # a rater with 20% flips agrees with the judge, imperfectly


@pytest.mark.slow
def test_02_reward_model(work):
    r, _ = execute("02_reward_model", work)
    check_expected("02_reward_model", r)
    assert r["heldout_images"] > 0
    assert r["reward_auc"] > 0.5, f"the reward model ranks held-out images no better than chance: {r}"
    assert r["noise_levels"] == 2 and 0 <= r["noise_auc_max_flip"] <= 1


@pytest.mark.slow
def test_03_finetune(work):
    r, _ = execute("03_finetune", work)
    check_expected("03_finetune", r)
    assert_pipeline(r["finetune_model"])
    assert os.path.isfile(os.path.join(r["finetune_model"], "finetune.json"))
    assert r["finetune_steps"] > 0 and 0 <= r["reward_base"] <= 1 and 0 <= r["reward_tuned"] <= 1


@pytest.mark.slow
def test_04_evaluate_and_share(work):
    r, _ = execute("04_evaluate_and_share", work)
    check_expected("04_evaluate_and_share", r)
    assert r["eval_models"] >= 3  # base, tuned and base best-of-N (and the shipped aligned model when there is one)
    assert 0 <= r["combination_base"] <= 1 and 0 <= r["combination_tuned"] <= 1
    assert r["tradeoff_points"] >= 2 and os.path.getsize(r["tradeoff_plot"]) > 0
    assert r["push"] == "dry-run" and r["push_files"] > 0


@pytest.mark.slow
def test_05_beyond_the_paper(work):
    r, _ = execute("05_beyond_the_paper", work)
    check_expected("05_beyond_the_paper", r)
    assert r["overopt_points"] == 6  # steps 0, 2, 6 at beta 1 and 0 (the small size)
    assert -1 <= r["overopt_proxy_rise_beta1"] <= 1 and -1 <= r["overopt_truth_rise_beta1"] <= 1
    assert 0 <= r["dpo_combination"] <= 1 and 0 <= r["reward_combination"] <= 1


# ----------------------------------------------------------------------------- slow: the sd15 branches, dry
# SCALE = "sd15" needs SD v1.5 and a GPU. Its cells (people label in the widget, LoRA fine-tuning, D_pre drawn from
# the base model, people's labels instead of the judge in the evaluation) run here on tiny random stand-ins with
# SD v1.5's classes (t2idemo.sd.build_tiny_sd / build_tiny_clip), with a Labeler that clicks by itself. The numbers
# mean nothing; the point is that every sd15 cell runs.
AUTO_LABELER = """import random
from t2idemo import labeling
_init = labeling.Labeler.__init__
def _clicks_by_itself(self, *args, **kwargs):  # test only: a person who clicks Good, Bad, Good, Skip at random
    _init(self, *args, **kwargs)
    rng = random.Random(0)
    while self.index is not None:
        self.click(rng.choice(["good", "bad", "good", "skip"]))
labeling.Labeler.__init__ = _clicks_by_itself
"""


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    from t2idemo import sd

    d = tmp_path_factory.mktemp("tiny")
    return sd.build_tiny_sd(str(d / "tiny-sd")), sd.build_tiny_clip(str(d / "tiny-clip"))


@pytest.fixture(scope="module")
def sd_work(tmp_path_factory):
    return tmp_path_factory.mktemp("notebooks-sd15")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", [n for n in NOTEBOOKS if n != "05_beyond_the_paper"]
)  # 05 needs the judge: shapes only
def test_sd15_cells_run_on_tiny_stand_ins(name, tiny_sd, sd_work):
    model, clip = tiny_sd

    def to_sd15(nb):
        cell = [c for c in nb.cells if c.cell_type == "code"][1]
        assert 'SCALE = "shapes"' in cell.source and "S = scales.settings(SCALE)" in cell.source
        cell.source = AUTO_LABELER + cell.source.replace('SCALE = "shapes"', 'SCALE = "sd15"').replace(
            "S = scales.settings(SCALE)",
            f"S = scales.settings(SCALE, model={model!r}, **{{'reward.clip': {clip!r}, "
            "'finetune.mixed_precision': 'no', 'generate.sample_steps': 2, 'evaluate.sample_steps': 2, "
            "'finetune.train_steps': 2})",
        )  # fp16 autocast needs a GPU

    r, _ = execute(name, sd_work, patch=to_sd15)
    assert r, f"{name} printed no RESULT line"
    for key in ("quickstart_tuned_model", "finetune_model"):
        if key in r:  # LoRA at SD scale: the adapter next to the fused pipeline
            assert os.path.isfile(os.path.join(r[key], "pytorch_lora_weights.safetensors"))


if __name__ == "__main__":  # time the notebooks: python tests/test_notebooks.py [--full] [NAME ...]
    import sys
    import tempfile

    args = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        for nb_name in [a for a in args if a != "--full"] or NOTEBOOKS:
            execute(nb_name, tmp, small="--full" not in args)
