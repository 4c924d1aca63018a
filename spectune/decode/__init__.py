"""Our decoding engine: plain and speculative decoding over transformers model forwards.

sampling.py     logits processing (temperature, top-k, top-p, repetition penalty) and picking
speculative.py  verification of drafted tokens: where draft tokens are accepted or rejected
drafters.py     who proposes: prompt look-up (n-grams), the target's first N layers, a small model
engine.py       the loop, batched: prefill, draft, verify, cache rollback, stop conditions, metrics
ragged_cache.py rows of different lengths (and acceptances) in one KV cache
text.py         token ids -> streamed text, stop strings
draft_length.py how many tokens to draft next (free drafters; cost-aware for draft models)
beam.py         beam search
"""
