"""Reward-weighted fine-tuning runs, checkpoints, resumes and writes a pipeline plain diffusers loads."""

import os

import pytest
import torch

from t2idemo.finetune import FinetuneConfig, denoising_loss, finetune, reward_weighted_loss
from t2idemo.finetune_data import top_k_rows
from t2idemo.labels import export_labels, simulate_labels


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="weight='x'"):
        FinetuneConfig(weight="x")
    with pytest.raises(ValueError, match="needs reward="):
        FinetuneConfig(weight="reward", reward="")
    with pytest.raises(ValueError, match="beta=-1"):
        FinetuneConfig(weight="label", beta=-1)
    with pytest.raises(ValueError, match="t_low=1.0"):
        FinetuneConfig(weight="label", t_low=1.0)
    with pytest.raises(ValueError, match="top_k=-1"):
        FinetuneConfig(weight="label", top_k=-1)


def test_top_k_keeps_each_prompts_best_and_never_a_zero_weight():
    prompts = ["a", "a", "a", "b", "b", "c"]
    weights = [0.2, 0.9, 0.5, 0.0, 0.7, 0.0]
    assert top_k_rows(prompts, weights, 1) == [1, 4]  # "c" has only a zero weight: nothing of it is kept
    assert top_k_rows(prompts, weights, 2) == [1, 2, 4]
    assert top_k_rows(prompts, weights, 8) == [0, 1, 2, 4]


def test_t_low_draws_only_high_noise_timesteps():
    from diffusers import DDPMScheduler

    seen = []

    class Spy(torch.nn.Module):  # records the timesteps the loss asks the UNet about
        def forward(self, x, t, emb):
            seen.append(t.clone())
            return type("Out", (), {"sample": torch.zeros_like(x)})()

    sched = DDPMScheduler(prediction_type="v_prediction")
    lat, emb = torch.randn(256, 4, 2, 2), torch.randn(256, 3, 8)
    denoising_loss(Spy(), sched, lat, emb, torch.Generator().manual_seed(0), t_low=0.5)
    denoising_loss(Spy(), sched, lat, emb, torch.Generator().manual_seed(0))
    assert seen[0].min() >= 500 and seen[0].max() < 1000
    assert seen[1].min() < 500  # the default draws from every timestep


def test_zero_weight_images_teach_nothing():
    """With w = 0 and beta = 0 the loss, and so the gradient, is zero: a bad image is ignored."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        layers_per_block=1,
        norm_num_groups=8,
    )
    sched = DDPMScheduler(prediction_type="v_prediction")
    lat, emb = torch.randn(3, 4, 8, 8), torch.randn(3, 5, 16)
    loss, lm, lp = reward_weighted_loss(unet, sched, lat, emb, torch.zeros(3), None, None, beta=0.0)
    loss.backward()
    assert loss.item() == 0 and all(p.grad is None or p.grad.abs().max() == 0 for p in unet.parameters())
    loss, _, _ = reward_weighted_loss(unet, sched, lat, emb, torch.ones(3), lat, emb, beta=1.0)
    assert loss.item() > 0


def test_one_unet_call_gives_the_two_terms_of_eq_2():
    """reward_weighted_loss sends D_model's and D_pre's rows through the UNet together; its terms must be the
    losses two separate calls give with the same random draws (D_model's noise and t first, then D_pre's)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        layers_per_block=1,
        norm_num_groups=8,
    ).eval()
    sched = DDPMScheduler(prediction_type="v_prediction")
    m_lat, m_emb, w = torch.randn(5, 4, 8, 8), torch.randn(5, 6, 16), torch.rand(5)
    p_lat, p_emb = torch.randn(3, 4, 8, 8), torch.randn(3, 6, 16)
    with torch.no_grad():
        total, l_model, l_pre = reward_weighted_loss(
            unet, sched, m_lat, m_emb, w, p_lat, p_emb, 0.5, torch.Generator().manual_seed(7), t_low=0.3
        )
        gen = torch.Generator().manual_seed(7)
        want_model = (w * denoising_loss(unet, sched, m_lat, m_emb, gen, t_low=0.3)).mean()
        want_pre = denoising_loss(unet, sched, p_lat, p_emb, gen).mean()
    assert torch.allclose(l_model, want_model, rtol=1e-4) and torch.allclose(l_pre, want_pre, rtol=1e-4)
    assert torch.allclose(total, want_model + 0.5 * want_pre, rtol=1e-4)


def test_finetune_checkpoints_resumes_and_loads_in_diffusers(render_dataset, tmp_path, capsys):
    from diffusers import StableDiffusionPipeline

    folder, _ = render_dataset
    simulate_labels(folder, seed=0)
    export_labels(folder, labeler="judge")
    out = str(tmp_path / "aligned")
    cfg = dict(data=folder, out=out, weight="label", batch=4, pre_batch=4, checkpoint_every=1)
    finetune(FinetuneConfig(train_steps=2, **cfg))
    finetune(FinetuneConfig(train_steps=3, **cfg))
    assert f"fine-tune: resuming at step 1 of 3 from {out}/checkpoint" in capsys.readouterr().out
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert pipe.unet.dtype == torch.float32
    assert pipe(["a red square"], num_inference_steps=2).images[0].size == (32, 32)
    ckpt = tmp_path / "aligned" / "checkpoint"  # accelerate's save_state, the trained weights in safetensors
    assert {"trainable.safetensors", "ema.safetensors", "optimizer.bin", "state.json"} <= set(os.listdir(ckpt))
    assert not any(f.startswith("model") or f.startswith("custom_checkpoint") for f in os.listdir(ckpt))


class Planted:  # what a hostile checkpoint could hold: unpickling it would run code (here: create a file)
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resuming_never_unpickles_code(render_dataset, tmp_path):
    """load_state reads the optimizer with torch.load(weights_only=True): a planted pickle is refused, not run."""
    import pickle

    folder, _ = render_dataset
    simulate_labels(folder, seed=0)
    export_labels(folder, labeler="judge")
    out, marker = tmp_path / "aligned", tmp_path / "ran"
    cfg = dict(data=folder, out=str(out), weight="label", batch=4, pre_batch=4, checkpoint_every=1)
    finetune(FinetuneConfig(train_steps=2, **cfg))
    with open(out / "checkpoint" / "optimizer.bin", "wb") as f:
        torch.save({"state": {}, "param_groups": [Planted(str(marker))]}, f)
    with pytest.raises(pickle.UnpicklingError):  # torch.load(weights_only=True) refuses the unknown global
        finetune(FinetuneConfig(train_steps=3, **cfg))
    assert not marker.exists()


def test_pre_pool_draws_d_pre_once_and_a_folder_without_repeats(render_dataset, tmp_path, monkeypatch):
    """pre_pool > 0: D_pre is drawn (and VAE-encoded) once, no larger than the steps can use; 0: every step."""
    from t2idemo import finetune as ft
    from t2idemo import world

    folder, rows = render_dataset
    simulate_labels(folder, seed=0)
    export_labels(folder, labeler="judge")
    drawn = []
    real = ft.PretrainStream.sample
    priors = []
    monkeypatch.setattr(
        ft.PretrainStream, "sample", lambda self, n: (drawn.append(n), priors.append(self.prior), real(self, n))[2]
    )
    cfg = dict(data=folder, weight="label", batch=4, pre_batch=4, train_steps=3, checkpoint_every=0)
    finetune(FinetuneConfig(out=str(tmp_path / "pool"), pre_pool=4096, **cfg))
    assert drawn == [12]  # once, steps * pre_batch images
    assert priors == [world.PRIORS["laion"]]  # the shipped base's prior.json: it learnt from the LAION-like prior
    assert world.read_prior(str(tmp_path / "pool")) == "laion"  # D_pre = the shipped base's own prior, carried on
    drawn.clear()
    finetune(FinetuneConfig(out=str(tmp_path / "fresh"), pre_pool=0, **cfg))
    assert drawn == [4, 4, 4]
    pool_imgs, pool_caps = ft.PretrainStream(folder, seed=0).pool(100)  # a folder: each row at most once
    assert len(pool_imgs) == len(rows) and sorted(pool_caps) == sorted(r["prompt"] for r in rows)
    with pytest.raises(ValueError, match="pre_pool=-1"):
        FinetuneConfig(weight="label", pre_pool=-1)


def test_cross_attention_mode_changes_only_attn2_and_the_text_embedding(render_dataset, tmp_path):
    """train='cross_attention': the convolutions that draw shapes are the base's, bit for bit; attn2 moved."""
    from diffusers import UNet2DConditionModel

    from t2idemo.generate import BASE_MODEL

    folder, _ = render_dataset
    simulate_labels(folder, seed=0)
    export_labels(folder, labeler="judge")
    out = str(tmp_path / "xattn")
    finetune(
        FinetuneConfig(
            data=folder,
            out=out,
            weight="label",
            batch=4,
            pre_batch=4,
            train_steps=3,
            lr=1e-3,
            train="cross_attention",
            ema=0,
            checkpoint_every=0,
        )
    )
    base = dict(UNet2DConditionModel.from_pretrained(BASE_MODEL, subfolder="unet").named_parameters())
    tuned = dict(UNet2DConditionModel.from_pretrained(out, subfolder="unet").named_parameters())
    moved = {n for n, p in tuned.items() if not torch.equal(p, base[n])}
    assert moved and all(".attn2." in n or n.startswith("add_embedding.") for n in moved)
    assert any(".attn2.to_k." in n for n in moved)
    with pytest.raises(ValueError, match="train='convs'"):
        FinetuneConfig(weight="label", train="convs")


@pytest.mark.parametrize("train", ["all_but_convs", "all_but_convs_and_time"])
def test_all_but_convs_modes_keep_every_3x3_kernel_bit_for_bit(render_dataset, tmp_path, train):
    """train='all_but_convs': every spatial convolution of the written pipeline and of its snapshot is the base's,
    byte for byte, and attention, feed-forward and norms moved; 'all_but_convs_and_time' also keeps the timestep
    embedding's MLP (the shipped model's mode: under half of its file differs from the base's, so git stores a
    delta)."""
    from diffusers import UNet2DConditionModel

    from t2idemo.generate import BASE_MODEL

    folder, _ = render_dataset
    simulate_labels(folder, seed=0)
    export_labels(folder, labeler="judge")
    out = str(tmp_path / train)
    finetune(
        FinetuneConfig(
            data=folder,
            out=out,
            weight="label",
            batch=4,
            pre_batch=4,
            train_steps=3,
            lr=1e-3,
            train=train,
            save_at="2",
            checkpoint_every=0,
        )
    )
    base_unet = UNet2DConditionModel.from_pretrained(BASE_MODEL, subfolder="unet")
    kept = {
        f"{m}.{p}"
        for m, mod in base_unet.named_modules()
        if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size != (1, 1)
        for p, _ in mod.named_parameters()
    }
    time_mlp = {n for n, _ in base_unet.named_parameters() if n.startswith("time_embedding.")}
    kept |= time_mlp if train == "all_but_convs_and_time" else set()
    base = dict(base_unet.named_parameters())
    for folder_out in (out, os.path.join(out, "step2")):
        tuned = dict(UNet2DConditionModel.from_pretrained(folder_out, subfolder="unet").named_parameters())
        moved = {n for n, p in tuned.items() if not torch.equal(p, base[n])}
        assert kept and not moved & kept
        assert (
            any(".ff." in n for n in moved) and any(".attn1." in n for n in moved) and any("norm" in n for n in moved)
        )
        assert bool(moved & time_mlp) == (train == "all_but_convs")  # the MLP moves where it trains


def test_min_reward_drops_low_weights_before_top_k():
    """A prompt whose images all score below min_reward adds nothing (not its least bad images)."""
    from t2idemo.finetune_data import select_rows

    prompts = ["a", "a", "a", "b", "b"]
    weights = [0.9, 0.6, 0.4, 0.3, 0.2]
    assert select_rows(prompts, weights) == [0, 1, 2, 3, 4]
    assert select_rows(prompts, weights, top_k=1) == [0, 3]  # without a floor "b" keeps a bad image
    assert select_rows(prompts, weights, min_reward=0.5, top_k=1) == [0]
    assert select_rows(prompts, weights, min_reward=0.5) == [0, 1]
    with pytest.raises(ValueError, match="min_reward=2"):
        FinetuneConfig(weight="label", min_reward=2)


def test_category_balance_draws_each_category_equally_often():
    """balance='category': 2 count rows among 98 combination rows still make about half of every batch."""
    import random

    from t2idemo.finetune_data import batch_sampler

    categories = ["count"] * 2 + ["combination"] * 98
    uniform = batch_sampler(categories, "none", random.Random(0))(4000)
    balanced = batch_sampler(categories, "category", random.Random(0))(4000)
    assert sum(i < 2 for i in uniform) / 4000 < 0.05
    assert 0.45 < sum(i < 2 for i in balanced) / 4000 < 0.55
    assert set(balanced) == set(range(100))  # every row is still drawn
    between = batch_sampler(categories, "sqrt", random.Random(0))(4000)  # sqrt(2) : sqrt(98), about 1 : 7
    assert 0.09 < sum(i < 2 for i in between) / 4000 < 0.16
    with pytest.raises(ValueError, match="balance='x'"):
        FinetuneConfig(weight="label", balance="x")


def test_should_stop_cancels_before_anything_is_written(render_dataset, tmp_path):
    """The app's Cancel button: the fine-tune stops at the next step and leaves no pipeline behind."""
    from t2idemo.finetune import Cancelled

    folder, _ = render_dataset
    simulate_labels(folder, seed=0)
    export_labels(folder, labeler="judge")
    steps = []
    out = str(tmp_path / "aligned")
    with pytest.raises(Cancelled, match="cancelled at step 2 of 5"):
        finetune(
            FinetuneConfig(
                data=folder, out=out, weight="label", batch=4, pre_batch=4, train_steps=5, checkpoint_every=0
            ),
            should_stop=lambda: steps.append(1) or len(steps) > 2,
        )
    assert not os.path.exists(os.path.join(out, "model_index.json"))


def test_preference_pairs_meet_a_prompts_best_good_with_its_worst_bad():
    from t2idemo.dpo import preference_pairs

    prompts = ["a", "a", "a", "a", "b", "b", "c"]
    weights = [0.9, 0.2, 0.6, 0.0, 0.8, 0.7, 0.1]
    assert preference_pairs(prompts, weights, 0.5, k=1) == [(0, 3)]  # "b" has no bad image, "c" no good one
    assert preference_pairs(prompts, weights, 0.5, k=2) == [(0, 3), (2, 1)]


def test_dpo_loss_starts_at_log2_and_training_ranks_winners_up(render_dataset, tmp_path):
    """At theta = reference the loss is log 2 exactly; a few steps on one batch of pairs push it below."""
    import copy
    import math

    from diffusers import DDPMScheduler, UNet2DConditionModel

    from t2idemo.dpo import dpo_loss
    from t2idemo.generate import BASE_MODEL

    unet = UNet2DConditionModel.from_pretrained(BASE_MODEL, subfolder="unet", torch_dtype=torch.float32)
    sched = DDPMScheduler.from_pretrained(BASE_MODEL, subfolder="train_scheduler")
    ref = copy.deepcopy(unet).requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    size = unet.config.sample_size
    lat_w, lat_l = torch.randn(4, 4, size, size, generator=g), torch.randn(4, 4, size, size, generator=g)
    emb = torch.randn(4, 8, unet.config.cross_attention_dim, generator=g)
    loss0, _ = dpo_loss(unet, ref, sched, lat_w, lat_l, emb, 2000.0, torch.Generator().manual_seed(1))
    assert abs(loss0.item() - math.log(2)) < 1e-6
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    for _ in range(5):
        loss, _ = dpo_loss(unet, ref, sched, lat_w, lat_l, emb, 2000.0, torch.Generator().manual_seed(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, acc = dpo_loss(unet, ref, sched, lat_w, lat_l, emb, 2000.0, torch.Generator().manual_seed(1))
    assert after.item() < 0.5 * math.log(2) and acc.item() > 0.5


def test_finetune_method_dpo_writes_a_pipeline(render_dataset, tmp_path):
    import json
    import os

    from t2idemo.label_store import LabelStore, default_store_path

    folder, rows = render_dataset
    with LabelStore(default_store_path(folder)) as store:  # each prompt: its first image good, its second bad
        store.add_many([(r["file_name"], "good" if k % 2 == 0 else "bad") for k, r in enumerate(rows)], "me")
    export_labels(folder, labeler="me")
    out = str(tmp_path / "dpo")
    finetune(
        FinetuneConfig(data=folder, out=out, weight="label", method="dpo", batch=4, train_steps=2, checkpoint_every=0)
    )
    info = json.load(open(os.path.join(out, "finetune.json")))
    assert info["config"]["method"] == "dpo" and info["n_model"] == 3  # one pair per prompt
    with pytest.raises(ValueError, match="method='x' is not allowed"):
        FinetuneConfig(weight="label", method="x")


def test_save_at_snapshots_are_the_shorter_fine_tunes(render_dataset, tmp_path):
    """A snapshot at step k of a long fine-tune is the model a k-step fine-tune writes (same seed), and training goes
    on untouched by it: the over-optimisation curve's checkpoints are honest."""
    from safetensors.torch import load_file

    folder, _ = render_dataset
    simulate_labels(folder, seed=0)
    export_labels(folder, labeler="judge")
    cfg = dict(data=folder, weight="label", batch=4, pre_batch=4, lr=1e-3, pre_pool=0, checkpoint_every=0)
    finetune(FinetuneConfig(out=str(tmp_path / "long"), train_steps=4, save_at="2", **cfg))
    finetune(FinetuneConfig(out=str(tmp_path / "short"), train_steps=2, **cfg))
    finetune(FinetuneConfig(out=str(tmp_path / "plain"), train_steps=4, **cfg))

    def unet(d):
        return load_file(str(tmp_path / d / "unet" / "diffusion_pytorch_model.safetensors"))

    snap, short, long, plain = unet("long/step2"), unet("short"), unet("long"), unet("plain")
    assert all(torch.equal(snap[k], short[k]) for k in snap)
    assert all(torch.equal(long[k], plain[k]) for k in long)  # writing the snapshot changed nothing
    assert any(not torch.equal(snap[k], long[k]) for k in snap)
    for bad in ("0", "5", "two"):
        with pytest.raises(ValueError, match="save_at"):
            FinetuneConfig(weight="label", train_steps=4, save_at=bad)


def test_two_processes_draw_their_own_batches_and_the_result_loads(render_dataset, tmp_path):
    """`accelerate launch --num_processes 2` on the CPU: the DataLoader accelerate prepared gives each process
    its own batches (as diffusers' training scripts do), and the pipeline written loads in plain diffusers."""
    import json
    import os
    import socket
    import subprocess
    import sys

    from diffusers import StableDiffusionPipeline

    folder, _ = render_dataset
    simulate_labels(folder, seed=0)
    export_labels(folder, labeler="judge")
    out = str(tmp_path / "two")
    with socket.socket() as s:  # a free port for the two processes' rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        os.path.join(root, "tests", "rank_probe.py"),
        "--data",
        folder,
        "--out",
        out,
        "--weight",
        "label",
        "--batch",
        "4",
        "--pre-batch",
        "4",
        "--pre-pool",
        "16",
        "--train-steps",
        "3",
        "--checkpoint-every",
        "0",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.load(open(f"{out}.rank{k}.json")) for k in range(2)]
    assert [r["num_processes"] for r in ranks] == [2, 2]
    b0, b1 = ranks[0]["batches"], ranks[1]["batches"]
    assert len(b0) == len(b1) == 3 and all(len(b) == 8 for b in b0 + b1)  # 3 steps of 4 D_model + 4 D_pre rows each
    assert all(x != y for x, y in zip(b0, b1))  # at every step each process drew its own batch, not the same one twice
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert pipe(["a red square"], num_inference_steps=2).images[0].size == (32, 32)


KILLER = """
import os, signal, sys
from t2idemo import finetune_params
from t2idemo.finetune import finetune_main

kill_step, kill_at = int(os.environ["KILL_STEP"]), os.environ["KILL_AT"]
real_save, real_replace = finetune_params.Checkpoint.save, os.replace


def dying_save(self, step, streams):  # SIGKILL in the middle of the save after step kill_step
    if step == kill_step and kill_at == "swap":  # between the swap's two renames: only checkpoint.old is whole
        calls = []

        def replace(a, b):
            calls.append(a)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(a, b)

        finetune_params.os.replace = replace
    real_save(self, step, streams)


finetune_params.Checkpoint.save = dying_save
finetune_main(sys.argv[1:])
"""


def unet_md5(folder) -> str:
    import hashlib

    return hashlib.md5(
        open(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"), "rb").read()
    ).hexdigest()


@pytest.mark.parametrize("pre_pool", [0, 64], ids=["fresh-d-pre", "d-pre-pool"])
def test_a_killed_fine_tune_resumes_bit_for_bit(render_dataset, tmp_path, pre_pool):
    """A fine-tune killed with SIGKILL after a checkpoint (at a step it reports), then killed again in the middle of
    the next checkpoint's save, and run a third time with the same command, writes the same tuned UNet, byte for byte,
    as a run that was never stopped: the batch order, noise, D_pre, EMA and optimizer go on where they were."""
    import signal
    import subprocess
    import sys

    folder, _ = render_dataset
    simulate_labels(folder, seed=0)
    export_labels(folder, labeler="judge")
    args = ["--data", folder, "--batch", "4", "--pre-batch", "4", "--train-steps", "6", "--pre-pool", str(pre_pool)]
    whole = str(tmp_path / "whole")
    finetune(
        FinetuneConfig(
            data=folder, out=whole, batch=4, pre_batch=4, train_steps=6, pre_pool=pre_pool, checkpoint_every=0
        )
    )
    out = str(tmp_path / "killed")
    cmd = [sys.executable, "-c", KILLER, *args, "--out", out, "--checkpoint-every", "2"]
    env = {**os.environ, "KILL_STEP": "4", "KILL_AT": "swap", "OMP_NUM_THREADS": "1"}
    # 1. SIGKILL once the run reports its first checkpoint
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    for line in proc.stdout:
        if line.startswith("fine-tune: checkpoint at step 2 of 6"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL and not os.path.exists(os.path.join(out, "model_index.json"))
    # 2. the rerun resumes at step 2, and is killed in the middle of its save after step 4
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    assert f"fine-tune: resuming at step 2 of 6 from {out}/checkpoint" in second.stdout
    assert not os.path.isfile(os.path.join(out, "checkpoint", "state.json"))  # the kill came mid-swap
    # 3. the same command again: resumes from the whole checkpoint the kill left, and finishes
    third = subprocess.run(cmd, capture_output=True, text=True, env={**env, "KILL_STEP": "0"}, timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"fine-tune: resuming at step 2 of 6 from {out}/checkpoint" in third.stdout
    assert unet_md5(out) == unet_md5(whole)
