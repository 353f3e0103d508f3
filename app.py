"""The t2idemo app (Gradio): compare the base and aligned models, label images, share a run on the Hub.

    python app.py                                        # shipped base, aligned and reward models, 127.0.0.1:7860
    python app.py --aligned runs/aligned --reward runs/reward --data data/feedback --port 7861
    python app.py --benchmark 5                          # time Compare (4 + 4 images, defaults) 5 times, then exit

Tabs:
  Compare  a prompt, seed, steps, guidance and number of images; the base and aligned models draw from the same
           seeds side by side, each image captioned with the judge's verdict and the reward model's score.
  Label    the label store of the notebooks (DATA/labels.sqlite, ``t2idemo.labels``): each person types a name and
           clicks Good / Bad / Skip / Undo; every click is on disk before the next image shows, and several people
           (browser tabs, notebooks, processes) can label at once.
  Share    pushes the aligned model, the reward model, the labels dataset and a generated model card to the Hub
           (``t2idemo.hub.push``). The token is used for that push only: never saved, printed or logged.

Handlers only check their inputs and call the library; a ValueError (bad input) becomes a gr.Error in the page
and the app keeps serving. On a Hugging Face Space (see the README's front matter) it listens where the Space says
(GRADIO_SERVER_NAME, GRADIO_SERVER_PORT). Needs ``pip install gradio``.
"""

from __future__ import annotations

import functools
import math
import os
import sqlite3
import statistics
import threading
import time
from dataclasses import dataclass

from PIL import Image

from t2idemo import world
from t2idemo.config import parse_config
from t2idemo.generate import ALIGNED_MODEL, BASE_MODEL, DEFAULT_GUIDANCE, DEFAULT_STEPS, load_dataset_rows
from t2idemo.labels import LABELS, MAJORITY, LabelStore, default_store_path
from t2idemo.reward import CONFIG_FILE as REWARD_CONFIG_FILE
from t2idemo.reward import REWARD_MODEL

DEFAULT_DATA = "data/feedback"  # the labelling set of `python -m t2idemo generate`
LIMITS = {"seed": (0, 2 ** 31 - 1), "steps": (1, 100), "images": (1, 16), "guidance": (0.0, 20.0)}
BENCH_PROMPT = "three purple circles on grass"
CSS = "#base-gallery img, #aligned-gallery img, #label-image img {image-rendering: pixelated;}"
MODEL_FLAGS = {  # flag: (the file that marks its folder, what the folder is, an example of a good value)
    "base": ("model_index.json", "a StableDiffusionPipeline folder", "--base t2idemo/assets/tiny-sd"),
    "aligned": ("model_index.json", "a StableDiffusionPipeline folder",
                "--aligned runs/aligned from `python -m t2idemo finetune`, or --aligned t2idemo/assets/tiny-sd "
                "to show the base model on both sides"),
    "reward": (REWARD_CONFIG_FILE, "a reward model folder", "--reward runs/reward from `python -m t2idemo reward train`"),
}


@dataclass
class AppConfig:
    base: str = BASE_MODEL  # base StableDiffusionPipeline folder: the left column of Compare
    aligned: str = ALIGNED_MODEL  # aligned pipeline folder: the right column of Compare, pushed by Share
    reward: str = REWARD_MODEL  # reward model folder (reward_config.json + head) that scores every image
    data: str = DEFAULT_DATA  # dataset folder to label (PNGs + metadata.jsonl); its labels.sqlite is the store
    host: str = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")  # interface to serve on; 0.0.0.0 = every one
    port: int = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))  # TCP port; 1 - 65535
    share: bool = False  # also open a public *.gradio.live link (needs the internet)
    threads: int = 1  # torch CPU threads; 0 = torch's default (one per core); 1 was fastest on 2 busy cores
    benchmark: int = 0  # > 0: time this many Compare calls at default settings, print the figures and exit

    def __post_init__(self):
        defaults = {"base": BASE_MODEL, "aligned": ALIGNED_MODEL, "reward": REWARD_MODEL}
        for flag, (marker, what, example) in MODEL_FLAGS.items():
            path = getattr(self, flag)
            if not os.path.isfile(os.path.join(path, marker)):
                problem = f"the default, {what}, is not shipped yet" if path == defaults[flag] else f"is not {what}"
                raise ValueError(f"--{flag} {path!r}: {problem} (no {marker}); pass --{flag} PATH, e.g. {example}")
        if self.data != DEFAULT_DATA and not os.path.isfile(os.path.join(self.data, "metadata.jsonl")):
            raise ValueError(f"--data {self.data!r} holds no metadata.jsonl; pass a folder made by "
                             f"`python -m t2idemo generate --out DIR`")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"--port {self.port} is out of range; use 1 to 65535")
        if self.threads < 0:
            raise ValueError(f"--threads {self.threads} must be >= 0 (0 = one per core)")
        if self.benchmark < 0:
            raise ValueError(f"--benchmark {self.benchmark} must be >= 0 (0 serves the app)")


# ----------------------------------------------------------------------------- input checks (no Gradio needed)
def check_number(name: str, value, integer: bool = True):
    """``value`` as an int (or float) within LIMITS[name]; a ValueError naming it and the range otherwise."""
    lo, hi = LIMITS[name]
    kind = "an integer" if integer else "a number"
    if value is None or value == "":
        raise ValueError(f"{name} is empty; use {kind} from {lo} to {hi}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or (integer and number != int(number)):
        raise ValueError(f"{name}={value!r} is not allowed; use {kind} from {lo} to {hi}")
    number = int(number) if integer else number
    if not lo <= number <= hi:
        raise ValueError(f"{name}={value!r} is out of range; use {kind} from {lo} to {hi}")
    return number


def check_prompt(prompt) -> tuple[str, dict]:
    """(prompt, metadata) of a prompt in the world's words; a ValueError naming the bad word otherwise."""
    prompt = " ".join((prompt or "").split())
    if not prompt:
        raise ValueError("prompt is empty; type a prompt in the shapes world's words, e.g. 'three purple circles on grass'")
    return prompt, world.parse_prompt(prompt)


def example_prompts() -> list[tuple[str, str]]:
    """(prompt, label) triples per category: a typical prompt (what the base model's LAION-like data shows most), an
    atypical one the feedback covers (seen), and an atypical one held out of it (unseen)."""
    out = []
    for category in world.CATEGORIES:
        typical = world.typical_prompts(category)
        atypical = [pm for pm in world.all_prompts(category, unseen=False) if not world.is_typical(pm[1])]
        unseen = world.all_prompts(category, unseen=True)
        for (prompt, _), kind in ((typical[-1], "typical"), (atypical[len(atypical) // 3], "atypical"),
                                  (unseen[len(unseen) // 3], "atypical · unseen")):
            out.append((prompt, f"{category} · {kind}: {prompt}"))
    return out


def big(image: Image.Image, scale: int) -> Image.Image:
    """Upscale with nearest neighbour, so the 32x32 pixels stay crisp."""
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def caption(verdict: dict, meta: dict, score: float) -> str:
    """'✓ good · r 0.83', or what the judge read wrong: '✗ count 3, scene snow · r 0.41'."""
    wrong = [f"{a} {verdict['pred'][a]}" for a in meta["named"] if not verdict["correct"][a]]
    return f"{'✓ good' if verdict['good'] else '✗ ' + ', '.join(wrong)} · r {score:.2f}"


# ----------------------------------------------------------------------------- the app's state and handlers
class App:
    """The loaded models and label store, and one method per UI action (inputs in, UI values out)."""

    def __init__(self, cfg: AppConfig):
        import torch

        from t2idemo.generate import load_pipeline
        from t2idemo.reward import load_reward_fn

        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.pipes = {"base": load_pipeline(cfg.base), "aligned": load_pipeline(cfg.aligned)}
        self.reward_fn = load_reward_fn(cfg.reward)
        self.sampling = threading.Lock()  # a pipeline's scheduler keeps per-call state: one sampling call at a time
        self.rows = load_dataset_rows(cfg.data) if os.path.isdir(cfg.data) else []
        self.store = LabelStore(default_store_path(cfg.data)) if self.rows else None
        self.compare(BENCH_PROMPT, 0, 2, DEFAULT_GUIDANCE, 1)  # warm-up, so the first visitor waits no longer

    # ------------------------------------------------------------------------- Compare
    def compare(self, prompt, seed, steps, guidance, images):
        """-> (base gallery, aligned gallery, summary markdown). Both models draw from seeds seed .. seed+n-1."""
        from t2idemo.generate import sample
        from t2idemo.judge import judge

        prompt, meta = check_prompt(prompt)
        seed, steps, n = check_number("seed", seed), check_number("steps", steps), check_number("images", images)
        guidance = check_number("guidance", guidance, integer=False)
        t0, seeds, galleries, rows = time.perf_counter(), list(range(seed, seed + n)), [], []
        for side, pipe in self.pipes.items():
            with self.sampling:
                drawn = sample(pipe, [prompt] * n, seeds, steps, guidance, batch_size=n)
            scores = self.reward_fn(drawn, [prompt] * n).tolist()
            verdicts = [judge(im, meta) for im in drawn]
            galleries.append([(big(im, 4), f"seed {s} · {caption(v, meta, r)}")
                              for im, s, v, r in zip(drawn, seeds, verdicts, scores)])
            rows.append(f"| {side} | {sum(v['good'] for v in verdicts)} / {n} | {sum(scores) / n:.2f} |")
        kind = "typical" if world.is_typical(meta) else "atypical"
        note = (f"{kind}, **unseen**: it names a combination held out of the feedback data" if meta["unseen"]
                else f"{kind}, seen: its combinations occur in the feedback data")
        summary = "\n".join([f"**{prompt}** ({meta['category']} prompt; {note})", "",
                             "| model | judged good | mean reward |", "| --- | --- | --- |", *rows, "",
                             f"seeds {seeds[0]}-{seeds[-1]}, {steps} steps, guidance {guidance:g}; "
                             f"{time.perf_counter() - t0:.2f} s"])
        return galleries[0], galleries[1], summary

    # ------------------------------------------------------------------------- Label
    def _require_dataset(self):
        if self.store is None:
            raise ValueError(f"there is no dataset to label at {self.cfg.data!r}; make one with `python -m t2idemo "
                             f"generate --out {self.cfg.data}` and restart the app (or pass --data DIR)")

    def _next_unlabelled(self, labeler: str, start: int) -> int | None:
        """The first row at or after ``start`` (wrapping round) that ``labeler`` has not labelled."""
        done = self.store.labels(labeler)
        for k in range(len(self.rows)):
            i = (start + k) % len(self.rows)
            if self.rows[i]["file_name"] not in done:
                return i
        return None

    def label_view(self, state: dict, status: str = ""):
        """-> (image, prompt markdown, progress markdown, status markdown, state)."""
        who, i = state["labeler"], state["index"]
        names = {r["file_name"] for r in self.rows}
        counts = {name: len(names & labels.keys()) for name, labels in self.store.labels().items()}
        progress = (f"**{counts.get(who, 0)} / {len(self.rows)}** labelled by {who} · everyone: "
                    + (", ".join(f"{name} {c}" for name, c in sorted(counts.items())) or "no labels yet"))
        if i is None:
            return None, f"### All {len(self.rows)} images are labelled. Thank you!", progress, status, state
        row = self.rows[i]
        with Image.open(os.path.join(self.cfg.data, row["file_name"])) as im:
            image = big(im.convert("RGB"), 8)
        mine = self.store.get(row["file_name"], who)
        text = f"### {row['prompt']}\n{row['file_name']}" + (f" · your label: **{mine}**" if mine else "")
        return image, text, progress, status, state

    def label_start(self, name):
        self._require_dataset()
        name = (name or "").strip()
        if not name:
            raise ValueError("name is empty; type the name your labels are stored under, e.g. 'ana'")
        if name == MAJORITY:
            raise ValueError(f"name={name!r} is reserved for the majority vote; pick another name")
        state = {"labeler": name, "index": self._next_unlabelled(name, 0)}
        return self.label_view(state, f"labelling as **{name}**")

    def label_click(self, label: str, state: dict):
        self._require_dataset()
        if not state or not state.get("labeler"):
            raise ValueError("type your name and press Start before labelling")
        if state["index"] is None:
            return self.label_view(state, "all images are labelled; Undo reopens your last one")
        image_id = self.rows[state["index"]]["file_name"]
        try:
            self.store.add(image_id, label, state["labeler"])  # on disk when this returns
        except sqlite3.Error as e:  # e.g. another writer held the lock past the timeout: nothing moves
            raise ValueError(f"not saved ({e}); click {label} again") from None
        state = {**state, "index": self._next_unlabelled(state["labeler"], state["index"] + 1)}
        return self.label_view(state, f"saved **{label}** for {image_id}")

    def label_undo(self, state: dict):
        self._require_dataset()
        if not state or not state.get("labeler"):
            raise ValueError("type your name and press Start before labelling")
        image_id = self.store.undo(state["labeler"])
        if image_id is None:
            return self.label_view(state, "nothing to undo")
        index = next((i for i, r in enumerate(self.rows) if r["file_name"] == image_id), state["index"])
        return self.label_view({**state, "index": index}, f"took back your last label, on {image_id}")

    # ------------------------------------------------------------------------- Share
    def share(self, repo_id, token, private, with_reward, with_labels):
        """Push to the Hub -> result markdown. The token goes to t2idemo.hub.push and nowhere else."""
        from t2idemo.hub import PushConfig, push

        cfg = PushConfig(repo_id=(repo_id or "").strip(), model=self.cfg.aligned, private=bool(private),
                         reward=self.cfg.reward if with_reward else "", data=self.cfg.data if with_labels else "")
        out = push(cfg, token)
        lines = [f"Pushed the model, its card{' and the reward model' if cfg.reward else ''}: "
                 f"[{cfg.repo_id}]({out['model']}) ({out['files']['model']} files)."]
        if out["dataset"]:
            lines.append(f"Pushed the labels dataset: [{cfg.repo_id}]({out['dataset']}) ({out['files']['dataset']} files).")
        return "\n\n".join(lines)


# ----------------------------------------------------------------------------- the page
def _gradio():
    try:
        import gradio
    except ImportError as e:
        raise ImportError("app.py needs gradio; install it with: pip install gradio") from e
    return gradio


def ui_errors(fn, gr):
    """Wrap a handler: a ValueError (bad input) or a failed push becomes a gr.Error shown in the page, and is not
    printed on the server (a user's mistake is no server error, and Share's errors stay out of the logs)."""
    from t2idemo.hub import PushError

    @functools.wraps(fn)
    def handler(*args):
        try:
            return fn(*args)
        except (ValueError, PushError) as e:
            raise gr.Error(str(e), print_exception=False) from None

    return handler


def build(app: App):
    """The three tabs, wired to ``app``'s methods."""
    gr = _gradio()
    with gr.Blocks(title="t2idemo", analytics_enabled=False) as demo:
        gr.Markdown("# t2idemo: aligning a text-to-image model with human feedback\nThe shapes world of "
                    "Lee et al. 2023: base model vs aligned model, the judge's verdict and the reward model's score.")
        with gr.Tab("Compare"):
            with gr.Row():
                prompt = gr.Textbox(label="prompt", value=BENCH_PROMPT, elem_id="prompt", scale=3,
                                    info="counts one-four, colours, circle/square/triangle, 'on' sky/sand/grass/night/snow")
                generate = gr.Button("Generate", variant="primary", elem_id="generate", scale=1)
            with gr.Row():
                seed = gr.Number(label="seed", value=0, precision=0, elem_id="seed", info="image i uses seed + i")
                steps = gr.Number(label="steps", value=DEFAULT_STEPS, precision=0, elem_id="steps",
                                  info=f"{LIMITS['steps'][0]} to {LIMITS['steps'][1]}")
                guidance = gr.Slider(*LIMITS["guidance"], value=DEFAULT_GUIDANCE, step=0.5, label="guidance",
                                     elem_id="guidance")
                images = gr.Number(label="images", value=4, precision=0, elem_id="images",
                                   info=f"per model, {LIMITS['images'][0]} to {LIMITS['images'][1]}")
            examples = example_prompts()
            gr.Examples([[p] for p, _ in examples], inputs=[prompt], example_labels=[label for _, label in examples],
                        label="examples by category (typical = what the base model's data shows most; unseen = held out of the feedback data)")
            with gr.Row(equal_height=True):
                base = gr.Gallery(label="base model", columns=4, format="png", object_fit="contain", height="auto",
                                  elem_id="base-gallery", interactive=False)
                aligned = gr.Gallery(label="aligned model", columns=4, format="png", object_fit="contain",
                                     height="auto", elem_id="aligned-gallery", interactive=False)
            summary = gr.Markdown(elem_id="summary")
            go = ui_errors(app.compare, gr)
            for trigger in (generate.click, prompt.submit):
                trigger(go, [prompt, seed, steps, guidance, images], [base, aligned, summary],
                        concurrency_limit=1, concurrency_id="models")

        with gr.Tab("Label"):
            if app.store is None:
                gr.Markdown(f"No dataset to label at `{app.cfg.data}`. Make one with `python -m t2idemo generate "
                            f"--out {app.cfg.data}` and restart the app (or pass `--data DIR`).")
            else:
                gr.Markdown(f"Labelling `{app.cfg.data}` ({len(app.rows)} images) into `{app.store.path}`, the "
                            "store the notebooks use. Is the image right for its prompt? Every click is saved at once.")
            state = gr.State({"labeler": None, "index": None})
            with gr.Row():
                name = gr.Textbox(label="your name", elem_id="labeler-name", scale=3)
                start = gr.Button("Start", elem_id="label-start", scale=1)
            progress = gr.Markdown(elem_id="label-progress")
            image = gr.Image(type="pil", label="image", interactive=False, height=256, width=256, elem_id="label-image")
            text = gr.Markdown(elem_id="label-prompt")
            with gr.Row():
                buttons = {label: gr.Button(label.capitalize(), elem_id=f"label-{label}",
                                            variant={"good": "primary", "bad": "stop"}.get(label, "secondary"))
                           for label in LABELS}
                undo = gr.Button("Undo", elem_id="label-undo")
            status = gr.Markdown(elem_id="label-status")
            view = [image, text, progress, status, state]
            kw = dict(concurrency_limit=8, concurrency_id="labels")
            for trigger in (start.click, name.submit):
                trigger(ui_errors(app.label_start, gr), [name], view, **kw)
            for label, button in buttons.items():
                button.click(ui_errors(functools.partial(app.label_click, label), gr), [state], view, **kw)
            undo.click(ui_errors(app.label_undo, gr), [state], view, **kw)

        with gr.Tab("Share"):
            gr.Markdown(f"Push the aligned model (`{app.cfg.aligned}`) with a generated model card, the reward model "
                        f"(`{app.cfg.reward}`) and the labels dataset (`{app.cfg.data}`, labeler names included) to "
                        "the Hugging Face Hub. The token is used for this push only: it is not saved or logged.")
            with gr.Row():
                repo = gr.Textbox(label="repo id", placeholder="owner/name", elem_id="share-repo")
                token = gr.Textbox(label="token", type="password", placeholder="hf_... (write access)",
                                   elem_id="share-token")
            with gr.Row():
                private = gr.Checkbox(label="private", value=False)
                with_reward = gr.Checkbox(label="reward model", value=True)
                with_labels = gr.Checkbox(label="labels dataset", value=app.store is not None and
                                          os.path.isfile(default_store_path(app.cfg.data)), elem_id="share-labels")
            push = gr.Button("Push to the Hub", variant="primary", elem_id="share-push")
            result = gr.Markdown(elem_id="share-result")
            push.click(ui_errors(app.share, gr), [repo, token, private, with_reward, with_labels], [result],
                       concurrency_limit=1, concurrency_id="share")
    return demo


def benchmark(app: App, runs: int) -> list[float]:
    """Seconds per Compare call at default settings: 4 base + 4 aligned images, judged and scored."""
    times = []
    for k in range(runs):
        t0 = time.perf_counter()
        app.compare(BENCH_PROMPT, k, DEFAULT_STEPS, DEFAULT_GUIDANCE, 4)
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None):
    cfg = parse_config(AppConfig, argv, prog="python app.py", description="The t2idemo app: Compare, Label, Share.")
    app = App(cfg)
    if cfg.benchmark:
        import torch

        times = benchmark(app, cfg.benchmark)
        print(f"Compare, 4 base + 4 aligned images, {DEFAULT_STEPS} steps, guidance {DEFAULT_GUIDANCE}, "
              f"{torch.get_num_threads()} torch threads: " + ", ".join(f"{t:.2f}" for t in times)
              + f" s; median {statistics.median(times):.2f} s")
        return times
    build(app).launch(server_name=cfg.host, server_port=cfg.port, share=cfg.share, css=CSS)


if __name__ == "__main__":
    main()
