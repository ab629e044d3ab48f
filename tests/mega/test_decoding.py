"""Cached decoding of MegaForCausalLM equals the full forward pass, step by step, where HF's does not.

For each attention function (no chunking here; see test_decoding_chunked.py): prefill a prompt, then feed one token
at a time through the cache (with spare cache slots); every step's logits must equal (1e-5) our full pass and HF's
full pass at that position. HF's own incremental decoding is run beside it: with laplace / relu2 it disagrees with
its own full pass (it normalises the scores by the padding count instead of the causal count).
"""

from __future__ import annotations

import pytest

from tests.mega.decoding_loops import CASES, check_decoding


@pytest.mark.parametrize("name", [n for n in CASES if not n.startswith("chunk")])
def test_cached_decoding_equals_full_pass(tmp_path, name):
    check_decoding(tmp_path, name)
