"""Parity runner: replays the official golden fixtures against this implementation.

Fixture format: ``<name>.safetensors`` (weights under their official names, ``input:*``,
``output:*``) plus ``<name>.json`` (config, scalar args, tolerances). Each fixture *kind*
(the JSON ``fixture`` field) is implemented by one function registered in
:mod:`colorize.parity.kinds`, which returns ``{output_name: tensor}``.
"""
from colorize.parity.core import Fixture, FixtureResult, load_fixture, register, run_directory, run_fixture

__all__ = ["Fixture", "FixtureResult", "load_fixture", "register", "run_directory", "run_fixture"]
