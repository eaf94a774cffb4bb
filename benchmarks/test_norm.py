"""BatchNorm2D and BatchNorm1D in training mode (batch statistics, running statistics
updated): 128x32x16x16 images and 128x256 features, forward and backward."""
FAMILY = "norm"


def test_norm(run_case, case, impl):
    run_case(case, impl)
