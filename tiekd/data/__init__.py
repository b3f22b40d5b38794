"""Data: reading and validating parallel text, Multi30k, and the `prepare` job."""

from .prepare import PreparedData, add_prepare_arguments, load_prepared, prepare_data, run_prepare

__all__ = ["PreparedData", "add_prepare_arguments", "load_prepared", "prepare_data", "run_prepare"]
