"""Exit statuses of the ``smoe`` command."""

EXIT_OK = 0
EXIT_BAD_INPUT = 2
"""Bad input (a pipeline, config, trace, checkpoint or decision file): one line per problem."""
EXIT_INTERRUPTED = 130
