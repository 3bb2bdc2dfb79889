"""train_core's public face: every name in __all__ resolves from `train_core` itself, and importing the package
(or its errors and schedule shapes) does not import torch."""

import subprocess
import sys

import pytest

import train_core


@pytest.mark.parametrize("name", train_core.__all__)
def test_every_public_name_resolves_from_the_package(name):
    assert getattr(train_core, name) is not None


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Trainer'"):
        train_core.Trainer


def test_importing_train_core_its_errors_and_its_shapes_does_not_import_torch():
    probe = ("import sys\n"
             "import train_core\n"
             "from train_core import SHAPES, FaultError, InputError, get_lr, sweep_shapes\n"
             "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"  # torch alone takes seconds to import
