"""Whom a search asks: the registry's pages (through the directory); a registry down says so."""

from __future__ import annotations

import pytest

from p2pcommon.registry_client import RegistryClient
from p2pd.control.jsonrpc import OPERATION_FAILED, RpcError
from p2pd.control.search import members_to_search
from p2pd.membership.directory import Directory
from tests.support import SECRET, free_port


async def test_a_registry_that_cannot_be_reached_is_an_error_saying_what_to_check() -> None:
    async with RegistryClient([f"http://127.0.0.1:{free_port()}"], SECRET) as client:
        with pytest.raises(RpcError) as caught:
            await members_to_search(Directory("a" * 52, client, interval=10))
    assert caught.value.code == OPERATION_FAILED
    assert caught.value.message.startswith("cannot list the members to search: ")
    assert "check `p2pctl status` (registry)" in caught.value.message
