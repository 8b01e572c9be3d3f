"""The builds of other majors that localcluster runs: found in the cache, refused where they cannot serve."""

from __future__ import annotations

from pathlib import Path

import pytest

from great_escape.localcluster import ClusterError, LocalCluster, find_build
from tests.conftest import _port
from tests.crossversion.conftest import CI_PAIR, require_build


def test_the_ci_builds_are_found_and_report_their_major():
    for major in CI_PAIR:
        build = require_build(major)
        cluster = LocalCluster(Path("/nonexistent"), 0, "source", bin_dir=build.bin_dir, lib_dir=build.lib_dir)
        assert cluster.major() == major
    assert find_build(15) is not None and find_build(15).lib_dir is None  # Debian's, the default PG_BIN
    assert find_build(9) is None


def test_an_aurora_cluster_older_than_15_is_refused_before_initdb(tmp_path):
    build = require_build(CI_PAIR[0])
    datadir = tmp_path / "aurora12"
    refused = r"PostgreSQL 12 .* GRANT SET ON PARAMETER \(15\+\); use this major as a source"
    with pytest.raises(ClusterError, match=refused):
        LocalCluster(datadir, _port(23), "aurora", bin_dir=build.bin_dir, lib_dir=build.lib_dir).start()
    assert not datadir.exists()
