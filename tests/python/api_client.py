"""A Python client of the local API (gRPC over the daemon's Unix socket), as a user of
another language would write it. Run by `.ci/run` against a real daemon:

    python3 tests/python/api_client.py <data dir> <store id>

It puts and reads a key, checks that a failure carries its stable `lattice-code`, and exits
non-zero on any mismatch. Needs `pip install grpcio grpcio-tools`; the API modules are
generated from proto/lattice.proto into a temporary folder on each run.
"""

import json
import os
import subprocess
import sys
import tempfile


def generate(out_dir):
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    proto = os.path.join(root, "proto")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", proto,
         "--python_out", out_dir, "--grpc_python_out", out_dir,
         os.path.join(proto, "lattice.proto")],
        check=True,
    )
    sys.path.insert(0, out_dir)


def main():
    data_dir, store = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as out:
        generate(out)
        import grpc
        import lattice_pb2 as pb
        import lattice_pb2_grpc as rpc

        # grpcio would send the socket path as the HTTP/2 authority; name a host instead.
        channel = grpc.insecure_channel(
            "unix:" + os.path.join(data_dir, "lattice.sock"),
            options=[("grpc.default_authority", "localhost")],
        )
        stores = rpc.StoreServiceStub(channel)
        put = stores.Call(pb.CallRequest(
            store=store, method="put",
            args_json=json.dumps({"key": "from-python", "value": "hello"})))
        written = json.loads(put.json)
        assert "hash" in written, written
        got = json.loads(stores.Call(pb.CallRequest(
            store=store, method="get", args_json=json.dumps({"key": "from-python"}))).json)
        assert got["value"] == "hello", got
        # Fixed-shape answers are typed messages.
        status = stores.Status(pb.StoreRequest(store=store))
        assert status.open and status.state == "ready", status
        assert status.witnessed >= 3 and status.projected == status.witnessed, status
        peers = stores.Peers(pb.StoreRequest(store=store)).items
        assert [(p.status, p.me) for p in peers] == [("active", True)], peers
        history = stores.History(pb.HistoryRequest(store=store, limit=1)).items
        assert history[0].hash == written["hash"] and history[0].partition == "data", history
        try:
            stores.Status(pb.StoreRequest(store="ffffffffffff"))
            raise SystemExit("a status of an unknown store should fail")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e
            codes = dict(e.trailing_metadata() or ())
            assert codes.get("lattice-code") == "not_found", codes
        # Blobs: a client stream in, a server stream out, checked against the hash.
        blobs = rpc.BlobServiceStub(channel)
        data = os.urandom(700_000)

        def parts():
            yield pb.BlobPutRequest(store=store, data=data[:100_000], pin=True)
            for at in range(100_000, len(data), 250_000):
                yield pb.BlobPutRequest(data=data[at:at + 250_000])

        blob = blobs.Put(parts())
        assert blob.size == len(data) and blob.pins == 1, blob
        received, info = b"", None
        for reply in blobs.Get(pb.BlobGetRequest(store=store, hash=blob.hash)):
            if reply.HasField("info"):
                info = reply.info
            elif reply.HasField("data"):
                received += reply.data
        assert info is not None and info.hash == blob.hash, info
        assert received == data
        ranged = b"".join(r.data for r in blobs.Get(pb.BlobGetRequest(
            store=store, hash=blob.hash, offset=10, length=5)) if r.HasField("data"))
        assert ranged == data[10:15], ranged
        status = blobs.Status(pb.BlobStatusRequest(store=store, list=True))
        assert any(b.hash == blob.hash for b in status.items), status
        node = rpc.NodeServiceStub(channel).Status(pb.Empty())
        print(json.dumps({"ok": True, "node": node.key, "written": written["hash"]}))


if __name__ == "__main__":
    main()
