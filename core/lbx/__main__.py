"""``python -m lbx``: the same as the ``lbx`` command."""

from lbx.cli import main

main()
