"""The names of the stimulus sources, without the torch that draws their rows (golden_model.sources),
so that the command line can list them without loading it."""

SOURCES = ("random", "adversarial", "minilm", "minilm-long")
FILE_SUFFIXES = (".npz", ".pt")
