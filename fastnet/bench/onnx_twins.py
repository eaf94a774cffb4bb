"""The same maths in ONNX Runtime (float32, CPU): an ONNX graph of the case's spec and
parameters, built with ``onnx.helper``, run by an ``InferenceSession`` as a program that
serves a model runs it. Only for the cases with ``case.ort`` (inference, and the forward
of layers that compute the same in eval mode). Imported only in the twins' worker process
(worker.py), onnxruntime first there; ``set_threads`` makes the session use as many
intra-op threads as Numba does in the fastnet process. Needs the ``bench`` extra.
"""
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from .cases import Bench, conv_bias, conv_dilation, conv_groups, key_prefix, trace

# the newest opset the installed onnx knows (onnx 1.23's 28 runs on onnxruntime 1.32), with
# the oldest IR version that carries it, so that an onnxruntime older than onnx reads it
OPSET = onnx.defs.onnx_opset_version()
_THREADS = {"intra_op": 1}
_SIMPLE = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "flatten": "Flatten"}


def set_threads(n):
    _THREADS["intra_op"] = n


def session_options():
    """One intra-op pool of as many threads as Numba's, no inter-op parallelism (a
    sequential graph), every graph optimisation on."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = _THREADS["intra_op"]
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


class _Graph:
    """The nodes and initializers of a graph, added one spec entry at a time."""

    def __init__(self, params):
        self.params, self.nodes, self.initializers = params, [], []

    def _name(self):
        return f"t{len(self.nodes)}"

    def node(self, op, inputs, **attrs):
        out = self._name()
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def weight(self, key):
        self.initializers.append(numpy_helper.from_array(self.params[key], key))
        return key

    def relu(self, x, activation):
        return self.node("Relu", [x]) if activation == "relu" else x

    def add(self, spec, x, outer=""):
        """The output of ``spec``'s layers on ``x``."""
        for i, s in enumerate(spec):
            at = key_prefix(spec, i, outer)
            kind = s[0]
            if kind == "dense":
                x = self.relu(self.node("Gemm", [x, self.weight(at + "weight"),
                                                 self.weight(at + "bias")], transB=1), s[3])
            elif kind == "conv":
                k, stride, pad = s[3:6]
                inputs = [x, self.weight(at + "weight")]
                inputs += [self.weight(at + "bias")] if conv_bias(s) else []
                x = self.relu(self.node("Conv", inputs, kernel_shape=[k, k], strides=[stride] * 2,
                                        pads=[pad] * 4, group=conv_groups(s),
                                        dilations=[conv_dilation(s)] * 2), s[6])
            elif kind in ("maxpool", "avgpool"):
                op = "MaxPool" if kind == "maxpool" else "AveragePool"
                x = self.node(op, [x], kernel_shape=[s[1]] * 2, strides=[s[1]] * 2)
            elif kind == "lppool":
                x = self.node("LpPool", [x], p=int(s[1]), kernel_shape=[s[2]] * 2,
                              strides=[s[2]] * 2)
            elif kind == "hardsigmoid":  # PyTorch's: alpha 1/6, beta 1/2
                x = self.node("HardSigmoid", [x], alpha=1 / 6, beta=0.5)
            elif kind == "softmax":
                x = self.node("Softmax", [x], axis=-1)
            elif kind == "layernorm":  # PyTorch's eps
                x = self.node("LayerNormalization", [x, self.weight(at + "weight"),
                                                     self.weight(at + "bias")],
                              axis=-1, epsilon=1e-5)
            elif kind in _SIMPLE:
                x = self.node(_SIMPLE[kind], [x])
            else:
                raise ValueError(f"no ONNX twin for a {kind!r} layer")
        return x


def model(spec, params, x_shape):
    """The ONNX model of ``spec`` with ``params`` on float32 input "x" of ``x_shape``."""
    graph = _Graph(params)
    y = graph.add(spec, "x")
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))
    y_info = helper.make_tensor_value_info(y, TensorProto.FLOAT, list(trace(spec, x_shape)[-1][0]))
    opsets = [helper.make_opsetid("", OPSET)]
    proto = helper.make_model(helper.make_graph(graph.nodes, "fastnet-bench", [x_info], [y_info],
                                                graph.initializers), opset_imports=opsets)
    proto.ir_version = helper.find_min_ir_version_for(opsets)  # one this onnxruntime reads
    onnx.checker.check_model(proto, full_check=True)
    return proto


def inference(spec, params, x):
    session = ort.InferenceSession(model(spec, params, x.shape).SerializeToString(),
                                   sess_options=session_options(),
                                   providers=["CPUExecutionProvider"])
    feeds = {"x": x}
    return Bench(run=lambda: session.run(None, feeds)[0], outputs=lambda y: {"y": y})


layer_forward = inference  # a layer's forward, where eval mode computes the same (case.ort)


def embedding_forward(weight, indices):
    """A Gather of the table's rows by int64 ids (N, T) -> (N, T, D)."""
    gather = helper.make_node("Gather", ["weight", "ids"], ["y"], axis=0)
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, list(indices.shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [*indices.shape, weight.shape[1]])
    opsets = [helper.make_opsetid("", OPSET)]
    proto = helper.make_model(
        helper.make_graph([gather], "fastnet-bench", [ids], [y],
                          [numpy_helper.from_array(weight, "weight")]),
        opset_imports=opsets)
    proto.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), sess_options=session_options(),
                                   providers=["CPUExecutionProvider"])
    feeds = {"ids": indices}
    return Bench(run=lambda: session.run(None, feeds)[0], outputs=lambda y: {"y": y})
