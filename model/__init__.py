"""Encoder, tokenizer, prompts, causal LM, training, DPO, constrained decoding, metrics.

Knows nothing of Kafka, Faust or Redis.
"""
