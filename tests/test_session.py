"""The short session: the few-label reward (reward_attr), the loop's calls on it, and the session curve."""

import json
import os
import random
import shutil

import pytest
import torch

from t2idemo import world
from t2idemo.data import load_rows
from t2idemo.label_store import LabelStore, default_store_path
from t2idemo.stats import roc_auc


def wrong_render(meta: dict, attribute: str, rng: random.Random):
    """A render of ``meta``'s prompt with ``attribute`` swapped for another value: an image the judge calls bad."""
    values = {a: meta.get(a) for a in world.ATTRIBUTES}
    vocab = {"count": world.COUNTS, "color": list(world.COLORS), "shape": world.SHAPES, "scene": list(world.SCENES)}
    values[attribute] = rng.choice([v for v in vocab[attribute] if v != values[attribute]])
    return world.render(world.sample_scene(rng, **values))


def renders(n_prompts: int, seed: int = 0) -> tuple[list, list, list]:
    """(images, prompts, labels): for each of ``n_prompts`` combination prompts a right render (1) and one with a
    named attribute wrong (0)."""
    rng = random.Random(seed)
    images, prompts, labels = [], [], []
    for _ in range(n_prompts):
        prompt, meta = world.random_prompt(rng, "combination", unseen=False)
        images += [world.render_prompt(meta, rng)[0], wrong_render(meta, rng.choice(meta["named"]), rng)]
        prompts += [prompt, prompt]
        labels += [1.0, 0.0]
    return images, prompts, labels


@pytest.fixture(scope="module")
def clip():
    from t2idemo.clip import REWARD_CLIP, FrozenCLIP

    return FrozenCLIP(REWARD_CLIP)


def test_clips_attribute_check_tells_right_renders_from_wrong_ones_without_labels(clip):
    """The label-free start: CLIP's margin on each named attribute ranks a right render above one with an attribute
    swapped (the shipped reward CLIP reads renders well), and r > 0.5 means every named attribute wins."""
    from t2idemo.reward_attr import AttributeReward

    images, prompts, labels = renders(40)
    model = AttributeReward(clip)
    x = model.features(images, prompts)
    assert x.shape == (80, 5)
    assert torch.equal(x[:, 0], x[:, 1:].min(1).values)  # combination prompts name every attribute
    scores = model.score(x)
    assert roc_auc(scores.tolist(), labels) > 0.9
    assert torch.equal(scores > 0.5, x[:, 0] > 0)


def test_labels_move_the_head_in_proportion_to_their_number(clip):
    """No labels: the start. A few labels move the head a little, many more move it further (the L2 pull towards
    the start is divided by the number of labels); the fit is deterministic."""
    from t2idemo.reward_attr import AttributeReward

    images, prompts, labels = renders(60, seed=1)
    flipped = [1.0 - y for y in labels]  # labels that contradict CLIP: the head must move towards them
    x = AttributeReward(clip).features(images, prompts)
    start = AttributeReward.start_weight()
    assert torch.equal(AttributeReward(clip).fit_features(x, []).weight, start)
    few = AttributeReward(clip).fit_features(x[:8], flipped[:8])
    many = AttributeReward(clip).fit_features(x, flipped)
    assert 0 < (few.weight - start).norm() < (many.weight - start).norm()
    assert torch.equal(AttributeReward(clip).fit_features(x[:8], flipped[:8]).weight, few.weight)
    # contradicting labels, given in number, turn the ranking round
    assert roc_auc(many.score(x).tolist(), flipped) > 0.5 > roc_auc(AttributeReward(clip).score(x).tolist(), flipped)


def test_saved_attribute_reward_loads_through_load_reward_fn_and_scores_the_same(clip, tmp_path):
    from t2idemo.reward import load_reward_fn, save_reward_model
    from t2idemo.reward_attr import AttributeReward

    images, prompts, labels = renders(6, seed=2)
    model = AttributeReward.fit(images, prompts, labels, clip)
    save_reward_model(model, str(tmp_path / "r"), {"n_labels": len(labels)})
    meta = json.load(open(tmp_path / "r" / "reward_config.json"))
    assert meta["kind"] == "attribute" and meta["clip"] == "tiny-reward-clip"
    assert os.path.isfile(tmp_path / "r" / "head.safetensors")
    assert torch.allclose(load_reward_fn(str(tmp_path / "r"))(images, prompts), model(images, prompts))


def labelled_set(folder: str, n_prompts: int) -> None:
    """An imagefolder of right and wrong renders of seen prompts, labelled by 'ana' in its label store."""
    from t2idemo.data import save_png, write_rows_atomic

    images, prompts, labels = renders(n_prompts, seed=3)
    os.makedirs(folder, exist_ok=True)
    rows = []
    for i, (im, p, _y) in enumerate(zip(images, prompts, labels)):
        save_png(im, os.path.join(folder, f"{i:03d}.png"))
        rows.append({"file_name": f"{i:03d}.png", "prompt": p, **world.parse_prompt(p)})
    write_rows_atomic(folder, rows)
    with LabelStore(default_store_path(folder)) as store:
        store.add_many([(r["file_name"], "good" if y else "bad") for r, y in zip(rows, labels)], "ana")


@pytest.mark.slow
def test_the_loops_calls_train_the_few_label_reward_and_tune_on_every_prompt(tmp_path):
    """train_reward_on_labels fits the attribute reward (held-out figures from the prompts it did not see), too few
    labels are refused naming what is missing, and tune_on_labels draws unlabelled images of the split's prompts,
    not only the labelled ones, and writes a pipeline; with no labelling set it tunes on the reward model alone."""
    from t2idemo.loop import LoopConfig, train_reward_on_labels, tune_on_labels

    folder = str(tmp_path / "labelling")
    labelled_set(folder, 8)
    cfg = LoopConfig(train_steps=2, tune_batch=4, unlabelled_per_prompt=1, unlabelled_split="unseen", eval_images=0)
    res = train_reward_on_labels(folder, str(tmp_path / "reward"), cfg)
    assert (res["good"], res["bad"]) == (8, 8) and res["n_val"] == 4  # 2 of 8 prompts held out, 2 images each
    assert res["val_auc"] is not None and res["val_accuracy"] is not None
    assert json.load(open(tmp_path / "reward" / "reward_config.json"))["kind"] == "attribute"

    model = tune_on_labels(folder, str(tmp_path / "reward"), str(tmp_path / "tune"), cfg)
    assert os.path.isfile(os.path.join(model, "model_index.json"))
    unlabelled = load_rows(str(tmp_path / "tune" / "unlabelled"))
    assert len(unlabelled) == len(world.all_prompts(unseen=True))  # every unseen prompt, none of them labelled
    labelled = {r["prompt"] for r in load_rows(folder)}
    assert not labelled & {r["prompt"] for r in unlabelled}

    shutil.copytree(
        tmp_path / "tune" / "unlabelled", tmp_path / "t0" / "unlabelled"
    )  # the same draws: resumed, not redrawn
    assert os.path.isfile(
        os.path.join(tune_on_labels(None, str(tmp_path / "reward"), str(tmp_path / "t0"), cfg), "model_index.json")
    )

    few = str(tmp_path / "few")
    labelled_set(few, 1)  # one good and one bad label
    with pytest.raises(ValueError, match="at least 2 good and 2 bad labels; there are 1 good and 1 bad"):
        train_reward_on_labels(few, str(tmp_path / "r2"), cfg)
    with pytest.raises(ValueError, match="unlabelled_split='some' is not allowed"):
        LoopConfig(unlabelled_split="some")
    with pytest.raises(ValueError, match="reward='mlp' is not allowed"):
        LoopConfig(reward="mlp")


@pytest.mark.slow
def test_the_session_curve_runs_a_simulated_person_through_the_loop(tmp_path, capsys):
    """`benchmarks session` at a tiny size: 0 labels (the reward model's start) and one batch of labels, the same
    evaluation images for base and tuned, a table and a figure; bad flags are refused naming the flag."""
    from t2idemo.benchmarks import parse_args
    from t2idemo.loop import LoopConfig
    from t2idemo.session_curve import curve_table, plot_curve, session_curve

    cfg = LoopConfig(
        images_per_draw=8, train_steps=2, tune_batch=4, unlabelled_per_prompt=1, unlabelled_split="unseen"
    )
    res = session_curve([0, 8], 0.1, [0], 16, str(tmp_path / "s"), cfg)
    assert [p["labels"] for p in res["points"]] == [0, 8] and res["base"]["n"] == 16
    assert all(p["yours"]["n"] == 16 and 0 <= p["auc"] <= 1 for p in res["points"])
    with LabelStore(default_store_path(str(tmp_path / "s" / "seed0" / "labels8" / "labelling"))) as store:
        assert len(store.labels("visitor")) == 8
    table = curve_table(res)
    assert table.count("\n| ") == 3 and "over 0 labels" in table
    assert os.path.getsize(plot_curve(res, str(tmp_path / "curve.png"))) > 1000
    assert parse_args(["session"]).labels == [0, 24, 48, 96, 192]
    assert parse_args(["app", "--visitor"]).labels == 24
    for argv, msg in (
        (["session", "--labels", "0,x"], "--labels='0,x': 'x' is not one of a comma-separated list of integers"),
        (["session", "--flip", "0.7"], "--flip 0.7 is out of range"),
        (["app", "--labels", "2"], "--labels='2': 2 is out of range; use integers from 4 to 512"),
    ):
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert msg in capsys.readouterr().err
