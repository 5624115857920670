"""Training the gate into language models: the A/B of dense against mass-gated attention.

- `training.attention`: the gate as a Hugging Face attention implementation (``hpu_mass``);
- `training.data`: real text, split by file, tokenized once into a cache;
- `training.config`: one experiment from one TOML (model, schedule, data, arms);
- `training.loop`: one run (an arm at a seed), on any number of GPUs through torchrun and DDP;
- `training.report`: every finished run of a results folder, per arm, against dense.
"""
