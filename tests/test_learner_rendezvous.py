"""The learner ranks' rendezvous store listens on the given address only (loopback for a local run)."""

from __future__ import annotations

import os

import psutil
import torch
import torch.distributed as dist

from spacevista.actors.learner import listening_socket, rendezvous_store


def test_the_rendezvous_store_listens_on_loopback_only():
    listener = listening_socket("127.0.0.1")
    address, port = listener.getsockname()[:2]
    store = rendezvous_store(address, port, rank=0, world_size=1, listener=listener, timeout_s=30)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        tensor = torch.ones(2)
        dist.all_reduce(tensor)
        assert tensor.tolist() == [1.0, 1.0]
        mine = [c for c in psutil.Process(os.getpid()).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert any(c.laddr.port == port for c in mine)
        assert all(c.laddr.ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1") for c in mine), mine
    finally:
        dist.destroy_process_group()
        del store  # the store owns the listening descriptor now (the socket object let go of it)
    assert listener.fileno() == -1
