#!/usr/bin/env python3
"""Runs the AVX-512 G.711 kernels on an emulated CPU and checks them bit for bit.

Why: the build and CI machines may lack AVX-512, and then the native exhaustive tests
skip the `avx512` variant. This driver runs it on BochsCPU (the Bochs x86 emulator as a
library, PyPI package `bochscpu-python`), whose CPU model has AVX-512.

How: it starts the test binary's ignored test `g711::tests::avx512_emulation_harness`,
which prepares every case natively (inputs, a pre-filled output, and the scalar
reference's output), prints their addresses and waits. This script copies all of that
process's readable memory into the emulator at the same virtual addresses, and for each
case calls the harness's `emu_run(case)` on the emulated CPU (user mode, long mode,
XCR0 with the AVX-512 state enabled). `emu_run` runs the kernel, compares with the
reference and returns `mismatches << 1 | avx512_detected`. Every case must return 1
(no mismatch, vector body used), and the control case whose expectation was corrupted on
purpose must report exactly one mismatch.

Usage (from the workspace root):
    python3 -m venv /tmp/bvenv && /tmp/bvenv/bin/pip install bochscpu-python
    /tmp/bvenv/bin/python engine/dsp/src/g711/emulate_avx512.py

The 0.4.0 wheel links two glibc 2.38 symbols (`__isoc23_strtoull`, `__isoc23_sscanf`);
on an older glibc (Debian 12 has 2.36) this script builds a two-function shim with `cc`
and re-executes itself with it in LD_PRELOAD.
"""

import json
import os
import subprocess
import sys
import tempfile

SHIM_C = r"""
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
unsigned long long __isoc23_strtoull(const char *s, char **e, int b) { return strtoull(s, e, b); }
int __isoc23_sscanf(const char *s, const char *f, ...) {
    va_list ap; va_start(ap, f); int r = vsscanf(s, f, ap); va_end(ap); return r;
}
"""


def import_bochscpu():
    try:
        import bochscpu  # noqa: F401

        return
    except ImportError as e:
        if "__isoc23" not in str(e) or os.environ.get("G711_EMU_SHIM"):
            print(f"SKIPPED: bochscpu-python is not importable: {e}")
            sys.exit(0)
    shim_dir = tempfile.mkdtemp()
    src, lib = os.path.join(shim_dir, "shim.c"), os.path.join(shim_dir, "libshim.so")
    with open(src, "w") as f:
        f.write(SHIM_C)
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", lib, src], check=True)
    env = dict(os.environ, G711_EMU_SHIM="1", LD_PRELOAD=lib)
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


import_bochscpu()
import bochscpu  # noqa: E402
import bochscpu.cpu  # noqa: E402
import bochscpu.memory  # noqa: E402

PAGE = bochscpu.memory.page_size()
STACK_GVA = 0x1000_0000_0000  # unused by Linux user space here (checked below)
STACK_PAGES = 64
RETURN_GVA = 0x2000_0000_0000  # never mapped: returning there faults and stops the run
GPA_BASE = 0x1_0000_0000
PML4_GPA = 0x10_0000
MAX_REGION = 1 << 28


def harness_binary(root):
    out = subprocess.run(
        ["cargo", "test", "-p", "earshot-dsp", "--lib", "--no-run", "--message-format=json"],
        cwd=root, check=True, capture_output=True, text=True,
    ).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
                and msg["target"]["name"] == "earshot_dsp":
            return msg["executable"]
    raise SystemExit("could not find the earshot-dsp test binary")


def load_process(pid, pt):
    """Maps every readable region of `pid` at its own virtual address; returns
    (host pages, ranges)."""
    hvas, ranges, gpa = [], [], GPA_BASE
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            name = fields[5] if len(fields) > 5 else ""
            if "r" not in fields[1] or name in ("[vvar]", "[vsyscall]") \
                    or hi - lo > MAX_REGION:
                continue
            try:
                mem.seek(lo)
                data = mem.read(hi - lo)
            except OSError:
                continue
            ranges.append((lo, hi))
            for off in range(0, hi - lo, PAGE):
                hva = bochscpu.memory.allocate_host_page()
                bochscpu.memory.page_insert(gpa, hva)
                bochscpu.memory.phy_write(gpa, list(data[off:off + PAGE]))
                pt.insert(lo + off, gpa, 1)
                hvas.append(hva)
                gpa += PAGE
    return hvas, ranges, gpa


def segment(selector, attr):
    s = bochscpu.Segment()
    s.present, s.selector, s.base, s.limit, s.attr = True, selector, 0, 0xFFFF_FFFF, attr
    return s


def main():
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "../../../.."))
    binary = harness_binary(root)
    proc = subprocess.Popen(
        [binary, "--ignored", "--exact", "g711::tests::avx512_emulation_harness",
         "--nocapture", "--test-threads=1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        for line in proc.stdout:
            # libtest may print "test <name> ... " on the same line first.
            if "EMU {" in line:
                info = json.loads(line[line.index("EMU {") + 4:])
                break
        else:
            raise SystemExit("harness printed no case list")

        pt = bochscpu.memory.PageMapLevel4Table()
        hvas, ranges, gpa = load_process(proc.pid, pt)
        for lo, hi in ranges:
            assert hi <= STACK_GVA or lo >= STACK_GVA + STACK_PAGES * PAGE
            assert not lo <= RETURN_GVA < hi
        for i in range(STACK_PAGES):
            hva = bochscpu.memory.allocate_host_page()
            bochscpu.memory.page_insert(gpa, hva)
            pt.insert(STACK_GVA + i * PAGE, gpa, 1)
            hvas.append(hva)
            gpa += PAGE
        for hva, table_gpa in pt.commit(PML4_GPA):
            bochscpu.memory.page_insert(table_gpa, hva)
    finally:
        proc.stdin.write("done\n")
        proc.stdin.close()
        proc.wait()

    stopped = {}

    def on_exception(sess, cpu_id, vector, error_code):
        stopped["vector"] = vector
        sess.stop()

    hook = bochscpu.Hook()
    hook.exception = on_exception

    def call(case_address):
        sess = bochscpu.Session()
        sess.missing_page_handler = lambda gpa: (_ for _ in ()).throw(
            RuntimeError(f"missing page {gpa:#x}"))
        state = bochscpu.State()
        bochscpu.cpu.set_long_mode(state)
        # OSFXSR, OSXMMEXCPT and OSXSAVE; XCR0: x87, SSE, AVX, opmask, ZMM_Hi256,
        # Hi16_ZMM (what an OS sets to let programs use AVX-512).
        state.cr4 = state.cr4 | (1 << 9) | (1 << 10) | (1 << 18)
        state.xcr0 = 0xE7
        state.mxcsr = 0x1F80
        state.cr3 = PML4_GPA
        state.cs = segment(0x33, 0x22FB)
        data = segment(0x2B, 0xCF3)
        state.ds = state.ss = state.es = state.fs = state.gs = data
        rsp = STACK_GVA + STACK_PAGES * PAGE - 64
        assert bochscpu.memory.virt_write(PML4_GPA, rsp, list(RETURN_GVA.to_bytes(8, "little")))
        state.rsp = rsp
        state.rip = info["entry"]
        state.rdi = case_address
        sess.cpu.state = state
        stopped.clear()
        sess.run([hook])
        end = sess.cpu.state
        # The only way out is the fault on fetching the return address.
        if end.rip != RETURN_GVA:
            raise RuntimeError(f"stopped at {end.rip:#x} with exception {stopped}")
        return end.rax

    failures = 0
    cases = list(zip(info["labels"], info["cases"]))
    for label, address in cases:
        result = call(address)
        mismatches, detected = result >> 1, result & 1
        control = label.startswith("control")
        ok = detected == 1 and mismatches == (1 if control else 0)
        if not ok:
            failures += 1
            print(f"FAIL {label}: {mismatches} mismatches, avx512 detected: {bool(detected)}")
    print(f"emulated avx512: {len(cases) - 1} cases + 1 control, "
          f"{len(cases) - failures} passed, {failures} failed")
    for hva in hvas:
        bochscpu.memory.release_host_page(hva)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
