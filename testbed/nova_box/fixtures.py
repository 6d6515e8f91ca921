"""pytest fixtures for the real Nova 34 test box.

Use from a test module (or a conftest) with::

    from testbed.nova_box.fixtures import nova_box  # noqa: F401

``nova_box`` is session-scoped: one box (host1, host2, host3) for the whole
run. Tests that crash a host or force its service down must put it back
(start it, un-force it) before they end. Without ``.venv-nova`` the fixture
skips, except under CI (``CI=true``), where it fails.

A rebuild delay (``NovaBox.set_rebuild_delay``) lasts one test at most: after
every test, any running box with a delay on (the session's, a module's own,
a cluster bed's) gets it set back to 0 (``_reset_rebuild_delay`` below,
autouse wherever this plugin is loaded).
"""

import contextlib

import pytest

from testbed.nova_box import DELAYED_BOXES, VENV_DIR, NovaBox, available
from testbed.util import IN_CI


def require_nova_venv():
    if available():
        return
    msg = f"real Nova box unavailable: {VENV_DIR} missing (run testbed/nova_box/setup-venv.sh)"
    if IN_CI:
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def nova_box(tmp_path_factory):
    require_nova_venv()
    box = NovaBox(hosts=("host1", "host2", "host3"), state_dir=tmp_path_factory.mktemp("nova-box"))
    with box:
        yield box


@pytest.fixture(autouse=True)
def _reset_rebuild_delay():
    yield
    for box in list(DELAYED_BOXES):
        if not box.running:
            DELAYED_BOXES.discard(box)
            continue
        with contextlib.suppress(OSError):  # the box died: nothing to reset
            box.set_rebuild_delay(0)
