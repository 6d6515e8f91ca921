"""The root of every exception nova-ha raises.

Each module keeps its own exception classes (a parameter, the BMC, the cluster record,
Nova...), all under ``NovaHaError``: code that must survive any failure of nova-ha's own
(an agent's last line of defence, a best-effort step) catches this one class, and a bug
(a KeyError, a TypeError) is never mistaken for one of them.
"""


class NovaHaError(Exception):
    """Something nova-ha reports with a message fit for the log: never a bug."""
