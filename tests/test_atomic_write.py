"""Atomic writes (DESIGN.md): a failed write leaves the previous file intact and no
temporary file behind. The faults of a full disk, a read-only folder, permissions and stale
temporary files are in tests/faults/test_faults_atomic_write.py."""

from __future__ import annotations

import json

import pytest

from reslab.atomic_write import atomic_write, atomic_write_json


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "results.json"
    atomic_write_json(path, {"a": 1})

    def broken(f):
        f.write(b'{"half":')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left
