"""The label store: (image, labeler) -> good | bad | skip in one SQLite file, shared by every labelling view.

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
import sqlite3
import threading
import time
import warnings
from contextlib import contextmanager

from .stats import agreement_stats

LABELS = ("good", "bad", "skip")
MAJORITY = "majority"  # reserved labeler name: the majority vote of all labelers, for export
STORE_NAME = "labels.sqlite"  # the store's default file name inside a dataset folder
APPLICATION_ID = 0x7432_6C62  # "t2lb": written into the SQLite header, marks the file as our label store
SCHEMA_VERSION = 2  # PRAGMA user_version of the schema below; 1 had no clicks.screen (opening adds it)
SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database
MIN_DB_BYTES = 512  # SQLite's smallest page: a non-empty file shorter than this is no database
WAL_RETRY = 0.01  # seconds between tries to switch a new store to WAL while another process holds it

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


def check_name(name: str, value) -> str:
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
        if 0 < (os.path.getsize(self.path) if os.path.exists(self.path) else 0) < MIN_DB_BYTES:
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
                time.sleep(WAL_RETRY)
        if mode.lower() != "wal":
            warnings.warn(
                f"{self.path}: SQLite refused WAL mode here (journal_mode={mode}); labels stay durable "
                f"but writers wait longer. Put the store on a local disk for WAL.",
                stacklevel=3,  # the caller of LabelStore(...)
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
        check_name("labeler", labeler)
        if labeler == MAJORITY:
            raise ValueError(f"labeler={labeler!r} is reserved for the majority vote; pick another name")
        now = time.time()
        items = [(check_name("image_id", i), check_label(lab)) for i, lab in items]
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
