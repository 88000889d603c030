"""``forwarder echo-server`` and ``forwarder demo``: the forwarder without a model of your own."""

from __future__ import annotations

import argparse

__all__ = ["add_commands", "cmd_demo", "cmd_echo_server"]


def cmd_echo_server(args: argparse.Namespace) -> int:
    from forwarder.devtools.echo_server import make_server, serve

    serve(
        make_server(
            args.host,
            args.port,
            delay=args.delay,
            ready_after=args.ready_after,
            predict_route=args.predict_route,
            healthcheck_route=args.healthcheck_route,
            verbose=args.verbose,
        )
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from forwarder.devtools.demo import run_demo

    return run_demo(
        tasks=args.tasks, pool=args.pool, concurrency=args.concurrency, delay=args.delay
    )


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    echo = commands.add_parser("echo-server", help="a model server that echoes its input")
    echo.add_argument("--host", default="127.0.0.1")
    echo.add_argument("--port", type=int, default=5005)
    echo.add_argument("--delay", type=float, default=0.0, help="seconds before each reply")
    echo.add_argument("--ready-after", type=float, default=0.0, help="seconds until /readyz is 200")
    echo.add_argument("--predict-route", default="/predict")
    echo.add_argument("--healthcheck-route", default="/readyz")
    echo.add_argument("--verbose", action="store_true")
    echo.set_defaults(run=cmd_echo_server)

    demo = commands.add_parser("demo", help="echo server + worker on the embedded default")
    demo.add_argument("--tasks", type=int, default=50)
    demo.add_argument("--pool", default="prefork", choices=("prefork", "gevent"))
    demo.add_argument("--concurrency", type=int, default=4)
    demo.add_argument("--delay", type=float, default=0.05, help="model latency in seconds")
    demo.set_defaults(run=cmd_demo)
