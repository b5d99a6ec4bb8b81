"""From (prompt, response) pairs to scores: encode them into verifier token ids (`formatting`), run the scorer and
reduce each pair (`pipeline`, `scores`), over the whole response or a span of it (`spans`)."""
