"""MaxPool2D, AvgPool2D and LPPool2D (p = 2) (2x2) on 128x32x32x32 and 128x6x28x28: forward and backward."""
FAMILY = "pool"


def test_pool(run_case, case, impl):
    run_case(case, impl)
