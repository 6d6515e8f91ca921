# nova-ha: `make demo` shows the agent at work; `make test` installs what the tests need and
# runs the whole suite (root, Debian 12). `make install` installs the agents for Pacemaker.

SHELL := /bin/bash
PYTHON_SYSTEM ?= /usr/bin/python3
VENV ?= $(CURDIR)/.venv
PREFIX ?= /opt/nova-ha
DEB_PACKAGES := pacemaker pacemaker-cli-utils corosync fence-agents resource-agents ipmitool \
	openipmi python3-novaclient python3-keystoneclient python3-venv python3-dev libxml2-utils \
	pcs iproute2
# The test beds' daemons, installed without recommends: the libvirt bed (testbed/libvirt_bed;
# no libvirt-daemon-system: no users, services or default network on the machine) and the
# production-shaped Nova's MariaDB and RabbitMQ (testbed/nova_prod). The beds start them.
DEB_PACKAGES_NO_RECOMMENDS := libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients \
	qemu-system-x86 python3-libvirt busybox-static qemu-guest-agent mariadb-server rabbitmq-server
NOVA_VENV ?= $(CURDIR)/.venv-nova
# pacemaker-remote conflicts with pacemaker: the test bed runs its binary from a download.
REMOTED := .cache/pacemaker-remote/usr/sbin/pacemaker-remoted
PYTEST_ARGS ?=

.PHONY: all deps venv nova-venv nova-prod libvirt-binding libvirt-guest test demo install lint \
	bench clean

all: venv

# Debian packages: apt-get update only when something is missing. $(1): the packages,
# $(2): more apt-get options.
define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) $$missing; \
	fi
endef

deps:
	$(call apt_install,$(DEB_PACKAGES),)
	$(call apt_install,$(DEB_PACKAGES_NO_RECOMMENDS),--no-install-recommends)

$(VENV)/.stamp: setup.py pyproject.toml | deps
	$(PYTHON_SYSTEM) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.stamp

nova-venv: deps
	bash testbed/nova_box/setup-venv.sh

# The production-shaped Nova (testbed/nova_prod): its Debian packages and Python packages
# (gunicorn, PyMySQL in .venv-nova); the stamp says both are there. MariaDB and RabbitMQ
# are started by the test bed itself, never as system services.
NOVA_PROD_STAMP := .venv-nova/.nova-prod.stamp
$(NOVA_PROD_STAMP): testbed/nova_box/requirements.txt | deps nova-venv
	test -x /usr/sbin/mariadbd && test -x /usr/lib/rabbitmq/bin/rabbitmq-server
	.venv-nova/bin/python -c 'import gunicorn, pymysql'
	touch $@

nova-prod: $(NOVA_PROD_STAMP)

# Debian's python3-libvirt linked into both venvs (testbed/libvirt_bed/binding.py says why).
libvirt-binding: deps venv nova-venv
	$(VENV)/bin/python -m testbed.libvirt_bed.binding $(VENV) $(NOVA_VENV)

# The tiny guest's kernel and initramfs, cached in .cache/libvirt-bed.
libvirt-guest: deps venv
	$(VENV)/bin/python -m testbed.libvirt_bed.image

$(REMOTED): | deps venv
	$(VENV)/bin/python -c 'from testbed.cluster import ensure_remoted; ensure_remoted()'

test: deps venv nova-venv nova-prod libvirt-binding libvirt-guest $(REMOTED)
	$(VENV)/bin/nova-ha install-agents --python $(VENV)/bin/python
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy nova_ha
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

demo: deps venv
	$(VENV)/bin/python -m testbed.demo

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The figures of the README, side by side with the anchors (the live-cluster ones need root).
bench: deps venv nova-venv libvirt-binding libvirt-guest $(REMOTED)
	$(VENV)/bin/nova-ha install-agents --python $(VENV)/bin/python
	$(VENV)/bin/python -m benchmarks.startup
	$(VENV)/bin/python -m benchmarks.evacuation --scenario all
	$(VENV)/bin/python -m benchmarks.recovery --runs 3
	$(VENV)/bin/python -m benchmarks.recovery --second --runs 3
	$(VENV)/bin/python -m benchmarks.scale
	$(VENV)/bin/python -m benchmarks.instance_ha

install: deps
	$(PYTHON_SYSTEM) -m venv $(PREFIX)
	$(PREFIX)/bin/pip install -q --upgrade pip
	$(PREFIX)/bin/pip install -q .
	$(PREFIX)/bin/nova-ha install-agents --python $(PREFIX)/bin/python

clean:
	rm -rf $(VENV) .venv-nova build *.egg-info
