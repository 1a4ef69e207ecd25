"""The house (issue 26): the shape of the package's code, read from its source (parsed, never imported).

    python benchmarks/house.py                      # the repo's ablate/
    python benchmarks/house.py path/to/pkg --verbose
    python benchmarks/house.py --json house.json    # everything below, as JSON, for a before/after diff
    python benchmarks/house.py --entry ablate.train:run_task

Standard library only. What each part counts:

1. Rooms. A room is a module (a .py file); its size is its number of lines (``str.splitlines``, as
   ``wc -l`` for a file ending in a newline). Modules are grouped by folder (sub-package), with the
   count per folder, and the 10 largest files are listed.
2. Longest functions. Every ``def``/``async def`` (methods and nested functions included), ranked
   by ``end_lineno - lineno + 1`` (the decorators are not counted; the docstring is), named
   ``module:Class.method`` (``module:outer.inner`` for a nested function).
3. The folder tree of ``<package>/tricks/``: each folder and its number of modules.
4. Import circles. A node is a module; a package's ``__init__.py`` is the package's own node
   (``ablate/tricks/__init__.py`` is ``ablate.tricks``). An edge A -> B is an import in A of B:
   ``import ablate.x.y`` (the longest prefix that is a module of the package), ``from ablate.x
   import n`` and relative ``from ..x import n`` / ``from . import n``: to the submodule ``x.n`` when
   ``n`` is one, else to ``x`` (its module, or the package's ``__init__``). An import is *top-level*
   when it runs as the module is imported: in the module's body, including inside ``if``/``try``/
   ``with`` blocks and class bodies, but not under ``if TYPE_CHECKING:``; *lazy* when it sits in a
   function. Two graphs: top-level imports only, and all imports (lazy and TYPE_CHECKING ones
   included). Circles are the strongly connected components of more than one module (Tarjan);
   self-imports are ignored.
5. The walk of ``cfg``. From the entry function (default ``ablate.train:train_and_evaluate``), the
   calls in its body (nested ``def``s and classes excluded, lambdas included), in source order of
   the call's start, are followed when one of their first-level arguments (positional, keyword,
   ``*``/``**``) is a *cfg name* or an attribute/subscript chain rooted at one (``cfg.train``,
   ``cfg["data"]``, ``cfg.train.schedule``). The cfg names of the entry are ``cfg``; in a callee they
   are ``cfg`` (if it has such a local) plus the parameters that received a cfg-rooted argument
   (by position, skipping ``self``/``cls``, or by keyword; the ``*args``/``**kwargs`` parameter when the
   argument lands there), plus any local assigned a cfg chain (``m = cfg.model``; a plain name target),
   plus, in a function nested in the caller, the caller's cfg names it does not shadow (a closure).
   A callee is resolved only to a function of the package: a function of the same module, a function
   nested in the current one, a name imported with ``from X import f`` (followed through re-exports,
   e.g. a package ``__init__`` that imports it from a submodule), ``mod.f`` where ``mod`` is an imported
   package module, ``self.f``/``cls.f`` in a method of the same class (that class only, no bases),
   ``Class.f`` for a class of the package, and a class of the package called with cfg (its
   ``__init__``, if it defines one). Dynamic calls
   (``get_method(cfg.model._target_)``, ``instantiate(cfg.x)``) and calls on cfg itself
   (``cfg.get(...)``) are not followed, and a loop variable is no cfg name (``for name, node in
   cfg_tricks.items()``: ``build_tricks``'s call of ``instantiate_trick(name, node)`` is not followed). Each call site is one *stay* (entry into a function); a
   function already on the current path is not entered again (no cycles), and the walk goes at most
   6 calls deep. Reported: the stays, the distinct rooms (modules) of the stays, the *returns* (stays
   in the entry's module that come right after a stay in another module, in walk order), and the
   *climbs back* (the times the walk, finishing a call, steps back from a function in another module
   to one in the entry's module: each finished subtree that left the hub). ``--verbose`` prints the walk.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ENTRY = "ablate.train:train_and_evaluate"
MAX_DEPTH = 6


# ---------------------------------------------------------------- reading the package

class Module:
    def __init__(self, name: str, path: Path, is_package: bool):
        self.name, self.path, self.is_package = name, path, is_package
        self.text = path.read_text(encoding="utf-8")
        self.lines = len(self.text.splitlines())
        self.tree = ast.parse(self.text, filename=str(path))
        self.functions: dict[str, ast.AST] = {}   # qualified name in the module -> def
        self.classes: dict[str, ast.ClassDef] = {}  # top-level classes
        self.class_quals: set[str] = set()  # every class, nested ones included
        self.imports: list[tuple[str, str, int]] = []  # (target module, kind: top|lazy|typing, line)
        self.names: dict[str, tuple[str, str | None]] = {}  # local name -> (module, attribute or None)


def read_package(root: Path) -> dict[str, Module]:
    root = root.resolve()
    modules = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        parts = list(rel.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = Module(".".join(parts), path, is_package)
    return modules


def collect_functions(module: Module) -> None:
    def visit(body, prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                qual = prefix + node.name
                module.functions[qual] = node
                visit(node.body, qual + ".")
            elif isinstance(node, ast.ClassDef):
                if not prefix:
                    module.classes[node.name] = node
                module.class_quals.add(prefix + node.name)
                visit(node.body, prefix + node.name + ".")
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(node, field, []) or [], prefix)
    visit(module.tree.body, "")


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def resolve_from(module: Module, level: int, target: str | None) -> str | None:
    """The absolute module a ``from`` import names (``from ..x import``, level 2, target x)."""
    if level == 0:
        return target
    base = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    if level - 1 > len(base) - 1:
        return None
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_bindings(module: Module, node: ast.AST,
                    modules: dict[str, Module]) -> list[tuple[str | None, str, str | None]]:
    """(local name, module of the package, attribute or None) for each name an import statement binds to
    the package; local is None where the binding is not usable as a call's owner (``import a.b.c`` binds a)."""
    found = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            parts = alias.name.split(".")
            target = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in modules),
                          None)
            if target:
                found.append((alias.asname, target, None))
    elif isinstance(node, ast.ImportFrom):
        base = resolve_from(module, node.level, node.module)
        for alias in node.names if base is not None else ():
            local = alias.asname or alias.name
            if f"{base}.{alias.name}" in modules:
                found.append((local, f"{base}.{alias.name}", None))
            elif base in modules:
                found.append((local, base, alias.name))
    return found


def collect_imports(module: Module, modules: dict[str, Module]) -> None:
    def visit(node: ast.AST, kind: str) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for local, target, attr in import_bindings(module, node, modules):
                module.imports.append((target, kind, node.lineno))
                if local and kind == "top":
                    module.names[local] = (target, attr)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for child in ast.iter_child_nodes(node):
                visit(child, "lazy")
            return
        if isinstance(node, ast.If) and is_type_checking(node.test) and kind == "top":
            visit(node.test, kind)
            for child in node.body:
                visit(child, "typing")
            for child in node.orelse:
                visit(child, kind)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, kind)

    visit(module.tree, "top")


# ---------------------------------------------------------------- 4. import circles

def tarjan(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, on_stack, stack, comps = {}, {}, set(), [], []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            comps.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return comps


def import_graph(modules: dict[str, Module], kinds: set[str]) -> dict[str, set[str]]:
    graph = {name: set() for name in modules}
    for name, module in modules.items():
        for target, kind, _ in module.imports:
            if kind in kinds and target != name:
                graph[name].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[dict]:
    comps = [c for c in tarjan(graph) if len(c) > 1]
    comps.sort(key=lambda c: (-len(c), c))
    out = []
    for comp in comps:
        members = set(comp)
        edges = sorted(f"{a} -> {b}" for a in comp for b in graph[a] if b in members)
        out.append({"size": len(comp), "modules": comp, "edges": edges})
    return out


# ---------------------------------------------------------------- 5. the walk of cfg

def chain_root(node: ast.expr) -> str | None:
    """``cfg`` for ``cfg``, ``cfg.a.b``, ``cfg["x"].y``; None for anything else (calls included)."""
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def calls_in(body: list[ast.stmt]) -> list[ast.Call]:
    """The calls of a function body, nested defs and classes excluded, by position of their start."""
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return
        if isinstance(node, ast.Call):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    for stmt in body:
        visit(stmt)
    return sorted(found, key=lambda c: (c.lineno, c.col_offset))


def aliases(body: list[ast.stmt], names: set[str]) -> set[str]:
    """``names`` plus the plain locals assigned a chain rooted at one of them (to a fixed point)."""
    names = set(names)
    assigns = []
    for stmt in body:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                assigns.append((node.targets[0].id, node.value))
            elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and isinstance(node.target, ast.Name) and node.value:
                assigns.append((node.target.id, node.value))
    changed = True
    while changed:
        changed = False
        for target, value in assigns:
            if target not in names and chain_root(value) in names:
                names.add(target)
                changed = True
    return names


class Walker:
    def __init__(self, modules: dict[str, Module]):
        self.modules = modules
        self.stays: list[dict] = []

    def find_symbol(self, module: str, name: str, seen: frozenset = frozenset()) -> tuple[str, str, str] | None:
        """(module, name, "function" or "class") of the top-level function or class `name` of `module`,
        following `from X import name` re-exports."""
        mod = self.modules.get(module)
        if mod is None or (module, name) in seen:
            return None
        if name in mod.functions:
            return module, name, "function"
        if name in mod.classes:
            return module, name, "class"
        if name in mod.names:
            target, attr = mod.names[name]
            if attr is not None:
                return self.find_symbol(target, attr, seen | {(module, name)})
        return None

    def find_function(self, module: str, name: str) -> tuple[str, str] | None:
        """(module, qualified name) of the function called by calling `name` of `module`: the function,
        or the class's __init__."""
        found = self.find_symbol(module, name)
        if found is None:
            return None
        home, name, kind = found
        qual = name if kind == "function" else f"{name}.__init__"
        return (home, qual) if qual in self.modules[home].functions else None

    def find_method(self, module: str, cls: str, method: str) -> tuple[str, str] | None:
        found = self.find_symbol(module, cls)
        if found is None or found[2] != "class":
            return None
        qual = f"{found[1]}.{method}"
        return (found[0], qual) if qual in self.modules[found[0]].functions else None

    def resolve(self, module: str, qual: str, call: ast.Call) -> tuple[str, str] | None:
        mod = self.modules[module]
        func = call.func
        parts = qual.split(".")
        # names imported inside the function (lazy imports) come first, as they shadow the module's
        lazy = {local: (target, attr) for node in ast.walk(mod.functions[qual])
                for local, target, attr in import_bindings(mod, node, self.modules) if local}
        owner = func.id if isinstance(func, ast.Name) else (
            func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None)
        if owner in lazy:
            target, attr = lazy[owner]
            if isinstance(func, ast.Name):
                return self.find_function(target, attr) if attr else None
            return self.find_function(target, func.attr) if attr is None else self.find_method(target, attr, func.attr)
        if isinstance(func, ast.Name):
            # a function nested in this one (or in an enclosing one)
            for i in range(len(parts), 0, -1):
                nested = ".".join(parts[:i] + [func.id])
                if nested in mod.functions:
                    return module, nested
            return self.find_function(module, func.id)
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            owner = func.value.id
            if owner in ("self", "cls"):
                # the class the current method belongs to: the longest prefix of its name that is a class
                for i in range(len(parts) - 1, 0, -1):
                    cls = ".".join(parts[:i])
                    if cls in mod.class_quals:
                        method = f"{cls}.{func.attr}"
                        return (module, method) if method in mod.functions else None
                return None
            if owner in mod.names:
                target, attr = mod.names[owner]
                if attr is None:
                    return self.find_function(target, func.attr)
                return self.find_method(target, attr, func.attr)  # an imported class: Class.method(cfg)
            return self.find_method(module, owner, func.attr)  # a class of this module
        return None

    @staticmethod
    def bound_params(fn: ast.AST, call: ast.Call, cfg_names: set[str], skip_first: bool) -> set[str]:
        args = fn.args
        positional = [a.arg for a in args.posonlyargs + args.args]
        if skip_first and positional and positional[0] in ("self", "cls"):
            positional = positional[1:]
        keywords = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
        bound = set()
        for i, arg in enumerate(call.args):
            if isinstance(arg, ast.Starred):
                if chain_root(arg.value) in cfg_names:
                    bound.update(positional[i:])
                    if args.vararg:
                        bound.add(args.vararg.arg)
                break
            if chain_root(arg) in cfg_names:
                if i < len(positional):
                    bound.add(positional[i])
                elif args.vararg:
                    bound.add(args.vararg.arg)
        for kw in call.keywords:
            if chain_root(kw.value) not in cfg_names:
                continue
            if kw.arg is None:
                if args.kwarg:
                    bound.add(args.kwarg.arg)
            elif kw.arg in keywords:
                bound.add(kw.arg)
            elif args.kwarg:
                bound.add(args.kwarg.arg)
        return bound

    @staticmethod
    def carries_cfg(call: ast.Call, cfg_names: set[str]) -> bool:
        values = [a.value if isinstance(a, ast.Starred) else a for a in call.args] + [k.value for k in call.keywords]
        return any(chain_root(v) in cfg_names for v in values)

    def walk(self, module: str, qual: str, params: set[str], path: tuple, depth: int, line: int | None,
             inherited: frozenset = frozenset()) -> dict:
        fn = self.modules[module].functions[qual]
        node = {"module": module, "function": qual, "line": line, "children": []}
        self.stays.append(node)
        local_names = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)} | {
            a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs}
        own = {a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs}
        cfg_names = aliases(fn.body, params | ({"cfg"} & local_names) | (set(inherited) - own))
        if depth >= MAX_DEPTH:
            node["cut"] = "depth"
            return node
        for call in calls_in(fn.body):
            if not self.carries_cfg(call, cfg_names):
                continue
            target = self.resolve(module, qual, call)
            if target is None or target in path:
                continue
            callee = self.modules[target[0]].functions[target[1]]
            is_method = "." in target[1] and target[1].rsplit(".", 1)[0] in self.modules[target[0]].classes
            bound = self.bound_params(callee, call, cfg_names, skip_first=is_method)
            closure = frozenset(cfg_names) if target[0] == module and target[1].startswith(qual + ".") else frozenset()
            node["children"].append(self.walk(target[0], target[1], bound, path + (target,), depth + 1, call.lineno,
                                              closure))
        return node


def summarize_walk(tree: dict, stays: list[dict], hub: str) -> dict:
    rooms = [s["module"] for s in stays]
    returns = sum(1 for prev, cur in zip(rooms, rooms[1:]) if cur == hub and prev != hub)
    climbs = 0

    def visit(node: dict) -> None:
        nonlocal climbs
        for child in node["children"]:
            visit(child)
            if node["module"] == hub and child["module"] != hub:
                climbs += 1
    visit(tree)
    return {"entry": f"{tree['module']}:{tree['function']}", "stays": len(stays), "rooms": len(set(rooms)),
            "returns_to_entry_room": returns, "climbs_back_to_entry_room": climbs,
            "stays_per_room": dict(Counter(rooms).most_common()), "tree": tree}


def print_tree(node: dict, indent: int = 0) -> None:
    where = f" (line {node['line']})" if node["line"] else ""
    cut = "  [depth limit]" if node.get("cut") else ""
    print(f"  {'  ' * indent}{node['module']}:{node['function']}{where}{cut}")
    for child in node["children"]:
        print_tree(child, indent + 1)


# ---------------------------------------------------------------- the report

def measure(root: Path, entry: str) -> dict:
    modules = read_package(root)
    for module in modules.values():
        collect_functions(module)
    for module in modules.values():
        collect_imports(module, modules)
    package = root.resolve().name

    def folder(name: str) -> str:
        mod = modules[name]
        return name if mod.is_package else name.rsplit(".", 1)[0]

    rooms = [{"module": n, "folder": folder(n), "lines": m.lines} for n, m in sorted(modules.items())]
    per_folder = Counter(r["folder"] for r in rooms)
    largest = sorted(rooms, key=lambda r: (-r["lines"], r["module"]))[:10]

    functions = []
    for name, module in modules.items():
        for qual, fn in module.functions.items():
            functions.append({"function": f"{name}:{qual}", "lines": fn.end_lineno - fn.lineno + 1,
                              "line": fn.lineno})
    longest = sorted(functions, key=lambda f: (-f["lines"], f["function"]))[:10]

    tricks_tree = []
    tricks_root = root.resolve() / "tricks"
    if tricks_root.is_dir():
        for path in [tricks_root] + sorted(p for p in tricks_root.rglob("*") if p.is_dir() and p.name != "__pycache__"):
            tricks_tree.append({"folder": str(path.relative_to(root.resolve().parent)),
                                "depth": len(path.relative_to(tricks_root).parts),
                                "modules": len(list(path.glob("*.py")))})

    top = import_graph(modules, {"top"})
    every = import_graph(modules, {"top", "lazy", "typing"})
    lazy_edges = sorted({f"{n} -> {t}" for n, m in modules.items() for t, k, _ in m.imports if k != "top" and t != n})

    walk = None
    mod_name, _, func = entry.partition(":")
    if mod_name in modules and func in modules[mod_name].functions:
        walker = Walker(modules)
        tree = walker.walk(mod_name, func, {"cfg"}, ((mod_name, func),), 0, None)
        walk = summarize_walk(tree, walker.stays, mod_name)

    return {"package": package, "modules": len(modules), "lines": sum(r["lines"] for r in rooms),
            "rooms": rooms, "modules_per_folder": dict(sorted(per_folder.items())), "largest": largest,
            "functions": len(functions), "longest_functions": longest, "tricks_tree": tricks_tree,
            "import_edges": {"top_level": sum(map(len, top.values())), "all": sum(map(len, every.values()))},
            "lazy_import_edges": lazy_edges,
            "circles": {"top_level": circles(top), "all": circles(every)}, "cfg_walk": walk}


def report(data: dict, verbose: bool) -> None:
    print(f"1. Rooms: {data['modules']} modules, {data['lines']} lines in {data['package']}/")
    by_folder = defaultdict(list)
    for r in data["rooms"]:
        by_folder[r["folder"]].append(r)
    for folder_name, rooms in by_folder.items():
        print(f"  {folder_name}: {len(rooms)} modules, {sum(r['lines'] for r in rooms)} lines")
        if verbose:
            for r in rooms:
                print(f"    {r['lines']:5d}  {r['module']}")
    print("  largest files:")
    for r in data["largest"]:
        print(f"    {r['lines']:5d}  {r['module']}")
    print(f"2. Longest functions (of {data['functions']}):")
    for f in data["longest_functions"]:
        print(f"    {f['lines']:5d}  {f['function']} (line {f['line']})")
    print(f"3. {data['package']}/tricks/ tree:")
    for t in data["tricks_tree"]:
        print(f"    {'  ' * t['depth']}{t['folder']}/: {t['modules']} modules")
    edges = data["import_edges"]
    for kind, label in (("top_level", "top-level imports"), ("all", "all imports (lazy included)")):
        found = data["circles"][kind]
        print(f"4. Import circles, {label} ({edges[kind]} edges): {len(found)}")
        for c in found:
            print(f"    {c['size']} modules: {', '.join(c['modules'])}")
            if verbose:
                for e in c["edges"]:
                    print(f"      {e}")
    walk = data["cfg_walk"]
    if walk is None:
        print("5. cfg walk: entry not found")
        return
    print(f"5. cfg walk from {walk['entry']}: {walk['rooms']} rooms in {walk['stays']} stays, "
          f"{walk['returns_to_entry_room']} returns to the entry's room, "
          f"{walk['climbs_back_to_entry_room']} climbs back into it")
    print("    stays per room: " + ", ".join(f"{k} {v}" for k, v in walk["stays_per_room"].items()))
    if verbose:
        print_tree(walk["tree"], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", nargs="?", type=Path, default=REPO / "ablate")
    parser.add_argument("--entry", default=None, help="module:function to start the cfg walk "
                        f"(default {DEFAULT_ENTRY}, with the package's own name)")
    parser.add_argument("--json", type=Path, help="write all the figures to this file")
    parser.add_argument("--verbose", action="store_true", help="every module, each circle's edges, the walk's tree")
    args = parser.parse_args()
    entry = args.entry or DEFAULT_ENTRY.replace("ablate", args.package.resolve().name, 1)
    data = measure(args.package, entry)
    report(data, args.verbose)
    if args.json:
        args.json.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
