import pytest


@pytest.fixture(autouse=True)
def kernel_build():
    """Overrides tests/kernels/conftest.py's serial / parallel parametrisation: the
    intrinsics and their twins are not parallel kernels."""
    return "none"
