"""The C extension, declared here because setuptools' pyproject.toml table for extension modules
is still experimental; everything else (metadata, dependencies) is in pyproject.toml.

The native TFTP data plane (bootforge/servers/tftp.py says why) is optional: without a C compiler
the install still works and lockstep TFTP runs in Python.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "bootforge.servers._tftp_dataplane",
            sources=["bootforge/servers/_tftp_dataplane.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
            extra_link_args=["-pthread"],
            optional=True,
        )
    ]
)
