"""Runs the project's command-line scripts (train.py, tools/*) the way a user does."""

import os
import subprocess
import sys


def run_script(repo: str, cache: str, script: str, *args: str, timeout: int = 500,
               env: dict[str, str] | None = None) -> str:
  """`python script *args` in the repo, sharing the tests' XLA compilation cache under
  `cache`, with `env` added to the environment; asserts it exits 0 and returns its log
  (stdout + stderr). XLA's optimization passes are off as in the whole suite
  (tests/conftest.py) unless `env` turns them on (JAX_DISABLE_MOST_OPTIMIZATIONS='0')."""
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2',
         'JAX_COMPILATION_CACHE_DIR': os.path.join(cache, 'xla'),
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0', **(env or {})}
  proc = subprocess.run([sys.executable, script, *args], cwd=repo, env=env,
                        capture_output=True, text=True, timeout=timeout)
  log = proc.stdout + proc.stderr
  assert proc.returncode == 0, log[-6000:]
  return log
