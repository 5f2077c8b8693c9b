"""Reading `ethtool -l` output the way the built-in multiqueue step does."""

from __future__ import annotations

from vmrun.hooks import current_combined

ETHTOOL_L = """\
Channel parameters for eth0:
Pre-set maximums:
RX:\t\tn/a
TX:\t\tn/a
Other:\t\tn/a
Combined:\t4
Current hardware settings:
RX:\t\tn/a
TX:\t\tn/a
Other:\t\tn/a
Combined:\t1
"""


def test_current_combined_reads_the_current_settings_not_the_maximum() -> None:
    assert current_combined(ETHTOOL_L) == 1


def test_current_combined_is_none_when_the_driver_reports_no_channels() -> None:
    assert current_combined("netlink error: Operation not supported\n") is None
