"""Put on the PYTHONPATH of Debian 12's fence_evacuate only (see benchmarks/evacuation.py).

Its create_nova_connection() calls ``inspect.getargspec``, which Python 3.11 removed; the
replacement has the same ``varargs`` field, the one attribute the agent reads.
"""

import inspect

if not hasattr(inspect, "getargspec"):
    inspect.getargspec = inspect.getfullargspec
