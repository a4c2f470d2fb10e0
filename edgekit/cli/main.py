"""Entry point of the ``edgekit`` CLI."""

from __future__ import annotations

import click

from edgekit import __version__

from . import demo_cmd, fleet_cmd, inspect_cmd, keys_cmd, model_cmd, pki_cmd, profiles_cmd

HELP = """edgekit: put trained models on fleets of devices, safely and fast.

\b
Typical flow:
  edgekit keys init                                  # once: trust root + release keys
  edgekit convert model.onnx -p raspberry-pi-4 --calibration cal.npz --validation val.npz
  edgekit release out/raspberry-pi-4 --name digits --version 1.0.0
  edgekit push bundles/digits-1.0.0-raspberry-pi-4.bundle --device pi-01
  edgekit fleet ls

Try it all on this machine, with nothing to set up: edgekit demo
"""


@click.group(help=HELP, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgekit")
def cli() -> None:
    pass


for module in (profiles_cmd, keys_cmd, model_cmd, fleet_cmd, demo_cmd, pki_cmd, inspect_cmd):
    module.register(cli)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
