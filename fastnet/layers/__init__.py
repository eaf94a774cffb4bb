"""Thin layer classes over fastnet's kernels, with PyTorch's conventions."""
from .activation import Hardsigmoid, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from .container import Flatten, Residual, Sequential
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .embedding import Embedding
from .module import Buffer, Module, Parameter
from .norm import BatchNorm1D, BatchNorm2D, LayerNorm
from .pool import AvgPool2D, GlobalAvgPool2D, LPPool2D, MaxPool2D
from .recurrent import GRU, LSTM, RNN, ImageRows, LastHidden

__all__ = [
    "Module", "Parameter", "Dense", "Conv2D", "MaxPool2D", "AvgPool2D", "ReLU", "LeakyReLU",
    "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Flatten", "Dropout", "Sequential",
    "Buffer", "BatchNorm1D", "BatchNorm2D", "LayerNorm", "GlobalAvgPool2D", "Residual",
    "RNN", "LSTM", "GRU", "ImageRows", "LastHidden", "Hardsigmoid", "LPPool2D", "Embedding",
]
