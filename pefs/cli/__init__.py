"""The ``pefs`` command line: one module per command.

:mod:`pefs.cli.main` assembles the top-level parser, dispatches, prints user errors as one line (exit 2) and turns
SIGTERM into an interrupt (exit 130); its ``COMMANDS`` maps each command name to its module. :mod:`pefs.cli.flags`
generates the flags of one run from the config dataclasses (``tune``'s, and ``sweep``'s run flags) and turns
them back into a config.

Every command module (``tune``, ``sweep``, ``report``, ``predict``, ``export``, ``models``, ``strategies``)
follows one contract:

- ``add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser``: add the command's subparser, with
  its flags and help, to ``sub`` and return it. It imports nothing heavy (no torch), so ``pefs COMMAND --help``
  stays fast; its module imports only the stdlib and torch-free ``pefs`` modules at top level.
- ``run(args: argparse.Namespace) -> int``: run the command on the parsed flags and return the exit status. Heavy
  imports go inside it. A user error raises :class:`~pefs.errors.PefsError`, which ``main`` prints as one line.
"""
