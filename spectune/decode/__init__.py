"""Our decoding engine: plain and speculative decoding over transformers model forwards.

sampling.py     logits processing (temperature, top-k, top-p, repetition penalty) and picking
speculative.py  verification of drafted tokens: where draft tokens are accepted or rejected
drafters.py     who proposes: prompt look-up (n-grams), the target's first N layers, a small model
engine.py       the loop: prefill, draft, verify, cache rollback, stop conditions, metrics
"""
