"""The t2idemo app (Gradio): the paper's whole loop in a browser tab. Label, train, tune, compare, share.

    python app.py                                       # shipped models; visitors' work under runs/app; 127.0.0.1:7860
    python app.py --aligned runs/aligned --reward runs/reward --data data/feedback --port 7861
    python -m t2idemo benchmarks app --runs 5            # time Compare (4 + 4 images, defaults) 5 times
    python -m t2idemo benchmarks app --runs 5 --during-tune  # ... while a fine-tune runs in the background

Tabs:
  Compare  a prompt, seed, steps, guidance and number of images; the base and aligned models (and, once you made one
           in Train, your model) draw from the same seeds side by side, each image captioned with the judge's
           verdict and the reward model's score.
  Label    draw a batch of images of seen prompts from the base model (or label --data), then each person types a
           name and clicks Good / Bad / Skip / Undo (or presses g / b / s / u); every click is on disk before the next
           image shows, and several people can label at once (``t2idemo.labels``). The grid view shows 12 images at
           once: tick the good ones (or the bad ones) and submit the screen. "How did I do?" scores you against the
           judge (Cohen's kappa). Handlers: ``t2idemo.label_page``.
  Train    the reward model on everyone's labels (seconds), then a short fine-tune with the main job's recipe
           (``t2idemo.loop``), one job at a time, cancellable. The model is yours: only your session sees it.
  Share    pushes your model (or, with --share-shipped, the app's aligned one), its reward model, the labels (a
           labeler named only by their own consent) and a model card to the Hub (``t2idemo.hub.push``). A pasted token
           is used for that push only: never saved, printed or logged; on a Space visitors sign in with Hugging Face
           instead (``t2idemo.share_page``), and labels are kept in its dataset repo (``t2idemo.spacesync``).

Handlers only check their inputs, call the library (``t2idemo.backend``: the models, labels and jobs, no Gradio)
and turn what it returns into the page; a ValueError (bad input) becomes a gr.Error in the page and the app keeps
serving. The page never shows a server path. On a Hugging Face Space (see the README's front matter) it listens
where the Space says (GRADIO_SERVER_NAME, GRADIO_SERVER_PORT). Needs ``pip install gradio``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from dataclasses import dataclass, field

from t2idemo import spacesync, world
from t2idemo.backend import (
    DEFAULT_PROMPT,
    MAX_PROMPT,
    CompareConfig,
    big,
    caption,
    check_prompt,
    example_prompts,
)
from t2idemo.config import bounds, check_field, check_ranges, parse_config, ranged
from t2idemo.generate import ALIGNED_MODEL, BASE_MODEL
from t2idemo.label_page import LabelPage, label_tab
from t2idemo.loop import LoopConfig
from t2idemo.reward import CONFIG_FILE as REWARD_CONFIG_FILE
from t2idemo.reward import REWARD_MODEL
from t2idemo.session_curve import SESSION_CURVE
from t2idemo.share_page import share_tab

DEFAULT_DATA = "data/feedback"  # the labelling set of `python -m t2idemo generate`
GALLERIES = "#base-gallery, #aligned-gallery, #mine-gallery"
CSS = (
    f"{', '.join(g + ' img' for g in GALLERIES.split(', '))}, #label-image img, #label-grid img "
    "{image-rendering: pixelated;}\n"
    # each image's verdict and reward in full under it, wrapped if need be, never cut off with an ellipsis
    f"{', '.join(g + ' .caption-label' for g in GALLERIES.split(', '))} "
    "{white-space: normal; overflow: visible; text-overflow: clip; max-width: none; font-size: 0.95em;}\n"
    # no blank band under a row of images (gradio keeps a gallery at least 450 px tall on wide screens)
    f"{', '.join(g + ' .fixed-height' for g in GALLERIES.split(', '))} {{min-height: 0;}}"
)
LABEL_KEYS_JS = """() => {
  // the Label tab's single view: g good, b bad, s skip, u undo; not while typing, nor in the grid view
  const buttons = {g: "label-good", b: "label-bad", s: "label-skip", u: "label-undo"};
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat || target.isContentEditable
        || target.closest("input, textarea, select, #label-grid")) return;
    const button = document.getElementById(buttons[event.key.toLowerCase()]);
    if (button && button.offsetParent !== null && !button.disabled) {  // on screen: the Label tab is open
      event.preventDefault();
      button.click();
    }
  });
}"""
MODEL_FLAGS = {  # flag: (the file that marks its folder, what the folder is, an example of a good value)
    "base": ("model_index.json", "a StableDiffusionPipeline folder", "--base t2idemo/assets/tiny-sd"),
    "aligned": (
        "model_index.json",
        "a StableDiffusionPipeline folder",
        "--aligned runs/aligned from `python -m t2idemo finetune`, or --aligned t2idemo/assets/tiny-sd "
        "to show the base model on both sides",
    ),
    "reward": (
        REWARD_CONFIG_FILE,
        "a reward model folder",
        "--reward runs/reward from `python -m t2idemo reward train`",
    ),
}


@dataclass
class AppConfig:
    # base StableDiffusionPipeline folder: the left column of Compare
    base: str = BASE_MODEL
    # aligned pipeline folder: the right column of Compare, pushed by Share
    aligned: str = ALIGNED_MODEL
    # reward model folder (reward_config.json + head) that scores every image
    reward: str = REWARD_MODEL
    # dataset folder to label (PNGs + metadata.jsonl); its labels.sqlite is the store. If the default is absent,
    # the app labels WORKDIR/labelling, which its Draw button fills
    data: str = DEFAULT_DATA
    # where the app keeps what visitors make: drawn images, reward models, tuned models
    workdir: str = "runs/app"
    # Share may push the app's own aligned model when a visitor made none (the owner's choice: off on a public
    # Space, where visitors push only what they made)
    share_shipped: bool = False
    # interface to serve on; 0.0.0.0 = every one
    host: str = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    # TCP port
    port: int = ranged(int(os.environ.get("GRADIO_SERVER_PORT", "7860")), 1, 65535)
    # also open a public *.gradio.live link (needs the internet)
    share: bool = False
    # torch CPU threads; 0 = torch's default (one per core); 1 was fastest on 2 busy cores
    threads: int = ranged(1, 0, 1024)

    # the Label and Train tabs' settings: their defaults, and the ranges a visitor may ask for (t2idemo.loop)
    loop: LoopConfig = field(default_factory=LoopConfig)

    def __post_init__(self):
        check_ranges(self)  # port and threads within their ranges
        defaults = {"base": BASE_MODEL, "aligned": ALIGNED_MODEL, "reward": REWARD_MODEL}
        for flag, (marker, what, example) in MODEL_FLAGS.items():
            path = getattr(self, flag)
            if not os.path.isfile(os.path.join(path, marker)):
                problem = f"the default, {what}, is not shipped yet" if path == defaults[flag] else f"is not {what}"
                raise ValueError(f"--{flag} {path!r}: {problem} (no {marker}); pass --{flag} PATH, e.g. {example}")
        if self.data != DEFAULT_DATA and not os.path.isfile(os.path.join(self.data, "metadata.jsonl")):
            raise ValueError(
                f"--data {self.data!r} holds no metadata.jsonl; pass a folder made by "
                f"`python -m t2idemo generate --out DIR`"
            )

    def loop_config(self) -> LoopConfig:
        """The Label and Train tabs' settings, as ``t2idemo.loop`` takes them: ``loop`` on the base model."""
        return dataclasses.replace(self.loop, model=self.base)


# ----------------------------------------------------------------------------- the handlers
class App(LabelPage):
    """The backend (models, labels, jobs) and the Label tab's handlers (``t2idemo.label_page``) plus one method per
    other UI action: a visitor's input in, UI values out. ``state`` is one visitor's session: {"sid", "labeler",
    "index", "screen", "reward", "mine"}."""

    def __init__(self, cfg: AppConfig):
        self.cfg = cfg
        super().__init__(cfg.base, cfg.aligned, cfg.reward, cfg.workdir, cfg.data, cfg.loop_config(), cfg.threads)

    # ------------------------------------------------------------------------- Compare
    def compare(self, prompt, seed, steps, guidance, images, state=None):
        """-> (base gallery, aligned gallery, your-model gallery, summary markdown). Every model draws from seeds
        seed .. seed+n-1; the third gallery is empty until this session has tuned a model."""
        prompt, meta = check_prompt(prompt)
        seed, steps = check_field(CompareConfig, "seed", seed), check_field(CompareConfig, "sample_steps", steps)
        n = check_field(CompareConfig, "images_per_model", images)
        guidance = check_field(CompareConfig, "guidance", guidance)
        t0, seeds = time.perf_counter(), list(range(seed, seed + n))
        mine = self.my_pipeline(state.get("sid"), state.get("mine")) if state else None
        galleries, rows = [], []
        for side, (drawn, verdicts, scores) in self.draw_and_rate(prompt, seeds, steps, guidance, mine).items():
            galleries.append([(big(im, 4), caption(v, meta, r)) for im, v, r in zip(drawn, verdicts, scores)])
            rows.append(f"| {side} | {sum(v['good'] for v in verdicts)} / {n} | {sum(scores) / n:.2f} |")
        kind = "typical" if world.is_typical(meta) else "atypical"
        note = (
            f"{kind}, **unseen**: it names a combination held out of the feedback data"
            if meta["unseen"]
            else f"{kind}, seen: its combinations occur in the feedback data"
        )
        summary = "\n".join(
            [
                f"**{prompt}** ({meta['category']} prompt; {note})",
                "",
                "| model | judged good | mean reward |",
                "| --- | --- | --- |",
                *rows,
                "",
                f"seeds {seeds[0]}-{seeds[-1]}, {steps} steps, guidance {guidance:g}; "
                f"{time.perf_counter() - t0:.2f} s"
                + ("" if mine else " · train your own model in the Train tab to add a third column"),
            ]
        )
        return galleries[0], galleries[1], galleries[2] if mine else [], summary

    # ------------------------------------------------------------------------- Train
    def train_reward(self, state=None):
        """Train the reward model on everyone's labels so far -> (markdown, state)."""
        state = self.session(state)
        self._require_dataset()
        t0 = time.perf_counter()
        out, res = self.train_reward_model(state["sid"])
        state = {**state, "reward": out, "mine": None}
        acc = "n/a" if res["val_accuracy"] is None else f"{res['val_accuracy']:.0f}%"
        auc = "n/a (one class only)" if res["val_auc"] is None else f"{res['val_auc']:.2f}"
        return (
            f"**Reward model trained** on the majority vote of everyone's labels ({res['good']} good, {res['bad']} "
            f"bad) in {time.perf_counter() - t0:.1f} s. On the prompts held out of its training ({res['n_val']} "
            f"images): accuracy {acc}, AUC {auc}. Now fine-tune with it."
        ), state

    def tune(self, steps, state=None):
        """A short fine-tune of the base model with the main job's recipe on the labels -> (markdown, state)."""
        state = self.session(state)
        steps = check_field(LoopConfig, "train_steps", steps)
        if not state.get("reward"):
            raise ValueError("train the reward model first (button 1): the fine-tune weights images with it")
        t0 = time.perf_counter()
        model, scores = super().tune(state["sid"], state["reward"], steps)
        if model is None:
            return "Fine-tune **cancelled**; nothing changed.", {**state, "mine": None}
        judged = ""
        if scores:
            b, y = scores["base"], scores["yours"]
            verdict = (
                "better than the base, CIs apart"
                if y["lo"] > b["hi"]
                else "worse than the base, CIs apart"
                if y["hi"] < b["lo"]
                else f"CIs overlapping: {b['n']} images tell only a large change apart"
            )
            judged = (
                f" The judge on {b['n']} unseen combination prompts (fixed seeds): base {100 * b['p']:.0f}% all right "
                f"[{100 * b['lo']:.0f}, {100 * b['hi']:.0f}], yours {100 * y['p']:.0f}% [{100 * y['lo']:.0f}, "
                f"{100 * y['hi']:.0f}] (Wilson 95% CIs; {verdict}). The curve above says what to expect."
            )
        return (
            f"**Your model is ready** ({steps} steps, {time.perf_counter() - t0:.0f} s)."
            + judged
            + " Compare now draws it in a third column; only you see it. Share can push it."
        ), {**state, "mine": model}

    def cancel(self, state=None) -> str:
        """Cancel this visitor's fine-tune at its next step."""
        state = self.session(state)
        return "Cancelling at the next step..." if self.cancel_job(state["sid"]) else "Nothing is running."

    # ------------------------------------------------------------------------- Share
    def share(self, repo_id, token, private, with_reward, with_labels, with_names=False, state=None):
        """Push to the Hub -> result markdown. The token goes to t2idemo.hub.push and nowhere else."""
        from t2idemo.hub import check_repo_id, check_token

        state, repo_id = self.session(state), (repo_id or "").strip()
        check_repo_id(repo_id)
        check_token(token)
        if state.get("mine"):
            model, reward, whose = state["mine"], state["reward"], "your model"
        elif self.cfg.share_shipped:
            model, reward, whose = self.cfg.aligned, self.cfg.reward, "the app's aligned model"
        else:
            raise ValueError(
                "you have no model to share yet: label some images, then train and fine-tune in the Train tab"
            )
        cfg, out = super().share(
            repo_id, token, model, reward if with_reward else "", private, with_labels, with_names
        )
        lines = [
            f"Pushed {whose}, its card{' and the reward model' if cfg.reward else ''}: "
            f"[{cfg.repo_id}]({out['model']}) ({out['files']['model']} files)."
        ]
        if out["dataset"]:
            lines.append(
                f"Pushed the labels dataset{'' if with_names else ' (labeler names replaced)'}: "
                f"[{cfg.repo_id}]({out['dataset']}) ({out['files']['dataset']} files)."
            )
        return "\n\n".join(lines)


# ----------------------------------------------------------------------------- the page
def number_input(gr, cfg, name: str, label: str, elem_id: str, info: str = ""):
    """A number box for the field ``name`` of the config instance ``cfg``: its value, and its range as the hint."""
    lo, hi = bounds(type(cfg), name)  # the range a visitor may ask for: the field's own
    hint = f"{info}; {lo:g} to {hi:g}" if info else f"{lo:g} to {hi:g}"
    return gr.Number(label=label, value=getattr(cfg, name), precision=0, elem_id=elem_id, info=hint)


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


def with_progress(fn, gr):
    """Wrap a long handler so the page shows a progress bar (the tqdm bars of the steps it calls)."""

    def handler(*args, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (gradio reads the default: its idiom)
        return fn(*args)

    return handler


def _compare_tab(app: App, gr, session):
    """Compare: a prompt and the sampler's settings in, one gallery per model and a summary out."""
    with gr.Row():
        prompt = gr.Textbox(
            label="prompt",
            value=DEFAULT_PROMPT,
            elem_id="prompt",
            scale=3,
            max_length=MAX_PROMPT,
            info="counts one-four, colours, circle/square/triangle, 'on' sky/sand/grass/night/snow",
        )
        generate = gr.Button("Generate", variant="primary", elem_id="generate", scale=1)
    with gr.Row():
        compare = CompareConfig()
        seed = number_input(gr, compare, "seed", "seed", "seed", "image i uses seed + i")
        steps = number_input(gr, compare, "sample_steps", "sample steps", "steps")
        guidance = gr.Slider(
            *bounds(CompareConfig, "guidance"), value=compare.guidance, step=0.5, label="guidance", elem_id="guidance"
        )
        images = number_input(gr, compare, "images_per_model", "images per model", "images")
    examples = example_prompts()
    gr.Examples(
        [[p] for p, _ in examples],
        inputs=[prompt],
        example_labels=[label for _, label in examples],
        label=(
            "examples by category (typical = what the base model's data shows most; "
            "unseen = held out of the feedback data)"
        ),
    )
    # one full-width row per model, image i of each from the same seed, so columns line up model to model
    galleries = [
        gr.Gallery(
            label=label,
            columns=4,
            format="png",
            object_fit="contain",
            height="auto",
            elem_id=f"{side}-gallery",
            interactive=False,
        )
        for side, label in (
            ("base", "base model"),
            ("aligned", "aligned model (shipped)"),
            ("mine", "your model (Train tab)"),
        )
    ]
    summary = gr.Markdown(elem_id="summary")
    go = ui_errors(app.compare, gr)
    for trigger in (generate.click, prompt.submit):
        trigger(
            go,
            [prompt, seed, steps, guidance, images, session],
            [*galleries, summary],
            concurrency_limit=1,
            concurrency_id="models",
        )


def _train_tab(app: App, gr, session):
    """Train: the reward model, then a fine-tune (steps, Cancel)."""
    gr.Markdown(
        "The paper's steps 2 and 3 on the labels so far. **1.** The reward model: its CLIP checks each "
        "attribute a prompt names, and the majority vote of everyone's labels calibrates it (seconds). **2.** "
        f"The base model draws {app.loop.unlabelled_per_prompt} images of each of the world's "
        f"{len(world.all_prompts())} prompts, the reward model picks each "
        "prompt's best good ones, and the model is fine-tuned on them and your good images, plus the "
        "pre-training term (a few minutes). Your model then shows as a third column in Compare, for you only. "
        "One job runs at a time on this machine."
    )
    if os.path.isfile(SESSION_CURVE):
        gr.Image(
            SESSION_CURVE,
            label="what a session buys at each label count (python -m t2idemo benchmarks session)",
            interactive=False,
            height=300,
            elem_id="session-curve",
        )
    train = gr.Button("1. Train the reward model", elem_id="train-reward")
    reward_md = gr.Markdown(elem_id="train-reward-result")
    with gr.Row():
        train_steps = number_input(gr, app.loop, "train_steps", "fine-tune steps", "tune-steps")
        tune = gr.Button("2. Fine-tune", variant="primary", elem_id="tune")
        cancel = gr.Button("Cancel", variant="stop", elem_id="tune-cancel")
    tune_md = gr.Markdown(elem_id="tune-result")
    kw = dict(concurrency_limit=2, concurrency_id="jobs")  # the second gets the 'a job is running' message
    train.click(ui_errors(with_progress(app.train_reward, gr), gr), [session], [reward_md, session], **kw)
    tune.click(ui_errors(with_progress(app.tune, gr), gr), [train_steps, session], [tune_md, session], **kw)
    cancel.click(ui_errors(app.cancel, gr), [session], [tune_md], concurrency_limit=None)


def build(app: App):
    """The four tabs, wired to ``app``'s methods. One gr.State holds the visitor's session."""
    try:
        import gradio as gr
    except ImportError as e:
        raise ImportError("app.py needs gradio; install it with: pip install gradio") from e
    with gr.Blocks(title="t2idemo", analytics_enabled=False) as demo:
        gr.Markdown(
            "# t2idemo: aligning a text-to-image model with human feedback\nThe shapes world of "
            "Lee et al. 2023. Be the human in the loop: **Label** images, **Train** a reward model and tune "
            "the model on your labels, **Compare** it with the base and the shipped aligned model, **Share** it."
        )
        session = gr.State({})
        with gr.Tab("Compare"):
            _compare_tab(app, gr, session)
        with gr.Tab("Label"):
            label_tab(app, gr, session, ui_errors, number_input)
        with gr.Tab("Train"):
            _train_tab(app, gr, session)
        with gr.Tab("Share"):
            share_tab(app, gr, session, ui_errors, on_space=spacesync.space_id() is not None)
        demo.load(None, js=LABEL_KEYS_JS)  # the single view's keyboard shortcuts
    return demo


def main(argv=None):
    """Parse the flags, load the models and serve the page."""
    cfg = parse_config(
        AppConfig, argv, prog="python app.py", description="The t2idemo app: Compare, Label, Train, Share."
    )
    schedule = spacesync.start(cfg)  # on a Space: labels restored from its dataset, then saved to it; locally nothing
    app = App(cfg)
    schedule(app)
    build(app).launch(server_name=cfg.host, server_port=cfg.port, share=cfg.share, css=CSS)


if __name__ == "__main__":
    main()
