"""Makes one gRPC call with python grpcio over a unix socket, as a Python client of Veil
would: the channel target is ``unix:SOCKET`` (grpcio then chooses the :authority itself;
recent releases send the socket path), or, with ``--authority``, that :authority is
forced (``grpc.default_authority``).

Usage: grpccall.py [--stream] [--authority A] SOCKET /package.Service/Method REQUEST_HEX

The request is hex-encoded protobuf, sent as is. Prints one JSON object:
{"code": N, "message": "...", "replies": ["HEX", ...], "grpcio": "VERSION"}; code 0 is OK.
"""

import argparse
import json

import grpc


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--authority")
    parser.add_argument("socket")
    parser.add_argument("method")
    parser.add_argument("request")
    args = parser.parse_args()
    options = []
    if args.authority is not None:
        options.append(("grpc.default_authority", args.authority))
    result = {"code": 0, "message": "", "replies": [], "grpcio": grpc.__version__}
    with grpc.insecure_channel("unix:" + args.socket, options=options) as channel:
        call = channel.unary_stream if args.stream else channel.unary_unary
        method = call(
            args.method,
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        request = bytes.fromhex(args.request)
        try:
            replies = method(request, timeout=20)
            if not args.stream:
                replies = [replies]
            result["replies"] = [r.hex() for r in replies]
        except grpc.RpcError as e:
            result["code"] = e.code().value[0]
            result["message"] = e.details() or ""
    print(json.dumps(result))


if __name__ == "__main__":
    main()
