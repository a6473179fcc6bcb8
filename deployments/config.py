"""The app's configuration, ``AppConfig``: the ``args`` block of the application in
``serve_config.yaml``. Its experts are each of a kind (``deployments/experts/<kind>.py`` holds a kind's
config model and how it is served; :data:`EXPERT_KINDS` lists them), the rest is ``router/config.py``.
It validates without Ray; mistakes raise ``ConfigError`` with one line per problem."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Discriminator, Field, Tag, TypeAdapter, ValidationError, field_validator, model_validator

from deployments.experts.lora import AdapterExpert
from deployments.experts.remote import RemoteExpert
from deployments.experts.vllm import LocalExpert
from router.config import (
    ConfigError,
    ExpertBase,
    IngressConfig,
    PolicyConfig,
    Strict,
    describe_errors,
    serve_config_args,
)

EXPERT_KINDS: tuple[type[ExpertBase], ...] = (LocalExpert, RemoteExpert, AdapterExpert)
"""Each expert kind's config model, from its module in ``deployments/experts/`` (the first, vllm, is
the default): a new kind is its module and its model here."""
_KIND_MODELS = {model.model_fields["kind"].default: model for model in EXPERT_KINDS}
DEFAULT_KIND = next(iter(_KIND_MODELS))


def _expert_kind(value: Any) -> str | None:
    """The config model of an expert: its ``kind``, else the kind its fields imply (``base``: lora,
    ``endpoint``: remote), else the default (the union's tag is the model's name, so error places
    skip it)."""
    if isinstance(value, dict):
        implied = (name for name, m in _KIND_MODELS.items() if value.get(m.implied_by or "") is not None)
        kind = value.get("kind") or next(implied, DEFAULT_KIND)
    elif isinstance(value, ExpertBase):
        kind = value.kind
    else:  # not an object: the default kind's model says so
        kind = DEFAULT_KIND
    model = _KIND_MODELS.get(kind) if isinstance(kind, str) else None
    return model.__name__ if model else None


ExpertConfig = Annotated[
    Union[tuple(Annotated[model, Tag(model.__name__)] for model in EXPERT_KINDS)],  # noqa: UP007
    Discriminator(
        _expert_kind,
        custom_error_type="expert_kind",
        custom_error_message=f"kind must be one of {', '.join(_KIND_MODELS)}",
    ),
]
"""One expert, of the kind its config selects (a pydantic discriminated union)."""
EXPERT = TypeAdapter(ExpertConfig)
"""Validates one expert's config: ``EXPERT.validate_python({...})``."""


class AppConfig(Strict):
    """The whole system: experts, routing policy and ingress."""

    experts: list[ExpertConfig] = Field(min_length=1, description="The experts, at least one.")
    policy: PolicyConfig = PolicyConfig()
    ingress: IngressConfig = IngressConfig()

    @model_validator(mode="after")
    def _unique_names(self) -> AppConfig:
        names = [e.name for e in self.experts]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"expert names must be unique; repeated: {', '.join(duplicated)}")
        defaults = [e.name for e in self.experts if e.default]
        if len(defaults) > 1:
            raise ValueError(f"at most one expert may be the default; marked: {', '.join(defaults)}")
        return self

    @field_validator("experts")
    @classmethod
    def _fit_together(cls, experts: list[ExpertConfig]) -> list[ExpertConfig]:
        team = {e.name: e for e in experts}
        if len(team) < len(experts):
            return experts  # repeated names: _unique_names says so
        for e in experts:
            e.check_team(team)
        return experts

    def serving(self, name: str) -> LocalExpert | None:
        """The local expert whose engine answers for expert ``name``: itself, a LoRA adapter's base;
        None for an expert no engine of the app's answers (remote)."""
        engine = self.expert(name).engine
        return self.expert(engine) if engine is not None else None  # type: ignore[return-value]

    def adapters(self, name: str) -> list[ExpertConfig]:
        """The experts local expert ``name``'s engine serves beside its own (LoRA adapters)."""
        return [e for e in self.experts if e.engine == name and e.name != name]

    def abilities(self, name: str) -> frozenset[str]:
        """What expert ``name`` can answer: its own capabilities, else what serves it gives."""
        expert = self.expert(name)
        engine = self.serving(name)
        return expert.abilities if expert.capabilities is not None or engine is None else engine.abilities

    @property
    def expert_names(self) -> list[str]:
        return [e.name for e in self.experts]

    def expert(self, name: str) -> ExpertConfig:
        """The expert called ``name`` (KeyError if none)."""
        for e in self.experts:
            if e.name == name:
                return e
        raise KeyError(name)

    @classmethod
    def parse(cls, args: Any) -> AppConfig:
        """Validate application args; raise ConfigError listing every problem."""
        try:
            return cls.model_validate(args)
        except ValidationError as exc:
            raise ConfigError(describe_errors(exc, args)) from None


def load_serve_config(path: str | Path, app_name: str | None = None) -> AppConfig:
    """The AppConfig of an application in a Ray Serve config file (the first one by default)."""
    return AppConfig.parse(serve_config_args(path, app_name))
