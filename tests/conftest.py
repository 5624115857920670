import os
import random

import pytest
from hypothesis import settings

settings.register_profile("ci", max_examples=150, deadline=None, derandomize=False, print_blob=True)
settings.load_profile("ci")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def seed(request):
    """A fresh seed per randomized test, printed so a failure can be replayed with HPU_SEED."""
    value = int(os.environ.get("HPU_SEED", random.SystemRandom().randrange(2**32)))
    print(f"\n{request.node.nodeid}: seed {value} (replay with HPU_SEED={value})")
    return value
