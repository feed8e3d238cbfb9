"""docs/ims20.md promises: its block and limits tables are the codec's declarations, and its error
examples are what the parser says."""

from __future__ import annotations

import pytest

from ims_station import ims20
from ims_station.ims20.format import block_tables, limits_table
from tests.conftest import ROOT
from tests.ims20.test_errors import MINIMAL, replace_line

DOC = ROOT / "docs" / "ims20.md"


def test_the_generated_tables_are_current():
    text = DOC.read_text()
    begin = "<!-- BEGIN GENERATED: python -m ims_station.ims20 -->\n"
    inner = text[text.index(begin) + len(begin):text.index("<!-- END GENERATED -->")]
    assert inner == block_tables() + "\n" + limits_table(), "run: python -m ims_station.ims20"


@pytest.mark.parametrize("text", [
    replace_line(11, "2026/01/01 00:00:00.0 forty 39990.25"),
    replace_line(13, "9 720"),
    replace_line(5, "#Header 3 4"),
    replace_line(20, None),
])
def test_the_error_examples_are_what_the_parser_says(text):
    with pytest.raises(ims20.Ims20Error) as info:
        ims20.parse(text)
    assert f"\n{info.value}\n" in DOC.read_text()


def test_the_names_the_doc_uses_are_exported():
    for name in ("parse", "write", "Message", "Section", "PhdBody", "PhdHeader", "Acquisition", "Histogram",
                 "Spectrum", "RmsSohBody", "AlertBody", "RawBody", "RawBlock", "Limits", "Ims20Error",
                 "Ims20BuildError", "to_jsonable"):
        assert hasattr(ims20, name), name
    assert ims20.parse(ims20.write(ims20.parse(MINIMAL))) == ims20.parse(MINIMAL)


def test_every_model_class_is_exported():
    from ims_station.ims20 import model

    assert sorted(set(model.__all__) - {"format_time"}) == sorted(
        n for n in ims20.__all__ if n in model.__all__)
    assert set(model.__all__) - {"format_time"} <= set(ims20.__all__)
