"""Load profiles: YAML file(s) -> ``Profile``.

A profile is referred to by path (``./team.yaml``) or by built-in name, with or
without ``.yaml`` (``gpu-a100``, ``gpu-a100.yaml``); a path that exists wins.

``extends:`` names a parent (built-in name or a path relative to the child's
file); chains are followed and cycles are an error. Merge rules, child over
parent:

- mappings merge key by key, recursively;
- scalars (and ``null``) in the child replace the parent's;
- lists replace the parent's list, except the keys in ``APPEND_LISTS``
  (``software.pip``, ``software.apt``), where the child's items are appended
  to the parent's and duplicates dropped.

``--set key.path=value`` overrides are applied last, the value parsed as YAML
(``--set software.pip='[numpy]'`` sets a list). Every value remembers the
file, line and column it came from, so errors point at it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aibuild import kv
from aibuild._resources import profiles_dir
from aibuild.errors import Diagnostic, ProfileError
from aibuild.profile.schema import NAME_RE

APPEND_LISTS = frozenset({"software.pip", "software.apt"})
# Version-like keys keep the text as written: `python: 3.10` is "3.10", not the float 3.1.
RAW_SCALAR_KEYS = frozenset(
    {"software.python", "software.cuda", "software.torch", "hardware.driver", "software.os"}
)


@dataclass(frozen=True)
class Pos:
    file: str
    line: int
    col: int


@dataclass
class Profile:
    """A merged profile: plain data plus where every key path came from."""

    name: str
    data: dict[str, Any]
    positions: dict[str, Pos] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # the extends chain, child first
    source: Path | None = None  # the file the user named (None for built-ins by name)

    def pos(self, key: str) -> Pos:
        """Where KEY (or its nearest present ancestor) was written."""
        probe = key
        while probe:
            if probe in self.positions:
                return self.positions[probe]
            # "software.pip[3]" -> "software.pip" -> "software"
            if probe.endswith("]") and "[" in probe:
                probe = probe[: probe.rindex("[")]
            else:
                probe = probe.rpartition(".")[0]
        return Pos(self.files[0] if self.files else "<profile>", 1, 1)

    def diag(self, severity: str, message: str, key: str) -> Diagnostic:
        p = self.pos(key)
        return Diagnostic(severity, message, key, p.file, p.line, p.col)


def builtin_profiles() -> dict[str, Path]:
    """Built-in name -> file. Names starting with '_' are shared bases, not listed."""
    return {p.stem: p for p in sorted(profiles_dir().glob("*.yaml")) if not p.stem.startswith("_")}


def _builtin_path(name: str) -> Path | None:
    stem = name[:-5] if name.endswith(".yaml") else name
    path = profiles_dir() / f"{stem}.yaml"
    return path if path.is_file() and "/" not in stem else None


def locate(ref: str, relative_to: Path | None = None) -> Path:
    """Find a profile file from a path or a built-in name."""
    candidates = []
    if relative_to is not None:
        candidates.append(relative_to / ref)
    candidates.append(Path(ref))
    for c in candidates:
        if c.is_file():
            return c
    builtin = _builtin_path(ref)
    if builtin is not None:
        return builtin
    import difflib

    names = list(builtin_profiles())
    close = difflib.get_close_matches(ref.removesuffix(".yaml"), names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f"; built-in profiles: {', '.join(names)}"
    raise ProfileError(f"profile '{ref}' not found: no such file and no built-in profile{hint}")


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# Bounds on what one profile file may expand to. A real profile is a few kB with a few
# hundred values; YAML aliases can make a 1 kB file expand to billions ("billion laughs").
MAX_PROFILE_BYTES = 1 << 20
MAX_VALUES = 20_000
MAX_DEPTH = 32


class _Walker:
    """Builds plain data from a YAML node tree, recording each key path's position.

    Every node is counted as it is expanded (an alias counts each time it is used) and
    nesting is bounded, so a hostile file fails in bounded time and memory."""

    def __init__(self, loader: yaml.SafeLoader, file: str) -> None:
        self.loader = loader
        self.file = file
        self.positions: dict[str, Pos] = {}
        self.values = 0

    def pos(self, node: yaml.Node) -> Pos:
        return Pos(self.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def _count(self, node: yaml.Node, depth: int) -> None:
        self.values += 1
        too_deep = depth >= MAX_DEPTH
        if self.values > MAX_VALUES or too_deep:
            what = (
                f"nests deeper than {MAX_DEPTH} levels"
                if too_deep
                else f"expands to more than {MAX_VALUES} values (YAML aliases?)"
            )
            raise ProfileError(
                Diagnostic("error", f"the YAML {what}", "", self.file, *self._lc(node))
            )

    def _merged_pairs(self, node: yaml.MappingNode, memo: dict[int, int]) -> int:
        """How many pairs ``node`` holds once its merge keys (``<<``) are flattened, without
        flattening: PyYAML's ``flatten_mapping`` copies merged pairs, so nested merges grow
        exponentially before any of them is counted."""
        if id(node) in memo:
            return memo[id(node)]
        memo[id(node)] = MAX_VALUES + 1  # a merge cycle counts as too many
        total = 0
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merged = (
                    value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                )
                total += sum(
                    self._merged_pairs(m, memo) for m in merged if isinstance(m, yaml.MappingNode)
                )
            else:
                total += 1
            if total > MAX_VALUES:
                break
        memo[id(node)] = total
        return total

    def walk(self, node: yaml.Node, path: str, depth: int = 0) -> Any:
        self._count(node, depth)
        if isinstance(node, yaml.MappingNode):
            if self._merged_pairs(node, {}) > MAX_VALUES:
                self.values = MAX_VALUES
                self._count(node, depth)
            own = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
            self.loader.flatten_mapping(node)  # merged pairs first, then the node's own
            first_own = len(node.value) - own
            out: dict[Any, Any] = {}
            own_keys: set[str] = set()
            for index, (key_node, value_node) in enumerate(node.value):
                if not isinstance(key_node, yaml.ScalarNode):
                    raise ProfileError(
                        Diagnostic(
                            "error", "keys must be strings", path, self.file, *self._lc(key_node)
                        )
                    )
                key = self.loader.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    raise ProfileError(
                        Diagnostic(
                            "error",
                            f"keys must be strings, got {str(key)[:40]!r}",
                            path,
                            self.file,
                            *self._lc(key_node),
                        )
                    )
                sub = f"{path}.{key}" if path else key
                if index >= first_own:  # merged keys may repeat: the later (and own) one wins
                    if key in own_keys:
                        raise ProfileError(
                            Diagnostic(
                                "error",
                                f"duplicate key '{key}'",
                                sub,
                                self.file,
                                *self._lc(key_node),
                            )
                        )
                    own_keys.add(key)
                self.positions[sub] = self.pos(value_node if _is_scalar(value_node) else key_node)
                out[key] = self.walk(value_node, sub, depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                sub = f"{path}[{i}]"
                self.positions[sub] = self.pos(item)
                items.append(self.walk(item, sub, depth + 1))
            return items
        if (
            path in RAW_SCALAR_KEYS
            and isinstance(node, yaml.ScalarNode)
            and node.tag
            in (
                "tag:yaml.org,2002:float",
                "tag:yaml.org,2002:int",
            )
        ):
            return node.value
        return self.loader.construct_object(node, deep=True)

    @staticmethod
    def _lc(node: yaml.Node) -> tuple[int, int]:
        return node.start_mark.line + 1, node.start_mark.column + 1


def _is_scalar(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode)


def parse_yaml(text: str, file: str) -> tuple[Any, dict[str, Pos]]:
    """Parse YAML text into data and key-path positions; YAML errors become ProfileError."""
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # the reader refuses control characters here
        node = loader.get_single_node()
        if node is None:
            return None, {}
        walker = _Walker(loader, file)
        return walker.walk(node, ""), walker.positions
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise ProfileError(
            Diagnostic("error", f"invalid YAML: {problem}", "", file, line, col)
        ) from None
    except RecursionError:
        raise ProfileError(
            Diagnostic("error", f"the YAML nests deeper than {MAX_DEPTH} levels", "", file, 1, 1)
        ) from None
    except yaml.YAMLError as exc:
        message = " ".join(str(exc).split())
        raise ProfileError(
            Diagnostic("error", f"invalid YAML: {message}", "", file, 1, 1)
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Pos], str]:
    file = _display(path)
    try:
        if path.stat().st_size > MAX_PROFILE_BYTES:
            raise ProfileError(
                Diagnostic(
                    "error",
                    f"the profile is larger than {MAX_PROFILE_BYTES >> 10} KiB",
                    "",
                    file,
                    1,
                    1,
                )
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(
            Diagnostic("error", f"cannot read profile: {exc}", "", file, 1, 1)
        ) from None
    data, positions = parse_yaml(text, file)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError(
            Diagnostic(
                "error",
                f"a profile must be a mapping of keys, got {type(data).__name__}",
                "",
                file,
                1,
                1,
            )
        )
    return data, positions, file


def merge(parent: Any, child: Any, path: str = "") -> Any:
    """Child over parent, by the module's merge rules."""
    if isinstance(parent, dict) and isinstance(child, dict):
        out = dict(parent)
        for key, value in child.items():
            sub = f"{path}.{key}" if path else key
            out[key] = merge(parent[key], value, sub) if key in parent else copy.deepcopy(value)
        return out
    if path in APPEND_LISTS and isinstance(parent, list) and isinstance(child, list):
        return parent + [item for item in child if item not in parent]
    return copy.deepcopy(child)


def _load_chain(path: Path, seen: list[Path]) -> tuple[dict[str, Any], dict[str, Pos], list[str]]:
    real = path.resolve()
    if real in seen:
        chain = " -> ".join(_display(p) for p in [*seen, real])
        raise ProfileError(f"extends cycle: {chain}")
    data, positions, file = _read(path)
    parent_ref = data.pop("extends", None)
    if parent_ref is None:
        return data, positions, [file]
    if not isinstance(parent_ref, str) or not parent_ref.strip():
        p = positions.get("extends", Pos(file, 1, 1))
        raise ProfileError(
            Diagnostic(
                "error",
                "extends must be a profile name or a relative path",
                "extends",
                p.file,
                p.line,
                p.col,
            )
        )
    try:
        parent_path = locate(parent_ref, relative_to=path.parent)
    except ProfileError as exc:
        p = positions.get("extends", Pos(file, 1, 1))
        raise ProfileError(
            Diagnostic("error", exc.diagnostics[0].message, "extends", p.file, p.line, p.col)
        ) from None
    parent, parent_pos, files = _load_chain(parent_path, [*seen, real])
    # A profile's name is its own: a child that extends `gpu-h100` without a `name:` is
    # named after its file, never `gpu-h100` (it would build and replace that image's tag).
    parent.pop("name", None)
    parent_pos.pop("name", None)
    merged = merge(parent, data)
    # Positions: the child's win; list items appended keep their own positions.
    all_pos = {**parent_pos, **positions}
    return merged, all_pos, [file, *files]


def parse_override(text: str) -> tuple[str, Any]:
    """'software.torch=2.5.1' -> ('software.torch', '2.5.1'), value parsed as YAML."""
    try:
        key, raw = kv.split_item(text, option="--set", key=kv.DOTTED, example="KEY.PATH=VALUE")
    except ValueError as exc:
        raise ProfileError(Diagnostic("error", str(exc), "", "--set", 1, 1)) from None
    assert raw is not None
    if raw.strip() in ("", "null", "Null", "NULL", "~"):
        return key, None  # unset: "derive it", exactly like `key: null` in a file
    if key in RAW_SCALAR_KEYS:
        return key, raw.strip().strip("'\"")
    value, _ = parse_yaml(raw, f"--set {key}")
    return key, value


def apply_override(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            where = ".".join(parts[: i + 1])
            raise ProfileError(
                Diagnostic(
                    "error", f"cannot set '{key}': '{where}' is not a mapping", key, "--set", 1, 1
                )
            )
        node = nxt
    node[parts[-1]] = value


def load_profile(ref: str, overrides: Sequence[str] = ()) -> Profile:
    """Load a profile by path or built-in name, follow ``extends:``, apply ``--set``."""
    path = locate(ref)
    data, positions, files = _load_chain(path, [])
    for i, text in enumerate(overrides):
        key, value = parse_override(text)
        apply_override(data, key, value)
        positions[key] = Pos("--set", i + 1, 1)
        for sub in [p for p in positions if p.startswith(key + ".") or p.startswith(key + "[")]:
            positions[sub] = Pos("--set", i + 1, 1)
    name = data.get("name") if isinstance(data.get("name"), str) else None
    if name is None and not NAME_RE.fullmatch(path.stem):
        raise ProfileError(
            Diagnostic(
                "error",
                f"the profile has no `name:` and its file name {path.stem!r} is not a valid "
                "name (lowercase letters, digits, '.', '_', '-'): add `name: ...`",
                "name",
                _display(path),
                1,
                1,
            )
        )
    is_builtin = path.resolve().parent == profiles_dir().resolve()
    return Profile(
        name=name or path.stem,
        data=data,
        positions=positions,
        files=files,
        source=None if is_builtin else path,
    )


def is_profile_ref(ref: str) -> bool:
    """Whether ``ref`` names a profile rather than an image: an existing ``.yaml``/``.yml``
    file, or a built-in profile's name (with or without ``.yaml``). Every command that
    takes "a profile or an image" decides with this, profile first."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return True
    stem = ref[:-5] if ref.endswith(".yaml") else ref
    return stem in builtin_profiles()
