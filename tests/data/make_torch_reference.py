"""Writes torch_reference.npz, the PyTorch side of tests/test_torch_reference.py.

Run by hand where PyTorch is installed (the test suite itself never needs torch):
    python tests/data/make_torch_reference.py
Everything is float64 so the comparison tests fastnet's maths, not rounding.
"""
import os

import numpy as np
import torch
from torch import nn

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)


def model():
    # odd sizes, stride and padding per axis, both pools, every activation kind
    return nn.Sequential(
        nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0)), nn.ReLU(),
        nn.MaxPool2d(2, stride=1, padding=1),
        nn.Conv2d(3, 4, 2, padding=1), nn.Tanh(), nn.AvgPool2d((2, 3), stride=(2, 1)),
        nn.Flatten(), nn.Linear(4 * 3 * 5, 7), nn.Sigmoid(), nn.Linear(7, 6), nn.LeakyReLU(0.1),
        nn.Linear(6, 5),
    )


net = model()
x = torch.randn(3, 2, 7, 6, requires_grad=True)
labels = torch.tensor([0, 4, 2])
out = {f"state.{k}": v.detach().numpy().copy() for k, v in net.state_dict().items()}
logits = net(x)
loss = nn.functional.cross_entropy(logits, labels)
loss.backward()
out.update(x=x.detach().numpy(), labels=labels.numpy(), logits=logits.detach().numpy(),
           loss=np.array(loss.item()), dx=x.grad.numpy())
out.update({f"grad.{k}": p.grad.numpy().copy() for k, p in net.named_parameters()})
out["softmax"] = torch.softmax(logits, 1).detach().numpy()
out["log_softmax"] = torch.log_softmax(logits, 1).detach().numpy()
target = torch.randn(3, 5)
out["mse_target"] = target.numpy()
out["mse"] = np.array(nn.functional.mse_loss(logits, target).item())

optimizers = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.01),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
}
for name, make in optimizers.items():
    trained = model()
    trained.load_state_dict(net.state_dict())
    opt = make(trained.parameters())
    for _ in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(trained(x.detach()), labels).backward()
        opt.step()
    out.update({f"{name}.{k}": v.detach().numpy().copy() for k, v in trained.state_dict().items()})

np.savez_compressed(os.path.join(os.path.dirname(__file__), "torch_reference.npz"), **out)
print("wrote", len(out), "arrays")
