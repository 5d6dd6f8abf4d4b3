"""The error a stage raises for bad input: the CLI prints its message without a traceback."""


class PipelineError(Exception):
    """Bad or missing input to a stage (corrupt download, wrong checksum, missing split...)."""
