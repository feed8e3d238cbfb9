"""Build hook for the compiled parts: the Canadian-compression fast path (ims_station/cd11/_ca.c) and
the recursive STA/LTA kernel of the trigger (edge/_trigger.c).

All metadata lives in pyproject.toml.  The extension is *optional*: where no C compiler is available
(e.g. a Raspberry Pi without build tools) setuptools warns and installs the package without it, and
ims_station.cd11.ca and ims_station.edge.trigger fall back to their reference implementations.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ims_station.cd11._cafast",
            sources=["ims_station/cd11/_ca.c"],
            optional=True,
        ),
        Extension(
            "ims_station.edge._triggerfast",
            sources=["edge/_trigger.c"],
            optional=True,
        ),
    ],
)
