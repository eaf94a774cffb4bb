"""Whole training steps, batch 128 (forward, loss, backward, SGD-momentum update) of the
MLP 784-256-256-10, LeNet-5, VGG-small and ResNet-small; and the character model's step,
batch 64 windows of 100 characters (embedding, 2-layer LSTM of 256, head at every
position, sequence cross-entropy, Adam)."""
FAMILY = "train"


def test_training_step(run_case, case, impl):
    run_case(case, impl)
