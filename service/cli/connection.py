"""`connection`: a connection's reconciled state, as JSON."""

from __future__ import annotations

import argparse

import orjson

from service.cli.common import EXIT_NO, fail, with_redis


def connection(args: argparse.Namespace) -> int:
    from service.stores.connections import ConnectionStore

    state = with_redis(lambda redis: ConnectionStore(redis).get(args.connection_id))
    if state is None:
        return fail(
            f"no connection {args.connection_id} here: no event for it has been processed yet "
            "(`codat-webhooks dead-letters list` shows events that failed)",
            EXIT_NO,
        )
    print(orjson.dumps(state, option=orjson.OPT_INDENT_2).decode())
    return 0
