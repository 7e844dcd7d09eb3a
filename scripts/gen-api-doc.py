#!/usr/bin/env python3
"""Write docs/API.md from the D-Bus contract dbus/io.github.boxd1.xml (comments included).

    python3 scripts/gen-api-doc.py            rewrite docs/API.md
    python3 scripts/gen-api-doc.py --check    exit 1 if docs/API.md is out of date (tests use it)
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONTRACT = REPO / "dbus" / "io.github.boxd1.xml"
OUTPUT = REPO / "docs" / "API.md"


def _comment(node: ET.Element) -> str:
    return " ".join((node.text or "").split())


def render() -> str:
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    root = ET.fromstring(CONTRACT.read_text(), parser=parser)
    out = ["# boxd D-Bus API", "",
           "Generated from [dbus/io.github.boxd1.xml](../dbus/io.github.boxd1.xml) by "
           "`scripts/gen-api-doc.py`; edit the XML, not this file.", ""]
    # The comment before <node> (outside the element tree) describes the API as a whole.
    head = CONTRACT.read_text().split("<node>", 1)[0]
    if "<!--" in head:
        text = head.split("<!--", 1)[1].split("-->", 1)[0]
        out += ["```text", "\n".join(line[2:] if line.startswith("  ") else line
                                      for line in text.strip("\n").splitlines()), "```", ""]
    for iface in root.iter("interface"):
        out += [f"## {iface.get('name')}", ""]
        pending = ""
        for child in iface:
            if child.tag is ET.Comment:
                pending = _comment(child)
                continue
            name = child.get("name")
            if child.tag == "method":
                ins = ", ".join(f"{a.get('type')} {a.get('name')}" for a in child.iter("arg")
                                if a.get("direction", "in") == "in")
                outs = ", ".join(f"{a.get('type')} {a.get('name')}" for a in child.iter("arg")
                                 if a.get("direction") == "out")
                out.append(f"- method **{name}**({ins})" + (f" -> ({outs})" if outs else ""))
            elif child.tag == "signal":
                args = ", ".join(f"{a.get('type')} {a.get('name')}" for a in child.iter("arg"))
                out.append(f"- signal **{name}**({args})")
            elif child.tag == "property":
                out.append(f"- property **{name}** `{child.get('type')}` ({child.get('access')})")
            if pending:
                out.append(f"  {pending}")
                pending = ""
        out.append("")
    return "\n".join(out)


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print("docs/API.md is out of date: run scripts/gen-api-doc.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
