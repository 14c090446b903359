"""One error hierarchy: every error the package raises on purpose derives from DeitDistillError, keeps the
builtin base it had before, and is still importable where it used to be raised."""

from __future__ import annotations

import importlib

import pytest

from timm_deit_distill import errors

# the builtin base each class had before the hierarchy -> the classes
BUILTIN_BASE = {
    ValueError: ("UsageError", "DataError", "CheckpointError", "TeacherError", "CacheError", "CacheMismatch",
                 "RunFolderError", "HubExportError"),
    RuntimeError: ("HubAuthError", "NonFiniteLoss", "DemoError"),
    OSError: ("HubIntegrityError", "DiskFullError"),
    ConnectionError: ("HubConnectionError",),
    FileExistsError: ("OutputExistsError",),
}
# where each class used to be imported from (and still is)
OLD_PATHS = {"UsageError": "commands.args", "DataError": "data", "CheckpointError": "checkpoint",
             "TeacherError": "teacher", "CacheError": "cache", "CacheMismatch": "cache", "RunFolderError": "run_folder",
             "HubExportError": "hub", "HubAuthError": "hub", "HubIntegrityError": "hub", "HubConnectionError": "hub",
             "NonFiniteLoss": "commands.train", "DemoError": "commands.demo", "OutputExistsError": "errors",
             "DiskFullError": "atomic"}
FAILURES = {"HubIntegrityError", "NonFiniteLoss", "DemoError", "DiskFullError"}  # exit code 1: no input's fault
EXPECTED = {name: (base, f"timm_deit_distill.{OLD_PATHS[name]}", 1 if name in FAILURES else 2)
            for base, names in BUILTIN_BASE.items() for name in names}


def test_every_error_class_is_listed_and_derives_from_the_one_base():
    import timm_deit_distill

    assert {n for n in errors.__all__ if n[0].isupper()} == {"DeitDistillError", *EXPECTED}
    assert timm_deit_distill.DeitDistillError is errors.DeitDistillError  # one `except` for the whole package


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_error_keeps_its_builtin_base_its_old_import_path_and_its_exit_code(name):
    builtin, module, exit_code = EXPECTED[name]
    cls = getattr(errors, name)
    assert issubclass(cls, errors.DeitDistillError) and issubclass(cls, builtin)
    assert getattr(importlib.import_module(module), name) is cls
    assert cls.exit_code == exit_code
    with pytest.raises(builtin):  # an `except ValueError:` (etc.) written against the old class still catches it
        raise cls("message")
