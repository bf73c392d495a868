"""Multi-host meshns: one mesh shared by several hosts through etcd.

``etcd`` is a small synchronous client for etcd's v3 JSON gateway (plain HTTP/1.1, no gRPC
dependency) and ``etcd_wire`` its pure request/response codec; ``keys`` names every record of a
mesh in etcd (pure); ``store`` holds the few compare-and-set operations hosts share: the mesh's
cluster settings, each host's pod CIDR block, host and pod records. Everything a host agent
needs from another host goes through here, so the rest of meshns sees plain Python values.
"""
