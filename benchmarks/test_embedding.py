"""Embedding lookup of 128x64 token ids into a 10000x128 table: forward (a row gather) and
backward (the deterministic scatter-add into the weight's gradient; NumPy's twin is
np.add.at, PyTorch's autograd through nn.Embedding). ONNX Runtime runs the forward as a
Gather."""
FAMILY = "embedding"


def test_embedding(run_case, case, impl):
    run_case(case, impl)
