"""Conv2D's dilation and groups (torch.nn.Conv2d's): the layer on both devices against the
reference, PyTorch's weight shape and init, the argument checks, and files (the new fields
round-trip; a file written before them loads with dilation 1, groups 1; what a file may
hold is bounded). PyTorch's own numbers: tests/test_torch_conv.py."""
import numpy as np
import pytest

import fastnet
from fastnet.device import to_numpy
from fastnet.errors import FileFormatError
from fastnet.layers import Conv2D, ReLU, Sequential
from tests import reference as ref
from tests.robustness.test_untrusted_files import model_file


@pytest.mark.parametrize("c, o, kw", [
    (4, 4, dict(groups=2, dilation=(2, 1), stride=(1, 2), padding=(2, 1))),
    (2, 4, dict(groups=2, padding=1, activation="relu"))], ids=["groups2-dilated", "depthwise-x2-relu"])
def test_layer_matches_reference(rng, dtype, close, device, to_dev, c, o, kw):
    if device == "cuda" and ("dilation" in kw or dtype == np.float64):
        pytest.skip("the simulator's time: tests/test_torch_conv.py runs dilation and groups "
                    "through the layer on CUDA")
    fastnet.manual_seed(3)
    layer = Conv2D(c, o, 3, **kw).to(dtype).to(device)
    w, b = to_numpy(layer.weight.data), to_numpy(layer.bias.data)
    geo = (layer.stride, layer.padding)
    opts = dict(dilation=layer.dilation, groups=layer.groups)
    act = kw.get("activation")
    x = rng.standard_normal((1, c, 5, 4)).astype(dtype)
    y = layer(to_dev(x))
    close(y, ref.conv2d_forward(x, w, b, *geo, act, **opts), scale=3, err_msg="y")
    y = to_numpy(y)
    dout = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(to_dev(dout))
    rdx, rdw, rdb = ref.conv2d_backward(dout, x, w, *geo, y, act, **opts)
    close(dx, rdx, scale=3, err_msg="dx")
    close(layer.weight.grad, rdw, scale=10, err_msg="dw")
    close(layer.bias.grad, rdb, scale=10, err_msg="db")


def test_weight_shape_and_init_as_pytorch():
    """weight (out, in / groups, kh, kw), U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in =
    in / groups * kh * kw, bias the same bound."""
    fastnet.manual_seed(0)
    layer = Conv2D(16, 32, 3, groups=16)
    assert layer.weight.shape == (32, 1, 3, 3) and layer.bias.shape == (32,)
    bound = 1 / 3  # fan_in 9
    for p in (layer.weight.data, layer.bias.data):
        assert np.abs(p).max() <= bound and np.abs(p).max() > 0.8 * bound
    assert Conv2D(6, 4, (3, 2), groups=2).weight.shape == (4, 3, 3, 2)
    assert Conv2D(3, 4, 3).config()["groups"] == 1 and Conv2D(3, 4, 3).dilation == (1, 1)


@pytest.mark.parametrize("make, exc, match", [
    (lambda: Conv2D(6, 4, 3, groups=4), ValueError,
     r"Conv2D: in_channels must be divisible by groups, got in_channels=6 and groups=4"),
    (lambda: Conv2D(4, 6, 3, groups=4), ValueError, r"out_channels must be divisible by groups"),
    (lambda: Conv2D(4, 4, 3, groups=0), ValueError, r"Conv2D: groups must be a positive int, got 0"),
    (lambda: Conv2D(4, 4, 3, groups=2.0), TypeError, r"groups must be a positive int, got 2.0"),
    (lambda: Conv2D(4, 4, 3, dilation=0), ValueError,
     r"Conv2D: dilation must be an int or a pair of ints >= 1, got 0"),
    (lambda: Conv2D(4, 4, 3, dilation=(2, 1, 1)), TypeError, r"dilation"),
])
def test_bad_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_input_smaller_than_the_dilated_window():
    layer = Conv2D(2, 2, 3, dilation=(3, 1), groups=2)
    with pytest.raises(ValueError, match=r"input of 6x8 is smaller than the 3x3 window dilated "
                                         r"by 3x1 with padding 0x0"):
        layer(np.zeros((1, 2, 6, 8), np.float32))
    assert layer(np.zeros((1, 2, 7, 8), np.float32)).shape == (1, 2, 1, 6)


def test_inference_plan_is_the_layers_result(rng):
    """eval mode on the CPU runs a plan (a ReLU fused into the conv): the same bits."""
    model = Sequential(Conv2D(3, 6, 3, padding=2, dilation=2, groups=3), ReLU(),
                       Conv2D(6, 6, 3, groups=6, stride=2)).eval()
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    first, planned = model(x), model(x)
    want = np.maximum(model[0].forward(x), 0)
    np.testing.assert_array_equal(first, planned)
    np.testing.assert_array_equal(planned, model[2].forward(want))


def test_files_keep_dilation_and_groups(tmp_path, rng):
    model = Sequential(Conv2D(4, 8, 3, padding=2, dilation=2, groups=4, activation="relu"),
                       Conv2D(8, 4, (1, 3), groups=2))
    fastnet.save(model, tmp_path / "m.npz")
    loaded = fastnet.load(tmp_path / "m.npz")
    assert [m.config() for m in loaded] == [m.config() for m in model]
    x = rng.standard_normal((1, 4, 7, 7)).astype(np.float32)
    np.testing.assert_array_equal(loaded.eval()(x), model.eval()(x))


def test_a_file_from_before_dilation_and_groups_loads(tmp_path):
    desc = {"type": "Conv2D", "config": {"in_channels": 2, "out_channels": 3, "kernel_size": [3, 3],
                                         "stride": [1, 1], "padding": [1, 1], "bias": False,
                                         "activation": None}}
    w = np.arange(54, dtype=np.float32).reshape(3, 2, 3, 3)
    layer = fastnet.load(model_file(tmp_path / "old.npz", desc, {"weight": w}))
    assert layer.dilation == (1, 1) and layer.groups == 1
    np.testing.assert_array_equal(layer.weight.data, w)


@pytest.mark.parametrize("config, match", [
    (dict(groups=2, in_channels=3), r"model.config.groups: in_channels=3 is not divisible by groups=2"),
    (dict(groups=0), r"model.config.groups: expected a positive int"),
    (dict(dilation=[65, 1]), r"model.config.dilation: expected a dilation of at most 64"),
    (dict(dilation=[2, 0]), r"model.config.dilation: expected an int or a pair of ints >= 1"),
    (dict(dilation=[2, 1], padding=[6, 1]),
     r"padding \[6, 1\] is larger than the dilated kernel's span \[5, 3\]"),
])
def test_files_with_bad_options_are_refused(tmp_path, config, match):
    desc = {"type": "Conv2D", "config": {"in_channels": 4, "out_channels": 4, "kernel_size": 3,
                                         "bias": False, **config}}
    w = np.zeros((4, 2, 3, 3), np.float32)
    with pytest.raises(FileFormatError, match=match):
        fastnet.load(model_file(tmp_path / "bad.npz", desc, {"weight": w}))


def test_a_dilated_file_may_pad_by_its_span(tmp_path):
    desc = {"type": "Conv2D", "config": {"in_channels": 4, "out_channels": 4, "kernel_size": 3,
                                         "bias": False, "dilation": 2, "padding": 5, "groups": 2}}
    layer = fastnet.load(model_file(tmp_path / "ok.npz", desc,
                                    {"weight": np.zeros((4, 2, 3, 3), np.float32)}))
    assert (layer.padding, layer.dilation, layer.groups) == ((5, 5), (2, 2), 2)
    with pytest.raises(ValueError, match="cannot write this model"):
        fastnet.save(Conv2D(4, 4, 3, dilation=65), tmp_path / "far.npz")


def test_pytorch_argument_order():
    """nn.Conv2d(in, out, k, stride, padding, dilation, groups, bias) positionally."""
    layer = Conv2D(4, 8, 3, 1, 2, 2, 4, False)
    assert (layer.padding, layer.dilation, layer.groups, layer.bias) == ((2, 2), (2, 2), 4, None)
