"""commands.py: the demo data built on first use of its folder."""

from __future__ import annotations

import pytest

from vgg_keras import commands
from vgg_keras import config as config_lib
from vgg_keras.errors import UsageError


def test_demo_data_that_cannot_be_built_is_the_builders_one_line(tmp_path, monkeypatch):
    """The builder runs in a child process; its failure is this program's one line (exit 2 in
    run_cli), not a CalledProcessError traceback under it."""
    (tmp_path / "a_file").write_text("")
    folder = str(tmp_path / "a_file" / "demo")
    monkeypatch.setattr(config_lib, "DEMO_DATA_DIR", folder)
    with pytest.raises(UsageError) as caught:
        commands.ensure_demo_data(folder)
    assert str(caught.value) == f"{folder}: cannot write the output folder (Not a directory)"
