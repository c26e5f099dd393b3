#!/usr/bin/env python3
"""A small, independent OTLP trace receiver for ztrace's end-to-end tests.

Serves OTLP/gRPC (TraceService/Export) on --grpc-port and OTLP/HTTP protobuf (POST /v1/traces)
on --http-port, both on 127.0.0.1, and appends every span received to --out as one JSON line:

  {"transport": "grpc"|"http", "resource": {k: v}, "scope": name, "scope_version": v,
   "trace_id": hex, "span_id": hex, "parent_span_id": hex or "", "name": .., "kind": "SPAN_KIND_SERVER",
   "start_time_unix_nano": int, "end_time_unix_nano": int,
   "status": {"code": "STATUS_CODE_ERROR", "message": ..}, "attributes": {k: v},
   "headers": {k: v}}   # request headers / gRPC metadata whose name starts with "x-"

Attribute values are plain JSON values (int as int). Prints "ready" once both ports listen; exits
on SIGTERM or SIGINT. --fail-first N answers the first N export requests (either transport) with
UNAVAILABLE / 503 to exercise retries. Not a collector: no JSON encoding, no TLS, no auth.

Needs: pip install grpcio opentelemetry-proto protobuf
"""
import argparse
import gzip
import json
import signal
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as svc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as svc_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

lock = threading.Lock()
state = {"out": None, "fail_left": 0}


def value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)  # string_value, bool_value, int_value, double_value


def attrs(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def should_fail():
    with lock:
        if state["fail_left"] > 0:
            state["fail_left"] -= 1
            return True
        return False


def record(request, transport, headers):
    x_headers = {k.lower(): v for k, v in headers if k.lower().startswith("x-")}
    lines = []
    for rs in request.resource_spans:
        resource = attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                lines.append(json.dumps({
                    "transport": transport,
                    "resource": resource,
                    "scope": ss.scope.name,
                    "scope_version": ss.scope.version,
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "name": s.name,
                    "kind": trace_pb2.Span.SpanKind.Name(s.kind),
                    "start_time_unix_nano": s.start_time_unix_nano,
                    "end_time_unix_nano": s.end_time_unix_nano,
                    "status": {"code": trace_pb2.Status.StatusCode.Name(s.status.code),
                               "message": s.status.message},
                    "attributes": attrs(s.attributes),
                    "headers": x_headers,
                }))
    with lock:
        state["out"].write("".join(line + "\n" for line in lines))
        state["out"].flush()


class TraceService(svc_grpc.TraceServiceServicer):
    def Export(self, request, context):
        if should_fail():
            context.abort(grpc.StatusCode.UNAVAILABLE, "receiver told to fail (--fail-first)")
        record(request, "grpc", context.invocation_metadata())
        return svc.ExportTraceServiceResponse()


class HttpHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        if self.path.split("?")[0] != "/v1/traces":
            return self.reply(404, b"not found")
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/x-protobuf":
            return self.reply(415, b"only application/x-protobuf")
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding", "") == "gzip":
            body = gzip.decompress(body)
        if should_fail():
            return self.reply(503, b"receiver told to fail (--fail-first)")
        request = svc.ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception as e:  # noqa: BLE001 - any decode error is the client's fault
            return self.reply(400, str(e).encode())
        record(request, "http", self.headers.items())
        self.reply(200, svc.ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

    def reply(self, code, body, content_type="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass  # quiet: stdout is for "ready"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--out", required=True, help="file to append one JSON line per span to")
    parser.add_argument("--fail-first", type=int, default=0, help="fail this many export requests first")
    parser.add_argument("--grpc-unix", help="also listen for OTLP gRPC on this Unix socket (reachable from any network namespace)")
    args = parser.parse_args()
    state["out"] = open(args.out, "a", encoding="utf-8")
    state["fail_left"] = args.fail_first

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    svc_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    if server.add_insecure_port(f"127.0.0.1:{args.grpc_port}") == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{args.grpc_port} (gRPC)")
    if args.grpc_unix and server.add_insecure_port(f"unix:{args.grpc_unix}") == 0:
        sys.exit(f"cannot listen on {args.grpc_unix} (gRPC)")
    server.start()
    httpd = ThreadingHTTPServer(("127.0.0.1", args.http_port), HttpHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    httpd.shutdown()
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
