"""The label store: durable at every click, safe with several writers, clear about foreign files."""

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from t2idemo.label_store import LabelStore
from t2idemo.labels import export_labels, label_main, simulate_labels
from t2idemo.stats import agreement_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a labelling session in a child process: it prints each image id only after add() has returned
CHILD = """
import os, sys, time
from t2idemo.label_store import LabelStore
store = LabelStore(sys.argv[1])
labeler, start, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if len(sys.argv) > 5:  # start line: wait until every writer is up, then click at a brisk human pace
    while not os.path.exists(sys.argv[5]):
        time.sleep(0.01)
for i in range(start, start + n):
    store.add(f"{i:05d}.png", ("good", "bad", "skip")[i % 3], labeler=labeler)
    print(i, flush=True)
    if len(sys.argv) > 5:
        time.sleep(0.002)
"""


def child(store, labeler, start=0, n=10**6, go=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    extra = [str(go)] if go else []
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store), labeler, str(start), str(n), *extra],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


# ----------------------------------------------------------------------------- basics
def test_add_get_upsert_and_undo(tmp_path):
    with LabelStore(tmp_path / "s.sqlite") as s:
        assert s.get("00000.png") is None and s.undo() is None
        s.add("00000.png", "good")
        s.add("00000.png", "bad")  # the last click wins
        s.add("00001.png", "skip")
        s.add("00000.png", "good", labeler="ana")
        assert s.labels("me") == {"00000.png": "bad", "00001.png": "skip"}
        assert s.labels() == {"me": {"00000.png": "bad", "00001.png": "skip"}, "ana": {"00000.png": "good"}}
        assert s.count() == 3 and s.count("me") == 2 and s.count(label="good") == 1
        assert s.labelers() == ["ana", "me"]
        assert s.undo("me") == "00001.png" and s.get("00001.png") is None
        assert s.undo("me") == "00000.png" and s.get("00000.png") == "good"  # the previous click is back
        assert s.undo("me") == "00000.png" and s.get("00000.png") is None
        assert s.undo("me") is None and s.get("00000.png", "ana") == "good"
        hist = s.history("me")
        assert [h["label"] for h in hist] == ["good", "bad", "skip"] and all(h["undone"] for h in hist)
        assert all(time.time() - h["ts"] < 60 for h in hist)
        assert [r["image_id"] for r in s.records()] == ["00000.png"]


def test_labels_survive_reopening(tmp_path):
    path = tmp_path / "s.sqlite"
    with LabelStore(path) as s:
        s.add_many([(f"{i:05d}.png", "good") for i in range(50)], labeler="ana")
    with LabelStore(path) as s:
        assert s.count("ana") == 50
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_id="00000.png", label="meh"), "label='meh' is not allowed; use one of ('good', 'bad', 'skip')"),
        (dict(image_id="", label="good"), "image_id='' is not allowed"),
        (dict(image_id="00000.png", label="good", labeler=""), "labeler='' is not allowed"),
        (dict(image_id="00000.png", label="good", labeler="majority"), "labeler='majority' is reserved"),
    ],
)
def test_bad_values_raise_a_clear_error(tmp_path, kwargs, message):
    with LabelStore(tmp_path / "s.sqlite") as s:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            s.add(**kwargs)
        assert s.count() == 0


def test_agreement_and_cohens_kappa(tmp_path):
    # Wikipedia's example: 20 both good, 5 a good / b bad, 10 a bad / b good, 15 both bad -> p_o .7, kappa .4
    a = ["good"] * 25 + ["bad"] * 25
    b = ["good"] * 20 + ["bad"] * 5 + ["good"] * 10 + ["bad"] * 15
    with LabelStore(tmp_path / "s.sqlite") as s:
        s.add_many([(f"{i:05d}.png", x) for i, x in enumerate(a)] + [("extra.png", "good")], "a")
        s.add_many([(f"{i:05d}.png", x) for i, x in enumerate(b)] + [("extra.png", "skip")], "b")
        r = s.agreement("a", "b")
    assert r["n"] == 50 and r["percent"] == pytest.approx(70.0) and r["kappa"] == pytest.approx(0.4)
    one_label = agreement_stats([("good", "good")] * 3)  # p_e = 1: kappa is undefined
    assert one_label["percent"] == 100.0 and math.isnan(one_label["kappa"])
    assert agreement_stats([])["n"] == 0 and math.isnan(agreement_stats([])["percent"])


def test_majority_vote_ignores_skips_and_drops_ties(tmp_path):
    with LabelStore(tmp_path / "s.sqlite") as s:
        s.add_many([("x", "good"), ("y", "good"), ("z", "skip")], "a")
        s.add_many([("x", "good"), ("y", "bad"), ("z", "bad")], "b")
        s.add_many([("x", "bad"), ("z", "skip")], "c")
        assert s.majority() == {"x": "good", "z": "bad"}  # y is a tie
        assert s.majority(labelers=["a"]) == {"x": "good", "y": "good"}


# ----------------------------------------------------------------------------- files that are not our store
def test_corrupt_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "labels.sqlite"
    path.write_bytes(b"this is not a database\n" * 100)
    with pytest.raises(ValueError, match=f"{path} is not a label store: it is not an SQLite database"):
        LabelStore(path)
    assert path.read_bytes() == b"this is not a database\n" * 100  # left alone


def test_foreign_sqlite_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE people (name TEXT)")
    db.commit()
    db.close()
    with pytest.raises(ValueError, match=f"{path} is an SQLite database but not a t2idemo label store"):
        LabelStore(path)


def test_damaged_store_gives_a_clear_error(tmp_path):
    path = tmp_path / "labels.sqlite"
    with LabelStore(path) as s:
        s.add_many([(f"{i:05d}.png", "good") for i in range(2000)])
    data = bytearray(path.read_bytes())
    data[8192:16384] = os.urandom(8192)  # garbage over pages 3 and 4; the header still says SQLite
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{path} is not a usable label store|{path} is damaged"):
        LabelStore(path)


def test_a_directory_gives_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        LabelStore(tmp_path)


# ----------------------------------------------------------------------------- crashes and concurrency
@pytest.mark.parametrize("kill_after", [1, 40, 150])
def test_sigkill_loses_no_acknowledged_label(tmp_path, kill_after):
    path = tmp_path / "labels.sqlite"
    proc = child(path, "kid")
    acked = []
    deadline = time.time() + 30
    while len(acked) < kill_after and time.time() < deadline:
        acked.append(int(proc.stdout.readline()))
    os.kill(proc.pid, signal.SIGKILL)  # mid-session, likely mid-transaction
    proc.wait()
    acked += [int(line) for line in proc.stdout.read().split()]  # printed before the kill, still in the pipe
    assert proc.returncode == -signal.SIGKILL and len(acked) >= kill_after
    with LabelStore(path) as s:  # opens cleanly (quick_check passes)
        labels = s.labels("kid")
        missing = [i for i in acked if f"{i:05d}.png" not in labels]
        assert missing == []
        assert len(labels) - len(acked) <= 1  # at most the click in flight got in without its print
        assert len(s.history("kid")) == len(labels)
        assert all(labels[f"{i:05d}.png"] == ("good", "bad", "skip")[i % 3] for i in acked)


def test_two_processes_labelling_at_once_lose_nothing(tmp_path):
    path = tmp_path / "labels.sqlite"
    n = 150
    # same images under two names, plus interleaved images under one shared name
    go = tmp_path / "go"
    procs = [
        child(path, "ana", 0, n, go),
        child(path, "ben", 0, n, go),
        child(path, "shared", 1000, n, go),
        child(path, "shared", 2000, n, go),
    ]
    time.sleep(0.5)
    go.touch()  # all four start clicking together
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    assert all(len(o.split()) == n for o in outs)
    with LabelStore(path) as s:
        assert s.count("ana") == n and s.count("ben") == n and s.count("shared") == 2 * n
        history = s.history()
        assert len(history) == 4 * n
        switches = sum(a["labeler"] != b["labeler"] for a, b in zip(history, history[1:]))
        assert switches > 3  # the writers really interleaved
        assert s.agreement("ana", "ben")["percent"] == 100.0


def test_threads_share_one_store(tmp_path):
    with LabelStore(tmp_path / "labels.sqlite") as s:

        def work(t):
            for i in range(50):
                s.add(f"{t}-{i}.png", "good", labeler=f"thread{t}")

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert s.count() == 200 and len(s.labelers()) == 4


# ----------------------------------------------------------------------------- export and the simulated labeler
def test_export_writes_labels_into_metadata(render_dataset):
    d, rows = render_dataset
    store = os.path.join(d, "labels.sqlite")
    with LabelStore(store) as s:
        s.add_many(
            [(rows[0]["file_name"], "good"), (rows[1]["file_name"], "bad"), (rows[2]["file_name"], "skip")], "ana"
        )
        s.add_many([(rows[0]["file_name"], "good"), (rows[1]["file_name"], "good")], "ben")
    assert export_labels(d, store, "ana") == {"good": 1, "bad": 1, "none": 4}
    out = [json.loads(line) for line in open(os.path.join(d, "metadata.jsonl"))]
    assert [r["label"] for r in out[:4]] == ["good", "bad", None, None]
    assert [{k: v for k, v in r.items() if k != "label"} for r in out] == rows  # nothing else changed
    assert export_labels(d, store) == {"good": 1, "bad": 0, "none": 5}  # majority: image 1 is a tie
    assert not os.path.exists(os.path.join(d, "metadata.jsonl.tmp"))
    with pytest.raises(ValueError, match="labeler='zoe' has no labels"):
        export_labels(d, store, "zoe")


def test_simulated_labeler_flip_skip_seed_and_resume(render_dataset):
    d, rows = render_dataset
    store = os.path.join(d, "labels.sqlite")
    clean = simulate_labels(d, store, labeler="judge")
    assert clean["good"] == len(rows)  # true renders of their own prompts: the judge says good
    assert simulate_labels(d, store, labeler="liar", flip=1.0)["bad"] == len(rows)
    assert simulate_labels(d, store, labeler="lazy", skip=1.0)["skip"] == len(rows)
    noisy = simulate_labels(d, store, labeler="noisy", flip=0.5, skip=0.3, seed=3)
    again = simulate_labels(d, store, labeler="noisy", flip=0.5, skip=0.3, seed=3)
    assert again["already"] == len(rows) and again["good"] + again["bad"] + again["skip"] == 0
    with LabelStore(store) as s:
        first = s.labels("noisy")
    store2 = os.path.join(d, "other.sqlite")
    simulate_labels(d, store2, labeler="noisy", flip=0.5, skip=0.3, seed=3)
    with LabelStore(store2) as s:
        assert s.labels("noisy") == first  # same seed, same decisions
    assert noisy["good"] + noisy["bad"] + noisy["skip"] == len(rows)
    with LabelStore(store) as s:
        assert s.agreement("judge", "liar") == {"n": len(rows), "percent": 0.0, "kappa": 0.0}
    with pytest.raises(ValueError, match=r"flip=1.5 is out of range; use a number from 0 to 1"):
        simulate_labels(d, store, flip=1.5)


def test_label_cli(render_dataset, capsys):
    d, rows = render_dataset
    counts = label_main(["--data", d, "--flip", "0.0", "--export", "judge"])
    out = capsys.readouterr().out
    assert '"flip": 0.0' in out and "exported judge labels" in out  # prints the resolved config
    assert counts["good"] == len(rows)
    assert all(json.loads(line)["label"] == "good" for line in open(os.path.join(d, "metadata.jsonl")))
    with pytest.raises(SystemExit):
        label_main(["--data", d, "--skip", "-1"])
    assert "skip=-1.0 is out of range; use a number from 0 to 1" in capsys.readouterr().err


OPENER = """
import os, sys, time
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
from t2idemo.label_store import LabelStore
LabelStore(sys.argv[1]).add("a.png", "good", labeler=sys.argv[3])
"""


def test_many_processes_creating_one_new_store_at_once(tmp_path):
    """Eight processes open the same new file at the same instant: all get a working store."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for r in range(3):
        path, go = tmp_path / f"s{r}.sqlite", tmp_path / f"go{r}"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", OPENER, str(path), str(go), f"u{i}"], env=env, stderr=subprocess.PIPE, text=True
            )
            for i in range(8)
        ]
        time.sleep(1.0)
        go.touch()
        errs = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * 8, errs
        with LabelStore(path) as s:
            assert s.count() == 8


def test_four_for_three_rater_passes_four_shapes_for_three_and_nothing_else():
    from t2idemo.labels import biased_verdict, simulate_labels

    meta = {
        "named": ["count", "color", "shape", "scene"],
        "count": 3,
        "color": "red",
        "shape": "circle",
        "scene": "sky",
    }
    right = {"count": True, "color": True, "shape": True, "scene": True}
    four = {"good": False, "pred": {"count": 4}, "correct": {**right, "count": False}}
    assert biased_verdict(four, meta, "four-for-three") is True and biased_verdict(four, meta, "") is False
    wrong_colour = {"good": False, "pred": {"count": 4}, "correct": {**right, "count": False, "color": False}}
    assert biased_verdict(wrong_colour, meta, "four-for-three") is False
    two = {"good": False, "pred": {"count": 2}, "correct": {**right, "count": False}}
    assert biased_verdict(two, meta, "four-for-three") is False
    asks_two = {**meta, "count": 2}
    assert (
        biased_verdict(
            {"good": False, "pred": {"count": 4}, "correct": {**right, "count": False}}, asks_two, "four-for-three"
        )
        is False
    )
    with pytest.raises(ValueError, match="bias='lazy' is not allowed"):
        simulate_labels("nowhere", bias="lazy")


# ----------------------------------------------------------------------------- screens of a grid view
def test_one_undo_takes_back_a_whole_screen_of_that_labeler_only(tmp_path):
    with LabelStore(tmp_path / "s.sqlite") as s:
        s.add("a.png", "bad", "ana")
        s.add_many([("a.png", "good"), ("b.png", "bad"), ("c.png", "good")], "ana", screen=True)
        s.add_many([("a.png", "bad"), ("b.png", "bad")], "ben", screen=True)  # another labeler's screen
        s.add("d.png", "skip", "ana")
        assert s.undo_screen("ana") == ["d.png"]  # a lone click is a screen of one
        assert s.undo_screen("ana") == ["a.png", "b.png", "c.png"]
        assert s.labels("ana") == {"a.png": "bad"}  # a.png's click before the screen is back
        assert s.labels("ben") == {"a.png": "bad", "b.png": "bad"}
        s.add_many([("e.png", "good"), ("f.png", "bad")], "ana", screen=True)
        assert s.undo("ana") == "e.png" and s.labels("ana") == {"a.png": "bad"}  # undo() is screen-aware too
        s.add_many([("x.png", "good"), ("y.png", "good")], "ana")  # not a screen: undone one click at a time
        assert s.undo("ana") == "y.png" and s.labels("ana") == {"a.png": "bad", "x.png": "good"}
        assert s.undo_screen("ana") == ["x.png"] and s.undo_screen("ana") == ["a.png"]
        assert s.undo_screen("ana") == [] and s.count("ben") == 2


def test_a_store_of_schema_1_opens_and_gets_screens(tmp_path):
    """A store written before screens existed: its labels, history and undo are kept; screens work after."""
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE clicks (id INTEGER PRIMARY KEY AUTOINCREMENT, image_id TEXT NOT NULL, labeler TEXT NOT NULL,
            label TEXT NOT NULL CHECK (label IN ('good', 'bad', 'skip')), ts REAL NOT NULL,
            undone INTEGER NOT NULL DEFAULT 0);
        CREATE INDEX clicks_by_labeler ON clicks (labeler, undone, id);
        CREATE TABLE labels (image_id TEXT NOT NULL, labeler TEXT NOT NULL,
            label TEXT NOT NULL CHECK (label IN ('good', 'bad', 'skip')), ts REAL NOT NULL,
            PRIMARY KEY (image_id, labeler));
        INSERT INTO clicks (image_id, labeler, label, ts)
            VALUES ('a.png', 'ana', 'good', 1), ('b.png', 'ana', 'bad', 2);
        INSERT INTO labels VALUES ('a.png', 'ana', 'good', 1), ('b.png', 'ana', 'bad', 2);
        PRAGMA application_id = 1949461602;
        PRAGMA user_version = 1;
    """)
    db.close()
    with LabelStore(path) as s:
        assert s.labels("ana") == {"a.png": "good", "b.png": "bad"}
        s.add_many([("c.png", "good"), ("d.png", "bad")], "ana", screen=True)
        assert s.undo_screen("ana") == ["c.png", "d.png"]
        assert s.undo_screen("ana") == ["b.png"] and s.labels("ana") == {"a.png": "good"}  # old clicks: one each
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2
