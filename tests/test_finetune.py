"""Reward-weighted fine-tuning runs, checkpoints, resumes and writes a pipeline plain diffusers loads."""
import pytest
import torch

from t2idemo.finetune import FinetuneConfig, finetune, reward_weighted_loss
from t2idemo.labels import export_labels, simulate_labels


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="weight='x'"):
        FinetuneConfig(weight="x")
    with pytest.raises(ValueError, match="needs reward="):
        FinetuneConfig(weight="reward", reward="")
    with pytest.raises(ValueError, match="beta=-1"):
        FinetuneConfig(weight="label", beta=-1)


def test_zero_weight_images_teach_nothing():
    """With w = 0 and beta = 0 the loss, and so the gradient, is zero: a bad image is ignored."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 32),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=16, layers_per_block=1, norm_num_groups=8)
    sched = DDPMScheduler(prediction_type="v_prediction")
    lat, emb = torch.randn(3, 4, 8, 8), torch.randn(3, 5, 16)
    loss, lm, lp = reward_weighted_loss(unet, sched, lat, emb, torch.zeros(3), None, None, beta=0.0)
    loss.backward()
    assert loss.item() == 0 and all(p.grad is None or p.grad.abs().max() == 0 for p in unet.parameters())
    loss, _, _ = reward_weighted_loss(unet, sched, lat, emb, torch.ones(3), lat, emb, beta=1.0)
    assert loss.item() > 0


def test_finetune_checkpoints_resumes_and_loads_in_diffusers(render_dataset, tmp_path, capsys):
    from diffusers import StableDiffusionPipeline

    folder, _ = render_dataset
    simulate_labels(folder, seed=0)
    export_labels(folder, labeler="judge")
    out = str(tmp_path / "aligned")
    cfg = dict(data=folder, out=out, weight="label", batch=4, pre_batch=4, checkpoint_every=1)
    finetune(FinetuneConfig(steps=2, **cfg))
    finetune(FinetuneConfig(steps=3, **cfg))
    assert "resumed from" in capsys.readouterr().out
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert pipe.unet.dtype == torch.float32
    assert pipe(["a red square"], num_inference_steps=2).images[0].size == (32, 32)
