"""Speculative decoding: the decoder (vision, prefill with a guess, verify rounds, result),
its accept rules, the output grammar and the drafters that propose tokens."""
