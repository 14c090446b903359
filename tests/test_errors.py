"""One error hierarchy: every error the package raises on purpose derives from DeitDistillError, keeps the
builtin base it had before, and is still importable where it used to be raised."""

from __future__ import annotations

import importlib

import pytest

from timm_deit_distill import errors

# class -> (the builtin base it had before the hierarchy, a module that re-exports it, its exit code)
EXPECTED = {
    "UsageError": (ValueError, "timm_deit_distill.commands.args", 2),
    "DataError": (ValueError, "timm_deit_distill.data", 2),
    "CheckpointError": (ValueError, "timm_deit_distill.checkpoint", 2),
    "TeacherError": (ValueError, "timm_deit_distill.teacher", 2),
    "CacheError": (ValueError, "timm_deit_distill.cache", 2),
    "CacheMismatch": (ValueError, "timm_deit_distill.cache", 2),
    "RunFolderError": (ValueError, "timm_deit_distill.run_folder", 2),
    "HubExportError": (ValueError, "timm_deit_distill.hub", 2),
    "HubAuthError": (RuntimeError, "timm_deit_distill.hub", 2),
    "HubIntegrityError": (OSError, "timm_deit_distill.hub", 1),
    "HubConnectionError": (ConnectionError, "timm_deit_distill.hub", 2),
    "NonFiniteLoss": (RuntimeError, "timm_deit_distill.errors", 1),
    "DemoError": (RuntimeError, "timm_deit_distill.errors", 1),
}


def test_every_error_class_is_listed_and_derives_from_the_one_base():
    assert set(errors.__all__) == {"DeitDistillError", *EXPECTED}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_error_keeps_its_builtin_base_its_old_import_path_and_its_exit_code(name):
    builtin, module, exit_code = EXPECTED[name]
    cls = getattr(errors, name)
    assert issubclass(cls, errors.DeitDistillError) and issubclass(cls, builtin)
    assert getattr(importlib.import_module(module), name) is cls
    assert cls.exit_code == exit_code
    with pytest.raises(builtin):  # an `except ValueError:` (etc.) written against the old class still catches it
        raise cls("message")
