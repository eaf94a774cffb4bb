import math

from .module import Module, check_grad, check_input


class Flatten(Module):
    """(N, d1, d2, ...) -> (N, d1*d2*...), a view; like torch.nn.Flatten(start_dim=1)."""

    def forward(self, x):
        if getattr(x, "ndim", 0) < 2:
            check_input(self, x, (None, None))
        x = check_input(self, x, (None,) * x.ndim)
        if self.training:
            self._saved = (x.shape, x.dtype)
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_out):
        shape, dtype = self._saved_for_backward()
        flat = (shape[0], math.prod(shape[1:]))
        return check_grad(self, grad_out, flat, dtype).reshape(shape)


class Sequential(Module):
    """Layers applied in order; children are named "0", "1", ... as in PyTorch."""

    def __init__(self, *layers):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: argument {i} is not a fastnet layer: {layer!r}")
            setattr(self, str(i), layer)

    @property
    def layers(self):
        return self.children()

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def append(self, layer):
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential.append: not a fastnet layer: {layer!r}")
        setattr(self, str(len(self)), layer)
        return self

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, grad_out):
        for layer in reversed(self.layers):
            grad_out = layer.backward(grad_out)
        return grad_out

    def __repr__(self):
        inner = "".join(f"\n  ({i}): " + repr(layer).replace("\n", "\n  ")
                        for i, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)"
