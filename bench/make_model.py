"""Writes a random BLOOM of the given shape with transformers' save_pretrained (safetensors), once, for the bench.

  python bench/make_model.py OUT_DIR hidden n_layer n_head vocab
"""
import sys

import torch
from transformers import BloomConfig, BloomForCausalLM

out, hidden, n_layer, n_head, vocab = sys.argv[1], *map(int, sys.argv[2:6])
torch.manual_seed(0)
# No eos/pad ids: generation then never stops early, so both sides decode the same number of tokens.
config = BloomConfig(hidden_size=hidden, n_layer=n_layer, n_head=n_head, vocab_size=vocab, bos_token_id=None,
                     eos_token_id=None, pad_token_id=None)
model = BloomForCausalLM(config).to(torch.float32)
model.save_pretrained(out)
print(f"wrote {out}: {sum(p.numel() for p in model.parameters()):,} parameters")
