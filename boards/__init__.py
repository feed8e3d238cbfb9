"""Board definitions as data: one ``<name>.toml`` per board (schema and checks: ``ims_station/boards.py``).

This folder stays at the top of the repository (the architecture's layout) and is installed as the
package ``ims_station.boards_data`` (pyproject.toml maps it), so the TOML files travel inside the
wheel as package data and :mod:`ims_station.boards` finds them through ``importlib.resources`` in
an editable install and a plain ``pip install`` alike.  No code lives here.
"""
