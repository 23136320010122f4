"""A gRPC server on gRPC's C-core (Python grpcio), for interop tests.

Serves proto.Simple/Route (tests/../proto/simple.proto) with hand-encoded
protobuf, so no generated code (and no grpcio-tools) is needed. Prints
"PORT <n>" once listening on 127.0.0.1, then serves until stdin closes
(the test process ended) or SIGTERM.

Options:
  --max-concurrent-streams N   the server's SETTINGS_MAX_CONCURRENT_STREAMS
  --delay-ms MS                each call takes MS milliseconds
  --stall                      answer the response headers, then go silent
  --health-service NAME        serve grpc.health.v1.Health (the package
                               grpcio-health-checking) with NAME SERVING;
                               the stdin lines SERVING / NOT_SERVING set it
"""

import argparse
import sys
import threading
import time
from concurrent import futures

import grpc


def read_varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def request_data(raw):
    """Field 1 (string data) of a SimpleRequest."""
    i = 0
    while i < len(raw):
        key, i = read_varint(raw, i)
        if key >> 3 == 1 and key & 7 == 2:
            n, i = read_varint(raw, i)
            return raw[i:i + n].decode()
        if key & 7 == 0:
            _, i = read_varint(raw, i)
        elif key & 7 == 2:
            n, i = read_varint(raw, i)
            i += n
        else:
            return ""
    return ""


def response(code, value):
    value = value.encode()
    return b"\x08" + varint(code) + b"\x12" + varint(len(value)) + value


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-concurrent-streams", type=int, default=0)
    parser.add_argument("--delay-ms", type=int, default=0)
    parser.add_argument("--stall", action="store_true")
    # Serves grpc.health.v1.Health (grpcio-health-checking) with this
    # service SERVING; the lines SERVING / NOT_SERVING on stdin change it.
    parser.add_argument("--health-service", default=None)
    args = parser.parse_args()

    options = []
    if args.max_concurrent_streams:
        options.append(("grpc.max_concurrent_streams", args.max_concurrent_streams))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), options=options)
    port_holder = {}

    def route(raw, context):
        data = request_data(raw)
        if args.stall:
            context.send_initial_metadata(())
            time.sleep(3600)
        if args.delay_ms:
            time.sleep(args.delay_ms / 1000.0)
        return response(200, "hello %s from 127.0.0.1:%d" % (data, port_holder["port"]))

    handler = grpc.method_handlers_generic_handler(
        "proto.Simple",
        {"Route": grpc.unary_unary_rpc_method_handler(route)},
    )
    server.add_generic_rpc_handlers((handler,))
    health = None
    if args.health_service is not None:
        from grpc_health.v1 import health as health_lib
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_lib.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        health.set(args.health_service, health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    port_holder["port"] = port
    server.start()
    print("PORT %d" % port, flush=True)

    def watch_stdin():
        # Commands, one a line, until EOF (the test dropped us): stop.
        for line in sys.stdin:
            command = line.strip()
            if health is not None and command in ("SERVING", "NOT_SERVING"):
                from grpc_health.v1 import health_pb2

                status = health_pb2.HealthCheckResponse.ServingStatus.Value(command)
                health.set(args.health_service, status)
        server.stop(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
