"""CUDA elementwise kernels: add(out, a, b): out = a + b, and accumulate(out, x): out += x;
bitwise as the CPU kernels."""
import numpy as np
import pytest

from fastnet.kernels import kernel

from ..cases import ELEMENTWISE_SHAPES, cases_for


@pytest.mark.parametrize("shape", cases_for(ELEMENTWISE_SHAPES, "cuda"), ids=str)
def test_accumulate_adds_in_place(rng, dtype, dev, host, shape):
    """accumulate(out, x) adds x into out (twice = 2x), leaving x alone, bitwise as the CPU."""
    out = rng.standard_normal(shape).astype(dtype)
    x = rng.standard_normal(shape).astype(dtype)
    d_out, d_x = dev(out), dev(x)
    kernel("accumulate", "cuda")(d_out, d_x)
    kernel("accumulate", "cuda")(d_out, d_x)
    cpu = out.copy()
    kernel("accumulate", "cpu")(cpu, x)
    kernel("accumulate", "cpu")(cpu, x)
    np.testing.assert_array_equal(host(d_out), (out + x) + x)
    np.testing.assert_array_equal(host(d_out), cpu)
    np.testing.assert_array_equal(host(d_x), x)


@pytest.mark.parametrize("shape", cases_for(ELEMENTWISE_SHAPES, "cuda"), ids=str)
def test_add_matches_cpu(rng, dtype, dev, host, garbage, shape):
    """add(out, a, b) overwrites out with a + b, bitwise as the CPU; inputs untouched."""
    a = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape).astype(dtype)
    d_a, d_b, out = dev(a), dev(b), garbage(shape, dtype)
    kernel("add", "cuda")(out, d_a, d_b)
    cpu = np.empty_like(a)
    kernel("add", "cpu")(cpu, a, b)
    np.testing.assert_array_equal(host(out), cpu)
    np.testing.assert_array_equal(host(d_a), a)
    np.testing.assert_array_equal(host(d_b), b)


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 5), (3, 7, 2), (1, 33, 4)], ids=str)
def test_swap_axes12_is_the_transposed_copy(rng, dtype, dev, host, garbage, shape):
    """(A, B, C) -> (A, C, B), every element written (the (N, C, T) cross-entropy's layout
    change; not an op of the table)."""
    from fastnet.kernels.cuda.elementwise import swap_axes12

    x = rng.standard_normal(shape).astype(dtype)
    out = garbage((shape[0], shape[2], shape[1]), dtype)
    swap_axes12(out, dev(x))
    np.testing.assert_array_equal(host(out), x.transpose(0, 2, 1))
