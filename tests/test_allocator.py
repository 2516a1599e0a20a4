"""The glibc allocator tuning the decoder applies (model/allocator.py)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

PROBE = "from adgen.model.allocator import tune_allocator as t; print(t(), t())"


def run_probe(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "ADGEN_TUNE_MALLOC"}
    if env_value is not None:
        env["ADGEN_TUNE_MALLOC"] = env_value
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout


def test_thresholds_are_raised_once_per_process_on_glibc() -> None:
    assert run_probe(None).split() == ["True", "True"]


def test_the_switch_leaves_glibc_defaults_alone() -> None:
    assert run_probe("0").split() == ["False", "False"]


DECODE_REPEATEDLY = """
import resource, sys, torch
from adgen.index.trie_arrays import TrieArrays
from adgen.model.decoding import ConstrainedBeamSearch
from adgen.model.lm import LMConfig, build_lm
torch.manual_seed(0)
torch.set_num_threads(1)
search = ConstrainedBeamSearch(build_lm(LMConfig(vocab_size=4096, hidden_size=128, num_layers=2, num_heads=2)))
items = [[4000 + a, 4032 + b, 4064 + c] for a in range(32) for b in range(32) for c in range(16)]
trie = TrieArrays.from_sequences(items, list(range(len(items))))
prompts = torch.randint(3, 3000, (16, 200)).tolist()
search.generate(prompts, trie, k=20)  # warm-up: two calls
search.generate(prompts, trie, k=20)
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    search.generate(prompts, trie, k=20)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults))
"""


def test_a_tuned_decoder_stops_faulting_in_fresh_pages_for_its_large_buffers() -> None:
    """The point of the tuning: the multi-MB buffers a decode allocates and frees are reused from the heap on
    the next call instead of being unmapped and faulted in again."""

    def faults(switch: str) -> int:
        env = {**os.environ, "ADGEN_TUNE_MALLOC": switch}
        out = subprocess.run(
            [sys.executable, "-c", DECODE_REPEATEDLY], env=env, capture_output=True, text=True, check=True
        )
        return int(out.stdout.split()[-1])

    untuned, tuned = faults("0"), faults("1")
    assert untuned > 1000, f"glibc's defaults no longer fault here ({untuned}): the tuning may be moot"
    assert tuned < untuned / 4, (untuned, tuned)  # measured: 0-2.3k against 17-26k over the three calls
