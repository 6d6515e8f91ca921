"""nova-ha install-agents: put the agents where Pacemaker finds them, run by an interpreter
that has nova-ha's dependencies."""

from __future__ import annotations

import argparse
import os
import sys

from nova_ha.cli.arguments import Command, option

FENCE_DIR = "/usr/sbin"
OCF_DIR = "/usr/lib/ocf/resource.d/nova-ha"
AGENTS = {  # agent -> (folder in a source checkout, default destination directory)
    "fence_nova_evacuate": ("fence", FENCE_DIR),
    "NovaCompute": ("ocf", OCF_DIR),
    "NovaEvacuate": ("ocf", OCF_DIR),
    "NovaInstanceHA": ("ocf", OCF_DIR),
}
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _agent_source(name: str, python: str) -> str:
    """setup.py installs the agents as scripts beside the interpreter; a checkout has them
    under agents/."""
    candidates = [
        os.path.join(os.path.dirname(python), name),
        os.path.join(_CHECKOUT, "agents", AGENTS[name][0], name),
    ]
    for path in candidates:
        if os.path.isfile(path):
            with open(path) as source:
                return source.read()
    raise FileNotFoundError(f"agent {name} not found (looked in {', '.join(candidates)})")


def install_agents(python: str, fence_dir: str, ocf_dir: str) -> list[str]:
    """Write the agents where Pacemaker looks, run by `python` (which has our dependencies)."""
    written = []
    for name, (_, default_dir) in AGENTS.items():
        directory = fence_dir if default_dir == FENCE_DIR else ocf_dir
        os.makedirs(directory, exist_ok=True)
        text = _agent_source(name, python)
        body = text.split("\n", 1)[1] if text.startswith("#!") else text
        path = os.path.join(directory, name)
        tmp = path + ".tmp"
        with open(tmp, "w") as out:
            out.write(f"#!{python}\n{body}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        written.append(path)
    return written


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    for path in install_agents(os.path.abspath(args.python), args.fence_dir, args.ocf_dir):
        print(f"installed {path}")
    return 0


COMMAND = Command(
    "install-agents",
    "install the agents where Pacemaker finds them",
    options=(
        option(
            "--python",
            default=sys.executable,
            help="interpreter the agents run with (default: this one)",
        ),
        option("--fence-dir", default=FENCE_DIR),
        option("--ocf-dir", default=OCF_DIR),
    ),
    local=run,
)
