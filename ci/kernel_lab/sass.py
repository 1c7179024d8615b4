"""Compile a Triton kernel for sm_90 without a GPU and summarize its SASS (opcode counts in the hot loop)."""
import collections
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGET = GPUTarget("cuda", 90, 32)


def compile_sass(fn, signature: dict, constexprs: dict, num_warps=8, num_stages=1, div16=None):
    """div16: names of the arguments a launch would find divisible by 16 (default: every pointer and i32)."""
    names = list(signature)
    div16 = [n for n in names if signature[n] != "constexpr"] if div16 is None else div16
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in div16}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    k = triton.compile(src, target=TARGET, options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        nvd = triton.__file__.rsplit("/", 1)[0] + "/backends/nvidia/bin/nvdisasm"
        sass = subprocess.run([nvd, "-c", f.name], capture_output=True, text=True).stdout
    return k, sass


def opcodes(sass: str):
    ops = collections.Counter()
    for line in sass.splitlines():
        m = re.search(r"/\*[0-9a-f]{4,}\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", line)
        if m:
            ops[m.group(2).split(".")[0]] += 1
    return ops


def loops(sass: str):
    """(label, instruction count, opcode counter) of each backward-branch loop body."""
    lines = [l for l in sass.splitlines() if re.search(r"/\*[0-9a-f]{4,}\*/", l) or l.strip().startswith(".L")]
    out = []
    labels = {}
    for i, l in enumerate(lines):
        m = re.match(r"\s*(\.L\w+):", l)
        if m:
            labels[m.group(1)] = i
    for i, l in enumerate(lines):
        m = re.search(r"BRA\s+(?:`\()?(\.L\w+)", l)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            body = "\n".join(lines[labels[m.group(1)]:i + 1])
            c = opcodes(body)
            out.append((m.group(1), sum(c.values()), c))
    return out
