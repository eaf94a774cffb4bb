"""ReLU, sigmoid, tanh, hardsigmoid on 128x32x32x32 and softmax on 128x10 and 1024x1000: forward and
backward."""
FAMILY = "activation"


def test_activations(run_case, case, impl):
    run_case(case, impl)
