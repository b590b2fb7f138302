"""Test-wide settings: quiet TensorFlow, CPU only, a shared JAX compilation cache."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session')
def repo_root() -> str:
  return REPO


@pytest.fixture(scope='session')
def shapes_cache(tmp_path_factory) -> str:
  """One cache folder for the `shapes` data the tests generate."""
  return str(tmp_path_factory.getbasetemp() / 'shapes_cache')
