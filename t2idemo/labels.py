"""Stage 1b: the label store, the simulated labeler and the export of labels into a dataset.

    python -m t2idemo label --data data/feedback --flip 0.1     # the judge as a rater with 10% noise

A label is (image, labeler) -> good | bad | skip, with the time of the click. The image id is the image's ``file_name``
in the dataset (e.g. ``"00012.png"``), so a store belongs to one dataset; by default it lives in the dataset folder as
``labels.sqlite``.

Why SQLite in WAL mode with ``synchronous=FULL`` (and not a JSON file or a plain append-only log):

* durable at every click: ``add()`` returns only after its transaction is committed and the write-ahead log is fsynced
  (``synchronous=FULL``), so a label that the UI acknowledged survives a killed kernel, a SIGKILL and even a power
  cut. A crash mid-commit rolls that one click back, never anything before it;
* safe with several writers: SQLite locks the file, so notebook kernels, the Gradio app's threads and the simulated
  labeler can write at once (``busy_timeout`` makes a writer wait for the lock instead of failing); WAL lets readers
  go on while one writes. Within a process, one connection is shared by threads behind a lock;
* resumable and queryable: the current labels sit in a table keyed by (image, labeler); every click is also kept in
  an append-only history, which gives undo and an audit trail. A screen of a grid view is saved as one transaction
  (``add_many(..., screen=True)``) and one undo takes the whole screen back.

WAL needs a local disk: on a network file system (NFS, some FUSE mounts) SQLite may refuse WAL, and the store then
falls back to its rollback journal with a warning (still durable, writers wait longer). Read a store only through
SQLite (a connection, the backup API): an open() and close() of the file drops the process's SQLite locks on it.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

from .config import check_ranges, parse_config, ranged, require_set
from .stats import agreement_stats

LABELS = ("good", "bad", "skip")
MAJORITY = "majority"  # reserved labeler name: the majority vote of all labelers, for export
STORE_NAME = "labels.sqlite"  # the store's default file name inside a dataset folder
APPLICATION_ID = 0x7432_6C62  # "t2lb": written into the SQLite header, marks the file as our label store
SCHEMA_VERSION = 2  # PRAGMA user_version of the schema below; 1 had no clicks.screen (opening adds it)
SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database

SCHEMA = """
CREATE TABLE IF NOT EXISTS clicks (       -- every click ever made, append-only: history, audit, undo
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id TEXT NOT NULL,               -- the image's file_name in the dataset
    labeler  TEXT NOT NULL,
    label    TEXT NOT NULL CHECK (label IN ('good', 'bad', 'skip')),
    ts       REAL NOT NULL,               -- Unix time of the click, seconds
    undone   INTEGER NOT NULL DEFAULT 0,  -- 1 once undo() took the click back
    screen   INTEGER                      -- a screen's clicks share its id, undone together (NULL: lone)
);
CREATE INDEX IF NOT EXISTS clicks_by_labeler ON clicks (labeler, undone, id);
CREATE TABLE IF NOT EXISTS labels (       -- the current label: the labeler's last click not undone
    image_id TEXT NOT NULL,
    labeler  TEXT NOT NULL,
    label    TEXT NOT NULL CHECK (label IN ('good', 'bad', 'skip')),
    ts       REAL NOT NULL,
    PRIMARY KEY (image_id, labeler)
);
"""
_UPSERT = (
    "INSERT INTO labels (image_id, labeler, label, ts) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (image_id, labeler) DO UPDATE SET label = excluded.label, ts = excluded.ts"
)


def default_store_path(dataset_dir: str) -> str:
    return os.path.join(dataset_dir, STORE_NAME)


def check_label(label) -> str:
    if label not in LABELS:
        raise ValueError(f"label={label!r} is not allowed; use one of {LABELS}")
    return label


def _check_name(name: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name}={value!r} is not allowed; use a non-empty string")
    return value


class LabelStore:
    """(image_id, labeler) -> good | bad | skip in an SQLite file; safe to share between threads and processes.

    ``path`` is created when missing. A file that is not one of our stores raises a ValueError naming it.
    ``timeout``: seconds a writer waits for another process's lock before giving up.
    """

    def __init__(self, path: str, timeout: float = 30.0):
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            raise ValueError(f"{self.path} is a directory; pass the path of a label store file")
        # no open() of a file SQLite may use (see the module's docstring); one shorter than a page is no database
        if 0 < (os.path.getsize(self.path) if os.path.exists(self.path) else 0) < 512:
            self._refuse(None)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._lock = threading.RLock()
        # isolation_level=None: we open transactions ourselves (BEGIN IMMEDIATE takes the write lock up front)
        self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            self._open(timeout)
        except sqlite3.DatabaseError as e:  # a damaged file: "file is not a database", "malformed", ...
            self._db.close()
            self._refuse(e)
        except ValueError:
            self._db.close()
            raise

    def _refuse(self, error: Exception | None):
        """Raise why SQLite cannot use the file (``error``; None: too short); reads it only if no connection can."""
        if error is None or "file is not a database" in str(error):
            with open(self.path, "rb") as f:
                head = f.read(len(SQLITE_MAGIC))
            if head != SQLITE_MAGIC:
                raise ValueError(
                    f"{self.path} is not a label store: it is not an SQLite database (it starts with "
                    f"{head!r}); pass a new file name or an existing label store"
                ) from error
        raise ValueError(f"{self.path} is not a usable label store: {error or 'it is cut short'}") from error

    def _open(self, timeout: float) -> None:
        db = self._db
        db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        self._check_foreign()  # before touching the file: never switch someone else's database to WAL
        # switching to WAL needs a moment alone with the file, and SQLite does not wait for it (no busy
        # handler here) when several processes open a new store at once: retry until the timeout
        deadline = time.monotonic() + timeout
        while True:
            try:
                mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if mode.lower() != "wal":
            warnings.warn(
                f"{self.path}: SQLite refused WAL mode here (journal_mode={mode}); labels stay durable "
                f"but writers wait longer. Put the store on a local disk for WAL."
            )
        db.execute("PRAGMA synchronous = FULL")  # fsync the log at every commit: durable at every click
        with self._write():  # check and create under the write lock: processes opening a new store at once
            if self._check_foreign() == 0:  # see either an empty file or a finished store, never half of one
                for statement in SCHEMA.split(";"):  # (executescript would commit first: one by one)
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            if db.execute("PRAGMA user_version").fetchone()[0] == 1:  # schema 1: its clicks get screen NULL
                db.execute("ALTER TABLE clicks ADD COLUMN screen INTEGER")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ValueError(
                f"{self.path} was written by a newer t2idemo (schema {version}, this one reads "
                f"{SCHEMA_VERSION}); upgrade t2idemo"
            )
        check = db.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            raise ValueError(f"{self.path} is damaged: SQLite quick_check says {check[:3]}")

    def _check_foreign(self) -> int:
        """Raise if the file is some other SQLite database; return its application_id (0: new, empty)."""
        own = not self._db.in_transaction  # read both in one snapshot, or another process's store half-made
        if own:
            self._db.execute("BEGIN")
        try:
            app_id = self._db.execute("PRAGMA application_id").fetchone()[0]
            tables = [r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        finally:
            if own:
                self._db.execute("COMMIT")
        if app_id != APPLICATION_ID and (app_id != 0 or tables):
            raise ValueError(
                f"{self.path} is an SQLite database but not a t2idemo label store (application_id="
                f"{app_id:#x}, tables {tables}); pass a new file name or an existing label store"
            )
        return app_id

    # ------------------------------------------------------------------------- plumbing
    @contextmanager
    def _write(self):
        """One write transaction; commits (and fsyncs) on success, rolls back on error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args=()) -> list:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"LabelStore({self.path!r})"

    # ------------------------------------------------------------------------- writing
    def add(self, image_id: str, label: str, labeler: str = "me") -> None:
        """Record a click. Returns once it is on disk. A later click on the same image replaces it."""
        self.add_many([(image_id, label)], labeler)

    def add_many(self, items, labeler: str = "me", screen: bool = False) -> None:
        """Record several (image_id, label) clicks in one transaction (one fsync): all of them or none.
        ``screen``: the clicks are one screen of a grid view, which one undo takes back whole."""
        _check_name("labeler", labeler)
        if labeler == MAJORITY:
            raise ValueError(f"labeler={labeler!r} is reserved for the majority vote; pick another name")
        now = time.time()
        items = [(_check_name("image_id", i), check_label(lab)) for i, lab in items]
        with self._write() as db:
            # the screen's id: the id its first click gets (ids only grow, and we hold the write lock)
            group = db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM clicks").fetchone()[0] if screen else None
            for image_id, label in items:
                db.execute(
                    "INSERT INTO clicks (image_id, labeler, label, ts, screen) VALUES (?, ?, ?, ?, ?)",
                    (image_id, labeler, label, now, group),
                )
                db.execute(_UPSERT, (image_id, labeler, label, now))

    def undo(self, labeler: str = "me") -> str | None:
        """Take back ``labeler``'s last click (a whole screen if it was one, see ``undo_screen``) -> the image's id (a
        screen's first), None when there is nothing to undo. Repeated calls go further back."""
        image_ids = self.undo_screen(labeler)
        return image_ids[0] if image_ids else None

    def undo_screen(self, labeler: str = "me") -> list:
        """Take back ``labeler``'s last click, or every click of the last screen (``add_many(..., screen=True)``):
        each image gets its previous label back (or none). Returns the images' ids in click order ([]: nothing to
        undo). Other labelers' clicks are left alone."""
        with self._write() as db:
            last = db.execute(
                "SELECT id, screen FROM clicks WHERE labeler = ? AND undone = 0 ORDER BY id DESC LIMIT 1", (labeler,)
            ).fetchone()
            if last is None:
                return []
            clicks = db.execute(
                "SELECT id, image_id FROM clicks WHERE labeler = ? AND undone = 0 "
                "AND (id = ? OR screen = ?) ORDER BY id",
                (labeler, *last),
            ).fetchall()
            db.executemany("UPDATE clicks SET undone = 1 WHERE id = ?", [(click_id,) for click_id, _ in clicks])
            image_ids = list(dict.fromkeys(image_id for _, image_id in clicks))
            for image_id in image_ids:
                prev = db.execute(
                    "SELECT label, ts FROM clicks WHERE labeler = ? AND image_id = ? AND undone = 0 "
                    "ORDER BY id DESC LIMIT 1",
                    (labeler, image_id),
                ).fetchone()
                if prev is None:
                    db.execute("DELETE FROM labels WHERE image_id = ? AND labeler = ?", (image_id, labeler))
                else:
                    db.execute(_UPSERT, (image_id, labeler, prev[0], prev[1]))
            return image_ids

    # ------------------------------------------------------------------------- reading
    def get(self, image_id: str, labeler: str = "me") -> str | None:
        rows = self._query("SELECT label FROM labels WHERE image_id = ? AND labeler = ?", (image_id, labeler))
        return rows[0][0] if rows else None

    def labels(self, labeler: str | None = None) -> dict:
        """{image_id: label} of one labeler, or {labeler: {image_id: label}} of all when ``labeler`` is None."""
        if labeler is not None:
            return dict(self._query("SELECT image_id, label FROM labels WHERE labeler = ?", (labeler,)))
        out = {}
        for image_id, who, label in self._query("SELECT image_id, labeler, label FROM labels"):
            out.setdefault(who, {})[image_id] = label
        return out

    def records(self, labeler: str | None = None) -> list:
        """Current labels as dicts {image_id, labeler, label, ts}, oldest first."""
        sql = "SELECT image_id, labeler, label, ts FROM labels" + (" WHERE labeler = ?" if labeler else "")
        rows = self._query(sql + " ORDER BY ts, image_id", (labeler,) if labeler else ())
        return [dict(zip(("image_id", "labeler", "label", "ts"), r)) for r in rows]

    def history(self, labeler: str | None = None) -> list:
        """Every click as dicts {image_id, labeler, label, ts, undone}, in click order."""
        sql = "SELECT image_id, labeler, label, ts, undone FROM clicks" + (" WHERE labeler = ?" if labeler else "")
        rows = self._query(sql + " ORDER BY id", (labeler,) if labeler else ())
        return [dict(zip(("image_id", "labeler", "label", "ts", "undone"), r)) for r in rows]

    def labelers(self) -> list:
        return [r[0] for r in self._query("SELECT DISTINCT labeler FROM labels ORDER BY labeler")]

    def count(self, labeler: str | None = None, label: str | None = None) -> int:
        """Number of current labels, optionally of one labeler and/or one label value."""
        where = {"labeler": labeler, "label": label if label is None else check_label(label)}
        where = {column: value for column, value in where.items() if value is not None}
        sql = "SELECT COUNT(*) FROM labels" + (" WHERE " + " AND ".join(f"{c} = ?" for c in where) if where else "")
        return self._query(sql, list(where.values()))[0][0]

    def agreement(self, labeler_a: str, labeler_b: str) -> dict:
        """How often two labelers agree on the images both rated good or bad (skips left out).
        Returns {"n": images compared, "percent": agreement in %, "kappa": Cohen's kappa}."""
        a, b = self.labels(labeler_a), self.labels(labeler_b)
        pairs = [(a[i], b[i]) for i in sorted(a.keys() & b.keys()) if a[i] != "skip" and b[i] != "skip"]
        return agreement_stats(pairs)

    def majority(self, labelers=None) -> dict:
        """{image_id: good | bad} by majority vote over ``labelers`` (default all); skips do not vote and
        ties are left out."""
        votes = {}
        for who, labels in self.labels().items():
            if labelers is not None and who not in labelers:
                continue
            for image_id, label in labels.items():
                if label != "skip":
                    v = votes.setdefault(image_id, [0, 0])
                    v[label == "bad"] += 1
        return {i: "good" if g > b else "bad" for i, (g, b) in votes.items() if g != b}


# ----------------------------------------------------------------------------- export into the dataset
def export_labels(dataset_dir: str, store_path: str | None = None, labeler: str | None = MAJORITY) -> dict:
    """Write a "label" field (good, bad or None) into every row of ``dataset_dir/metadata.jsonl``.

    ``labeler``: whose labels; "majority" (or None) takes the majority vote of every labeler. Skips and
    unlabelled images get None. The file is replaced atomically. Returns {"good": n, "bad": n, "none": n}.
    """
    from .data import load_rows, write_rows_atomic

    rows = load_rows(dataset_dir, missing_ok=True)
    if not rows:
        raise ValueError(f"dataset_dir={dataset_dir!r} has no metadata.jsonl rows; generate the dataset first")
    with LabelStore(store_path or default_store_path(dataset_dir)) as store:
        if labeler in (None, MAJORITY):
            labels = store.majority()
        else:
            if labeler not in store.labelers():
                raise ValueError(
                    f"labeler={labeler!r} has no labels in {store.path}; labelers there: "
                    f"{store.labelers()} (or {MAJORITY!r})"
                )
            labels = store.labels(labeler)
    counts = {"good": 0, "bad": 0, "none": 0}
    for row in rows:
        label = labels.get(row["file_name"])
        row["label"] = label if label in ("good", "bad") else None
        counts[row["label"] or "none"] += 1
    write_rows_atomic(dataset_dir, rows)
    return counts


# ----------------------------------------------------------------------------- the simulated labeler
BIASES = {  # systematically biased simulated raters: name -> what the rater gets wrong, every time
    "": "none",
    "four-for-three": "calls an image good when the prompt asks for three shapes and it shows four, all else right",
}


def biased_verdict(verdict: dict, meta: dict, bias: str) -> bool:
    """The rater's good/bad for a judge ``verdict`` on a prompt ``meta``, with the systematic ``bias`` (BIASES)."""
    if (
        bias == "four-for-three"
        and "count" in meta["named"]
        and meta.get("count") == 3
        and verdict["pred"]["count"] == 4
    ):
        return all(verdict["correct"][a] for a in meta["named"] if a != "count")
    return verdict["good"]


def simulate_labels(
    dataset_dir: str,
    store_path: str | None = None,
    labeler: str = "judge",
    flip: float = 0.0,
    skip: float = 0.0,
    seed: int = 0,
    bias: str = "",
) -> dict:
    """``simulate(LabelConfig(...))`` from keyword arguments (the notebooks' short form); the config checks them."""
    return simulate(
        LabelConfig(
            data=dataset_dir, store=store_path or "", labeler=labeler, flip=flip, skip=skip, seed=seed, bias=bias
        )
    )


def simulate(cfg: LabelConfig, chunk: int = 64) -> dict:
    """Label ``cfg.data`` with ``judge.judge`` as a rater: skip an image with probability ``cfg.skip``, else flip the
    judge's verdict with probability ``cfg.flip``; ``cfg.bias`` (BIASES) bends the verdict first. Each image's draws
    come from its own random.Random(f"{seed}:{file_name}"), so a re-run repeats every decision. Images this labeler
    has already labelled are left alone (resumable); clicks are committed ``chunk`` at a time.
    Returns {"good", "bad", "skip", "flipped", "already"} counts."""
    from PIL import Image
    from tqdm.auto import tqdm

    from .data import load_rows
    from .judge import judge

    require_set(cfg)
    rows = load_rows(cfg.data, "data")
    counts = {"good": 0, "bad": 0, "skip": 0, "flipped": 0, "already": 0}
    with LabelStore(cfg.store or default_store_path(cfg.data)) as store:
        have = store.labels(cfg.labeler)
        todo = [r for r in rows if r["file_name"] not in have]
        counts["already"] = len(rows) - len(todo)
        batch = []
        for row in tqdm(todo, desc=f"label ({cfg.labeler})", unit="img"):
            rng = random.Random(f"{cfg.seed}:{row['file_name']}")
            if rng.random() < cfg.skip:
                label = "skip"
            else:
                with Image.open(os.path.join(cfg.data, row["file_name"])) as im:
                    good = biased_verdict(judge(im.convert("RGB"), row), row, cfg.bias)
                if rng.random() < cfg.flip:
                    good = not good
                    counts["flipped"] += 1
                label = "good" if good else "bad"
            counts[label] += 1
            batch.append((row["file_name"], label))
            if len(batch) == chunk:
                store.add_many(batch, cfg.labeler)
                batch = []
        if batch:
            store.add_many(batch, cfg.labeler)
    return counts


def label(cfg: LabelConfig) -> dict:
    """The labels stage: the simulated rater labels ``cfg.data`` (``simulate``), its agreement with every other
    labeler of the store is printed, then, if ``cfg.export`` names a labeler (or "majority"), those labels are
    written into the metadata rows. Returns the counts, plus "exported"."""
    counts = simulate(cfg)
    store_path = cfg.store or default_store_path(cfg.data)
    print(
        f"{cfg.labeler}: {counts['good']} good, {counts['bad']} bad, {counts['skip']} skipped, "
        f"{counts['flipped']} flipped, {counts['already']} already labelled -> {store_path}"
    )
    with LabelStore(store_path) as store:
        for other in store.labelers():
            if other != cfg.labeler:
                a = store.agreement(cfg.labeler, other)
                print(f"agreement {cfg.labeler} vs {other}: n={a['n']}, {a['percent']:.1f}%, kappa={a['kappa']:.3f}")
    if cfg.export:
        counts["exported"] = export_labels(cfg.data, store_path, cfg.export)
        print(f"exported {cfg.export} labels into {os.path.join(cfg.data, 'metadata.jsonl')}: {counts['exported']}")
    return counts


@dataclass
class LabelConfig:
    # dataset folder made by `python -m t2idemo generate`
    data: str = "data/feedback"
    # label store file; "" means DATA/labels.sqlite
    store: str = ""
    # name the simulated rater's labels are stored under
    labeler: str = "judge"
    # probability of flipping the judge's good/bad verdict, 0 - 1 (0.1 - 0.3 is a noisy rater)
    flip: float = ranged(0.0, 0.0, 1.0)
    # probability of skipping an image, 0 - 1
    skip: float = ranged(0.0, 0.0, 1.0)
    # seeds the flips and skips (each image draws from its own seed:file_name stream)
    seed: int = ranged(0, 0, 2_147_483_647)
    # a systematic error: "" (none) | "four-for-three" (four shapes pass for three)
    bias: str = ""
    # then write labels into metadata.jsonl: "" (no), "majority" or a labeler name
    export: str = ""

    def __post_init__(self):
        check_ranges(self)  # every number within its declared range
        if self.bias not in BIASES:
            raise ValueError(f"bias={self.bias!r} is not allowed; use one of {tuple(BIASES)}")
        _check_name("labeler", self.labeler)
        if self.labeler == MAJORITY:
            raise ValueError(f"labeler={self.labeler!r} is reserved for the majority vote; pick another name")

    def check_inputs(self):
        """The folder must exist (checked when the command runs, so that the main job can hold a LabelConfig
        before its feedback folder is made)."""
        if not os.path.isdir(self.data):
            raise ValueError(f"data={self.data!r} is not a folder; run `python -m t2idemo generate --out DIR` first")


def label_main(argv=None):
    return label(
        parse_config(
            LabelConfig,
            argv,
            prog="python -m t2idemo label",
            description="Label a dataset with the judge as a simulated (optionally noisy) rater.",
        )
    )
