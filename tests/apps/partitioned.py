"""The probe app with its queue stored in 8 partitions (issue 17, point 3).

`bench/cluster_scaling.py` runs `conveyor worker tests.apps.partitioned:app` to drain
one partitioned queue; like tests/apps/probe.py it lives in tests/, never in the
installed package.
"""

from __future__ import annotations

from tests.apps.probe import PROBE_QUEUE, probe_app

PARTITIONS = 8

app = probe_app()
app.limits(PROBE_QUEUE, partitions=PARTITIONS)
