"""Shared fixtures of the export tests."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture
def export(pristine, tmp_path):
    """A fresh copy of the module's ``pristine`` export folder, free to tamper with."""
    folder = tmp_path / "export"
    shutil.copytree(pristine, folder)
    return folder
