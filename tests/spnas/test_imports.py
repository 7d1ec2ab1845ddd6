"""The package's modules import one another without circles (function-level imports count:
a circle deferred into a function is still a circle in the design)."""

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                    "python")


def module_graph() -> dict[str, set[str]]:
    graph = {}
    base = os.path.join(ROOT, "spnas")
    for folder, _, files in os.walk(base):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
            module = rel.removesuffix(".__init__")
            package = module if name == "__init__.py" else module.rsplit(".", 1)[0]
            edges = set()
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.ImportFrom):
                    if node.level:
                        parts = package.split(".")
                        target = ".".join(parts[:len(parts) - node.level + 1])
                        target = f"{target}.{node.module}" if node.module else target
                    else:
                        target = node.module or ""
                    names = [f"{target}.{a.name}" for a in node.names]
                    edges |= {t for t in [target, *names]}
                elif isinstance(node, ast.Import):
                    edges |= {a.name for a in node.names}
            graph[module] = {e for e in edges if e.startswith("spnas") and e != module}
    # keep only edges to modules (not to names inside them)
    return {m: {e for e in edges if e in graph} for m, edges in graph.items()}


def find_cycle(graph):
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_circles():
    graph = module_graph()
    # a package importing its own submodules (lazily, for its public names) is not a circle
    # unless a submodule imports the package back
    assert len(graph) > 20
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_torch_free_config_knows_the_op_backends():
    import spnas_ops
    from spnas.config import OP_BACKENDS
    assert OP_BACKENDS == spnas_ops.BACKENDS
