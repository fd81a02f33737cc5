"""The few lines of safetensors the experiment scripts need (no safetensors package on this machine).

read(path)  -> {name: (dtype, shape, raw bytes)} in file order, and the __metadata__ dict
write(path, tensors, metadata=None) lays them out in the given order, header padded to 8 bytes.
"""
import json
import struct


def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    metadata = header.pop("__metadata__", None)
    tensors = {}
    for name, v in header.items():
        a, b = v["data_offsets"]
        tensors[name] = (v["dtype"], v["shape"], data[a:b])
    return tensors, metadata


def write(path, tensors, metadata=None):
    header, chunks, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    hb = json.dumps(header).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + b"".join(chunks))
