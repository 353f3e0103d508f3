"""t2idemo: a tutorial kit for "Aligning Text-to-Image Models using Human Feedback" (Lee et al. 2023).

The modules, in layers from the bottom. A module imports only from layers below its own, never from its own layer
or one above (tests/test_layers.py parses every import and checks it), so the code reads bottom to top:

    0  foundations   config (a dataclass -> a command line), data (imagefolder I/O), stats (Wilson, ROC-AUC),
                     dpo (the Diffusion-DPO loss), world (the shapes world: vocabulary, prompts, renders),
                     clip (the frozen CLIP that embeds images and prompts)
    1  parts         judge (the shapes world's rater), pretrain_diffusion (the tiny VAE and UNet, their noise
                     schedule), sd (the paper's SD-scale prompt set, tiny random stand-ins), reward_attr (the short
                     session's few-label reward: the CLIP's check of each named attribute, calibrated on the labels),
                     finetune_data (D_model, D_pre, their encoding and Dataset), finetune_params (what trains: the
                     UNet, its cross-attention or a LoRA adapter; the optimizer, the EMA, the checkpoint),
                     label_store (the SQLite label store every labelling view writes to)
    2  models, sets  prompts (one interface over world and sd), labels (the simulated rater, the export of labels),
                     reward (the model r(x, z): frozen CLIP + head), consent (each labeler's consent to be named),
                     pretrain (the tokenizer and tiny CLIP; the pretrain command over every piece),
                     finetune_save (what a fine-tune writes: the tuned pipeline, its snapshots)
    3  stages 1-2    generate (draw images), labeling (the ipywidgets labeler), reward_train (fit and evaluate
                     the reward model), label_summary (evaluation at SD scale: people's good rate per category)
    4  stage 3, etc. finetune (the reward-weighted loss), eval_config (the evaluation's settings and splits),
                     hub_files (what a push uploads: staging folders, cards), reward_cli (the reward command, its
                     tables, the label-noise study)
    5  evaluate, push evaluate (the judge, FID, CIs, best-of-N, the report), hub (push to the Hub)
    6  the job's config  runconfig (RunConfig, presets and recipes, the run folder's layout, the one derivation of
                     a round's stage configs)
    7  on top of it  run (the main job: feedback -> labels -> reward -> fine-tune -> evaluate), loop (the app's
                     steps), overopt (reward over-optimisation), space (deploy the app as a Hugging Face Space)
    8  notebooks     scales (the notebooks' SCALE switch over the presets, their folders), colab (their Colab badges
                     and Setup cells, from pyproject.toml), session_curve (what a short session buys at each label
                     count: a simulated person through loop's calls)
    9  the app       backend (app.py's models, labelling set and jobs, without Gradio), spacesync (on a Space: the
                     labels kept in its dataset repo)
    10  figures, page  benchmarks (the README's figures, the app's Compare latency included), label_page (the
                     app's Label tab without Gradio: one image at a time or a grid of them), share_page (the Share
                     tab: a pasted token locally, Sign in with Hugging Face on a Space)

``python -m t2idemo`` (``__main__``) and ``app.py`` sit above them all.
"""

LAYERS = (
    ("config", "data", "stats", "dpo", "world", "clip"),
    ("judge", "pretrain_diffusion", "sd", "reward_attr", "finetune_data", "finetune_params", "label_store"),
    ("prompts", "labels", "reward", "consent", "pretrain", "finetune_save"),
    ("generate", "labeling", "reward_train", "label_summary"),
    ("finetune", "eval_config", "hub_files", "reward_cli"),
    ("evaluate", "hub"),
    ("runconfig",),
    ("run", "loop", "overopt", "space"),
    ("scales", "colab", "session_curve"),
    ("backend", "spacesync"),
    ("benchmarks", "label_page", "share_page"),
)
