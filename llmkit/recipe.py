"""One configuration scheme for every job: a YAML recipe plus dotted ``key=value`` overrides,
turned into (nested) dataclasses with errors that name the key, the value and the fix.

    cfg = load_recipe(TrainRecipe, "recipes/quickstart.yaml", ["train.lr=3e-4", "model.preset=tiny-llama"])

`explain_recipe` builds the same object and says where each value came from (`--print-config`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

T = TypeVar("T")


class RecipeError(ValueError):
    """A recipe or override is invalid; the message names the key and the fix."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> (["train", "lr"], 0.0003). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise RecipeError(f"override {text!r} is not of the form key=value (e.g. train.lr=3e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _looks_numeric(value):  # YAML 1.1 reads "3e-4" as a string
        value = float(value)
    return key.split("."), value


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    data = _deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"recipe {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path} must be a mapping of sections, not {type(data).__name__}")
    return data


def load_recipe(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = (),
                base: dict[str, Any] | None = None) -> T:
    """Build dataclass `cls` from `base`, then the YAML file at `path`, then `overrides`."""
    data = _merge(base or {}, read_yaml(path) if path else {})
    return from_dict(cls, apply_overrides(data, overrides))


@dataclasses.dataclass(frozen=True)
class Setting:
    """One value of a resolved recipe and where it came from."""

    key: str  # dotted: "train.lr", "model.overrides.dim", "data.sources[0].path"
    value: Any  # as the recipe object holds it (after the dataclasses' own checks)
    source: str  # "default", "yaml", "override" (a key=value) or "flag" (a command-line option)
    origin: str = ""  # the YAML file, or the flag ("--model"); empty for defaults and overrides


def explain_recipe(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = (),
                   base: dict[str, Any] | None = None, *, base_origin: str = "", flags: Sequence[str] = ()
                   ) -> tuple[T, list[Setting]]:
    """`load_recipe` that also says where every value came from: (recipe, one Setting per value,
    in field order). `base` is labelled as YAML from `base_origin`; `flags[i]` names the
    command-line option that produced `overrides[i]` ("" or missing: a key=value the user typed)."""
    recipe = load_recipe(cls, path, overrides, base)
    sources: dict[str, Any] = {}
    if base:
        _merge_sources(sources, base, ("yaml", base_origin))
    if path:
        _merge_sources(sources, read_yaml(path), ("yaml", str(path)))
    for i, text in enumerate(overrides):
        keys, value = parse_override(text)
        flag = flags[i] if i < len(flags) else ""
        node = sources
        for part in keys[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[keys[-1]] = _label(value, ("flag", flag) if flag else ("override", ""))
    return recipe, [Setting(key, value, *_source_of(sources, parts)) for key, parts, value in _leaves(recipe)]


def _label(value: Any, label: tuple[str, str]) -> Any:
    """A source tree for a value one layer set: mappings mirrored key by key, anything else one
    leaf holding the label and the value itself, so that for a list of sections the keys its
    items left out can still be told apart (they are defaults)."""
    if isinstance(value, dict) and value:
        return {k: _label(v, label) for k, v in value.items()}
    return ("leaf", label, value)


def _merge_sources(tree: dict[str, Any], layer: dict[str, Any], label: tuple[str, str]) -> None:
    """Record `layer` over `tree` the way `_merge` merges data: mappings key by key, the rest replaced."""
    for k, v in layer.items():
        if isinstance(v, dict) and isinstance(tree.get(k), dict):
            _merge_sources(tree[k], v, label)
        else:
            tree[k] = _label(v, label)


def _source_of(tree: dict[str, Any], parts: Sequence[str | int]) -> tuple[str, str]:
    """The (source, origin) of the value at `parts`: the last layer that set it, else the default."""
    node: Any = tree
    for i, part in enumerate(parts):
        if isinstance(node, tuple):  # a layer set a whole list: did its item give this key?
            _, label, value = node
            for rest in parts[i:]:
                ok = (isinstance(value, list) and isinstance(rest, int) and rest < len(value)
                      or isinstance(value, dict) and rest in value)
                if not ok:
                    return "default", ""
                value = value[rest]
            return label
        if not isinstance(node, dict) or part not in node:
            return "default", ""
        node = node[part]
    return node[1] if isinstance(node, tuple) else ("default", "")


def _leaves(obj: Any, key: str = "", parts: tuple = ()) -> list[tuple[str, tuple, Any]]:
    """(dotted key, path, value) of every value in a recipe object: sections and the keys of
    mappings are walked into, and so are lists of sections (``data.sources[0].path``)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = []
        for f in dataclasses.fields(obj):
            out += _leaves(getattr(obj, f.name), f"{key}.{f.name}" if key else f.name, parts + (f.name,))
        return out
    if isinstance(obj, dict) and obj:
        out = []
        for k, v in obj.items():
            out += _leaves(v, f"{key}.{k}", parts + (k,))
        return out
    if isinstance(obj, list) and obj and all(dataclasses.is_dataclass(v) for v in obj):
        out = []
        for i, v in enumerate(obj):
            out += _leaves(v, f"{key}[{i}]", parts + (i,))
        return out
    return [(key, parts, obj)]


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = _deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else _deepcopy(v)
    return out


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Instantiate (nested) dataclass `cls` from a dict, checking keys and value types."""
    if not isinstance(data, dict):
        raise RecipeError(f"{prefix.rstrip('.') or 'recipe'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        guess = suggest_key(cls, unknown[0])
        hint = f"did you mean {prefix}{guess}? " if guess else ""
        raise RecipeError(f"unknown key {prefix}{unknown[0]} in the recipe; {hint}known keys here: "
                          f"{', '.join(prefix + k for k in sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, RecipeError):
            raise
        raise RecipeError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from e


def suggest_key(cls: type, name: str) -> str | None:
    """The recipe key of `cls` that the unknown `name` most likely meant, or None: a near spelling
    of a field, a field that `name` extends (``lr_rate`` -> ``lr``), the same name one section
    down (``lr`` -> ``train.lr``, a key put at the wrong level), or a looser spelling match."""
    fields = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, fields, n=1, cutoff=0.8)
    if close:
        return close[0]
    # difflib ranks lr_rate nearer min_lr_ratio than lr; a field plus a suffix is the likelier slip
    extended = [k for k in fields if name.startswith(k + "_")]
    if extended:
        return max(extended, key=len)
    hints = typing.get_type_hints(cls)
    for key in fields:
        section = _dataclass_of(hints[key])
        if section is not None and name in {f.name for f in dataclasses.fields(section)}:
            return f"{key}.{name}"
    close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6)
    return close[0] if close else None


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass `tp` names, also inside ``X | None``; None for any other type."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return inner[0] if inner else None
    return None


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, key)
            except RecipeError as e:
                errors.append(str(e))
        raise RecipeError(errors[0] if errors else f"{key}={value!r} has the wrong type")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is Any or tp is typing.Any:
        return value
    if origin in (list, tuple, Sequence):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{key}={value!r} should be a list")
        inner = args[0] if args else Any
        return [_convert(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{key}={value!r} should be a mapping")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(f"{key}={value!r} should be true or false")
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or isinstance(value, float) and value.is_integer()):
            raise RecipeError(f"{key}={value!r} should be an integer")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{key}={value!r} should be a number")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise RecipeError(f"{key}={value!r} should be a string")
        return str(value)
    return value


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) -> plain dict, for writing the resolved config of a run."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True)
