"""Several writers keep changing the source while capture is installed, the snapshot copied and the sync
runs; after they stop and the sync drains, every table is identical row for row (checked by the test)."""

import threading
import time

from great_escape import daemon
from tests.integration.syncutil import assert_identical, install_capture, make_config, setup_schema, snapshot_copy
from tests.integration.workload import SEED, SOURCE_DDL, TARGET_EXTRA, Writers


def test_concurrent_writers_realistic_schema(dbpair, tmp_path):
    setup_schema(dbpair, SOURCE_DDL, SOURCE_DDL + TARGET_EXTRA)
    dbpair.sql_source(SEED)
    cfg = make_config(dbpair, tmp_path, batch_size=50)
    with Writers(dbpair.source, n=3) as writers:
        time.sleep(0.5)
        install_capture(cfg)  # while writes run: capture before the snapshot
        time.sleep(0.5)
        snapshot_copy(dbpair)
        proc = daemon.SyncProcess(cfg, direction="forward")
        runner = threading.Thread(target=proc.run, daemon=True)
        runner.start()
        time.sleep(4)
        proc.stop()
        runner.join(timeout=30)
        time.sleep(1)
        assert writers.commits > 100
    daemon.SyncProcess(cfg, direction="forward").run(drain=True)
    assert_identical(dbpair)
    # The user trigger on the target never fired: the apply ran as replica.
    assert dbpair.sql_target("SELECT count(*) FROM trigger_fired")[0][0] == 0
    assert dbpair.sql_target("SELECT data_type FROM information_schema.columns WHERE table_name = 'customers' "
                             "AND column_name = 'id'")[0][0] == "bigint"
    assert sum(n for (n,) in dbpair.sql_source(
        "SELECT count(*) FROM ge_capture.truncates")) == 0
