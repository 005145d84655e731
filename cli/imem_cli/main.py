"""The `imem` command line, on top of every package: chat and memory operations (the client), `serve` (the
launcher), `gateway`, `store` (offline maintenance) and `bench` (the benchmarks), each imported where its
command runs."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from imem_bench import BENCHMARKS
from imem_client.client import Client, ServiceError, default_url


def _connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help=f"grpc://host:port or http://host:port (default {default_url()}, "
                                                     "from IMEM_URL)")
    parser.add_argument("-c", "--conversation", required=True, help="conversation id")
    parser.add_argument("--tenant", default="default")


def cmd_chat(args) -> int:
    with Client(args.url) as client:
        sampling = {k: v for k, v in (("max_tokens", args.max_tokens), ("temperature", args.temperature))
                    if v is not None}
        if args.json:
            reply = client.chat(args.conversation, args.message, args.tenant, sampling, stream=not args.no_stream)
            print(json.dumps(reply.to_json(), ensure_ascii=False))
            return 0
        for chunk in client.stream_chat(args.conversation, args.message, args.tenant, sampling,
                                        stream=not args.no_stream):
            print(chunk.text, end="", flush=True)
            if chunk.final:
                print(f"\n[turn {chunk.turn}, prompt {chunk.prompt_tokens} tokens, "
                      f"{len(chunk.recalled)} turn(s) recalled]", file=sys.stderr)
        print()
        return 0


def cmd_memory(args) -> int:
    with Client(args.url) as client:
        if args.operation == "ingest":
            raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
            try:
                history = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise CliError(f"{args.file}: not valid UTF-8 (byte {error.start})") from None
            result = client.ingest(args.conversation, history, args.tenant)
        elif args.operation == "recall":
            result = client.recall(args.conversation, args.query, args.tenant)
            if not args.json:
                print(f"prompt tokens: {result['prompt_tokens']}")
                for item in result["recalled"]:
                    print(f"recalled turn {item['turn']} ({item['score']:.3f}) {item['role']}: {item['text']}")
                for item in result["recent"]:
                    print(f"recent   turn {item['turn']} {item['role']}: {item['text']}")
                return 0
        elif args.operation == "export":
            result = client.export(args.conversation, args.tenant)
        else:
            result = client.delete(args.conversation, args.tenant)
        print(json.dumps(result, ensure_ascii=False, indent=None if args.operation == "export" else 2))
        return 0


class CliError(Exception):
    """Bad input the command line itself found; printed as `error: ...`, exit code 2."""


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop()


def cmd_serve(args) -> int:
    from imem_serve.launcher import TritonServer, supervise

    server = TritonServer(http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                          host=args.host)
    data_dir = os.environ.get("IMEM_DATA_DIR", str(Path.cwd() / "data"))
    # Ctrl-C and SIGTERM unwind the wait below, so the server is stopped outside the signal handler.
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    gateway = None
    try:
        server.start()
        server.wait_ready(timeout=600)
        gateway = _start_gateway(args) if args.gateway else None
        print(f"\nInfinite Memory Inference is ready.\n"
              f"  gRPC     {args.host}:{args.grpc_port}   (imem chat --url grpc://localhost:{args.grpc_port} ...)\n"
              f"  HTTP     http://{args.host}:{args.http_port}/v2/models/chat/generate_stream\n"
              f"  metrics  http://{args.host}:{args.metrics_port}/metrics\n"
              f"  memory   {os.environ.get('QDRANT_URL') or data_dir}\n"
              + (f"  OpenAI   http://{os.environ.get('GATEWAY_HOST', '0.0.0.0')}:{args.gateway_port}/v1   (gateway)\n"
                 if gateway else "")
              + "Ctrl-C stops it.", flush=True)
        if not args.restart_on_failure:
            return server.started.wait()
        supervise(server, log=lambda message: print(message, flush=True))
        return 0
    except _Stop:
        print("\nstopping Triton ...", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop_gateway(gateway)
        server.stop()


def cmd_gateway(args) -> int:
    from imem_gateway.keys import KeyConfigError, add_to_file
    from imem_gateway.launch import run
    from imem_gateway.settings import Settings

    if args.new_key:
        if not args.keys_file:
            print("error: --new-key needs --keys-file (or IMEM_API_KEYS_FILE)", file=sys.stderr)
            return 2
        try:
            key = add_to_file(Path(args.keys_file), args.new_key)
        except KeyConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"new key for tenant {args.new_key!r} (only its SHA-256 is stored in {args.keys_file}):\n{key}")
        return 0
    settings = Settings()
    settings.host, settings.port, settings.api_keys_file = args.host, args.port, args.keys_file
    settings.triton_url = args.url or settings.triton_url
    return run(settings)


def _start_gateway(args):
    """`imem serve --gateway`: the gateway as a child process, pointed at this Triton's gRPC port."""
    return subprocess.Popen([sys.executable, "-m", "imem_cli", "gateway", "--port", str(args.gateway_port),
                             "--url", f"grpc://127.0.0.1:{args.grpc_port}"])


def _stop_gateway(gateway) -> None:
    if gateway is None:
        return
    gateway.terminate()  # before Triton, so it stops taking requests first
    try:
        gateway.wait(timeout=30)
    except subprocess.TimeoutExpired:
        gateway.kill()


def cmd_store(args) -> int:
    """Maintenance of the store (imem/maintenance.py); the embedded store's server must be stopped."""
    from dataclasses import replace

    from imem import maintenance
    from imem.config import load
    from imem.store import StoreUnavailable, open_store

    config = load()
    data_dir = Path(args.data_dir or config.memory.data_dir)
    try:
        if args.operation == "backup":
            copied = maintenance.backup(data_dir, Path(args.path))
        elif args.operation == "restore":
            copied = maintenance.restore(Path(args.path), data_dir)
        elif args.operation == "compact":
            copied = maintenance.compact(data_dir)
        elif args.operation == "prune":
            settings = replace(config.memory, data_dir=str(data_dir), create_store="no", store_lock_wait_s=0)
            store = open_store(settings, dim=config.embedder.dim)
            try:
                conversations, turns = maintenance.prune(store, args.older_than_days)
            finally:
                store.close()
            print(f"prune: {conversations} conversations, {turns} turns deleted")
            return 0
        else:
            from imem.embedding import Embedder

            copied = maintenance.reembed(data_dir, Embedder(config.embedder).embed)
    except StoreUnavailable as error:
        raise CliError(str(error)) from None
    print(f"{args.operation}: {copied} turns")
    return 0


def cmd_bench(args) -> int:
    from imem_bench import run

    return run(args.name, args.rest)


def build_parser() -> argparse.ArgumentParser:
    """Every command and its options; each command's function is its `run` default."""
    parser = argparse.ArgumentParser(prog="imem", description="Infinite Memory Inference: chat that remembers")
    commands = parser.add_subparsers(dest="command", required=True)

    chat = commands.add_parser("chat", help="send a message; prints the reply as it streams")
    _connection(chat)
    chat.add_argument("--json", action="store_true", help="print one JSON object with the reply and its memory")
    chat.add_argument("--no-stream", action="store_true", help="ask for the whole reply at once")
    chat.add_argument("--max-tokens", type=int)
    chat.add_argument("--temperature", type=float)
    chat.add_argument("message")
    chat.set_defaults(run=cmd_chat)

    memory = commands.add_parser("memory", help="direct memory operations")
    operations = memory.add_subparsers(dest="operation", required=True)
    ingest = operations.add_parser("ingest", help="import history: JSON lines of role/speaker, text, timestamp")
    _connection(ingest)
    ingest.add_argument("file", help="JSON-lines file, or - for standard input")
    recall = operations.add_parser("recall", help="what memory would put in the prompt for QUERY (no generation)")
    _connection(recall)
    recall.add_argument("--json", action="store_true")
    recall.add_argument("query")
    for name, text in (("export", "print every turn as JSON"), ("delete", "delete the conversation")):
        _connection(operations.add_parser(name, help=text))
    memory.set_defaults(run=cmd_memory)

    store = commands.add_parser("store", help="offline maintenance of the embedded memory store (server stopped)")
    store_operations = store.add_subparsers(dest="operation", required=True)
    for name, text in (("backup", "copy the store into PATH (a new folder)"),
                       ("restore", "copy a backup at PATH into the data folder (which must hold no store)"),
                       ("compact", "rewrite the store, leaving deleted turns off the disk"),
                       ("reembed", "give every turn a new vector from the configured embedder (IMEM_EMBEDDER)"),
                       ("prune", "delete conversations with nothing stored for N days (a Qdrant server: while "
                                 "serving)")):
        operation = store_operations.add_parser(name, help=text)
        operation.add_argument("--data-dir", help="the store's data folder (default IMEM_DATA_DIR)")
        if name in ("backup", "restore"):
            operation.add_argument("path")
        if name == "prune":
            operation.add_argument("--older-than-days", type=float, required=True, metavar="N")
    store.set_defaults(run=cmd_store)

    serve = commands.add_parser("serve", help="run tritonserver on the model repository (foreground)")
    serve.add_argument("--host", default=os.environ.get("IMEM_HOST", "0.0.0.0"))
    serve.add_argument("--http-port", type=int, default=int(os.environ.get("HTTP_PORT", 8000)))
    serve.add_argument("--grpc-port", type=int, default=int(os.environ.get("GRPC_PORT", 8001)))
    serve.add_argument("--metrics-port", type=int, default=int(os.environ.get("METRICS_PORT", 8002)))
    serve.add_argument("--gateway", action="store_true", help="also run the OpenAI-compatible gateway")
    serve.add_argument("--no-restart", dest="restart_on_failure", action="store_false",
                       help="exit when tritonserver or one of its model processes dies, instead of starting it again")
    serve.add_argument("--gateway-port", type=int, default=int(os.environ.get("GATEWAY_PORT", 8080)))
    serve.set_defaults(run=cmd_serve)

    gateway = commands.add_parser("gateway", help="run the OpenAI-compatible HTTP gateway in front of Triton")
    gateway.add_argument("--url", default=None, help="Triton's gRPC address, grpc://host:port (default IMEM_URL, "
                                                     "else grpc://localhost:GRPC_PORT)")
    gateway.add_argument("--host", default=os.environ.get("GATEWAY_HOST", "0.0.0.0"))
    gateway.add_argument("--port", type=int, default=int(os.environ.get("GATEWAY_PORT", 8080)))
    gateway.add_argument("--keys-file", default=os.environ.get("IMEM_API_KEYS_FILE", ""),
                         help="JSON file of hashed API keys (default IMEM_API_KEYS_FILE)")
    gateway.add_argument("--new-key", metavar="TENANT", help="create an API key for TENANT in --keys-file and exit")
    gateway.set_defaults(run=cmd_gateway)

    bench = commands.add_parser("bench", help="benchmarks (each prints a table and writes JSON)", add_help=False)
    bench.add_argument("name", choices=sorted(BENCHMARKS), help="; ".join(f"{k}: {v}" for k, v in BENCHMARKS.items()))
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(run=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ServiceError, CliError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a file that cannot be read
        print(f"error: {error.strerror}: {error.filename}" if error.filename else f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
