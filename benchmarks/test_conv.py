"""Conv2D forward and backward: the LeNet-5 and VGG-small layers and a stride-2 one."""
FAMILY = "conv"


def test_conv(run_case, case, impl):
    run_case(case, impl)
