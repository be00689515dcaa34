"""The top floor: the ``fetalhead`` command and what only commands need.

``cli`` dispatches to one module per subcommand in ``tools.commands``, each
of which parses flags generated from a settings dataclass (``command``) and
makes one call into ``models``, ``train`` or ``stream``. ``render`` draws
every table, progress bar and live view a person reads; ``sources`` opens
capture sources backed by training data (scan folders, the synthetic
phantom). ``demo``, ``bench``, ``soak`` and ``gpu_bench`` are the
measurements and the guided tour built on the library. Nothing outside
``tools`` imports from it.
"""
