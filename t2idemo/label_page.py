"""The app's Label tab, without Gradio: one handler per click, a visitor's session in, the page's values out.

Two views of one labelling set and one label store (``t2idemo.label_store``): one image at a time (Good / Bad /
Skip / Undo, or the keys g / b / s / u), and a grid of ``LoopConfig.images_per_screen`` images, each with its prompt,
where the person ticks the good ones (or the bad ones) and submits the screen: the ticked ones get that label, the rest
the other, all on disk in one transaction, and one Undo screen takes the whole screen back. app.py lays the views out
and wires them here.

    page = LabelPage(workdir="runs/app")              # what app.App is, less Compare, Train and Share
    *_, state = page.label_start("ana", {})
    cells, progress, status, state = page.grid_view(state)            # [(image, prompt)] of the next screen
    cells, progress, status, state = page.grid_submit(state, "bad", True, False, ...)  # image 1 bad, the rest good
"""

from __future__ import annotations

import functools
import math

from .backend import MAX_NAME, Backend, big
from .config import check_field
from .label_store import LABELS
from .loop import LoopConfig


class LabelPage(Backend):
    """The backend plus the Label tab's handlers. ``state`` is one visitor's session (``Backend.session``):
    {"sid", "labeler", "index" (the single view's row), "screen" (the grid's file names), ...}."""

    def _require_dataset(self):
        if not self.rows:
            raise ValueError("there are no images to label yet; press 'Draw images to label' first")

    def _require_labeler(self, state: dict):
        self._require_dataset()
        if not state or not state.get("labeler"):
            raise ValueError("type your name and press Start before labelling")

    def label_progress(self, who: str | None) -> str:
        """'**3 / 8** labelled by ana · everyone: ana 3, ben 1' (markdown)."""
        counts = self.label_counts()
        return f"**{counts.get(who, 0)} / {len(self.rows)}** labelled by {who} · everyone: " + (
            ", ".join(f"{name} {c}" for name, c in sorted(counts.items())) or "no labels yet"
        )

    # ------------------------------------------------------------------------- one image at a time
    def label_view(self, state: dict, status: str = ""):
        """-> (image, prompt markdown, progress markdown, status markdown, state)."""
        state = self.session(state)
        who, i = state["labeler"], state["index"]
        if who is None:
            return None, "", f"{len(self.rows)} images to label; type your name and press Start", status, state
        if i is None:
            return (
                None,
                f"### All {len(self.rows)} images are labelled. Thank you!",
                self.label_progress(who),
                status,
                state,
            )
        row, mine = self.rows[i], self.store.get(self.rows[i]["file_name"], who)
        text = f"### {row['prompt']}\n{row['file_name']}" + (f" · your label: **{mine}**" if mine else "")
        return big(self.label_image(i), 8), text, self.label_progress(who), status, state

    def label_refresh(self, state: dict):
        """The single view again, moved on to the next unlabelled image if its image got a label elsewhere (in
        the grid view)."""
        state = self.session(state)
        if state["labeler"]:
            state["index"] = self.next_unlabelled(state["labeler"], state["index"] or 0)
        return self.label_view(state)

    def label_draw(self, n, state=None):
        """Draw ``n`` more images of seen prompts from the base model into the labelling set."""
        n = check_field(LoopConfig, "images_per_draw", n)
        new = super().label_draw(n)
        state = self.session(state)
        if state["labeler"] and state["index"] is None:  # someone who had finished gets the new ones
            state["index"] = self.next_unlabelled(state["labeler"], 0)
        return self.label_view(
            state, f"drew {len(new)} new images (batch {new[0]['batch']}); {len(self.rows)} in the labelling set"
        )

    def label_start(self, name, state=None):
        """Label as ``name`` from their first unlabelled image."""
        self._require_dataset()
        name, index = self.start_labelling(name)
        return self.label_view({**self.session(state), "labeler": name, "index": index}, f"labelling as **{name}**")

    def label_click(self, label: str, state: dict):
        """Save ``label`` for the image shown, then show the next one this labeler has not labelled."""
        self._require_labeler(state)
        if state["index"] is None:
            return self.label_view(state, "all images are labelled; Undo reopens your last one")
        image_id = self.save_label(state["index"], label, state["labeler"])
        state = {**state, "index": self.next_unlabelled(state["labeler"], state["index"] + 1)}
        return self.label_view(state, f"saved **{label}** for {image_id}")

    def label_undo(self, state: dict):
        """Take back this labeler's last label (a whole screen, if the last was one) and show its (first) image."""
        self._require_labeler(state)
        image_id, index = self.undo_label(state["labeler"])
        if image_id is None:
            return self.label_view(state, "nothing to undo")
        index = state["index"] if index is None else index
        return self.label_view({**state, "index": index}, f"took back your last label, on {image_id}")

    # --------------------------------------------------------------- a grid of ``LoopConfig.images_per_screen`` images
    def grid_view(self, state: dict, status: str = ""):
        """-> (screen: [(image, prompt)] of the next GRID images this labeler has not labelled, progress markdown,
        status markdown, state); the screen's file names go into state["screen"], for grid_submit."""
        state = self.session(state)
        if not state["labeler"] or not self.rows:
            return [], "", status or "type your name and press Start, then label a screen at a time here", state
        rows = self.label_screen(state["labeler"], 0)
        state = {**state, "screen": [r["file_name"] for r in rows]}
        if not rows:
            status = " · ".join(filter(None, [status, f"All {len(self.rows)} images are labelled. Thank you!"]))
        cells = [(big(self.label_image(r["file_name"]), 4), r["prompt"]) for r in rows]
        return cells, self.label_progress(state["labeler"]), status, state

    def grid_submit(self, state: dict, mark: str, *ticked: bool):
        """Save the screen shown: ``mark`` ("good" or "bad") for the ticked images (``ticked``: one bool per
        image, in screen order), the other label for the rest, in one transaction; then show the next screen."""
        self._require_labeler(state)
        screen = state.get("screen") or []
        if not screen:
            return self.grid_view(state, "nothing to submit: no images on this screen")
        marked = [name for name, tick in zip(screen, ticked) if tick]
        counts = self.save_screen(state["labeler"], screen, marked, mark)
        return self.grid_view(
            state, f"saved the screen: **{counts['good']} good, {counts['bad']} bad**; Undo screen takes it back"
        )

    def grid_undo(self, state: dict):
        """Take back this labeler's last screen (or last single label); its images come back on the next screen,
        and the single view goes back to its first image."""
        self._require_labeler(state)
        taken = self.undo_screen(state["labeler"])
        if not taken:
            return self.grid_view(state, "nothing to undo")
        state = {**state, "index": self.row_of(taken[0])}
        what = f"screen ({len(taken)} images)" if len(taken) > 1 else f"label, on {taken[0]}"
        return self.grid_view(state, f"took back your last {what}")

    # ------------------------------------------------------------------------- How did I do?
    def label_score(self, state: dict) -> str:
        """'How did I do?': this labeler against the judge, the world's ground truth."""
        from .loop import judge_agreement

        if not state or not state.get("labeler"):
            raise ValueError("type your name and press Start, label some images, then ask how you did")
        ag = judge_agreement(self.label_dir, state["labeler"])
        if not ag["n"]:
            return "You have not labelled any image good or bad yet."
        kappa = f"{ag['kappa']:.2f}"
        if math.isnan(ag["kappa"]):
            kappa = "undefined (you or the judge used one label only)"
        return (
            f"**You and the judge agree on {ag['percent']:.0f}% of your {ag['n']} good/bad labels** (Cohen's kappa "
            f"{kappa}; 1 = always, 0 = as often as chance). You said good where the judge saw a mistake on "
            f"{len(ag['you_good_judge_bad'])}, bad where it saw none on {len(ag['you_bad_judge_good'])}. "
            "The paper's reward model assumes people label consistently: this is how consistently you did."
        )


# ----------------------------------------------------------------------------- the Label tab (app.py builds the page)
def label_tab(app, gr, session, ui_errors, number_input):
    """Label: Draw (unless the owner passed --data), a name and Start, Good / Bad / Skip / Undo (keys g / b / s / u),
    the grid view, How did I do? ``ui_errors`` and ``number_input`` are app.py's (a handler's errors shown on the
    page; a number box with its config field's range)."""
    if app.fixed_data:
        gr.Markdown(
            f"Labelling the app's dataset ({len(app.rows)} images). Is the image right for its prompt? "
            "Every click is saved at once."
        )
    else:
        gr.Markdown(
            "Draw images of the feedback prompts from the base model, then label them: is the image right for "
            "its prompt? Every click is saved at once; several people can label at once, each under their "
            "own name."
        )
        with gr.Row():
            batch = number_input(gr, app.loop, "images_per_draw", "images per draw", "label-n")
            draw = gr.Button("Draw images to label", elem_id="label-draw")
    with gr.Row():
        name = gr.Textbox(label="your name", elem_id="labeler-name", scale=3, max_length=MAX_NAME)
        start = gr.Button("Start", elem_id="label-start", scale=1)
    progress = gr.Markdown(elem_id="label-progress")
    image = gr.Image(type="pil", label="image", interactive=False, height=256, width=256, elem_id="label-image")
    text = gr.Markdown(elem_id="label-prompt")
    with gr.Row():
        buttons = {
            label: gr.Button(
                label.capitalize(),
                elem_id=f"label-{label}",
                variant={"good": "primary", "bad": "stop"}.get(label, "secondary"),
            )
            for label in LABELS
        }
        undo = gr.Button("Undo", elem_id="label-undo")
    status = gr.Markdown(elem_id="label-status")
    with gr.Row():
        score = gr.Button("How did I do? (you vs the judge)", elem_id="label-score")
    score_md = gr.Markdown(elem_id="label-score-result")
    view = [image, text, progress, status, session]
    kw = dict(concurrency_limit=8, concurrency_id="labels")
    show_screen = label_grid(app, gr, session, view, kw, ui_errors)
    if not app.fixed_data:
        draw.click(ui_errors(app.label_draw, gr), [batch, session], view, concurrency_limit=1, concurrency_id="models")
    for trigger in (start.click, name.submit):
        trigger(ui_errors(app.label_start, gr), [name, session], view, **kw).success(*show_screen, **kw)
    for label, button in buttons.items():
        button.click(ui_errors(functools.partial(app.label_click, label), gr), [session], view, **kw)
    undo.click(ui_errors(app.label_undo, gr), [session], view, **kw)
    score.click(ui_errors(app.label_score, gr), [session], [score_md], **kw)


def label_grid(app, gr, session, view: list, kw: dict, ui_errors) -> tuple:
    """The Label tab's grid view, in an accordion under the single view: ``loop.images_per_screen`` images, each with a
    tick box labelled with its prompt; the person ticks the good (or the bad) ones and submits the screen, or takes the
    last screen back. The single ``view`` follows each screen. Returns (handler, inputs, outputs) that show a
    fresh screen, for Start."""
    n = app.loop.images_per_screen
    with gr.Accordion(f"Grid view: {n} images on one screen", open=False, elem_id="label-grid") as grid:
        mark = gr.Radio(
            [("I mark the good ones", "good"), ("I mark the bad ones", "bad")],
            value="good",
            show_label=False,
            elem_id="grid-mark",
            info="the images left unticked get the other label",
        )
        images, ticks = [], []
        for first in range(0, n, 4):
            with gr.Row():
                for k in range(first, min(first + 4, n)):
                    with gr.Column(min_width=120):
                        images.append(
                            gr.Image(
                                type="pil",
                                show_label=False,
                                interactive=False,
                                height=128,
                                width=128,
                                visible=False,
                                elem_id=f"grid-image-{k}",
                            )
                        )
                        ticks.append(gr.Checkbox(label="", visible=False, elem_id=f"grid-tick-{k}"))
        with gr.Row():
            submit = gr.Button("Submit screen", variant="primary", elem_id="grid-submit")
            undo = gr.Button("Undo screen", elem_id="grid-undo")
        status = gr.Markdown(elem_id="grid-status")
    outputs = [*images, *ticks, view[2], status, session]  # view[2]: the progress line both views share
    show, refresh = (
        ui_errors(grid_cells(app.grid_view, gr, n), gr),
        (ui_errors(app.label_refresh, gr), [session], view),
    )
    grid.expand(show, [session], outputs, **kw)
    submit.click(ui_errors(grid_cells(app.grid_submit, gr, n), gr), [session, mark, *ticks], outputs, **kw).success(
        *refresh, **kw
    )
    undo.click(ui_errors(grid_cells(app.grid_undo, gr, n), gr), [session], outputs, **kw).success(*refresh, **kw)
    return show, [session], outputs


def grid_cells(fn, gr, n: int):
    """Wrap a grid handler: its screen [(image, prompt)] becomes ``n`` images and unticked boxes labelled with the
    prompts, then the handler's other values; the cells past the screen's end are hidden."""

    @functools.wraps(fn)
    def handler(*args):
        cells, *rest = fn(*args)
        cells = cells + [(None, None)] * (n - len(cells))
        return [
            *(gr.Image(value=im, visible=im is not None) for im, _ in cells),
            *(gr.Checkbox(value=False, label=prompt or "", visible=prompt is not None) for _, prompt in cells),
            *rest,
        ]

    return handler
