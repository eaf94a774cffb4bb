from ..kernels import _plan
from ._args import check_activation, check_spatial, pair, positive_int, window_size
from ._init import kaiming_uniform
from .dense import _FusedAffine
from .module import Parameter, _float_dtype, check_input


class Conv2D(_FusedAffine):
    """2-D convolution over NCHW input; weight (out, in / groups, kh, kw) as torch.nn.Conv2d.

    ``kernel_size``, ``stride``, ``padding`` and ``dilation`` are an int or an (h, w)
    pair; padding is zeros. ``groups`` splits the channels into groups convolved
    separately (in_channels and out_channels divisible by it; groups == in_channels is
    the depthwise conv, which has a fast path). ``activation`` (None, "relu", "sigmoid",
    "tanh") is fused into the epilogue, as in Dense. In training mode forward keeps a
    reference to its input for backward: do not modify that array in place before
    backward.
    """

    op = "conv2d"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, activation=None, dtype="float32"):
        self.in_channels = positive_int(in_channels, "in_channels", "Conv2D")
        self.out_channels = positive_int(out_channels, "out_channels", "Conv2D")
        self.kernel_size = pair(kernel_size, "kernel_size", "Conv2D", 1)
        self.stride = pair(stride, "stride", "Conv2D", 1)
        self.padding = pair(padding, "padding", "Conv2D", 0)
        self.dilation = pair(dilation, "dilation", "Conv2D", 1)
        self.groups = positive_int(groups, "groups", "Conv2D")
        for name, size in (("in_channels", self.in_channels), ("out_channels", self.out_channels)):
            if size % self.groups:
                raise ValueError(f"Conv2D: {name} must be divisible by groups, got {name}="
                                 f"{size} and groups={self.groups}")
        self.activation = check_activation(activation, "Conv2D")
        dtype = _float_dtype(dtype, "Conv2D")
        kh, kw = self.kernel_size
        cg = self.in_channels // self.groups
        fan_in = cg * kh * kw  # as PyTorch: the inputs one output sees
        self.weight = Parameter(kaiming_uniform((self.out_channels, cg, kh, kw), fan_in, dtype))
        self.bias = (Parameter(kaiming_uniform((self.out_channels,), fan_in, dtype)) if bias
                     else None)

    def config(self):
        # (a file written before dilation and groups existed loads with their defaults)
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride,
                "padding": self.padding, "dilation": self.dilation, "groups": self.groups,
                "bias": self.bias is not None, "activation": self.activation}

    def forward(self, x):
        w = self.weight.data
        x = check_input(self, x, (None, self.in_channels, None, None), w.dtype)
        oh, ow = check_spatial(self, x, self.kernel_size, self.stride, self.padding,
                               self.dilation)
        out = self.device.empty((x.shape[0], self.out_channels, oh, ow), w.dtype)
        return self._run_forward(x, out)

    def _geometry(self):
        return self.stride, self.padding

    def _options(self):
        if self.dilation == (1, 1) and self.groups == 1:
            return ()  # the kernels' defaults
        return self.dilation, self.groups

    def _plan_shape(self, shape):
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        dh, dw = self.dilation
        return (shape[0], self.out_channels, window_size(shape[2], kh, sh, ph, dh),
                window_size(shape[3], kw, sw, pw, dw))

    def _plan_run(self, shape, w, b, activation):
        conv = _plan("conv2d_forward", shape, w.shape, w.dtype, self.stride, self.padding,
                     activation, *self._options())

        def run(out, x):
            conv(out, x, w, b)
        return run
