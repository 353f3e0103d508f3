"""Diffusion-DPO (Wallace et al. 2023) from the same labels: the paper's successor, next to its loss.

Lee et al. (this kit's paper) fit a reward model and maximise E[r * log-likelihood]. Diffusion-DPO skips the
reward-weighted likelihood: from pairs (x_w, x_l) of one prompt z, the image people preferred and the one they did
not, it raises the model's likelihood of x_w relative to a frozen reference model (the base) and lowers that of
x_l, with the denoising loss standing in for the log-likelihood:

    loss = -log sigmoid( -beta_dpo / 2 * [ (l_theta(x_w) - l_ref(x_w)) - (l_theta(x_l) - l_ref(x_l)) ] )

where l(x) = ||target - prediction(x_t, t, z)||^2 at one noise and one timestep shared by the pair. The
reference keeps the model near the base (the role beta * D_pre plays in Lee et al.), so there is no D_pre term.

Pairs come from the main job's data: in every prompt, its good images (labelled good, or an unlabelled image with
r(x, z) >= min_reward) against its bad ones (labelled bad, or r < min_reward); each prompt's best k good images
meet its k worst bad ones. A prompt with no good or no bad image gives no pair.

Compute: a step of ``batch`` pairs runs the trained UNet forward and backward on 2 * batch latents, as the
reward-weighted step does on batch D_model + pre_batch D_pre latents when the two batches are equal, plus
2 * batch forward passes of the frozen reference (no backward: about a third more time per step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def preference_pairs(prompts: list, weights: list, min_reward: float = 0.5, k: int = 2) -> list[tuple[int, int]]:
    """(winner, loser) row indices: for each prompt, its k highest-weight rows with weight >= min_reward against
    its k lowest-weight rows below it, best with worst first. Labels count as weights 1 (good) and 0 (bad)."""
    by_prompt = {}
    for i, (p, _w) in enumerate(zip(prompts, weights)):
        by_prompt.setdefault(p, []).append(i)
    pairs = []
    for rows in by_prompt.values():
        good = sorted((i for i in rows if weights[i] >= min_reward), key=lambda i: -weights[i])[:k]
        bad = sorted((i for i in rows if weights[i] < min_reward), key=lambda i: weights[i])[:k]
        pairs += list(zip(good, bad))
    return sorted(pairs)


def dpo_loss(unet, ref_unet, noise_scheduler, lat_w, lat_l, text_emb, beta_dpo: float, generator=None) -> tuple:
    """Diffusion-DPO on a batch of pairs -> (loss, implicit accuracy: the share of pairs the model already
    ranks right against the reference, a diagnostic)."""
    B = lat_w.shape[0]
    noise = torch.randn(lat_w.shape, generator=generator, device="cpu").to(lat_w)  # (B, 4, h, w), shared by a pair
    T = noise_scheduler.config.num_train_timesteps
    t = torch.randint(0, T, (B,), generator=generator, device="cpu").to(lat_w.device)  # (B,), shared by a pair
    latents = torch.cat([lat_w, lat_l])  # (2B, 4, h, w): winners, then losers
    noise, t, emb = torch.cat([noise, noise]), torch.cat([t, t]), torch.cat([text_emb, text_emb])
    x_t = noise_scheduler.add_noise(latents, noise, t)  # (2B, 4, h, w)
    if noise_scheduler.config.prediction_type == "epsilon":
        target = noise
    else:
        target = noise_scheduler.get_velocity(latents, noise, t)  # the tiny model predicts v
    loss = F.mse_loss(unet(x_t, t, emb).sample.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))  # (2B,)
    with torch.no_grad():
        ref = F.mse_loss(ref_unet(x_t, t, emb).sample.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    loss_w, loss_l = loss.chunk(2)  # (B,), (B,)
    ref_w, ref_l = ref.chunk(2)
    inside = -0.5 * beta_dpo * ((loss_w - ref_w) - (loss_l - ref_l))  # (B,) > 0: the winner gained on the loser
    return -F.logsigmoid(inside).mean(), (inside > 0).float().mean().detach()
