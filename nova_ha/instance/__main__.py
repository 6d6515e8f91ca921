"""python -m nova_ha.instance serve [ALIVE_FILE]: the instance monitor (NovaInstanceHA
starts it so, with the resource's parameters as one JSON line on stdin)."""

import sys

from nova_ha.instance.service import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
