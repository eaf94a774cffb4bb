"""One optimizer step over the VGG-small parameters: SGD with momentum 0.9, and Adam."""
FAMILY = "optim"


def test_optim(run_case, case, impl):
    run_case(case, impl)
