import dataclasses
import json
import os
from typing import ClassVar

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from rich.console import Console

from shiftlab.report import Report, Table, atomic_write_text, jsonable


@dataclasses.dataclass(frozen=True)
class _Scores(Report):
    kind: ClassVar[str] = "scores"
    accuracy: float
    weights: torch.Tensor
    note: str = "<b>escaped</b>"

    def headline(self) -> str:
        return f"accuracy {self.accuracy:.2f}"

    def tables(self) -> tuple[Table, ...]:
        return (Table("arms", ("arm", "acc"), (("plain", 0.61), ("matched", 0.80))),)

    def figures(self) -> dict[str, Figure]:
        fig = Figure(figsize=(2, 2))
        fig.add_subplot().plot([0, 1], [0, 1])
        return {"curve": fig}


def _report() -> _Scores:
    return _Scores(accuracy=0.8, weights=torch.tensor([1.0, 2.0]))


def test_to_dict_is_json_safe_and_keeps_values() -> None:
    d = _report().to_dict()
    assert d == {"kind": "scores", "accuracy": 0.8, "weights": [1.0, 2.0], "note": "<b>escaped</b>"}
    assert json.loads(_report().to_json()) == d


def test_jsonable_maps_nonfinite_to_none_and_rejects_unknown() -> None:
    assert jsonable({"x": np.float32(np.inf), "y": np.arange(2)}) == {"x": None, "y": [0, 1]}
    with pytest.raises(TypeError, match="to_dict"):
        jsonable(object())


def test_save_writes_json_and_self_contained_html(tmp_path) -> None:
    paths = _report().save(tmp_path / "out")
    assert json.loads(paths["json"].read_text()) == _report().to_dict()
    page = paths["html"].read_text()
    assert "data:image/png;base64," in page
    assert "<b>escaped</b>" not in page and "&lt;b&gt;escaped&lt;/b&gt;" in page
    assert "matched" in page and "accuracy 0.80" in page
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "out").iterdir())


def test_save_refuses_a_file_as_directory(tmp_path) -> None:
    target = tmp_path / "file"
    target.write_text("keep me")
    with pytest.raises(ValueError, match="not a directory"):
        _report().save(target)
    assert target.read_text() == "keep me"


def test_atomic_write_leaves_old_content_when_write_fails(tmp_path, monkeypatch) -> None:
    target = tmp_path / "r.json"
    atomic_write_text(target, "old")

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_render_prints_headline_fields_and_tables() -> None:
    console = Console(record=True, width=100)
    _report().render(console)
    text = console.export_text()
    assert "accuracy 0.80" in text and "matched" in text and "0.8" in text


def test_table_rejects_ragged_rows() -> None:
    with pytest.raises(ValueError, match="row 1 has 1 cells"):
        Table("t", ("a", "b"), ((1, 2), (3,)))
