"""The app on a Hugging Face Space: keep what visitors label across restarts, and share by signing in.

A Space runs ``python app.py`` with SPACE_ID=owner/name in its environment; that is how the app knows it is on one.
Locally (no SPACE_ID) nothing here changes anything.

On a Space whose HF_TOKEN secret is set (``python -m t2idemo space`` sets it), the labelling folder
(WORKDIR/labelling: the drawn images, metadata.jsonl and the label store) is kept in the private dataset repo
OWNER/NAME-labels (``t2idemo.space.labels_repo``):

- at start, before the app opens its label store, a folder with no store is restored from the dataset (a Space
  restart wipes the disk; a process restart on the same disk keeps the local store, which is never older);
- while it runs, a ``huggingface_hub.CommitScheduler`` commits the changed files every T2IDEMO_SYNC_MINUTES (1 by
  default), the store as ``labels.sqlite.backup``, a consistent copy made with SQLite's backup API (the live file may
  be mid-transaction), and once more when the process exits. A label is on the Space's disk (SQLite, committed) as
  soon as the click returns; what a Space restart can lose is at most the last interval.

With persistent storage (/data) the app keeps its work folder there instead of runs/app. Share signs in with
Hugging Face (OAuth, ``hf_oauth`` in the Space's front matter) instead of a pasted token. The token of the scheduler
is the Space's secret, read by huggingface_hub from the environment; this module never reads, prints or logs it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile

from .label_store import default_store_path
from .space import labels_repo

BACKUP = ".backup"  # labels.sqlite -> labels.sqlite.backup in the dataset repo
PATH_IN_REPO = "labelling"
LIVE = ["*.sqlite", "*.sqlite-wal", "*.sqlite-shm", "*.sqlite-journal", "*.tmp", ".*"]  # never uploaded as they are
PERSISTENT = "/data"  # a Space's persistent storage, when the owner added it
log = logging.getLogger(__name__)


def space_id() -> str | None:
    """owner/name of the Space this process runs on, or None locally."""
    return os.environ.get("SPACE_ID") or None


def sync_minutes() -> float:
    value = os.environ.get("T2IDEMO_SYNC_MINUTES", "1")
    try:
        minutes = float(value)
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise ValueError(f"T2IDEMO_SYNC_MINUTES={value!r} is not allowed; use a number of minutes > 0, e.g. 1")
    return minutes


def workdir(default: str) -> str:
    """Where the app keeps its work: on a Space with persistent storage, /data/t2idemo; else ``default``."""
    if space_id() and os.path.isdir(PERSISTENT) and os.access(PERSISTENT, os.W_OK):
        return os.path.join(PERSISTENT, "t2idemo")
    return default


def store_state(store: str) -> tuple:
    """What changes when the store changes: (size, mtime) of the file and of its write-ahead log."""
    return tuple(
        (os.stat(p).st_size, os.stat(p).st_mtime_ns) if os.path.exists(p) else None for p in (store, store + "-wal")
    )


def backup_store(store: str, backup: str) -> None:
    """Write a consistent copy of the SQLite store ``store`` to ``backup`` (atomically: a temporary file, renamed)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(backup), suffix=".tmp")
    os.close(fd)
    src, dst = sqlite3.connect(store), sqlite3.connect(tmp)
    try:
        src.backup(dst)
        dst.close()
        os.replace(tmp, backup)
    finally:
        src.close()
        dst.close()
        if os.path.exists(tmp):
            os.remove(tmp)


def restore(folder: str, repo_id: str) -> list:
    """Fill ``folder`` from the dataset repo if it holds no label store; returns the files restored (paths)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    store = default_store_path(folder)
    if os.path.isfile(store):
        return []  # the same disk: the local store is the newest copy
    with tempfile.TemporaryDirectory(prefix="t2idemo-restore-") as tmp:
        try:
            snapshot_download(repo_id, repo_type="dataset", local_dir=tmp, allow_patterns=f"{PATH_IN_REPO}/*")
        except (RepositoryNotFoundError, EntryNotFoundError):
            return []
        src = os.path.join(tmp, PATH_IN_REPO)
        if not os.path.isdir(src):
            return []
        os.makedirs(folder, exist_ok=True)
        restored = []
        for name in sorted(os.listdir(src)):
            if os.path.isfile(os.path.join(src, name)):
                shutil.copy2(os.path.join(src, name), os.path.join(folder, name))
                restored.append(os.path.join(folder, name))
    if os.path.isfile(store + BACKUP):
        shutil.copy2(store + BACKUP, store)  # the backup stays: it is what the dataset holds
    return restored


def scheduler(folder: str, repo_id: str, minutes: float, uploaded=()):
    """A CommitScheduler of ``folder`` to ``repo_id``/labelling that backs the store up before each commit;
    ``uploaded``: files already in the dataset as they are (restored ones), so they are not committed again."""
    from huggingface_hub import CommitScheduler

    class LabelScheduler(CommitScheduler):
        backed_up = None  # the store's state at its last backup

        def push_to_hub(self):
            store = default_store_path(folder)
            state = store_state(store)
            if os.path.isfile(store) and state != self.backed_up:
                backup_store(store, store + BACKUP)  # a new mtime: the scheduler commits it
                self.backed_up = state
            return super().push_to_hub()

    sched = LabelScheduler(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=folder,
        path_in_repo=PATH_IN_REPO,
        every=minutes,
        private=True,
        ignore_patterns=LIVE,
    )
    from pathlib import Path

    with sched.lock:
        for path in uploaded:
            sched.last_uploaded.setdefault(Path(path).resolve(), os.stat(path).st_mtime)
    return sched


def start(cfg):
    """Before the app starts (``cfg``: app.py's AppConfig, changed in place): on a Space, the work folder on
    persistent storage if there is some, and the labelling folder restored from the labels dataset. Returns a
    function that, given the started app, schedules the labels' commits (a no-op locally)."""
    sid = space_id()
    if not sid:
        return lambda app: None
    cfg.workdir = workdir(cfg.workdir)
    folder = os.path.join(cfg.workdir, "labelling")
    if not os.environ.get("HF_TOKEN"):
        log.warning("on Space %s without an HF_TOKEN secret: labels stay on the Space's disk only", sid)
        return lambda app: None
    repo, minutes = labels_repo(sid), sync_minutes()
    restored = restore(folder, repo)
    print(f"labels: {len(restored)} files restored from the dataset {repo}; saved there every {minutes:g} min")

    def schedule(app):
        if os.path.abspath(app.label_dir) != os.path.abspath(folder):
            log.warning("labelling the owner's --data %s: its labels are not saved to %s", app.label_dir, repo)
            return None
        app.label_sync = scheduler(folder, repo, minutes, restored)
        return app.label_sync

    return schedule
