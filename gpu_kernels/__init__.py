"""Triton kernels. They run on a GPU where there is one, and on Triton's CPU interpreter (how CI
tests them) otherwise; the choice must be made before any kernel is defined, so it is made here."""

import os

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
