"""The nova-ha command: operator tools."""

from __future__ import annotations

import argparse
import os
import sys

from nova_ha.lib import docs, params

FENCE_DIR = "/usr/sbin"
OCF_DIR = "/usr/lib/ocf/resource.d/nova-ha"
AGENTS = {  # agent -> (folder in a source checkout, default destination directory)
    "fence_nova_evacuate": ("fence", FENCE_DIR),
    "NovaCompute": ("ocf", OCF_DIR),
    "NovaEvacuate": ("ocf", OCF_DIR),
}


def _agent_source(name: str, python: str) -> str:
    """setup.py installs the agents as scripts beside the interpreter; a checkout has them
    under agents/."""
    candidates = [os.path.join(os.path.dirname(python), name)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidates.append(os.path.join(root, "agents", AGENTS[name][0], name))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nova-ha", description="nova-ha operator tools")
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install-agents", help="install the agents where Pacemaker finds them")
    inst.add_argument("--python", default=sys.executable,
                      help="interpreter the agents run with (default: this one)")
    inst.add_argument("--fence-dir", default=FENCE_DIR)
    inst.add_argument("--ocf-dir", default=OCF_DIR)
    doc = sub.add_parser("params", help="print an agent's parameters as a Markdown table")
    doc.add_argument("agent", nargs="?", choices=[params.FENCE, params.COMPUTE, params.EVACUATE])
    doc.add_argument("--all", action="store_true", help="the whole docs/parameters.md page")
    args = parser.parse_args(argv)
    if args.command == "install-agents":
        for path in install_agents(os.path.abspath(args.python), args.fence_dir, args.ocf_dir):
            print(f"installed {path}")
        return 0
    if args.command == "params":
        print(docs.parameters_page() if args.all or not args.agent
              else docs.markdown_table(args.agent))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
