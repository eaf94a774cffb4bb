"""Writes torch_norm.npz, the PyTorch side of tests/test_torch_norm.py: a small ResNet-like
net (BatchNorm2d, a residual block with an identity and one with a projection shortcut,
global average pooling, BatchNorm1d) in float64.

Run by hand where PyTorch is installed (the test suite itself never needs torch):
    python tests/data/make_torch_norm.py
"""
import os

import numpy as np
import torch
from torch import nn

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)


class Residual(nn.Module):
    """fastnet.layers.Residual's structure: out = block(x) + (shortcut(x) or x)."""

    def __init__(self, block, shortcut=None):
        super().__init__()
        self.block = block
        self.shortcut = shortcut

    def forward(self, x):
        return self.block(x) + (x if self.shortcut is None else self.shortcut(x))


class GlobalAvgPool(nn.Module):
    """fastnet.layers.GlobalAvgPool2D: adaptive average pooling to 1x1, flattened."""

    def forward(self, x):
        return nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)


def model():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                               nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, bias=False),
                               nn.BatchNorm2d(4))),
        nn.ReLU(),
        Residual(nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False),
                               nn.BatchNorm2d(6), nn.ReLU(),
                               nn.Conv2d(6, 6, 3, padding=1, bias=False),
                               nn.BatchNorm2d(6, momentum=None)),
                 nn.Sequential(nn.Conv2d(4, 6, 1, stride=2, bias=False), nn.BatchNorm2d(6))),
        nn.ReLU(),
        GlobalAvgPool(),
        nn.Linear(6, 5), nn.BatchNorm1d(5, momentum=0.3), nn.ReLU(), nn.Linear(5, 3),
    )


net = model()
with torch.no_grad():  # BN parameters and statistics away from their defaults
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_()
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(5)

out = {f"state.{k}": v.detach().numpy().copy() for k, v in net.state_dict().items()}
x = torch.randn(4, 2, 7, 7, requires_grad=True)  # odd: the stride-2 stage gives 4x4
labels = torch.tensor([0, 2, 1, 2])
net.train()
logits = net(x)
loss = nn.functional.cross_entropy(logits, labels)
loss.backward()
out.update(x=x.detach().numpy(), labels=labels.numpy(), logits=logits.detach().numpy(),
           loss=np.array(loss.item()), dx=x.grad.numpy())
out.update({f"grad.{k}": p.grad.numpy().copy() for k, p in net.named_parameters()})

# a second training step (plain SGD), then the state (running statistics included)
opt = torch.optim.SGD(net.parameters(), lr=0.1)
opt.step()
opt.zero_grad()
x2 = torch.randn(4, 2, 7, 7)
nn.functional.cross_entropy(net(x2), labels).backward()
opt.step()
out["x2"] = x2.numpy()
out.update({f"state2.{k}": v.detach().numpy().copy() for k, v in net.state_dict().items()})
net.eval()
with torch.no_grad():
    out["eval_logits"] = net(x2).numpy()

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_norm.npz")
np.savez(path, **out)
print(f"wrote {path} with torch {torch.__version__}: {len(out)} arrays")
