"""The reward model: loss terms, training, save/load, metrics and the CLI, on a random tiny CLIP and crisp renders."""

import dataclasses
import json
import math
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from t2idemo import data as data_io
from t2idemo import pretrain, reward, reward_cli, reward_train, stats, world
from t2idemo.judge import judge


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A randomly initialised CLIP with the shipped architecture and tokenizer (no preprocessor_config.json)."""
    from transformers import CLIPModel

    path = str(tmp_path_factory.mktemp("clip"))
    tok = pretrain.build_tokenizer()
    torch.manual_seed(0)
    CLIPModel(pretrain.clip_config(len(tok.get_vocab()))).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_dataset(folder, unseen: bool, n_prompts: int, seed: int = 0) -> str:
    """Per prompt: one render of it and one of a random other prompt; labels are the judge's verdicts."""
    rng = random.Random(seed)
    os.makedirs(folder, exist_ok=True)
    everything, rows = world.all_prompts(), []
    for prompt, meta in rng.sample(world.all_prompts(unseen=unseen), n_prompts):
        for drawn in (meta, rng.choice(everything)[1]):
            img, _ = world.render_prompt(drawn, rng)
            name = f"{len(rows):05d}.png"
            img.save(os.path.join(folder, name))
            rows.append(
                {
                    "file_name": name,
                    "prompt": prompt,
                    **meta,
                    "seed": len(rows),
                    "model": "render",
                    "num_inference_steps": 0,
                    "guidance_scale": 0.0,
                    "label": "good" if judge(img, meta)["good"] else "bad",
                }
            )
    with open(os.path.join(folder, "metadata.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(folder)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return make_dataset(root / "train", False, 40), make_dataset(root / "heldout", True, 20, seed=1)


def small_cfg(clip_dir, data, run, **kw):
    return reward.RewardConfig(
        clip=clip_dir,
        data=data[0],
        eval_data=data[1],
        run=str(run),
        max_epochs=4,
        patience=2,
        n_boot=200,
        device="cpu",
        **kw,
    )


# ----------------------------------------------------------------------------- loss terms
def test_perturbed_prompts_differ_in_exactly_one_named_attribute_and_are_never_heldout():
    for prompt, meta in world.all_prompts(unseen=False):
        ps = world.perturbations(meta)
        assert len(ps) >= reward.RewardConfig.n_prompts - 1  # every good image gets a full candidate set
        assert len(set(ps)) == len(ps) and prompt not in ps
        for p in ps:
            m = world.parse_prompt(p)
            assert m["category"] == meta["category"] and not m["unseen"]
            assert sum(m[a] != meta[a] for a in meta["named"]) == 1, (prompt, p)
        assert set(ps) <= set(world.perturbations(meta, include_unseen=True))


def test_prompt_classification_loss_learns_to_prefer_the_true_prompt():
    torch.manual_seed(0)
    g, n, d = 256, 4, 16
    txt = torch.nn.functional.normalize(torch.randn(g, n, d), dim=-1)  # candidate 0 is the true prompt
    img = torch.nn.functional.normalize(txt[:, 0] + 0.3 * torch.randn(g, d), dim=-1)
    mask = torch.ones(g, n, dtype=torch.bool)
    head = reward.RewardHead(d, 64, 0.0)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = reward_train.prompt_classification_loss(head, img, txt, mask, temperature=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        assert (head(img[:, None].expand_as(txt), txt).argmax(1) == 0).float().mean() > 0.9
        # a masked-out candidate does not count: with only the true prompt left the loss is 0
        only_true = torch.zeros_like(mask)
        only_true[:, 0] = True
        assert reward_train.prompt_classification_loss(head, img, txt, only_true, 0.1).item() == pytest.approx(
            0, abs=1e-6
        )


def test_raw_reward_softmax_has_the_documented_floor():
    # with T = 1 (the default) and r in [0, 1] the CE cannot go below log(1 + (N - 1) / e), as documented
    head = reward.RewardHead(8, 16, 0.0)
    img, txt = torch.randn(32, 8), torch.randn(32, 4, 8)
    ce = reward_train.prompt_classification_loss(head, img, txt, torch.ones(32, 4, dtype=torch.bool), 1.0)
    assert ce.item() >= math.log(1 + 3 / math.e) - 1e-6


def test_training_loss_has_both_terms(clip_dir, data, tmp_path):
    cfg = small_cfg(clip_dir, data, tmp_path)
    clip = reward.FrozenCLIP(clip_dir, "cpu")
    emb, y = reward_train.training_set(cfg, clip)
    assert emb.cands.shape[1] >= cfg.n_prompts - 1 and len(emb.texts) > len({r["prompt"] for r in emb.rows})
    head = reward.RewardHead(clip.dim, 32, 0.0)
    idx = torch.arange(len(y))
    total, parts = reward_train.reward_loss(cfg, head, emb, y, idx, torch.Generator().manual_seed(0))
    assert parts["ce"] > 0 and parts["penalty"] == 0  # a fresh head's MLP term starts at zero
    assert total.item() == pytest.approx(parts["mse"] + cfg.lam * parts["ce"], rel=1e-5)
    _, parts0 = reward_train.reward_loss(reward.RewardConfig(lam=0.0), head, emb, y, idx, torch.Generator())
    assert parts0["ce"] == 0
    torch.nn.init.normal_(head.net[-1].weight)  # a head that has moved away from the calibrated cosine
    total, parts = reward_train.reward_loss(cfg, head, emb, y, idx, torch.Generator().manual_seed(0))
    assert parts["penalty"] > 0
    assert total.item() == pytest.approx(
        parts["mse"] + cfg.lam * parts["ce"] + cfg.mlp_penalty * parts["penalty"], rel=1e-5
    )
    off = dataclasses.replace(cfg, mlp_penalty=0.0)
    assert reward_train.reward_loss(off, head, emb, y, idx, torch.Generator().manual_seed(0))[0].item() < total.item()


def test_split_by_prompt_keeps_every_prompt_on_one_side():
    rows = [{"prompt": p} for p, _ in world.all_prompts(unseen=False) for _ in range(3)]
    tr, va = reward_train.split_by_prompt(rows, 0.2, seed=0)
    assert sorted(tr + va) == list(range(len(rows)))
    assert not {rows[i]["prompt"] for i in tr} & {rows[i]["prompt"] for i in va}
    assert len({rows[i]["prompt"] for i in va}) == round(0.2 * 242)


def test_flip_labels_is_seeded_and_flips_about_p():
    y = torch.zeros(20_000)
    assert torch.equal(reward_train.flip_labels(y, 0.0, 0), y)
    a, b = reward_train.flip_labels(y, 0.2, 1), reward_train.flip_labels(y, 0.2, 1)
    assert torch.equal(a, b) and abs(a.mean().item() - 0.2) < 0.01


# ----------------------------------------------------------------------------- model, save / load, CLI
def test_pixel_values_resize_crop_and_normalise():
    pp = {"size": 32, "crop": (32, 32), "resample": 3, "mean": pretrain.CLIP_MEAN, "std": pretrain.CLIP_STD}
    img = world.render_prompt(world.make_prompt("color", color="red", shape="square")[1], random.Random(0))[0]
    x = reward.pixel_values([img], pp)
    assert torch.allclose(x, pretrain.clip_pixels(world.to_array(img)), atol=1e-6)  # 32x32: same as pre-training
    assert reward.pixel_values([Image.new("RGB", (64, 48))], pp).shape == (1, 3, 32, 32)


def test_train_save_load_round_trip_gives_identical_scores(clip_dir, data, tmp_path):
    model = reward_train.train(small_cfg(clip_dir, data, tmp_path / "run"))
    assert sorted(os.listdir(tmp_path / "run")) == ["head.safetensors", "reward_config.json"]
    with open(tmp_path / "run" / "reward_config.json") as f:
        meta = json.load(f)
    assert meta["clip"] == clip_dir and meta["embed_dim"] == 64 and meta["training"]["n_val"] > 0
    rows = data_io.load_rows(data[1])[:8]
    images, prompts = data_io.load_images(data[1], rows), [r["prompt"] for r in rows]
    reward_fn = reward.load_reward_fn(str(tmp_path / "run"), device="cpu")
    r = reward_fn(images, prompts)
    assert isinstance(r, torch.Tensor) and r.shape == (8,) and r.dtype == torch.float32
    assert ((r >= 0) & (r <= 1)).all()
    assert torch.equal(r, model(images, prompts))
    assert torch.equal(r, reward.RewardModel.from_pretrained(str(tmp_path / "run"))(images, prompts))


def test_bad_arguments_raise_value_errors_that_name_them(clip_dir, data, tmp_path):
    for kw, name in [
        ({"lam": -1.0}, "lam=-1.0"),
        ({"n_prompts": 1}, "n_prompts=1"),
        ({"temperature": 0.0}, "temperature=0.0"),
        ({"mlp_penalty": -0.1}, "mlp_penalty=-0.1"),
        ({"labels": "human"}, "labels='human'"),
        ({"noise": 0.7}, "noise=0.7"),
        ({"noise_levels": "0,x"}, "noise_levels='0,x'"),
        ({"val_frac": 1.0}, "val_frac=1.0"),
        ({"hidden": 0}, "hidden=0"),
    ]:
        with pytest.raises(ValueError, match=name):
            reward.RewardConfig(**kw)
    with pytest.raises(ValueError, match="data='/nonexistent'"):
        data_io.load_rows("/nonexistent")
    with pytest.raises(ValueError, match="clip='not a model'"):
        reward.FrozenCLIP("not a model")
    with pytest.raises(ValueError, match="path="):
        reward.RewardModel.from_pretrained(str(tmp_path))
    model = reward.RewardModel(reward.RewardConfig(clip=clip_dir, device="cpu"))
    with pytest.raises(ValueError, match="differ in length"):
        model([Image.new("RGB", (32, 32))], ["a red square", "two circles"])


def test_cli_train_eval_and_study(clip_dir, data, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from t2idemo.__main__ import main

    run, common = str(tmp_path / "run"), ["--max-epochs", "3", "--n-boot", "200", "--device", "cpu"]
    main(["reward", "train", "--data", data[0], "--run", run, "--clip", clip_dir, "--labels", "judge"] + common)
    main(["reward", "eval", "--run", run, "--data", data[0], "--eval-data", data[1], "--n-boot", "200"])
    out = capsys.readouterr().out
    assert '"labels": "judge"' in out  # eval resolves the saved config and prints it
    assert (
        "| reward model (lambda=0.5, N=4) |" in out
        and "| CLIPScore (cosine) |" in out
        and "lambda=0 (MSE only)" in out
    )
    assert os.path.getsize(os.path.join(run, "calibration.png")) > 1000
    main(
        ["reward", "study", "--data", data[0], "--eval-data", data[1], "--clip", clip_dir, "--noise-levels", "0,0.3"]
        + common
    )
    out = capsys.readouterr().out
    assert "| 0% |" in out and "| 30% |" in out


# ----------------------------------------------------------------------------- metrics
def test_roc_auc_matches_hand_computed_examples():
    # positives {0.35, 0.8} vs negatives {0.1, 0.4}: 3 of the 4 pairs are ordered right
    assert stats.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # ties count 1/2: positives {0.5, 0.9} vs negatives {0.5, 0.5}: (0.5 + 0.5 + 1 + 1) / 4
    assert stats.roc_auc([0.5, 0.5, 0.5, 0.9], [0, 1, 0, 1]) == pytest.approx(0.75)
    assert stats.roc_auc([3, 2, 1], [1, 1, 0]) == 1.0 and stats.roc_auc([1, 2, 3], [1, 1, 0]) == 0.0
    with pytest.raises(ValueError, match="both classes"):
        stats.roc_auc([0.1, 0.2], [1, 1])


def test_wilson_bootstrap_and_calibration():
    lo, hi = stats.wilson(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.5
    s = {"good": y + rng.normal(0, 0.5, 400), "noise": rng.random(400)}
    ci = stats.bootstrap_auc(s, y, n_boot=300)
    assert ci["good"][0] > ci["noise"][1] and ci[("good", "noise")][0] > 0
    c = stats.calibration(np.array([0.05, 0.05, 0.95, 0.95]), np.array([0, 0, 1, 1]))
    assert c["ece"] == pytest.approx(0.05) and c["count"].sum() == 4
    assert stats.best_threshold([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == pytest.approx(0.5)


def test_a_saved_reward_model_carries_no_job_fields_and_evaluates_without_its_training_set(clip_dir, data, tmp_path):
    """reward_config.json: "config" holds what loading needs, "training" how it was trained (no paths); `reward eval`
    on a downloaded model needs only held-out data (no lambda = 0 baseline then, no CLIPScore threshold)."""
    run = str(tmp_path / "run")
    reward_train.train(reward.RewardConfig(clip=clip_dir, data=data[0], run=run, max_epochs=3, n_boot=100))
    meta = json.load(open(os.path.join(run, reward.CONFIG_FILE)))
    assert set(meta["config"]) == set(reward.MODEL_FIELDS)
    assert not {"data", "run", "eval_data", "n_boot", "noise_levels", "plot", "device"} & set(
        meta["training"]["config"]
    )
    model = reward.RewardModel.from_pretrained(run)
    assert model.cfg.lam == 0.5 and model.cfg.max_epochs == 3  # the record is read back
    action, cfg = reward_cli.parse_args(["eval", "--run", run, "--eval-data", data[1], "--n-boot", "100"])
    assert (action, cfg.data) == ("eval", "")
    res = reward_train.evaluate_reward(cfg, plot=False)
    assert list(res["table"]) == ["reward model (lambda=0.5, N=4)", "CLIPScore (cosine)"]
    assert res["table"]["CLIPScore (cosine)"]["acc"] is None and "No training set given" in reward_cli.reward_table(
        res
    )


def test_loading_a_reward_model_leaves_torchs_random_stream_alone():
    """A fine-tune seeds torch, then loads its reward model: the load must not draw from the stream (the head's
    random init is overwritten), or the tuned weights would depend on where the reward model came from."""
    from t2idemo.reward import REWARD_MODEL, load_reward_fn

    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    load_reward_fn(REWARD_MODEL)
    assert torch.equal(torch.rand(4), expected)
