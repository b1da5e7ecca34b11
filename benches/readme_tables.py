#!/usr/bin/env python3
"""readme_tables.py LOG [README]: put the matrix and target tables of a `.ci/run` (or
`benches/targets.sh`) log into README.md's Performance section, in place of the previous run's.

The log's section 4 (cores shared) and 4b (one core each) each print a matrix table per payload
(after swarm-lab's "payload 256M" / "payload 1G" line) and a targets table per payload (after
"### 256 MiB payload" / "### 1024 MiB payload"). README's "### Sharing both cores" and "### One
core each" sections hold the same eight tables, each after a caption naming its payload. The
prose around them (the run's summary, "Other targets") is written by hand.
"""
import re
import sys


def tables_of_log(lines):
    """{(section, kind, payload): [table lines]}; section 'shared' or 'pinned'."""
    found, section, payload = {}, None, None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith('## 4. '):
            section = 'shared'
        elif line.startswith('## 4b. '):
            section = 'pinned'
        elif line.startswith('## 4c. ') or line.startswith('## 5. '):
            section = None
        m = re.search(r'\] payload (\d+)([MG]) ', line) or re.match(r'### (\d+) MiB payload', line)
        if m:
            size = int(m.group(1)) * (1024 if m.lastindex == 2 and m.group(2) == 'G' else 1)
            payload = '1 GiB' if size == 1024 else f'{size} MiB'
        if section and line.startswith('| '):
            table = []
            while i < len(lines) and lines[i].startswith('|'):
                table.append(lines[i])
                i += 1
            kind = 'matrix' if table[0].startswith('| piece') else 'targets'
            found[(section, kind, payload)] = table
            continue
        i += 1
    return found


def replace_in_readme(readme, tables):
    out, section, caption, replaced = [], None, None, 0
    i = 0
    while i < len(readme):
        line = readme[i]
        if line.startswith('### Sharing both cores'):
            section = 'shared'
        elif line.startswith('### One core each'):
            section = 'pinned'
        elif line.startswith('### '):
            section = None
        m = re.match(r'(1 GiB|\d+ MiB) payload', line)
        if m:
            caption = m.group(1)
        if section and line.startswith('| '):
            kind = 'matrix' if line.startswith('| piece') else 'targets'
            while i < len(readme) and readme[i].startswith('|'):
                i += 1
            key = (section, kind, caption)
            if key not in tables:
                sys.exit(f'the log has no {kind} table for {caption} ({section})')
            out.extend(tables[key])
            replaced += 1
            continue
        out.append(line)
        i += 1
    return out, replaced


def main():
    log = open(sys.argv[1], encoding='utf-8', errors='replace').read().splitlines()
    path = sys.argv[2] if len(sys.argv) > 2 else 'README.md'
    readme = open(path, encoding='utf-8').read().splitlines()
    out, replaced = replace_in_readme(readme, tables_of_log(log))
    if replaced != 8:
        sys.exit(f'replaced {replaced} tables, expected 8')
    open(path, 'w', encoding='utf-8').write('\n'.join(out) + '\n')
    print(f'{path}: 8 tables replaced from {sys.argv[1]}')


if __name__ == '__main__':
    main()
