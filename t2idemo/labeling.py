"""Stage 1c: label a dataset by hand in a notebook (JupyterLab, classic Notebook, Colab) with ipywidgets.

    from t2idemo.labeling import Labeler
    Labeler("data/feedback", labeler="ana")      # as the last line of a cell: shows the labeler

It shows one image (upscaled with nearest neighbour, so the 32x32 pixels stay crisp), its prompt, Good /
Bad / Skip / Undo buttons and the progress ("37 / 200"). Every click is written to the label store (see
``t2idemo.labels``) before the UI moves on; if the write fails, the UI says so and stays on the image.
Run the cell again later, or in another kernel, and it resumes at the first image this labeler has not
labelled. Several people can label the same dataset at once under their own names.

Needs ``pip install ipywidgets``. In Colab the custom widget manager is switched on automatically.
"""

from __future__ import annotations

import html
import io
import os

from PIL import Image

from .data import load_rows
from .labels import LabelStore, default_store_path

BUTTONS = (  # (label, button text, ipywidgets button_style, icon)
    ("good", "Good", "success", "check"),
    ("bad", "Bad", "danger", "times"),
    ("skip", "Skip", "", "forward"),
)


def _ipywidgets():
    """Import ipywidgets lazily (the rest of the kit runs without it) and enable Colab's widget manager."""
    try:
        import ipywidgets
    except ImportError as e:
        raise ImportError("t2idemo.labeling needs ipywidgets; install it with: pip install ipywidgets") from e
    try:
        from google.colab import output  # only importable inside Colab

        output.enable_custom_widget_manager()
    except ImportError:
        pass
    return ipywidgets


def png_bytes(path: str, size: int = 256) -> bytes:
    """An image file as PNG bytes, upscaled by a whole factor (about ``size`` px) with nearest neighbour."""
    with Image.open(path) as im:
        im = im.convert("RGB")
    scale = max(1, round(size / max(im.size)))
    buf = io.BytesIO()
    im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


class Labeler:
    """An ipywidgets labeler for the dataset in ``dataset_dir``.

    ``store_path``: the label store ("" or None: DATASET/labels.sqlite); ``labeler``: the name this person's
    labels are stored under; ``size``: displayed image size in px (64 - 1024).
    Use ``.widget`` (or ``.display()``, or make the object the last expression of a cell).
    """

    def __init__(self, dataset_dir: str, store_path: str | None = None, labeler: str = "me", size: int = 256):
        widgets = _ipywidgets()
        if not 64 <= size <= 1024:
            raise ValueError(f"size={size!r} is out of range; use 64 to 1024 pixels")
        self.dataset_dir, self.labeler, self.size = dataset_dir, labeler, size
        self.rows = load_rows(dataset_dir, missing_ok=True)
        if not self.rows:
            raise ValueError(f"dataset_dir={dataset_dir!r} has no images yet; run "
                             f"`python -m t2idemo generate --out {dataset_dir}` first")
        self.position = {r["file_name"]: i for i, r in enumerate(self.rows)}
        self.store = LabelStore(store_path or default_store_path(dataset_dir))
        self.store.add_many([], labeler)  # validates the labeler name now rather than at the first click

        self.progress = widgets.Label()
        self.bar = widgets.IntProgress(min=0, max=len(self.rows))
        self.image = widgets.Image(format="png", width=size, height=size)
        self.prompt = widgets.HTML()
        self.status = widgets.HTML()
        self.buttons = {}
        for label, text, style, icon in BUTTONS:
            b = widgets.Button(description=text, button_style=style, icon=icon, tooltip=f"label this image {label}")
            b.on_click(lambda _, label=label: self.click(label))
            self.buttons[label] = b
        self.buttons["undo"] = widgets.Button(description="Undo", button_style="warning", icon="undo",
                                              tooltip="take back your last click")
        self.buttons["undo"].on_click(lambda _: self.undo())
        self.widget = widgets.VBox([widgets.HBox([self.bar, self.progress]), self.image, self.prompt,
                                    widgets.HBox(list(self.buttons.values())), self.status])
        self.index = self.next_unlabelled(0)
        self.show()

    # ------------------------------------------------------------------------- logic (driven by the buttons)
    def next_unlabelled(self, start: int) -> int | None:
        """The first row at or after ``start`` (wrapping round) that this labeler has not labelled."""
        done = self.store.labels(self.labeler)
        n = len(self.rows)
        for k in range(n):
            i = (start + k) % n
            if self.rows[i]["file_name"] not in done:
                return i
        return None

    def click(self, label: str) -> None:
        """Store ``label`` for the shown image, then move on. Nothing moves unless the store took it."""
        if self.index is None:
            return
        image_id = self.rows[self.index]["file_name"]
        try:
            self.store.add(image_id, label, self.labeler)  # on disk when this returns
        except Exception as e:  # keep the image on screen: the click is not saved
            self.show(f"<b style='color:#c62828'>not saved ({html.escape(str(e))}); click again</b>")
            return
        self.index = self.next_unlabelled(self.index + 1)
        self.show(f"saved <b>{label}</b> for {image_id}")

    def undo(self) -> None:
        """Take back this labeler's last click and go back to that image."""
        try:
            image_id = self.store.undo(self.labeler)
        except Exception as e:
            self.show(f"<b style='color:#c62828'>undo failed ({html.escape(str(e))})</b>")
            return
        if image_id is None:
            self.show("nothing to undo")
        elif image_id in self.position:
            self.index = self.position[image_id]
            self.show(f"undid your last click on {image_id}")
        else:
            self.show(f"undid your last click on {image_id} (not in this dataset)")

    def show(self, status: str = "") -> None:
        """Bring every widget in line with ``self.index`` and the store."""
        done = len(self.position.keys() & self.store.labels(self.labeler).keys())
        self.progress.value = f"{done} / {len(self.rows)}"
        self.bar.value = done
        finished = self.index is None
        for label, _, _, _ in BUTTONS:
            self.buttons[label].disabled = finished
        if finished:
            self.image.value = b""
            self.prompt.value = f"<h3>All {len(self.rows)} images are labelled. Thank you!</h3>"
        else:
            row = self.rows[self.index]
            self.image.value = png_bytes(os.path.join(self.dataset_dir, row["file_name"]), self.size)
            current = self.store.get(row["file_name"], self.labeler)
            note = f" &nbsp; <i>(your label: {current})</i>" if current else ""
            self.prompt.value = (f"<h3 style='margin:4px 0'>{html.escape(row['prompt'])}</h3>"
                                 f"<small>{html.escape(row['file_name'])}</small>{note}")
        self.status.value = status

    # ------------------------------------------------------------------------- notebook display
    def display(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def close(self) -> None:
        self.widget.close()
        self.store.close()
