"""The number of evacuations in flight (nova_ha.lib.pacing.Pacer): table-driven, the clock
given. Events: ("ok", latency) an accepted request, ("strained", latency) a 5xx/429/timeout,
("refused", latency) a 4xx about the server, ("landed",) a server at its end, ("wait", s)."""

from __future__ import annotations

import pytest

from nova_ha.lib.pacing import Answer, Pacer

OK = [("ok", 0.2)]


# ceiling, events -> the limit after each event
PACING = [
    # slow start: +1 per prompt acceptance, up to the ceiling
    (16, OK * 3, [5, 6, 7]),
    (5, OK * 3, [5, 5, 5]),
    (2, [], []),
    # answers slowing beyond 3x the fastest (+0.25 s): halved (not below START), then grows
    # by completions only
    (
        16,
        OK * 6 + [("ok", 1.0)] + OK + [("landed",)] * 6,
        [5, 6, 7, 8, 9, 10, 5, 5] + [5] * 5 + [6],
    ),
    (16, OK * 2 + [("ok", 1.0)], [5, 6, 4]),  # halved to 3: held at START
    # jitter within the slack is no sign
    (16, [("ok", 0.01), ("ok", 0.2)], [5, 6]),
    # a 5xx/429/timeout halves it; two together count once (cool-down); floor 1
    (16, [("strained", 10.0), ("strained", 10.0)], [2, 2]),
    (
        16,
        [("strained", 1.0), ("wait", 1.5), ("strained", 1.0), ("wait", 1.5), ("strained", 1)],
        [2, 2, 1, 1, 1],
    ),
    # refusals about the server say nothing about Nova's load
    (16, [("refused", 5.0)] * 3, [4, 4, 4]),
    # completions during slow start do not add (acceptances do)
    (16, [("landed",)] * 3, [4, 4, 4]),
]


@pytest.mark.parametrize("ceiling, events, limits", PACING)
def test_pacing(ceiling, events, limits) -> None:
    now = [100.0]
    pacer = Pacer(ceiling, clock=lambda: now[0])
    assert pacer.limit() == min(4, ceiling)
    seen = []
    for event in events:
        if event[0] == "wait":
            now[0] += event[1]
        elif event[0] == "landed":
            pacer.landed()
        else:
            pacer.answered(event[1], Answer({"ok": "accepted"}.get(event[0], event[0])))
        seen.append(pacer.limit())
    assert seen == limits
    # the history holds every change with its reason, for the log and the benchmark
    changes = [limit for _, limit, _ in pacer.history]
    assert changes[0] == pacer.history[0][1] and changes[-1] == pacer.limit()
