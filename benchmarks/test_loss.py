"""Softmax cross-entropy, 128x10 and 1024x1000: loss and gradient (fastnet fuses them)."""
FAMILY = "loss"


def test_loss(run_case, case, impl):
    run_case(case, impl)
