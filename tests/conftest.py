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


# ==================================================================================================
# fault tests (owner: reliability, issue 8) -- a stack of the test's own, free to be broken
# ==================================================================================================


@pytest.fixture
def private_stack(tmp_path_factory: pytest.TempPathFactory):
    """A fresh :class:`streams.stack.LocalStack` (broker + influxd) on free ports for one test, which may stop,
    freeze or restart its services (the shared ``local_stack`` must stay healthy for everyone else)."""
    from streams.settings import load_settings
    from streams.stack import LocalStack, free_ports

    kafka_port, influx_port, rpc_port = free_ports(3)
    stack = LocalStack(load_settings(env={}), state_dir=tmp_path_factory.mktemp("private-stack"),
                       kafka_port=kafka_port, influx_port=influx_port, influx_rpc_port=rpc_port)
    try:
        stack.up(timeout=30)
        yield stack
    finally:
        for svc in (stack.kafka, stack.influx):  # a test may leave a service frozen (SIGSTOP)
            pid = svc.read_pid()
            if pid is not None and svc.owns(pid):
                import contextlib
                import os
                import signal

                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        stack.down()


# ================================================================================ end fault tests
