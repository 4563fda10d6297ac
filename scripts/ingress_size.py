"""Print the size of serve_app/ingress.py's ImageIngress: methods, route decorators and lines (the
figure issue 10 asks for, before/after the pipeline moved out: `python scripts/ingress_size.py [FILE]`)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

path = Path(
    sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "serve_app" / "ingress.py"
)
source = path.read_text()
[cls] = [n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "ImageIngress"]
methods = [n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
routes = sum(
    isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and getattr(d.func.value, "id", "") == "app"
    for m in methods
    for d in m.decorator_list
)
print(
    f"ImageIngress: {len(methods)} methods, {routes} routes, {cls.end_lineno - cls.lineno + 1} lines "
    f"({path.name}: {len(source.splitlines())} lines)"
)
