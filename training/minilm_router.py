"""A learned token router for all-MiniLM-L6-v2, fitted with the model frozen (`hpu fit-minilm-router`).

`hpu quality` routes MiniLM's queries by an untrained score, the hidden state's norm, and at 20% routed
that costs the sentence embedding dearly. Here each layer gets a linear score of the hidden state
entering its attention (`golden_model.minilm.LinearRouter`), fitted so that the routed model's sentence
embedding stays the dense model's: the loss is 1 - cosine between the two, on prose paragraphs of the
Python documentation (none of `hpu quality`'s built-in texts, which judge it).

Per text and layer the top ``route_fraction`` of the tokens by score are routed, exactly as `hpu
quality` routes them (`golden_model.routing.route_topk`). The top-k has no gradient, so the row scale
is the hard choice in the forward pass with the gradient of a sigmoid around the top-k threshold
(a straight-through estimator): every token's score learns whether routing it would help, the
unrouted ones included. An encoder reads the whole text, so the choice need not be causal.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import torch

from golden_model.minilm import LinearRouter, MiniLM, embedding
from golden_model.routing import route_topk, routed_mask
from golden_model.texts import TEXTS
from hpu.errors import InputError
from training.data import PYDOC

# Paragraphs of prose, long enough to hold a few sentences, short enough for quick steps.
MIN_CHARS, MAX_CHARS = 200, 700
TEMPERATURE = 0.5   # of the surrogate's sigmoid, in standard deviations of a text's scores
# Inline markup reduced to its text: roles, literals, links, and emphasis (a star next to a word on
# both sides, so that "2 * 3" and *args stay prose).
_MARKUP = re.compile(r":[a-z:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`|``([^`]*)``|`([^`<]*?)(?:\s*<[^>]*>)?`_*"
                     r"|\*\*?([^*\s](?:[^*]*?[^*\s])?)\*\*?")


def paragraphs(root: Path, count: int, seed: int = 0) -> list[str]:
    """`count` prose paragraphs of the reStructuredText under `root` (no code, directives or tables),
    their inline markup reduced to its text, drawn at random by `seed`, none of them a built-in text."""
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "does not exist"
        raise InputError(f"no text to fit on: {root} {problem} (apt-get install python3.11-doc, as `make data` "
                         "does, or pass --text FOLDER of .rst/.txt files)")
    found = []
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".txt", ".rst") and p.is_file()):
        for block in path.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            lines = block.strip("\n").splitlines()
            if not lines or any(not line or line[0] in " \t.=-*#|+" or line.rstrip().endswith("::") for line in lines):
                continue
            text = _MARKUP.sub(lambda m: next(g for g in m.groups() if g is not None),
                               " ".join(line.strip() for line in lines))
            if MIN_CHARS <= len(text) <= MAX_CHARS and text not in TEXTS:
                found.append(text)
    if len(found) < count:
        raise InputError(f"{root} holds {len(found)} prose paragraphs of {MIN_CHARS}-{MAX_CHARS} characters; "
                         f"ask for at most that many (--texts)")
    return random.Random(seed).sample(found, count)


def straight_through(logits: torch.Tensor, route_fraction: float, temperature: float = TEMPERATURE) -> torch.Tensor:
    """(1, T) scores: (1, T) row scales, exactly the top-k's 0/1 in value and, in gradient, a sigmoid
    of each score's distance to the midpoint between the last routed and the first unrouted score, in
    standard deviations of the text's scores over `temperature`."""
    # The top-k ignores the scores' scale, so the optimizer may grow it; measured in the scores' own
    # spread, the sigmoid keeps its slope for every token (in raw units it flattened out for most).
    z = (logits - logits.mean()) / (logits.std() + 1e-6)
    hard = routed_mask(route_topk(logits.detach(), route_fraction), logits.shape[-1])
    if hard.all():
        threshold = z.detach().min() - temperature
    else:
        threshold = (z.detach()[hard].min() + z.detach()[~hard].max()) / 2
    soft = torch.sigmoid((z - threshold) / temperature)
    return hard.float() + (soft - soft.detach())


def start(model: MiniLM, route_fraction: float, seed: int = 0) -> LinearRouter:
    """The router a fit starts from: small random projections drawn by `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return LinearRouter(torch.randn(model.layers, model.hidden_size, generator=generator) * 0.02, route_fraction)


def fit(texts: list[str], route_fraction: float, steps: int, lr: float = 3e-3, temperature: float = TEMPERATURE,
        seed: int = 0, model: MiniLM | None = None, log=None) -> tuple[LinearRouter, list[float]]:
    """Fit one linear score a layer on `texts`, one text a step, passing through them in orders drawn
    by `seed`, MiniLM frozen, from `start`; returns the router and each step's loss (1 - the embedding
    cosine with the dense model)."""
    model = model or MiniLM()
    for p in model.model.parameters():
        p.requires_grad_(False)
    weight = start(model, route_fraction, seed).weight.requires_grad_()
    optimizer = torch.optim.Adam([weight], lr=lr)
    dense = {}
    shuffle = random.Random(seed)
    order: list[str] = []
    losses = []
    for step in range(steps):
        if not order:
            order = shuffle.sample(texts, len(texts))
        text = order.pop()
        if text not in dense:
            with torch.no_grad():
                dense[text] = embedding(model.hidden(text))
        rows = lambda layer, hidden: straight_through(hidden.float() @ weight[layer], route_fraction, temperature)
        loss = 1 - torch.dot(embedding(model.hidden(text, rows)), dense[text])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if log and (step + 1) % 100 == 0:
            log(f"step {step + 1}/{steps}: mean embedding cosine over the last 100 texts "
                f"{1 - sum(losses[-100:]) / 100:.4f}")
    return LinearRouter(weight.detach().clone(), route_fraction), losses


ROUTER, RESULT = "router.npz", "fit.json"


def fit_to_folder(out: str | Path, route_fraction: float, steps: int, texts: int, seed: int = 0, lr: float = 3e-3,
                  root: Path | None = None, log=None) -> dict[str, Path]:
    """`fit` on `texts` paragraphs under `root` (by default the Python documentation's sources), written
    to `out` as ROUTER (for `hpu quality --router`)
    and RESULT (the settings and the fit's curve: the mean embedding cosine of each 100 steps' texts)."""
    from hpu.config import HPUConfig
    from hpu.files import claim, write_json

    route_fraction = HPUConfig(route_fraction=route_fraction).route_fraction   # checked as `hpu quality` checks it
    root = root or PYDOC
    chosen = paragraphs(root, texts, seed)
    out = Path(out)
    with claim(out, "output folder", (ROUTER, RESULT)):
        router, losses = fit(chosen, route_fraction, steps, lr=lr, seed=seed, log=log)
        router.save(out / ROUTER)
        curve = [{"steps": end, "embedding_cos_mean": 1 - sum(losses[end - 100:end]) / 100}
                 for end in range(100, steps + 1, 100)]
        write_json(out / RESULT, {"route_fraction": route_fraction, "steps": steps, "lr": lr, "seed": seed,
                                  "temperature": TEMPERATURE, "texts": texts, "text_root": str(root),
                                  "curve": curve})
    return {"router": out / ROUTER, "result": out / RESULT}
