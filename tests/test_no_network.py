"""No code path reaches the network on its own: every stage runs with sockets blocked and every offline and
no-telemetry switch of huggingface_hub / transformers / diffusers turned OFF, so only the code, not the
environment, keeps it local; and a hub id with HF_HUB_OFFLINE=1 fails at once with an error naming it."""

import socket
import sys

import pytest

from t2idemo import data, finetune, generate, label_store, label_summary, labels, reward, reward_train, sd

HUB_LIBRARIES = ("huggingface_hub", "transformers", "diffusers", "accelerate", "peft")


def set_hub_switches(monkeypatch, offline: bool) -> None:
    """Set HF_HUB_OFFLINE in every loaded module of the hub libraries (each keeps its own copy, read from the
    environment at import), and telemetry off only when offline."""
    import importlib

    for name in ("huggingface_hub", "transformers", "diffusers", "diffusers.loaders.lora_base"):
        importlib.import_module(name)  # load them first, so that every copy of the switch is found

    for name, module in list(sys.modules.items()):
        if module is not None and name.split(".")[0] in HUB_LIBRARIES:
            if isinstance(vars(module).get("HF_HUB_OFFLINE"), bool):
                monkeypatch.setattr(module, "HF_HUB_OFFLINE", offline)
            if isinstance(vars(module).get("HF_HUB_DISABLE_TELEMETRY"), bool):
                monkeypatch.setattr(module, "HF_HUB_DISABLE_TELEMETRY", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1" if offline else "0")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1" if offline else "0")


@pytest.fixture
def attempts(monkeypatch):
    """Block every way of opening a network connection; the list records each attempt (and the call raises)."""
    tried = []

    def refuse(what):
        def blocked(*args, **kwargs):
            tried.append((what, args[1:2] if what == "socket.connect" else args[:1]))
            raise OSError(f"network blocked by the test ({what})")

        return blocked

    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family == getattr(socket, "AF_UNIX", None):  # local IPC is not the network
            return real_connect(self, address)
        return refuse("socket.connect")(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, address: connect(self, address))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("socket.getaddrinfo"))
    return tried


def test_the_block_catches_a_hub_request(attempts, monkeypatch):
    """The guard itself works: a request through huggingface_hub's own HTTP session, offline mode off, is caught."""
    from huggingface_hub import get_session

    set_hub_switches(monkeypatch, offline=False)
    # Exception, not OSError: the blocked OSError reaches us wrapped by whichever HTTP client huggingface_hub uses
    # (requests or httpx)
    with pytest.raises(Exception):  # noqa: B017
        get_session().get(f"https://huggingface.co/api/models/{sd.CLIP_L14}", timeout=5)
    assert attempts, "the socket guard saw no connection attempt from a hub request"


def test_every_stage_runs_without_touching_the_network(attempts, monkeypatch, tmp_path):
    from diffusers import StableDiffusionPipeline

    set_hub_switches(monkeypatch, offline=False)
    # SD scale, on tiny random components
    model, clip = sd.build_tiny_sd(str(tmp_path / "tiny-sd")), sd.build_tiny_clip(str(tmp_path / "tiny-clip"))
    feedback, heldout = str(tmp_path / "feedback"), str(tmp_path / "heldout")
    for out, split, n in ((feedback, "seen", 6), (heldout, "unseen", 4)):
        generate.generate_dataset(
            generate.GenerateConfig(
                out=out,
                model=model,
                prompt_set="sd",
                split=split,
                max_prompts=n,
                per_prompt=2,
                sample_steps=2,
                device="cpu",
            )
        )
        rows = data.load_rows(out, missing_ok=True)
        with label_store.LabelStore(label_store.default_store_path(out)) as store:
            store.add_many([(r["file_name"], ("good", "bad")[i % 2]) for i, r in enumerate(rows)], labeler="alice")
        labels.export_labels(out)
    cfg = reward.RewardConfig(
        clip=clip,
        data=feedback,
        eval_data=heldout,
        run=str(tmp_path / "reward"),
        max_epochs=2,
        patience=1,
        n_boot=100,
        device="cpu",
    )
    reward_train.evaluate_reward(cfg, reward_train.train(cfg), plot=False)
    out = str(tmp_path / "aligned")
    finetune.finetune(
        finetune.FinetuneConfig(
            model=model,
            data=feedback,
            reward=cfg.run,
            pretrain_data=feedback,
            out=out,
            lora_rank=4,
            train_steps=2,
            batch=2,
            pre_batch=2,
            checkpoint_every=1,
        )
    )
    pipe = StableDiffusionPipeline.from_pretrained(out)
    pipe.load_lora_weights(out)
    generate.sample(pipe, ["two dogs"], [0], steps=2)
    label_summary.summary(heldout, cfg.run, device="cpu")
    # the shapes world, on the shipped models
    shapes = str(tmp_path / "shapes")
    generate.generate_dataset(
        generate.GenerateConfig(out=shapes, max_prompts=2, per_prompt=2, sample_steps=2, device="cpu")
    )
    reward_train.train(
        reward.RewardConfig(data=shapes, labels="judge", run=str(tmp_path / "r2"), max_epochs=2, device="cpu")
    )
    reward.load_reward_fn(str(tmp_path / "r2"))
    assert attempts == [], f"a code path tried to reach the network: {attempts[:5]}"


def test_hub_ids_fail_fast_offline_with_an_error_that_names_them(attempts, monkeypatch, tmp_path):
    set_hub_switches(monkeypatch, offline=True)
    with pytest.raises(OSError, match="stable-diffusion-v1-5/stable-diffusion-v1-5"):
        generate.load_pipeline(sd.SD15, device="cpu")
    with pytest.raises(OSError, match="stable-diffusion-v1-5/stable-diffusion-v1-5"):
        finetune.finetune(
            finetune.FinetuneConfig(model=sd.SD15, data=str(tmp_path), out=str(tmp_path / "o"), weight="label")
        )
    with pytest.raises(OSError, match="huggingface.co|offline|cache"):
        reward.FrozenCLIP(sd.CLIP_L14, device="cpu")
    assert attempts == [], f"offline mode still tried the network (no retries, no waiting): {attempts[:5]}"
