"""A local run listens on loopback only; `submit` keeps the token off plain http to other hosts; tokens are 0600."""

import argparse
import os

import pytest

from spacevista.cluster.submit import _prepare_auth, check_transport, protect_token_file


@pytest.mark.parametrize("address", ["http://head:8265", "http://10.0.0.5:8265", "head:8265"])
def test_submit_refuses_plain_http_to_another_host(address):
    with pytest.raises(SystemExit, match="clear text.*--insecure"):
        check_transport(address, insecure=False)
    check_transport(address, insecure=True)


@pytest.mark.parametrize("address", ["http://127.0.0.1:8265", "http://localhost:8265", "http://[::1]:8265",
                                     "https://head:8265"])
def test_submit_allows_loopback_and_https(address):
    check_transport(address, insecure=False)


def test_submit_cli_has_insecure_flag():
    from spacevista.cluster.submit import add_submit_subparser

    sub = argparse.ArgumentParser().add_subparsers()
    add_submit_subparser(sub)
    assert sub.choices["submit"].parse_args(["--insecure"]).insecure is True


def test_a_readable_token_file_is_refused(tmp_path, monkeypatch):
    # _prepare_auth sets RAY_AUTH_MODE and RAY_AUTH_TOKEN_PATH in os.environ (the CLI's own process): undone
    # after this test, or a later local Ray of this process starts its GCS in token mode while the driver,
    # whose Ray read its auth mode when imported, sends no token
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    token = tmp_path / "token"
    token.write_text("secret")
    token.chmod(0o644)
    with pytest.raises(SystemExit, match="chmod 600"):
        _prepare_auth(str(token))
    token.chmod(0o600)
    _prepare_auth(str(token))
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(token)


def test_rays_token_file_is_made_owner_only(tmp_path):
    token = tmp_path / "auth_token"
    token.write_text("secret")
    token.chmod(0o644)
    protect_token_file(token)
    assert token.stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
def test_a_local_ray_listens_on_loopback_only(ray_temp_dir):
    import ipaddress

    import psutil
    import ray

    from spacevista.cluster.local_ray import start_ray
    from spacevista.configs.schema import ClusterConfig

    assert not ray.is_initialized()
    assert start_ray(ClusterConfig(num_cpus=1, temp_dir=str(ray_temp_dir)), ray_temp_dir)
    try:
        @ray.remote
        def pid() -> int:
            return os.getpid()

        ray.get(pid.remote())
        listeners = []
        for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
            try:
                listeners += [(proc.name(), c.laddr) for c in proc.net_connections(kind="inet")
                              if c.status == psutil.CONN_LISTEN]
            except psutil.Error:
                continue
        assert len(listeners) >= 5  # gcs, raylet, agents, a worker
        wide = [(name, addr) for name, addr in listeners
                if not ipaddress.ip_address(addr.ip.removeprefix("::ffff:")).is_loopback]
        assert wide == []
        token = os.path.expanduser("~/.ray/auth_token")
        if os.path.isfile(token) and os.stat(token).st_uid == os.getuid():
            assert os.stat(token).st_mode & 0o077 == 0
    finally:
        ray.shutdown()
