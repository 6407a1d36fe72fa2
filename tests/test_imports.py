"""The package's import graph: no circles, commands on top, lower rooms never reaching up.

Read from the source (ast), so it checks every module without importing any. An import inside a
function counts too: a circle that only closes at call time is still a circle to a reader.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "xformer"

# `python -m xformer.<name>`: thin entry points, the only modules with a __main__ block.
COMMANDS = {"xformer.main", "xformer.evaluate", "xformer.compile", "xformer.translate",
            "xformer.sample", "xformer.average", "xformer.selfcheck", "xformer.data.prepare"}
# Rooms a room may not import (directly or by a lazy import inside a function).
LOWER_ROOMS = {
    "xformer.runtime": ("model", "positional", "data", "tasks", "training", "evaluation",
                        "workdir", "targets", "config_lib", "train"),
    "xformer.positional": ("model", "data", "tasks", "training", "evaluation", "workdir",
                           "targets", "config_lib", "train"),
    "xformer.model": ("data", "tasks", "training", "evaluation", "workdir", "targets",
                      "config_lib", "train"),
    "xformer.data": ("model", "tasks", "training", "evaluation", "workdir", "targets",
                     "config_lib", "train"),
    "xformer.training": ("checks",),
    "xformer.targets": ("checks",),
}
# Decoding starts and stops at the tokenizer's special ids: the model room reads those constants.
ALLOWED_UPWARD = {("xformer.model.decode", "xformer.data.tokenizer")}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
  return {_module_name(p): ast.parse(p.read_text(), str(p)) for p in PACKAGE.rglob("*.py")}


def _imports(name: str, tree: ast.Module, known: set[str], is_package: bool) -> set[str]:
  """The package modules `name` imports: `from a.b import c` means a.b.c when that is a module,
  else the package a.b (whose __init__ runs)."""
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name in known}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = name.split(".") if is_package else name.split(".")[:-1]
        anchor = anchor[:len(anchor) - node.level + 1]
        base = ".".join(anchor + ([node.module] if node.module else []))
      for alias in node.names:
        full = f"{base}.{alias.name}"
        out.add(full if full in known else base)
  return {m for m in out if m in known and m != name}


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  known = set(modules)
  packages = {_module_name(p) for p in PACKAGE.rglob("__init__.py")}
  return {n: _imports(n, t, known, n in packages) for n, t in modules.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one module, or a module importing itself."""
  index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_circle_finder_finds_a_circle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert _circles(graph) == [["a", "b", "c"]]
  assert _circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
  assert _circles(_graph()) == []


def test_commands_are_the_only_main_modules_and_nothing_imports_them():
  modules = _modules()
  mains = {n for n, tree in modules.items() if any(
      isinstance(node, ast.Compare) and ast.unparse(node) == "__name__ == '__main__'"
      for node in ast.walk(tree))}
  assert mains == COMMANDS
  graph = _graph()
  importers = {n: sorted(m for m in deps if m in COMMANDS) for n, deps in graph.items()}
  assert {n: d for n, d in importers.items() if d} == {}


@pytest.mark.parametrize("room", sorted(LOWER_ROOMS))
def test_lower_rooms_do_not_reach_up(room):
  graph = _graph()
  forbidden = tuple(f"xformer.{r}" for r in LOWER_ROOMS[room])
  reaching = {n: sorted(d for d in deps if d.startswith(forbidden) and (n, d) not in ALLOWED_UPWARD)
              for n, deps in graph.items()
              if (n == room or n.startswith(room + ".")) and n not in COMMANDS}
  assert {n: d for n, d in reaching.items() if d} == {}


def test_the_top_of_the_package_is_a_spine():
  top = sorted(p.name for p in PACKAGE.glob("*.py"))
  assert len(top) <= 12, top


def test_functions_are_short():
  long = []
  for path in PACKAGE.rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        length = node.end_lineno - node.lineno + 1
        if length > 60:
          long.append(f"{path.relative_to(PACKAGE)}:{node.name} ({length} lines)")
  assert long == []


@pytest.mark.slow
def test_every_command_answers_help_with_its_own_flags():
  """Each command parses only its flags (no library module defines any) and --help exits 0."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  own_flag = {"xformer.main": "--workdir", "xformer.evaluate": "--average_last",
              "xformer.compile": "--target", "xformer.translate": "--nbest",
              "xformer.sample": "--top_p", "xformer.average": "--last",
              "xformer.selfcheck": "--steps",
              "xformer.data.prepare": "--num_examples"}
  assert set(own_flag) == COMMANDS
  for command, flag in own_flag.items():
    out = subprocess.run([sys.executable, "-m", command, "--help"], capture_output=True,
                         text=True, timeout=120, check=False, cwd=PACKAGE.parent)
    assert out.returncode == 0, (command, out.stderr[-1000:])
    assert flag in out.stdout, (command, out.stdout[-1000:])


def test_no_test_reaches_the_network():
  """The conftest guard: a connection off this machine fails at once; loopback is allowed."""
  import socket  # pylint: disable=import-outside-toplevel
  with pytest.raises(OSError, match="no network in tests"):
    socket.create_connection(("192.0.2.1", 80), timeout=1)  # TEST-NET-1: never routed.
  server = socket.socket()
  server.bind(("127.0.0.1", 0))
  server.listen(1)
  with socket.create_connection(server.getsockname(), timeout=5):
    pass
  server.close()
