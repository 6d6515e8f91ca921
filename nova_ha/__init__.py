"""nova-ha: instance high availability for OpenStack Nova on Pacemaker."""

__version__ = "0.1.0"
