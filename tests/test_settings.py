"""Every setting has one default and one range: walk every config field of every command.

A setting is a field of a stage's @dataclass config (``config.ranged`` gives a number its range, its comment the
help). A composite config (the main job's RunConfig, the app's AppConfig) holds the stage configs instead of copying
their fields, and a check elsewhere reads a field's range (``config.bounds``) instead of writing its own. So a
numeric field name that occurs in two configs must have the same default and range in both, unless the test names
it below as a different setting with the same name, and says why.
"""

import collections
import dataclasses
import importlib
import os
import pkgutil
import re
import sys

import pytest

import t2idemo
from t2idemo.config import Parser, add_fields, field_help, field_range
from t2idemo.runconfig import ROUND_SETS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (config, field): why it is another setting than the same-named field of the other configs
OTHER_SETTING = {
    ("LoopConfig", "train_steps"): "a visitor's fine-tune on a shared CPU Space: capped at 200",
    ("LoopConfig", "unlabelled_per_prompt"): "a visitor's unlabelled images: capped at 16 per prompt",
    ("CompareConfig", "sample_steps"): "a visitor's Compare on a shared Space: capped at 100 steps",
    ("CompareConfig", "guidance"): "a visitor's Compare: capped at 20",
    ("GenerateConfig", "sample_steps"): "the training images' sampler (feedback, unlabelled), not the evaluation's",
    ("GenerateConfig", "guidance"): "the training images' guidance (feedback, unlabelled), not the evaluation's",
    ("GenerateConfig", "per_prompt"): "images per prompt of a labelled dataset, not of a sample grid",
    ("OveroptConfig", "n_combination"): "per checkpoint of a 12-checkpoint study, not per model of the main job",
    ("OveroptConfig", "n_single"): "per checkpoint of a 12-checkpoint study, not per model of the main job",
    ("PretrainConfig", "p_uncond"): "caption dropout while pre-training the base, not while fine-tuning it",
    ("RewardConfig", "lr"): "the reward head's learning rate, not the UNet's",
}


def config_classes() -> list:
    """Every command's config: the @dataclass classes named *Config in t2idemo and app.py."""
    found = []
    for m in pkgutil.iter_modules(t2idemo.__path__):
        mod = importlib.import_module(f"t2idemo.{m.name}")
        for name, obj in vars(mod).items():
            if name.endswith("Config") and dataclasses.is_dataclass(obj) and obj.__module__ == mod.__name__:
                found.append(obj)
    sys.path.insert(0, ROOT)
    import app

    return found + [app.AppConfig]


def default(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def numeric(f: dataclasses.Field) -> bool:
    value = default(f)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


CLASSES = config_classes()


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_field_has_help_and_every_number_a_range_that_help_shows(cls):
    helps = field_help(cls)
    p = Parser(prog="x")
    add_fields(p, cls)
    text = p.format_help()
    for f in dataclasses.fields(cls):
        assert helps.get(f.name), f"{cls.__name__}.{f.name} has no help comment"
        if dataclasses.is_dataclass(default(f)):
            continue
        assert not re.search(r";\s*\d[\d_.e]*\s+-\s+\d[\d_.e]*\s*$", helps[f.name]), (
            f"{cls.__name__}.{f.name}'s help states a range of its own; --help shows the enforced one"
        )
        if numeric(f):
            bounds = field_range(f)
            assert bounds, f"{cls.__name__}.{f.name} is a number without a range: use config.ranged"
            assert bounds[0] <= default(f) <= bounds[1], f"{cls.__name__}.{f.name}'s default is outside its range"
            assert f"[allowed: {bounds[0]:g} to {bounds[1]:g}]" in " ".join(text.split()), f"--help of {f.name}"


def test_one_default_and_one_range_per_setting():
    """A numeric field name in several configs is one setting: one default, one range (or a listed other one)."""
    seen = collections.defaultdict(dict)
    for cls in CLASSES:
        for f in dataclasses.fields(cls):
            if numeric(f) and (cls.__name__, f.name) not in OTHER_SETTING:
                seen[f.name][cls.__name__] = (default(f), field_range(f))
    split = {name: where for name, where in seen.items() if len(set(where.values())) > 1}
    assert not split, f"one setting, several defaults or ranges: {split}"
    for (cls_name, name), why in OTHER_SETTING.items():
        assert cls_name in {c.__name__ for c in CLASSES} and why, f"stale entry {cls_name}.{name}"


def test_composite_configs_hold_the_stage_configs_instead_of_copying_their_fields():
    """RunConfig and AppConfig hold stage configs; none of their own fields repeats a held config's field."""
    for cls in CLASSES:
        held = [default(f) for f in dataclasses.fields(cls) if dataclasses.is_dataclass(default(f))]
        own = {f.name for f in dataclasses.fields(cls) if not dataclasses.is_dataclass(default(f))}
        for stage in held:
            # a stage field that each round sets (its seed derives from RunConfig.seed) is not copied
            numbers = {f.name for f in dataclasses.fields(stage) if numeric(f)} - {k.split(".")[1] for k in ROUND_SETS}
            assert not (own & numbers), f"{cls.__name__} copies {type(stage).__name__}'s {sorted(own & numbers)}"


def test_no_range_is_written_outside_a_config():
    """Ranges live in ``ranged`` fields: no module keeps a table of limits of its own (the app's LIMITS was one)."""
    for folder in ("t2idemo", "."):
        for name in os.listdir(os.path.join(ROOT, folder)):
            if name.endswith(".py"):
                source = open(os.path.join(ROOT, folder, name), encoding="utf-8").read()
                assert not re.search(r"^LIMITS\s*=", source, flags=re.M), f"{folder}/{name} keeps its own LIMITS"
