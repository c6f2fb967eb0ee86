import json
import subprocess
import sys

import pytest

from physgen.cli import main
from physgen.errors import FileFormatError


def test_info_on_embedded_sample(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "calochallenge" in out and "2000" in out and "24 layers" in out and "Geant4 CPU" in out


def test_info_json_on_root(capsys, hzz_path):
    assert main(["info", str(hzz_path), "--branches", "Muon_Px,Muon_Py", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["format"] == "root" and s["event_shape"] == [4, 2] and s["list_length"]["max"] == 4


def test_bad_file_is_one_line_not_a_traceback(tmp_path):
    bad = tmp_path / "x.h5"
    bad.write_text("garbage")
    r = subprocess.run([sys.executable, "-m", "physgen.cli", "info", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "neither HDF5 nor ROOT" in r.stderr and "Traceback" not in r.stderr


def test_debug_shows_the_exception(tmp_path):
    bad = tmp_path / "x.h5"
    bad.write_text("garbage")
    with pytest.raises(FileFormatError):
        main(["--debug", "info", str(bad)])
