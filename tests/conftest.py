"""Shared pytest fixtures. Keep each owner's fixtures in their own clearly marked block."""

from __future__ import annotations

import pytest

# ==================================================================================================
# local stack (owner: streams/stack.py) -- one private tansu broker + influxd for the whole session
# ==================================================================================================


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory):
    """A running :class:`streams.stack.LocalStack` on free ports with its state in a tmp dir.

    Use ``local_stack.settings`` to reach it (``kafka_bootstrap``, ``influx_url``, topics, db "sci").
    Topics and the database are shared by every test in the session: produce to topics/databases/stream tags
    of your own, or consume with unique group ids and count only your records. Stopped at session end.
    """
    from streams.settings import load_settings
    from streams.stack import LocalStack, free_ports

    kafka_port, influx_port, rpc_port = free_ports(3)
    stack = LocalStack(load_settings(env={}), state_dir=tmp_path_factory.mktemp("stack"),
                       kafka_port=kafka_port, influx_port=influx_port, influx_rpc_port=rpc_port)
    try:
        stack.up(timeout=30)
        yield stack
    finally:
        stack.down()


# ================================================================================ end local stack
