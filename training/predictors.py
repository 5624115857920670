"""A routed run's causal predictors fitted again on the finished, frozen model (`hpu fit-predictors`).

During training each predictor chases a router that is still learning, and its agreement with the
top-k is still rising when the run ends (docs/TRAINING.md, "Results so far"). Fitted after training,
with every other weight frozen, the same predictor (the hidden state with its gradient stopped, the
same MLP, binary cross-entropy on top-k membership, `routing.auxiliary_loss`) learns the routers'
final choice on the run's own training text. Nothing else moves (tested): the loss by the top-k stays
what it was, and what changes is decoding's choice, measured on the held-out text by the same
evaluation as training's: the predictors' agreement with the top-k and the loss when they route.
"""

from __future__ import annotations

from hpu.errors import InputError
from training import routing
from training.config import TrainConfig
from training.data import Corpus
from training.loop import Ranks, adamw, compile_for_training, cosine, evaluate, step_sequences, train_step

# What the fit reports of training's evaluation, before and after, and the file it writes them to.
REPORTED = ("loss", "routed_fraction", *routing.MEASURED["predictor"])
RESULT = "predictors.json"


def fit_predictors(model, cfg: TrainConfig, corpus: Corpus, steps: int, ranks: Ranks, lr: float | None = None,
                   progress: bool = False) -> dict:
    """Train `model`'s predictors alone for `steps` optimizer steps of the run's batch, on its training
    stream from the start, at `lr` (default: the run's peak) decaying to the run's min_lr, weight decay
    as in training. The predictors' gradient norm is clipped at the run's grad_clip, as training clips
    it (apart from the model's). Returns training's evaluation of the held-out text before and after
    (`REPORTED`).

    Raises
    ------
    InputError
        If the model has no routers, or `steps` is not positive.
    """
    if not routing.routers(model):
        raise InputError("the model has no routers: fit the predictors of a routed run (an arm with `route`)")
    if steps < 1:
        raise InputError(f"steps = {steps}: fit for at least one step")
    run = cfg.run
    lr = run.lr if lr is None else lr
    before = evaluate(model, corpus, cfg, ranks)
    model.requires_grad_(False)
    weights = routing.predictor_parameters(model)
    for p in weights:
        p.requires_grad_(True)
    optimizer = adamw(weights, cfg, ranks.device, lr)
    compile_for_training(model, cfg, ranks.device)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="predictors", unit="step", dynamic_ncols=True)
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:   # no warm-up: the predictors start trained
            group["lr"] = cosine(step / max(1, steps - 1), lr, run.min_lr)
        # The model's own loss carries no gradient here: only the predictors' cross-entropy does.
        train_step(model, model, optimizer, step_sequences(corpus.train, step, run.batch, run.context), cfg, ranks)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    after = evaluate(model, corpus, cfg, ranks)
    return {"steps": steps, "tokens": steps * run.batch * run.context, "lr": lr, "min_lr": run.min_lr,
            "before": {k: before[k] for k in REPORTED}, "after": {k: after[k] for k in REPORTED}}
