"""Seeds and hypothesis settings: `make test` is deterministic, `make fuzz` draws fresh seeds.

- Default (CI): each randomized test's seed is fixed, derived from its test id, so the same code
  always gets the same verdict; hypothesis is derandomized and keeps no example database.
- HPU_SEED=N: every randomized test uses N (to replay a failure).
- HPU_FUZZ=1 (`make fuzz`): fresh seeds from the OS and many more hypothesis examples.
Every seed used is listed at the end of the run.
"""

import os
import random
import zlib

import pytest
from hypothesis import settings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = os.environ.get("HPU_FUZZ") == "1"

settings.register_profile("ci", max_examples=150, deadline=None, derandomize=True, database=None, print_blob=True)
settings.register_profile("fuzz", max_examples=int(os.environ.get("HPU_FUZZ_EXAMPLES", "2000")), deadline=None,
                          derandomize=False, database=None, print_blob=True)
settings.load_profile("fuzz" if FUZZ else "ci")


@pytest.fixture
def seed(request):
    """The seed of a randomized test: fixed per test, HPU_SEED if set, fresh under HPU_FUZZ=1."""
    if "HPU_SEED" in os.environ:
        value = int(os.environ["HPU_SEED"])
    elif FUZZ:
        value = random.SystemRandom().randrange(2**32)
    else:
        value = zlib.crc32(request.node.nodeid.encode())
    request.node.user_properties.append(("seed", value))
    print(f"\n{request.node.nodeid}: seed {value} (replay with HPU_SEED={value})")
    return value


def pytest_terminal_summary(terminalreporter):
    seeds = sorted({(r.nodeid, v) for reports in terminalreporter.stats.values() for r in reports
                    if hasattr(r, "user_properties") for k, v in r.user_properties if k == "seed"})
    if not seeds:
        return
    kind = "fresh (HPU_FUZZ=1)" if FUZZ else "HPU_SEED" if "HPU_SEED" in os.environ else "fixed per test"
    terminalreporter.section(f"seeds: {kind}")
    for nodeid, value in seeds:
        terminalreporter.write_line(f"{value:>10}  {nodeid}")
