"""Every hook a plugin can implement, documented in this one place.

Each registration hook receives a ``register`` callback; call it once per thing the plugin
provides. ``register(spec, override=True)`` replaces a thing of the same name that another
plugin registered; without ``override`` two plugins registering one name is an error that
names both. Registering must stay cheap: a plugin module imports torch or transformers only
inside the callables it registers, never at import time.
"""

import pluggy

hookspec = pluggy.HookspecMarker("sft_sdk")
hookimpl = pluggy.HookimplMarker("sft_sdk")


@hookspec
def register_models(register):
    """Register :class:`sdk.specs.ModelSpec` objects, one per ``--model-type``."""


@hookspec
def register_datasets(register):
    """Register :class:`sdk.specs.DatasetSpec` objects, one per ``--dataset`` name."""


@hookspec
def register_templates(register):
    """Register :class:`sdk.specs.TemplateSpec` objects, one per ``--template`` name."""


@hookspec
def register_tuners(register):
    """Register :class:`sdk.specs.Tuner` objects, one per ``--sft-type``."""


@hookspec
def register_hubs(register):
    """Register :class:`sdk.specs.Hub` objects, one per ``--hub``."""


@hookspec
def register_formats(register):
    """Register :class:`sdk.specs.DataFormat` objects: record shapes a dataset can have."""


@hookspec
def register_commands(cli):
    """Add click commands to the ``sdk`` group: ``@cli.command()``."""
