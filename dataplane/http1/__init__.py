"""HTTP/1.1 data path of the sidecar: detection, parsing, pooling, per-request policy."""
