"""t2idemo: a tutorial kit for "Aligning Text-to-Image Models using Human Feedback" (Lee et al. 2023).

The modules, in layers from the bottom. A module imports only from layers below its own, never from its own layer
or one above (tests/test_layers.py parses every import and checks it), so the code reads bottom to top:

    0  foundations   config (a dataclass -> a command line), data (imagefolder I/O), stats (Wilson, ROC-AUC),
                     dpo (the Diffusion-DPO loss), world (the shapes world: vocabulary, prompts, renders)
    1  models, sets  judge (the shapes world's rater), pretrain (the tiny CLIP, VAE and UNet),
                     sd (the paper's SD-scale prompt set, tiny random stand-ins)
    2  stage parts   generate (draw images), labels (the label store, the simulated rater), reward (the model
                     r(x, z): frozen CLIP + head), finetune_data (D_model and D_pre: what the fine-tune trains on)
    3  stages        reward_train (fit and evaluate the reward model), finetune (the reward-weighted loss),
                     evaluate (the judge, FID, CIs), hub (push), labeling (the ipywidgets labeler),
                     benchmarks (the README's figures)
    4  the main job  run (feedback -> labels -> reward -> fine-tune -> evaluate)
    5  on top of it  loop (the app's steps), overopt (reward over-optimisation)
    6  notebooks     scales (the notebooks' presets)

``python -m t2idemo`` (``__main__``) and ``app.py`` sit above them all.
"""

LAYERS = (
    ("config", "data", "stats", "dpo", "world"),
    ("judge", "pretrain", "sd"),
    ("generate", "labels", "reward", "finetune_data"),
    ("finetune", "evaluate", "hub", "labeling", "benchmarks", "reward_train"),
    ("run",),
    ("loop", "overopt"),
    ("scales",),
)
