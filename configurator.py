"""
nanoGPT's configurator as a function, and the harness's one-line errors. Every script's config is
its module globals (the defaults); config files are plain Python executed over them (code, as in
nanoGPT: run only config files you trust); --key=value overrides are checked against the
defaults' types. A user mistake is a UserError: one line on stderr, exit status 2.
"""
import ast
import os
import sys


class UserError(Exception):
    """A mistake in the input (config, data, paths). Scripts print it as one line, no traceback."""


def run_cli(main):
    """Run a script's main(); user errors become `error: ...` on stderr and exit status 2."""
    try:
        main(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def check_settings(cfg, checks):
    """(ok, key, advice) per setting: the first one not ok is a UserError naming its value."""
    for ok, key, advice in checks:
        if not ok:
            raise UserError(f"{key}={getattr(cfg, key)}: {advice}")


def config_defaults(module_globals):
    """The config keys of a script: its public module globals of plain types."""
    plain = (int, float, bool, str, list, tuple, type(None))
    return {k: v for k, v in module_globals.items()
            if k.isidentifier() and k == k.lower() and not k.startswith("_")
            and isinstance(v, plain)}


def script_defaults(path):
    """A script's config defaults read from its source, without running it or its imports (so a
    module that reads train.py's defaults does not import train.py, torch and all)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass                                          # computed: not a config key
    return config_defaults(values)


def _as_bool(value):
    """True or False for a value that spells one (True, 1, "yes", "off", ...), else None."""
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
        return value.lower() in ("true", "yes", "on")
    return None


def _coerce(key, value, default):
    """Check an override against the default's type; the message names the key and the type."""
    if default is None or value is None:
        return value
    # --compile=False over "auto"; a number is not a switch here (--device=0 is no device)
    if default == "auto" and isinstance(value, (bool, str)) and _as_bool(value) is not None:
        return _as_bool(value)
    if isinstance(default, bool):
        if _as_bool(value) is not None:
            return _as_bool(value)
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():   # 5e7 is a fine token budget
            return int(value)
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value.lower() in ("inf", "-inf", "nan"):
            return float(value)                               # a range check then names the key
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return type(default)(value)
        if isinstance(value, str):                            # --components=cs.DS,math.ST
            return type(default)(s.strip() for s in value.split(",") if s.strip())
        if isinstance(default, list) and isinstance(value, (int, float)) and not isinstance(value, bool):
            return [value]                                    # --weights=1 -> [1]
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    raise UserError(f"config key '{key}' expects {type(default).__name__} "
                    f"(default {default!r}), got {value!r}")


def configure(defaults, argv):
    """
    nanoGPT's configurator as a function: each bare argument is a Python config file executed
    over the defaults, each --key=value an override parsed as a Python literal (else a string).
    Unknown keys and wrong types are errors that name the key and list the valid ones.
    """
    config = dict(defaults)
    valid = ", ".join(sorted(defaults))
    if "--help" in argv or "-h" in argv:
        script = os.path.basename(sys.argv[0])
        print(f"usage: python {script} [config/<file>.py ...] [--key=value ...]\nkeys and defaults:\n"
              + "\n".join(f"  --{key}={value!r}" for key, value in sorted(defaults.items())))
        sys.exit(0)

    def set_key(key, value, where):
        if key not in defaults:
            raise UserError(f"unknown config key '{key}' ({where}); valid keys: {valid}")
        config[key] = _coerce(key, value, defaults[key])

    for arg in argv:
        if not arg.startswith("--"):
            if not os.path.isfile(arg):
                raise UserError(f"config file '{arg}' not found (configs live in config/, "
                                f"e.g. `python train.py config/k4.py`)")
            namespace = dict(config)
            with open(arg) as f:
                code = f.read()
            try:
                exec(compile(code, arg, "exec"), {}, namespace)
            except Exception as e:
                raise UserError(f"config file '{arg}' does not run: {type(e).__name__}: {e}")
            for key, value in namespace.items():
                if key.startswith("_") or callable(value) or type(value).__name__ == "module":
                    continue
                if key not in defaults or value is not config[key]:
                    set_key(key, value, arg)
        else:
            if "=" not in arg and isinstance(defaults.get(arg[2:]), bool):
                arg += "=True"                                # --force means --force=True
            if "=" not in arg:
                raise UserError(f"argument '{arg}' should look like --key=value; valid keys: {valid}")
            key, text = arg[2:].split("=", 1)
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
            if isinstance(defaults.get(key), str) and not isinstance(value, (str, bool)):
                value = text            # a string key keeps the text as typed: --group=020e81 is no float
            set_key(key, value, arg)
    return config
