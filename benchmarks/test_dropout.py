"""Dropout (p 0.5) in training mode on 128x4096: forward (mask drawn and applied) and
backward. Each twin draws its own mask when timed; the twins are checked against fastnet
with fastnet's mask (tests/test_bench.py checks their own masks' statistics)."""
FAMILY = "dropout"


def test_dropout(run_case, case, impl):
    run_case(case, impl)
