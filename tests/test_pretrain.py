"""Each pre-training script runs for a few steps and writes what the next one reads."""

import json
import os
import subprocess
import sys

import pytest
import torch

from t2idemo import pretrain


def test_tokenizer_maps_each_world_word_to_one_token():
    tok = pretrain.build_tokenizer()
    ids = tok("three purple circles on grass", padding="max_length", max_length=pretrain.TOKEN_LENGTH)["input_ids"]
    assert len(ids) == pretrain.TOKEN_LENGTH and ids[0] == 0 and ids[6] == 1  # BOS, 5 words, EOS


def test_caption_match_handles_unstated_and_plural_counts():
    from t2idemo.world import Scene

    scenes = [Scene(1, "red", "circle", "sky", 9, [(9, 9)]), Scene(3, "red", "circle", "snow", 9, [])]
    codes = pretrain.scene_codes(scenes)
    stated = torch.tensor([[0, 0, 0, -1], [1, -1, 0, -1]])  # "red circles", "a circle"
    m = pretrain.caption_match(stated, codes)
    assert m.tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="part='x'"):
        pretrain.PretrainConfig(part="x")
    with pytest.raises(ValueError, match="clip_p_count=1.5"):
        pretrain.PretrainConfig(clip_p_count=1.5)
    with pytest.raises(ValueError, match="prior='lion'.*laion"):
        pretrain.PretrainConfig(prior="lion")


def test_every_part_runs_a_few_steps_and_the_result_loads_in_plain_diffusers(tmp_path):
    out = str(tmp_path)
    for part, extra in [
        ("tokenizer", []),
        ("clip", ["--clip-steps", "3", "--clip-batch", "16"]),
        ("vae", ["--vae-steps", "3", "--vae-batch", "8", "--vae-decoder-steps", "3"]),
        ("unet", ["--unet-steps", "3", "--unet-batch", "8"]),
        ("reward_clip", ["--rclip-steps", "2", "--clip-batch", "16"]),
    ]:
        r = subprocess.run(
            [sys.executable, "-m", "t2idemo", "pretrain", "--out", out, "--part", part, "--n-images", "64", *extra],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        assert "PretrainConfig" in r.stdout and f"{part}:" in r.stdout
    from transformers import CLIPModel

    assert CLIPModel.from_pretrained(os.path.join(out, "tiny-reward-clip")).config.projection_dim == 64
    assert os.path.isfile(os.path.join(out, "tiny-reward-clip", "preprocessor_config.json"))
    idx = json.load(open(os.path.join(out, "tiny-sd", "model_index.json")))
    assert idx["unet"] == ["diffusers", "UNet2DConditionModel"] and idx["text_encoder"] == [
        "transformers",
        "CLIPTextModel",
    ]
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(os.path.join(out, "tiny-sd"), local_files_only=True)
    assert pipe.unet.dtype == torch.float32  # stored as float16, loads as float32
    assert pipe.scheduler.config.prediction_type == "v_prediction" and pipe.scheduler.config.rescale_betas_zero_snr
    images = pipe(
        ["a red square"], num_inference_steps=2, guidance_scale=3.0, generator=torch.Generator().manual_seed(0)
    ).images
    assert images[0].size == (32, 32)
