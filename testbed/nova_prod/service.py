"""Run one Nova service of the production-shaped bed, as its console script would.

``.venv-nova/bin/python -m testbed.nova_prod.service nova-compute --state-dir DIR
--host host1 -- --config-file nova.conf ...``: loads the bed's fakes (fakes.py) into this
process, then hands over to Nova's own ``main()`` (nova.cmd.compute, .conductor,
.scheduler) with the arguments after ``--``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

os.environ.setdefault("OS_NOVA_DISABLE_EVENTLET_PATCHING", "1")  # native threads

MAINS = {
    "nova-compute": "nova.cmd.compute",
    "nova-conductor": "nova.cmd.conductor",
    "nova-scheduler": "nova.cmd.scheduler",
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("binary", choices=sorted(MAINS))
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--host", help="the compute host (nova-compute only)")
    args = parser.parse_args(argv[:split])
    module = importlib.import_module(MAINS[args.binary])  # nova's monkey_patch runs here

    from testbed.nova_prod import fakes

    fakes.install_fakes()
    if args.binary == "nova-compute":
        fakes.fixed_node_identity(args.state_dir, args.host)
        fakes.slow_fake_driver(args.state_dir, args.host)
    sys.argv = [args.binary] + argv[split + 1 :]
    module.main()


if __name__ == "__main__":
    main()
