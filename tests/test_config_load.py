"""``ims_station.config.load_toml``: a file that cannot be read is a ConfigError naming the file and
the reason, never a traceback (the station file of ``edge run --config`` and the relay's file of
``relay run --config`` both come through it)."""

from __future__ import annotations

import contextlib
import os

import pytest

from ims_station.cli import main
from ims_station.config import load_toml
from ims_station.errors import ConfigError

NOBODY = 65534


@contextlib.contextmanager
def not_root():
    """Run the body without root's right to read any file: root (CI) takes the effective uid of
    nobody for the duration and gets it back (the saved uid stays 0); anyone else already lacks it."""
    if os.geteuid() == 0:
        os.seteuid(NOBODY)
        try:
            yield
        finally:
            os.seteuid(0)
    else:
        yield


def test_bytes_that_are_not_utf8_name_the_file_and_the_offset(tmp_path):
    f = tmp_path / "station.toml"
    f.write_bytes(b'[station]\ncode = "XS01\xff"\n')
    with pytest.raises(ConfigError) as ei:
        load_toml(f)
    err = ei.value
    assert (err.file, err.key) == (str(f), "")
    assert "UTF-8" in err.reason and "0xff at offset 22 (line 2)" in err.reason, err.reason


def test_a_directory_names_the_file_and_says_so(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_toml(tmp_path)
    assert (ei.value.file, ei.value.key) == (str(tmp_path), "")
    assert "is a directory" in ei.value.reason


def test_an_unreadable_file_names_the_file_and_says_so(tmp_path):
    f = tmp_path / "station.toml"
    f.write_text("[station]\n")
    f.chmod(0)
    with pytest.raises(ConfigError) as ei, not_root():
        load_toml(f)
    assert (ei.value.file, ei.value.reason) == (str(f), "permission denied")


def test_any_other_os_error_names_the_file_and_the_system_reason(tmp_path):
    # A name longer than the file system allows: ENAMETOOLONG, an OSError that is neither
    # "not found" nor "permission denied", and one that root meets too.
    f = tmp_path / ("x" * 300 + ".toml")
    with pytest.raises(ConfigError) as ei:
        load_toml(f)
    assert ei.value.file == str(f) and "name too long" in ei.value.reason.lower(), ei.value.reason


@pytest.mark.parametrize("argv", [["edge", "run", "--config"], ["relay", "run", "--config"]])
def test_the_cli_prints_file_and_reason_not_a_traceback(tmp_path, capsys, argv):
    f = tmp_path / "bad.toml"
    f.write_bytes(b"\xff\xfe[station]\n")
    assert main([*argv, str(f)]) == 2          # an uncaught exception would fail the test here
    err = capsys.readouterr().err
    assert f"{f}: <top level>: not UTF-8" in err, err
    assert main([*argv, str(tmp_path)]) == 2   # relay run --config DIR
    assert f"{tmp_path}: <top level>: is a directory" in capsys.readouterr().err
