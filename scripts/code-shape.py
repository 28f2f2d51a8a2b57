#!/usr/bin/env python3
"""Shape of the non-test Rust code: functions over 80 lines, files over 800 lines, `Result<_, String>`.

Usage: scripts/code-shape.py [ROOT] [--check]   (--check: exit 1 when any count is not zero)
"""
import os, re, sys
args = [a for a in sys.argv[1:] if a != "--check"]
check = "--check" in sys.argv[1:]
root = args[0] if args else "."
LIMIT = 80
FILE_LIMIT = 800
fn_re = re.compile(r'^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+"C"\s+)?fn\s+(\w+)')
long_fns, long_files, res_string = [], [], []
for dp, dn, fns in os.walk(root):
    dn[:] = [d for d in dn if d not in ("target", ".git", "tests", "benches")]
    for f in fns:
        if not f.endswith(".rs") or f.endswith("_tests.rs") or f == "tests.rs":
            continue
        p = os.path.join(dp, f)
        lines = open(p, encoding="utf-8").read().split("\n")
        # cut at #[cfg(test)] mod
        end = len(lines)
        for i, l in enumerate(lines):
            if l.strip() == "#[cfg(test)]" and i + 1 < len(lines) and re.match(r'\s*mod\s+\w+', lines[i+1]):
                end = i; break
        lines = lines[:end]
        if len(lines) > FILE_LIMIT:
            long_files.append((len(lines), p))
        for i, l in enumerate(lines):
            if re.search(r'Result<[^<>]*,\s*String>', l) and not l.strip().startswith("//"):
                res_string.append((p, i + 1))
            m = fn_re.match(l)
            if not m: continue
            depth, started, j = 0, False, i
            while j < len(lines):
                s = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j])
                s = re.sub(r"'(\\.|[^'\\])'", "''", s)
                s = s.split("//")[0]
                if not started and ";" in s and "{" not in s:
                    break
                for c in s:
                    if c == "{": depth += 1; started = True
                    elif c == "}": depth -= 1
                if started and depth <= 0:
                    break
                j += 1
            n = j - i + 1
            if started and n > LIMIT:
                long_fns.append((n, p, i + 1, m.group(7)))
print(f"functions over {LIMIT} lines: {len(long_fns)}")
for n, p, l, name in sorted(long_fns, reverse=True): print(f"  {n:4} {p}:{l} {name}")
print(f"files over {FILE_LIMIT} lines (non-test part): {len(long_files)}")
for n, p in sorted(long_files, reverse=True): print(f"  {n:4} {p}")
print(f"Result<_, String> in non-test code: {len(res_string)}")
for p, l in res_string: print(f"  {p}:{l}")
if check and (long_fns or long_files or res_string):
    sys.exit(1)
