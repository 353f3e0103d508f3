"""Run the fine-tune under `accelerate launch` and record which dataset rows each process drew.

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 tests/rank_probe.py --data D --out O ...

takes `python -m t2idemo finetune`'s options and writes O.rank{k}.json: the row indices of every batch that
process k fetched from the cached-latent Dataset (tests/test_finetune.py reads them).
"""

import json
import sys

from accelerate import PartialState

from t2idemo import finetune_data
from t2idemo.finetune import finetune, parse_args

seen = []
fetch = finetune_data.CachedLatents.__getitems__


def recording(self, rows):
    seen.append([int(r) for r in rows])
    return fetch(self, rows)


finetune_data.CachedLatents.__getitems__ = recording
cfg = parse_args(sys.argv[1:])
finetune(cfg)
state = PartialState()
with open(f"{cfg.out}.rank{state.process_index}.json", "w") as f:
    json.dump({"num_processes": state.num_processes, "batches": seen}, f)
