"""Test-wide settings: quiet TensorFlow, CPU only, XLA without its optimization passes."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# The tests compile far more than they run (small arrays, a few dozen steps at most), and
# XLA's optimization passes cost more compile time than they save; the values they check
# do not depend on them. Subprocesses inherit it; tests/test_train_e2e.py turns them back
# on to train as users do.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session')
def repo_root() -> str:
  return REPO


@pytest.fixture(scope='session')
def shapes_cache(tmp_path_factory) -> str:
  """One cache folder for the `shapes` data the tests generate."""
  return str(tmp_path_factory.getbasetemp() / 'shapes_cache')
