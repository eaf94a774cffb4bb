"""Inference: the eval-mode forward of LeNet-5 (1x28x28) at batch 1 and 64 and of the MLP
784-256-256-10 at batch 1, against NumPy, PyTorch (eval, ``torch.inference_mode()``) and
ONNX Runtime."""
FAMILY = "inference"


def test_inference(run_case, case, impl):
    run_case(case, impl)
