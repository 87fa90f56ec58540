"""``python -m gateway_yeeter``, the same as the ``gateway-yeeter`` command."""

from gateway_yeeter.cli import main

main(prog_name="gateway-yeeter")
