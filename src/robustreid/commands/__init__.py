"""Subcommands of ``robustreid`` for using a trained model (embed, search, plot, export), for
set-up (weights) and for writing the SynthPerson data set (synth).

Each module here defines ``add_parser(subparsers)`` (registers its subcommand on the
``argparse`` sub-parsers and returns the parser) and ``run(args) -> int`` (the exit status).
:mod:`robustreid.cli` discovers the modules, so a new command is one new file. Modules import
their heavy dependencies inside ``run`` so that ``robustreid --help`` stays fast.
"""
