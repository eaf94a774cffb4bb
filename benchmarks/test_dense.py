"""Dense layer with fused ReLU, 128x784->256 and 128x4096->256: forward and backward."""
FAMILY = "dense"


def test_dense(run_case, case, impl):
    run_case(case, impl)
