"""Thin layer classes over fastnet's kernels, with PyTorch's conventions."""
from .activation import LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from .container import Flatten, Sequential
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .module import Module, Parameter
from .pool import AvgPool2D, MaxPool2D
from .recurrent import GRU, LSTM, RNN, ImageRows, LastHidden

__all__ = [
    "Module", "Parameter", "Dense", "Conv2D", "MaxPool2D", "AvgPool2D", "ReLU", "LeakyReLU",
    "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Flatten", "Dropout", "Sequential",
    "RNN", "LSTM", "GRU", "ImageRows", "LastHidden",
]
