"""SD scale: the paper's prompt set, and every stage (generate -> people's labels -> reward -> LoRA fine-tuning ->
plain diffusers) through the same library functions as the shapes world, on tiny random SD v1.5-style models."""

import os
import sys

import pytest
import torch

from t2idemo import (
    data,
    finetune,
    finetune_params,
    generate,
    label_store,
    label_summary,
    labels,
    reward,
    reward_train,
    sd,
)


# ----------------------------------------------------------------------------- the prompt set
def test_prompts_follow_the_papers_four_categories_and_wording():
    assert sd.make_prompt("count", count=2, object="dog")[0] == "two dogs"
    assert sd.make_prompt("count", count=1, object="apple")[0] == "one apple"
    assert sd.make_prompt("color", color="green", object="dog")[0] == "a green colored dog"
    assert sd.make_prompt("background", object="dog", background="forest")[0] == "a dog in the forest"
    assert sd.make_prompt("background", object="orange", background="moon")[0] == "an orange on the moon"
    prompt, meta = sd.make_prompt("combination", count=2, color="blue", object="dog", background="forest")
    assert prompt == "two blue dogs in the forest" and meta["unseen"]  # blue dogs are held out
    prompt, meta = sd.make_prompt("combination", count=2, color="green", object="dog", background="city")
    assert prompt == "two green dogs in the city"
    assert meta == {
        "category": "combination",
        "named": ["count", "color", "object", "background"],
        "count": 2,
        "color": "green",
        "object": "dog",
        "background": "city",
        "unseen": False,
    }
    assert sd.make_prompt("color", color="red", object="cat")[1]["count"] == 1  # "a red colored cat" asks for one


def test_seen_and_unseen_split_covers_every_category_and_parses_back():
    everything = sd.all_prompts()
    assert len({p for p, _ in everything}) == len(everything) == 60 + 108 + 72 + 3240
    for cat in sd.CATEGORIES:
        seen, unseen = sd.all_prompts(cat, unseen=False), sd.all_prompts(cat, unseen=True)
        assert seen and unseen and not {p for p, _ in seen} & {p for p, _ in unseen}
    assert {m["category"] for _, m in everything[:4]} == set(sd.CATEGORIES)  # the first N are balanced
    for prompt, meta in everything:
        assert sd.parse_prompt(prompt) == meta and sd.is_unseen(meta) == meta["unseen"]
    assert sd.parse_prompt("  Two BLUE dogs in the forest ")["count"] == 2


def test_perturbed_prompts_differ_in_one_named_attribute_and_are_never_unseen():
    for prompt, meta in sd.all_prompts(unseen=False):
        swaps = sd.perturbations(meta)
        assert len(swaps) >= reward.RewardConfig.n_prompts - 1 and prompt not in swaps
        for p in swaps:
            m = sd.parse_prompt(p)
            assert m["category"] == meta["category"] and not m["unseen"]
            assert sum(m[a] != meta[a] for a in meta["named"]) == 1, (prompt, p)


def test_bad_values_name_the_argument_and_what_is_allowed(monkeypatch):
    with pytest.raises(ValueError, match=r"count=7 is not allowed; use one of \(1, 2, 3, 4, 5\)"):
        sd.make_prompt("count", count=7, object="dog")
    with pytest.raises(ValueError, match="object='unicorn'"):
        sd.make_prompt("color", color="red", object="unicorn")
    with pytest.raises(ValueError, match="category='size'"):
        sd.all_prompts("size")
    with pytest.raises(ValueError, match="needs background="):
        sd.make_prompt("background", object="dog")
    with pytest.raises(ValueError, match="prompt='two unicorns' is not in the SD-scale prompt set"):
        sd.parse_prompt("two unicorns")
    with pytest.raises(ValueError, match="prompt_set='photos'"):
        generate.GenerateConfig(prompt_set="photos")
    for bad, match in (
        (dict(lora_rank=-1), "lora_rank=-1"),
        (dict(lora_rank=2.5), "lora_rank=2.5"),
        (dict(lora_alpha=-1.0), "lora_alpha=-1.0"),
        (dict(encode_batch=0), "encode_batch=0"),
    ):
        with pytest.raises(ValueError, match=match):
            finetune.FinetuneConfig(weight="label", **bad)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as on a machine without it
    with pytest.raises(ImportError, match="use_8bit_adam=True needs bitsandbytes"):
        finetune.make_optimizer(
            [torch.nn.Parameter(torch.zeros(1))], finetune.FinetuneConfig(weight="label", use_8bit_adam=True)
        )


def test_the_judge_refuses_sd_scale_rows():
    from PIL import Image

    _, meta = sd.make_prompt("count", count=2, object="dog")
    with pytest.raises(ValueError, match="people's labels"):
        reward_train.judge_labels([Image.new("RGB", (32, 32))], [{"prompt": "two dogs", **meta}])


# ----------------------------------------------------------------------------- every stage, once
def label_by_hand(folder):
    """Labels as people give them in the widget: through the label store, then exported into the rows."""
    rows = data.load_rows(folder, missing_ok=True)
    with label_store.LabelStore(label_store.default_store_path(folder)) as store:
        for i, r in enumerate(rows):
            store.add(r["file_name"], ("good", "bad", "good", "skip")[i % 4], labeler="alice")
    return labels.export_labels(folder, labeler="alice")


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """Run every stage on tiny random components; returns the folders and the results."""
    root = tmp_path_factory.mktemp("sd")
    model, clip = sd.build_tiny_sd(str(root / "tiny-sd")), sd.build_tiny_clip(str(root / "tiny-clip"))
    feedback, heldout = str(root / "feedback"), str(root / "heldout")
    gen = {}
    for out, split, seed in ((feedback, "seen", 0), (heldout, "unseen", 1)):
        gen[split] = generate.generate_dataset(
            generate.GenerateConfig(
                out=out,
                model=model,
                prompt_set="sd",
                split=split,
                max_prompts=8,
                per_prompt=2,
                sample_steps=2,
                seed=seed,
                batch=8,
                device="cpu",
            )
        )
        label_by_hand(out)
    rcfg = reward.RewardConfig(
        clip=clip,
        data=feedback,
        eval_data=heldout,
        run=str(root / "reward"),
        max_epochs=3,
        patience=2,
        n_boot=100,
        device="cpu",
    )
    model_r = reward_train.train(rcfg)
    evaluation = reward_train.evaluate_reward(rcfg, model_r, plot=False)
    out = str(root / "aligned")
    fcfg = dict(
        model=model,
        data=feedback,
        reward=rcfg.run,
        pretrain_data=feedback,
        out=out,
        lora_rank=4,
        lora_alpha=8.0,
        batch=2,
        pre_batch=2,
        encode_batch=4,
        lr=1e-2,
        checkpoint_every=1,
        gradient_checkpointing=True,
    )
    finetune.finetune(finetune.FinetuneConfig(train_steps=2, **fcfg))
    finetune.finetune(finetune.FinetuneConfig(train_steps=3, **fcfg))  # resumes from OUT/checkpoint
    return dict(
        root=root,
        model=model,
        clip=clip,
        feedback=feedback,
        heldout=heldout,
        gen=gen,
        reward=rcfg,
        reward_model=model_r,
        evaluation=evaluation,
        out=out,
        fcfg=fcfg,
    )


def test_generate_writes_the_sd_prompt_set_in_the_same_layout(stages):
    from PIL import Image

    for folder, unseen in ((stages["feedback"], False), (stages["heldout"], True)):
        rows = data.load_rows(folder, missing_ok=True)
        assert len(rows) == 16
        for r in rows:
            assert {"category", "named", "count", "color", "object", "background", "unseen"} <= set(r)
            assert r["unseen"] is unseen and sd.parse_prompt(r["prompt"])["object"] == r["object"]
            assert r["label"] in ("good", "bad", None) and r["model"] == stages["model"]
        assert Image.open(os.path.join(folder, rows[0]["file_name"])).size == (32, 32)
    again = generate.generate_dataset(
        generate.GenerateConfig(
            out=stages["feedback"], model=stages["model"], prompt_set="sd", max_prompts=8, per_prompt=2, sample_steps=2
        )
    )
    assert again["generated"] == 0  # resumable, like the shapes world's sets


def test_reward_trains_on_people_labels_with_swaps_from_the_sd_vocabulary(stages):
    rows = [r for r in data.load_rows(stages["feedback"], missing_ok=True) if r["label"] in ("good", "bad")]
    model = stages["reward_model"]
    emb = reward_train.embed_dataset(model.clip, data.load_images(stages["feedback"], rows), rows)
    assert (emb.cands >= 0).sum(1).min() >= 3  # every row gets its one-attribute swaps
    assert all(emb.texts[i] in sd.perturbations(rows[0]) for i in emb.cands[0].tolist() if i >= 0)
    ev = stages["evaluation"]  # held-out truth = people's labels (the judge cannot read photos)
    held = [r for r in data.load_rows(stages["heldout"], missing_ok=True) if r["label"] in ("good", "bad")]
    assert ev["n_images"] == len(held) and ev["good_rate"] == pytest.approx(
        sum(r["label"] == "good" for r in held) / len(held)
    )
    scores = reward.load_reward_fn(stages["reward"].run)(
        data.load_images(stages["heldout"], held[:3]), [r["prompt"] for r in held[:3]]
    )
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 1)).all()
    table = label_summary.summary(stages["heldout"], stages["reward"].run, device="cpu")
    assert table["all"]["labelled"] == len(held) and 0 <= table["all"]["mean_reward"] <= 1
    assert "| all |" in label_summary.summary_table(table)


def test_lora_output_loads_in_plain_diffusers_fused_and_as_an_adapter(stages):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    out = stages["out"]
    assert os.path.isfile(os.path.join(out, finetune_params.LORA_FILE))
    ckpt = load_file(os.path.join(out, "checkpoint", "trainable.safetensors"))
    assert ckpt and all(".lora_A." in k or ".lora_B." in k for k in ckpt)  # only the adapter is checkpointed
    fused = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert type(fused.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q) is torch.nn.Linear
    base = StableDiffusionPipeline.from_pretrained(stages["model"], local_files_only=True)
    adapted = StableDiffusionPipeline.from_pretrained(stages["model"], local_files_only=True)
    adapted.load_lora_weights(out)  # rank 4, alpha 8: the scale travels in the file's metadata
    x, t, e = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)), 500, torch.randn(2, 77, 32)
    with torch.no_grad():
        y_fused, y_adapted, y_base = (p.unet(x, t, e).sample for p in (fused, adapted, base))
    moved = (y_fused - y_base).abs().max()
    assert moved > 1e-3  # training changed the model
    assert (y_fused - y_adapted).abs().max() < 0.05 * moved  # fused == base + adapter (up to fp16 storage)
    images = generate.sample(fused, ["two blue dogs in the forest"], [0], steps=2)
    assert images[0].size == (32, 32)


def test_resuming_with_another_lora_rank_is_refused(stages):
    cfg = finetune.FinetuneConfig(**{**stages["fcfg"], "lora_rank": 8, "train_steps": 5})
    with pytest.raises(ValueError, match="lora_rank=4, now lora_rank=8"):
        finetune.finetune(cfg)


def test_cli_lists_the_prompt_set_and_rejects_unknown_commands(capsys):
    assert sd.main(["prompts"]) == 0
    out = capsys.readouterr().out
    assert "combination  seen  2620  unseen   620" in out
    assert sd.main(["photos"]) == 2
