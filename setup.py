from setuptools import find_packages, setup

setup(
    name="nova-ha",
    version="0.1.0",
    description="Instance high availability for OpenStack Nova on Pacemaker",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["nova_ha", "nova_ha.*"]),
    package_data={"nova_ha.lib": ["parameters.json"]},
    install_requires=[
        "pyghmi>=1.5",
        "python-novaclient>=18.0",
        "keystoneauth1>=5.0",
        "lxml>=4.9",
        # fence-agents' fencing.py (from Debian's fence-agents) imports both at module level.
        "pycurl>=7.45",
        "pexpect>=4.8",
        "PyYAML>=6.0",
    ],
    # Pinned: make test checks the formatter's and the type checker's output, which change
    # between their releases.
    extras_require={"test": ["pytest>=7", "hypothesis>=6", "ruff==0.17.6", "mypy==2.4.1"]},
    scripts=[
        "agents/fence/fence_nova_evacuate",
        "agents/ocf/NovaCompute",
        "agents/ocf/NovaEvacuate",
        "agents/ocf/NovaInstanceHA",
    ],
    entry_points={"console_scripts": ["nova-ha = nova_ha.cli:main"]},
)
