"""The Keystone token cache (os_token_cache): what Keystone sees across runs of the agent."""

from __future__ import annotations

import os
import stat

from tests.helpers import run_fence


def _token_requests(bed) -> list[dict]:
    return [
        r
        for r in bed.cloud.request_log()
        if r["method"] == "POST" and r["path"].endswith("/auth/tokens")
    ]


def _cached(token_dir: str) -> list[str]:
    return [os.path.join(token_dir, n) for n in os.listdir(token_dir) if not n.endswith(".tmp")]


def test_monitor_then_fence_reuse_one_token(sim_bed, token_dir):
    bed = sim_bed
    for name in os.listdir(token_dir):
        os.unlink(os.path.join(token_dir, name))
    bed.cloud.create_servers("host1", 2)
    monitor = bed.fence_params(action="monitor")
    assert run_fence(monitor, env=bed.env()).returncode == 0
    assert len(_token_requests(bed)) == 1
    files = _cached(token_dir)
    assert len(files) == 1
    assert stat.S_IMODE(os.stat(files[0]).st_mode) == 0o600
    assert bed.cloud.password not in open(files[0]).read()
    # The next monitor and the fence itself ask Keystone nothing.
    assert run_fence(monitor, env=bed.env()).returncode == 0
    done = bed.fence()  # the fence, and the evacuation service's worker
    assert done.returncode == 0, done.stderr
    assert len(_token_requests(bed)) == 1
    assert all(s["host"] != "host1" for s in bed.cloud.servers())


def test_revoked_token_is_replaced(sim_bed, token_dir):
    bed = sim_bed
    monitor = bed.fence_params(action="monitor")
    assert run_fence(monitor, env=bed.env()).returncode == 0
    before = len(_token_requests(bed))
    bed.cloud.expire_tokens()  # Keystone revoked it: Nova answers 401
    done = run_fence(bed.fence_params(evacuate="none"), env=bed.env())
    assert done.returncode == 0, done.stderr
    assert len(_token_requests(bed)) == before + 1
    assert run_fence(monitor, env=bed.env()).returncode == 0
    assert len(_token_requests(bed)) == before + 1  # the new one was kept


def test_other_credentials_and_opt_out(sim_bed, token_dir):
    bed = sim_bed
    monitor = bed.fence_params(action="monitor")
    assert run_fence(monitor, env=bed.env()).returncode == 0
    # Another password is another cache entry: a wrong one is refused, not served a token.
    assert run_fence(dict(monitor, os_password="wrong"), env=bed.env()).returncode == 1
    for name in os.listdir(token_dir):
        os.unlink(os.path.join(token_dir, name))
    before = len(_token_requests(bed))
    off = dict(monitor, os_token_cache=0)
    assert run_fence(off, env=bed.env()).returncode == 0
    assert run_fence(off, env=bed.env()).returncode == 0
    assert len(_token_requests(bed)) == before + 2
    assert not _cached(token_dir)


def test_cache_not_private_is_ignored(sim_bed, token_dir):
    bed = sim_bed
    monitor = bed.fence_params(action="monitor")
    assert run_fence(monitor, env=bed.env()).returncode == 0
    for path in _cached(token_dir):
        os.chmod(path, 0o644)
    before = len(_token_requests(bed))
    done = run_fence(monitor, env=bed.env())
    assert done.returncode == 0
    assert "not private" in done.stderr
    assert len(_token_requests(bed)) == before + 1
