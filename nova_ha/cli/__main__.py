"""python -m nova_ha.cli: the nova-ha command."""

import sys

from nova_ha.cli import main

sys.exit(main())
