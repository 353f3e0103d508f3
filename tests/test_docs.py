"""Every command the README and docs/guide.md show is parsed by the command it names, so a documented flag that
does not exist (or a value its config rejects) fails CI. Parsing builds each config (its checks run) but starts
no job: the jobs themselves are the end-to-end tests' business."""

import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ("README.md", os.path.join("docs", "guide.md"), os.path.join("docs", "findings.md"))
START = (
    r"(?:(?:HF_TOKEN=\S+ )?python -m t2idemo[\w.]*|python app\.py|python (?:scripts|tests)/\w+\.py"
    r"|accelerate launch -m t2idemo\.\w+)"
)


# a config check that fails only because the example's folder does not exist here (the command itself is right)
FOLDER_MISSING = re.compile(r"is not a folder|no model_index\.json|holds no \w+\.json|has no metadata\.jsonl")


def commands(text: str) -> list:
    """Command lines in ```bash blocks and in `inline code`, continuation lines joined, comments dropped."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(line.split(" #")[0].split())
            if re.match(START, line) and "<" not in line:
                found.append(line)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())
        if re.match(START + r"(\s|$)", span) and "<" not in span:
            found.append(span)
    return found


def config_for(argv: list):
    """(dataclass config class, its arguments) for a t2idemo command line; None where the command takes none."""
    from t2idemo import evaluate, finetune, generate, hub, labels, overopt, pretrain, reward, run, sd, space

    by_name = {
        "run": run.RunConfig,
        "finetune": finetune.FinetuneConfig,
        "evaluate": evaluate.EvalConfig,
        "sample": generate.SampleConfig,
        "generate": generate.GenerateConfig,
        "label": labels.LabelConfig,
        "push": hub.PushConfig,
        "hub": hub.PushConfig,
        "pretrain": pretrain.PretrainConfig,
        "overopt": overopt.OveroptConfig,
        "reward": reward.RewardConfig,
        "space": space.SpaceConfig,
    }
    head, rest = argv[0], argv[1:]
    if head in ("reward",):  # reward train | eval | study
        assert rest and rest[0] in ("train", "eval", "study"), f"reward needs an action: {argv}"
        return reward.RewardConfig, rest[1:]
    if head == "evaluate" and rest[:1] == ["summary"]:
        return evaluate.SummaryConfig, rest[1:]
    if head == "sd":
        assert rest and rest[0] in ("tiny", "prompts"), f"t2idemo.sd has no action {rest[:1]}"
        return (sd.TinyConfig, rest[1:]) if rest[0] == "tiny" else None
    if head in ("strip", "colab"):
        return None
    assert head in by_name, f"python -m t2idemo has no command {head!r}"
    return by_name[head], rest


def parse(line: str):
    from t2idemo.config import parse_config

    words = [w for w in shlex.split(line) if not re.fullmatch(r"\w+=\S+", w) and w != "..."]
    if words[0] == "accelerate":
        words = ["python", "-m"] + words[3:]
    if words[1].startswith(("scripts/", "tests/")):
        assert os.path.isfile(os.path.join(ROOT, words[1])), f"{words[1]} does not exist"
        return
    if words[1] == "app.py":
        import app

        return parse_config(app.AppConfig, words[2:])
    module = words[2]  # python -m t2idemo[.x] ...
    argv = words[3:] if module == "t2idemo" else [module.split(".", 1)[1]] + words[3:]
    if argv[:1] == ["benchmarks"]:  # its own parser (no config dataclass)
        from t2idemo.benchmarks import parse_args

        return parse_args(argv[1:])
    target = config_for(argv) if argv else None
    if target is not None:
        cls, args = target
        if cls.__name__ == "RunConfig":  # run's own parser: --preset and --recipe, then the --STAGE.FIELD flags
            from t2idemo.run import parse_args

            return parse_args(args)
        return parse_config(cls, args)


@pytest.mark.parametrize("doc", DOCS)
def test_every_documented_command_parses(doc, capsys):
    text = open(os.path.join(ROOT, doc), encoding="utf-8").read()
    lines = commands(text)
    assert len(lines) >= 10, f"{doc}: found only {lines}"
    bad = []
    for line in lines:
        try:
            parse(line)
        except SystemExit as e:  # --help (exit 0); argparse: an unknown flag or a bad value; a config check
            err = capsys.readouterr().err.strip().splitlines()[-1] if e.code else ""
            if e.code and not FOLDER_MISSING.search(err):
                bad.append(f"{line}\n    -> {err}")
        except AssertionError as e:
            bad.append(f"{line}\n    -> {e}")
    assert not bad, f"{doc}: commands that do not parse:\n" + "\n".join(bad)


def test_an_undocumented_flag_would_fail():
    for line in (
        "python -m t2idemo run --pre-pool-size 4096",
        "python -m t2idemo run --rounds 9",
        "python -m t2idemo finetune --save-at x",
        "python -m t2idemo benchmarks app --benchmark-tune",
        "python -m t2idemo benchmarks app --runs 0",
    ):
        with pytest.raises(SystemExit):
            parse(line)
    assert commands("```bash\npython -m t2idemo run --steps 3 \\\n  --lr 1e-4   # a comment\n```") == [
        "python -m t2idemo run --steps 3 --lr 1e-4"
    ]
