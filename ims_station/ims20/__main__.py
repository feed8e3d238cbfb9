"""``python -m ims_station.ims20``: print the block and limits tables of docs/ims20.md, generated from
the codec's declarations (tests/ims20/test_docs.py checks the document holds the current ones)."""

from ims_station.ims20.format import block_tables, limits_table

print(block_tables() + "\n" + limits_table(), end="")
