"""Each labeler's own consent to be named on the Hub with their labels: ``consent.json`` in the labelling folder,
{labeler: true | false}, written by that labeler's choice alone (the app's Share tab, ``t2idemo.share_page``). A push
names those who agreed and calls the others 'labeler 1', 'labeler 2', ... (``t2idemo.hub_files.aliases``)."""

import json
import os
import threading

CONSENT_FILE = "consent.json"
_lock = threading.Lock()


def consenting(label_dir: str) -> set:
    """The labelers who agreed that their name goes to the Hub with their labels."""
    path = os.path.join(label_dir, CONSENT_FILE)
    if not os.path.isfile(path):
        return set()
    with open(path, encoding="utf-8") as f:
        return {who for who, agreed in json.load(f).items() if agreed is True}


def set_consent(label_dir: str, labeler: str, agreed: bool) -> set:
    """Record ``labeler``'s own choice (on disk when this returns) -> the labelers who agreed."""
    if not labeler:
        raise ValueError(
            "labeler='' is not allowed; type your name in the Label tab and press Start first, then "
            "choose here whether it may be published"
        )
    path = os.path.join(label_dir, CONSENT_FILE)
    with _lock:
        current = {}
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                current = json.load(f)
        current[labeler] = bool(agreed)
        os.makedirs(label_dir, exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(current, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
    return {who for who, ok in current.items() if ok is True}
