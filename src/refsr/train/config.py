"""Reading a training config: YAML, ``--set`` overrides, validation against the schema, one-line errors.

:func:`load_config` reads a YAML file (``configs/*.yaml``), applies ``--set key.path=value`` overrides and
validates it against :class:`refsr.train.schema.Config` (pydantic). Every mistake is a
:class:`~refsr.errors.RefsrError` of one line that starts with the field's path, e.g. ``train.bacth: unknown
field; did you mean batch?``, so that a bad config fails before any work starts: this module turns
pydantic's errors into that line, and checks what the schema cannot know, the model's options against its
builder's signature and the datasets' options against theirs.

The schema itself (every section, field, default and bound, and :func:`~refsr.train.schema.parse_duration`)
is :mod:`refsr.train.schema`. :func:`describe_schema` prints it with each field's meaning;
``configs/README.md`` explains it.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Sequence, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from refsr.data.registry import check_dataset_options
from refsr.errors import RefsrError
from refsr.models._registry import model_options
from refsr.train.schema import LOSS_TYPES, Config, DatasetSection, Duration, Interval, LossConfig

__all__ = [
    "load_config",
    "parse_config",
    "read_config_file",
    "config_to_dict",
    "apply_overrides",
    "describe_schema",
    "schema_paths",
    "import_modules",
    "resolve_target",
]


# ------------------------------------------------------------------------------------------ reading
def read_config_file(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The expanded path and the YAML mapping of a config file (any ``task``), before overrides.

    Raises:
        RefsrError: a missing, unreadable, empty or invalid file, or one that is not a mapping.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise RefsrError(f"{p}: no such config file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RefsrError(f"{p}: not valid YAML ({_first_line(exc)})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RefsrError(f"{p}: cannot read the config ({exc})") from None
    if data is None:
        raise RefsrError(f"{p}: the config is empty")
    if not isinstance(data, dict):
        raise RefsrError(f"{p}: the config must be a mapping of sections (model, data, losses, ...)")
    return p, data


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` strings to the raw config (value parsed as YAML); returns ``data``.

    List items are addressed by index: ``losses.0.weight=0.5``. Missing mappings on the way are created;
    whether the field exists is checked afterwards, with the rest of the config.
    """
    for item in overrides:
        if "=" not in item:
            raise RefsrError(f"--set {item!r}: expected key.path=value, e.g. train.batch=4")
        key, _, text = item.partition("=")
        parts = [p for p in key.strip().split(".")]
        if not key.strip() or any(not p for p in parts):
            raise RefsrError(f"--set {item!r}: expected key.path=value, e.g. train.batch=4")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise RefsrError(f"--set {item!r}: the value is not valid YAML ({_first_line(exc)})") from None
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                node = node[_list_index(part, node, where, item)]
            elif isinstance(node, dict):
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            else:
                raise RefsrError(f"--set {item!r}: {'.'.join(parts[:depth]) or 'the config'} is not a mapping")
            if not isinstance(node, (dict, list)):
                raise RefsrError(f"--set {item!r}: {where} is {_describe(node)}, not a mapping")
        last = parts[-1]
        if isinstance(node, list):
            node[_list_index(last, node, key, item)] = value
        else:
            node[last] = value
    return data


def _list_index(part: str, node: list, where: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise RefsrError(f"--set {item!r}: {where}: a list of {len(node)} items needs an index 0..{len(node) - 1}")
    return int(part)


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def parse_config(data: Mapping[str, Any], *, check_registries: bool = True) -> Config:
    """A :class:`Config` from a mapping (the parsed YAML); raises :class:`RefsrError` naming the bad field.

    With ``check_registries`` the model options and dataset options are checked against the registered
    model's and dataset's signatures (after importing ``imports``).
    """
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise RefsrError(_one_line(exc.errors()[0])) from None
    if check_registries:
        import_modules(cfg.imports)
        _check_model(cfg)
        _check_datasets(cfg)
    return cfg


def load_config(path: str | Path, overrides: Sequence[str] = (), *, check_registries: bool = True) -> Config:
    """Read a YAML config file, apply ``--set`` overrides, and validate it.

    Raises:
        RefsrError: ``<file>: <field.path>: <what is wrong>``.
    """
    p, data = read_config_file(path)
    try:
        apply_overrides(data, overrides)
        cfg = parse_config(data, check_registries=check_registries)
    except RefsrError as exc:
        raise RefsrError(f"{p}: {exc}") from None
    if cfg.name is None:
        cfg.name = p.stem
    return cfg


# -------------------------------------------------------------------- pydantic's errors, in one line
# What a type error expects, by pydantic's error type (the schema is strict: these are all it raises).
_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}
_BOUNDS = {"greater_than_equal": (">=", "ge"), "less_than_equal": ("<=", "le")}


def _one_line(error: Mapping[str, Any]) -> str:
    """``<field.path>: <what is wrong>`` for one of pydantic's errors about a :class:`Config`."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    loc = tuple(error["loc"]) + tuple(ctx.get("at", ()))
    if kind == "invalid_key":  # a section's key
        return f"{_path(loc)}: field names must be strings"
    if loc[-1:] == ("[key]",):  # a mapping's key (model.overrides, a dataset's options)
        return f"{_path(loc[:-1])}: keys must be strings"
    path, annotation, parent = _path(loc), _annotation_at(loc), _annotation_at(loc[:-1])
    if kind == "refsr":  # a check of the schema's
        what = error["msg"]
    elif kind == "extra_forbidden":
        what = f"unknown field{_suggest(str(loc[-1]), list(parent.model_fields))}"
    elif kind in ("missing", "too_long", "tuple_type") and \
            get_origin(whole := parent if kind == "missing" else annotation) is tuple:
        # A fixed-length list (Adam's betas): a missing item or one too many is the list's mistake.
        what = f"expected a list of {len(get_args(whole))} values, got {_describe(value)}"
        path = _path(loc[:-1]) if kind == "missing" else path
    elif kind == "missing":
        what = f"required field is missing ({parent.model_fields[loc[-1]].description})"
    elif kind == "literal_error":
        choices = [str(c) for c in get_args(annotation)]
        what = f"unknown value {_describe(value)}{_suggest(str(value), choices)} (choose one of {', '.join(choices)})"
    elif kind == "union_tag_invalid":
        name = value["name"]
        what = f"unknown loss {_describe(name)}{_suggest(str(name), list(LOSS_TYPES))} " \
               f"(choose from {', '.join(LOSS_TYPES)})"
        path += ".name"
    elif kind == "union_tag_not_found":
        what = f"required field is missing (one of {', '.join(LOSS_TYPES)})"
        path += ".name"
    elif kind in _BOUNDS:
        sign, key = _BOUNDS[kind]
        what = f"must be {sign} {ctx[key]}, got {_describe(value)}"
    elif kind in _EXPECTED:
        example = " such as {name: l1, weight: 1.0}" if annotation == _LOSS_UNION else ""
        what = f"expected {_EXPECTED[kind]}{example}, got {_describe(value)}"
    else:  # an error the schema does not raise today: pydantic's words
        what = error["msg"]
    return f"{path or 'the config'}: {what}"


def _bare(annotation: Any) -> Any:
    """``annotation`` without ``Annotated`` and without ``| None``."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif _is_union(annotation) and type(None) in get_args(annotation) and len(get_args(annotation)) == 2:
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        else:
            return annotation


def _walk(loc: Sequence[str | int]) -> tuple[str, Any]:
    """The printed path of pydantic's ``loc`` in a :class:`Config` and the annotation found there (None
    where the schema does not say, e.g. inside a mapping of options). The losses' tags (the ``name`` that
    chose the loss class) and a dataset's ``options`` are in ``loc`` but not in the path."""
    path, annotation = "", Config
    for item in loc:
        annotation = _bare(annotation)
        if annotation == _LOSS_UNION and item in LOSS_TYPES:
            annotation = LOSS_TYPES[item]
        elif _is_model(annotation) and issubclass(annotation, DatasetSection) and item == "options":
            annotation = None  # a dataset's options stand beside the section's fields
        elif isinstance(item, int) and get_origin(annotation) in (list, tuple):
            path += f"[{item}]"
            args = get_args(annotation)
            annotation = args[0] if get_origin(annotation) is list else args[item] if item < len(args) else None
        else:
            path = f"{path}.{item}" if path else str(item)
            fields = annotation.model_fields if _is_model(annotation) else {}
            annotation = fields[item].annotation if item in fields else None
    return path, _bare(annotation)


def _path(loc: Sequence[str | int]) -> str:
    return _walk(loc)[0]


def _annotation_at(loc: Sequence[str | int]) -> Any:
    return _walk(loc)[1]


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


_LOSS_UNION = _bare(LossConfig)


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {close[0]}?" if close else ""


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------- checks that need the registries
def _check_model(cfg: Config) -> None:
    name = cfg.model.name
    if ":" in name:
        if cfg.task == "restoration":
            raise RefsrError(f"model.name: {name!r}: module:attribute names are for the contrastive tasks and "
                             "ccnet; register a restoration model with refsr.models.register_model")
        options = _signature_options(resolve_target(name, "model.name"))
    elif cfg.task == "ccnet":
        raise RefsrError(f"model.name: task ccnet trains a CC-Net: name its class, refsr.models.refsrnet:CCNet, "
                         f"not {name!r}")
    else:
        try:
            options = model_options(name)
        except RefsrError as exc:
            raise RefsrError(f"model.name: {exc}") from None
    if options is None:
        return
    for key in cfg.model.overrides:
        if key not in options:
            raise RefsrError(
                f"model.overrides.{key}: model {name!r} has no such option{_suggest(key, options)} "
                f"(its options: {', '.join(options) or 'none'})"
            )


def _signature_options(target: Any) -> list[str] | None:
    """The keyword options of a class or builder named ``module:attribute``; ``None`` when it takes any."""
    try:
        params = dict(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return None
    params.pop("self", None)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return list(params)


def resolve_target(target: str, path: str) -> Any:
    """The object named ``module:attribute`` (dotted attributes allowed); errors name ``path``."""
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise RefsrError(f"{path}: {target!r} is not of the form module:attribute")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as exc:
        raise RefsrError(f"{path}: cannot import {module!r} ({exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RefsrError(f"{path}: module {module!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RefsrError(f"{path}: {target!r} is not a class or function")
    return obj


def _check_datasets(cfg: Config) -> None:
    for i, source in enumerate(cfg.data.train.sources):
        check_dataset_options(source.dataset, source.options, f"data.train.sources[{i}]")
    if cfg.data.val is not None:
        check_dataset_options(cfg.data.val.dataset, cfg.data.val.options, "data.val")


def import_modules(names: Sequence[str]) -> None:
    """Import the config's ``imports`` (custom models and datasets register themselves on import)."""
    for i, name in enumerate(names):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise RefsrError(f"imports[{i}]: cannot import {name!r} ({exc}); is it on PYTHONPATH?") from None


# ---------------------------------------------------------------------------------------------- output
def config_to_dict(obj: Any) -> Any:
    """The plain (YAML-able) form of a config or any part of it; :func:`parse_config` reads it back.

    A dataset's ``options`` stand beside its fields, as a config file writes them.
    """
    if isinstance(obj, BaseModel):
        out: dict[str, Any] = {}
        for name in type(obj).model_fields:
            value = config_to_dict(getattr(obj, name))
            if isinstance(obj, DatasetSection) and name == "options":
                out.update(value)
            else:
                out[name] = value
        return out
    if isinstance(obj, (list, tuple)):
        return [config_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: config_to_dict(v) for k, v in obj.items()}
    return obj


def describe_schema() -> str:
    """Every field with its type, default and meaning, one line each (``section.field: ...``)."""
    lines: list[str] = []

    def walk(cls: type[BaseModel], prefix: str, defaults: BaseModel | None = None) -> None:
        for name, f in cls.model_fields.items():
            doc = f.description or ""
            if issubclass(cls, DatasetSection) and name == "options":
                lines.append(f"{prefix}.<option>: any -- {doc}")
                continue
            path = f"{prefix}.{name}" if prefix else name
            annotation = _bare(f.annotation)
            if defaults is not None:
                value = getattr(defaults, name)
            else:
                value = None if f.is_required() else f.get_default(call_default_factory=True)
            if f.is_required() and defaults is None:
                default = " (required)"
            elif isinstance(value, BaseModel) and not isinstance(value, Interval):
                default = ""
            elif isinstance(value, Interval):
                given = ", ".join(f"{k}: {v}" for k, v in config_to_dict(value).items() if v is not None)
                default = f" = {{{given}}}"
            else:
                default = f" = {config_to_dict(value)!r}"
            lines.append(f"{path}: {_type_name(f.annotation)}{default} -- {doc}")
            if name == "losses" and cls is Config:
                for loss_name, loss_cls in LOSS_TYPES.items():
                    walk(loss_cls, f"losses[name={loss_name}]")
            elif _is_model(annotation) and annotation is not Interval:
                walk(annotation, path, value if isinstance(value, BaseModel) else None)
            elif get_origin(annotation) is list and _is_model(get_args(annotation)[0]):
                walk(get_args(annotation)[0], path + "[]")

    walk(Config, "")
    return "\n".join(lines)


def schema_paths() -> list[str]:
    """Every field path of the schema (losses as ``losses[name=<loss>].field``)."""
    return [line.split(":", 1)[0] for line in describe_schema().splitlines()]


_SCALARS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _type_name(annotation: Any) -> str:
    if annotation == Duration:
        return "a number or a string"  # seconds, or 2h, 90m, ...
    if get_origin(annotation) is Annotated:
        return _type_name(get_args(annotation)[0])
    if annotation is type(None):
        return "null"
    if _is_union(annotation):
        return " or ".join(_type_name(a) for a in get_args(annotation))
    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(str(a) for a in get_args(annotation))
    if origin is list:
        return "a list"
    if origin is tuple:
        return f"a list of {len(get_args(annotation))} numbers"
    if annotation is Interval:
        return "N (iterations) or {iterations: N} or {epochs: N}"
    if origin is dict or _is_model(annotation):
        return "a mapping"
    return _SCALARS[annotation]
