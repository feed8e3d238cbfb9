"""Build hook for the one compiled part: the Canadian-compression fast path (ims_station/cd11/_ca.c).

All metadata lives in pyproject.toml.  The extension is *optional*: where no C compiler is available
(e.g. a Raspberry Pi without build tools) setuptools warns and installs the package without it, and
ims_station.cd11.ca falls back to its pure Python reference implementation.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ims_station.cd11._cafast",
            sources=["ims_station/cd11/_ca.c"],
            optional=True,
        ),
    ],
)
