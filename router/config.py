"""The one configuration model of expert-router: experts, routing policy and ingress.

It is the ``args`` block of the application in ``serve_config.yaml`` (Ray Serve's own config
format). Everything is validated at start; mistakes raise :class:`ConfigError` with one line per
problem, naming the field that is wrong.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

ROUTER_MODEL_NAME = "router"
"""The model name that asks the ingress to route (also what ``model`` defaults to)."""
INGRESS_DEPLOYMENT = "ingress"
"""The Serve deployment that routes (the FastAPI ingress): the name a serve config's
``deployments:`` entry gives to change its ``user_config`` or replicas."""


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every problem found."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Strict):
    """What an expert costs, in US dollars per one million tokens."""

    input_per_1m: float = Field(0.0, ge=0, description="Dollars per million input (prompt) tokens.")
    output_per_1m: float = Field(0.0, ge=0, description="Dollars per million output (generated) tokens.")

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """Dollar cost of one request."""
        return (input_tokens * self.input_per_1m + output_tokens * self.output_per_1m) / 1e6


class Autoscaling(_Strict):
    """Ray Serve autoscaling for one deployment (a subset of Serve's ``autoscaling_config``)."""

    min_replicas: int = Field(1, ge=0, description="Replicas kept running (0: scale to zero when idle).")
    max_replicas: int = Field(1, ge=1, description="Replicas at most.")
    initial_replicas: int | None = Field(
        None, ge=0, description="Replicas at deploy (default: min_replicas)."
    )
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="Requests in flight per replica the autoscaler aims for."
    )
    upscale_delay_s: float = Field(30.0, ge=0, description="Load above target this long adds replicas.")
    downscale_delay_s: float = Field(600.0, ge=0, description="Load below target this long removes replicas.")

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self


class SamplingDefaults(_Strict):
    """Generation settings an expert uses when the request does not set them."""

    max_tokens: int = Field(256, ge=1, description="Tokens generated at most.")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature (0: greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    stop: list[str] = Field(default_factory=list, description="Strings that end the answer.")


class RemoteEndpoint(_Strict):
    """An OpenAI-compatible server that answers for an expert instead of a local vLLM deployment."""

    base_url: str = Field(pattern=r"^https?://", description="e.g. https://api.example.com/v1")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds one call to the endpoint may take.")


def _custom_only(resources: dict[str, float]) -> dict[str, float]:
    reserved = sorted(set(resources) & {"CPU", "GPU", "memory"})
    if reserved:
        raise ValueError(f"{', '.join(reserved)}: set by num_cpus/num_gpus, not as custom resources")
    return resources


NodeResources = Annotated[
    dict[Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_:.-]*$")], Annotated[float, Field(gt=0)]],
    AfterValidator(_custom_only),
]
"""Custom Ray resources (name -> amount per replica); CPU/GPU/memory have their own fields."""

Capability = Literal["tools", "json_schema", "vision", "audio"]
"""What a request may need of an expert beyond text chat: tool calling (``tools``), structured outputs
(``response_format`` json_object/json_schema, vLLM ``structured_outputs``), image/video or audio
content parts."""

Skill = Literal["general", "math", "code", "biomedical", "science"]
"""The builtin skills an expert may declare (router/skills.py; policy ``declared``)."""


class Declaration(_Strict):
    """What an expert says it is for (policy ``declared`` routes on it; router/declared.py)."""

    description: str = Field(
        "",
        description="What this expert is for, in words; policy 'declared' matches queries to it "
        "when the expert declares neither skills nor examples.",
    )
    skills: list[Skill] = Field(
        default_factory=list,
        description="Builtin skills this expert declares (general, math, code, biomedical, science): policy "
        "'declared' routes queries of these kinds to it (artifacts/skills, no phase-1 data needed).",
    )
    examples: list[str] | str = Field(
        default_factory=list,
        description="Example queries this expert is for, or the path of a file of them (JSONL, JSON, "
        "Parquet, CSV, TSV or a query a line; records with OpenAI messages, ShareGPT conversations or an "
        "instruction/query/prompt/question/text): policy 'declared' routes queries like them to it.",
    )
    default: bool = Field(
        False,
        description="Policy 'declared': where routed queries go that match no expert's declared expertise "
        "(default: the cheapest expert declaring 'general').",
    )


class ExpertBase(Declaration):
    """What every expert has, whatever serves it."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="The expert's name: its model id in the API (and its deployment 'expert:<name>', "
        "when it has one).",
    )
    model: str = Field(
        min_length=1,
        description="Hugging Face hub id, a local folder, or 'builtin:<name>' for a model this "
        "project builds offline (see deployments/experts/model_store.py).",
    )
    system_prompt: str | None = Field(
        None, description="Domain profile: prepended to the conversation as a system message."
    )
    price: Price = Price()
    capabilities: list[Capability] | None = Field(
        None,
        description="What this expert can answer beyond text. Default: json_schema (vLLM's structured "
        "outputs), plus tools when the engine has a tool-call parser; remote experts: tools, json_schema. "
        "Routed requests that need a capability go only to experts that have it.",
    )
    max_in_flight: int | None = Field(
        None,
        ge=1,
        description="Requests one router replica keeps in flight to this expert (all its replicas; a "
        "LoRA adapter and its base count their shared engine's); routed requests beyond it spill to the "
        "next-ranked expert, 429 when every candidate is full.",
    )
    sampling: SamplingDefaults = SamplingDefaults()

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name == ROUTER_MODEL_NAME:
            raise ValueError(f"'{ROUTER_MODEL_NAME}' is reserved for the routed endpoint")
        return name

    @property
    def abilities(self) -> frozenset[str]:
        """The expert's capabilities: configured, or what serves it gives."""
        return frozenset(self.capabilities or ())


class LocalExpert(ExpertBase):
    """An expert that is its own autoscaled Ray Serve deployment running vLLM (``kind: vllm``, the
    default)."""

    kind: Literal["vllm"] = Field(
        "vllm", description="How it is served (the default: neither endpoint nor base)."
    )
    accelerator: Literal["cpu", "gpu"] = Field("cpu", description="Where the engine runs.")
    accelerator_type: str | None = Field(None, description="Ray accelerator type, e.g. 'A100' (GPU only).")
    num_cpus: float = Field(0.5, gt=0, description="Ray CPUs reserved per replica (logical).")
    num_gpus: float = Field(
        0, ge=0, description="GPUs per replica (GPU only; default: tensor parallel size)."
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="vLLM engine arguments, including its OpenAI frontend's (e.g. enable_auto_tool_choice, "
        "tool_call_parser), which ray.serve.llm hands to the frontend.",
    )
    llm_config: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other ray.serve.llm LLMConfig fields (e.g. lora_config), merged over what the "
        "fields above produce (nested dicts merged key by key); LLMConfig validates the result at start.",
    )
    env_vars: dict[str, str] = Field(default_factory=dict, description="Environment of the engine process.")
    resources: NodeResources = Field(
        default_factory=dict,
        description="Custom Ray resources each replica needs (its engine's placement bundle), e.g. "
        "{expert_node: 1}: pins the expert to the nodes that offer them (a KubeRay worker group's "
        "resources; ops/kuberay.py adds them to the GPU group).",
    )
    autoscaling: Autoscaling = Autoscaling()
    max_ongoing_requests: int = Field(64, ge=1, description="Requests one replica accepts at once (Serve).")

    @model_validator(mode="after")
    def _accelerator_consistent(self) -> LocalExpert:
        if self.accelerator == "cpu" and (self.num_gpus or self.accelerator_type):
            raise ValueError("num_gpus/accelerator_type need accelerator: gpu")
        return self

    @model_validator(mode="after")
    def _tools_need_a_parser(self) -> LocalExpert:
        if "tools" in (self.capabilities or ()) and not self.parses_tool_calls:
            raise ValueError(
                "capabilities: 'tools' needs engine_kwargs enable_auto_tool_choice: true and a "
                "tool_call_parser (e.g. hermes, llama3_json), without which vLLM refuses tools"
            )
        return self

    @property
    def all_engine_kwargs(self) -> dict[str, Any]:
        """``engine_kwargs`` with those given under ``llm_config`` on top."""
        return {**self.engine_kwargs, **self.llm_config.get("engine_kwargs", {})}

    @property
    def parses_tool_calls(self) -> bool:
        """Whether the expert's vLLM engine is set up for tool calling."""
        kwargs = self.all_engine_kwargs
        return bool(kwargs.get("enable_auto_tool_choice") and kwargs.get("tool_call_parser"))

    @property
    def abilities(self) -> frozenset[str]:
        if self.capabilities is not None:
            return frozenset(self.capabilities)
        return frozenset({"json_schema", *(["tools"] if self.parses_tool_calls else [])})


class RemoteExpert(ExpertBase):
    """An OpenAI-compatible endpoint the router calls itself (``kind: remote``, or just ``endpoint``)."""

    kind: Literal["remote"] = Field("remote", description="How it is served (implied by endpoint).")
    endpoint: RemoteEndpoint = Field(description="Where it answers; 'model' is the model name there.")

    @property
    def abilities(self) -> frozenset[str]:
        return (
            frozenset(self.capabilities)
            if self.capabilities is not None
            else frozenset({"tools", "json_schema"})
        )


class AdapterExpert(ExpertBase):
    """A LoRA adapter served by another local expert's vLLM engine (``kind: lora``, or just ``base``);
    ``model`` is the adapter: a PEFT folder, a hub id or ``builtin:<name>``."""

    kind: Literal["lora"] = Field("lora", description="How it is served (implied by base).")
    base: str = Field(
        description="The name of the local expert whose vLLM engine serves this adapter beside its own "
        "model. Many adapters share one engine; its engine settings are the base's."
    )

    @model_validator(mode="before")
    @classmethod
    def _runs_on_its_base(cls, data: Any) -> Any:
        others = (
            LocalExpert.model_fields.keys() | RemoteExpert.model_fields.keys()
        ) - cls.model_fields.keys()
        own = [key for key in data if key in others] if isinstance(data, dict) else []
        if own:  # a friendlier error than "extra inputs": where these belong
            raise ValueError(
                f"a LoRA adapter expert (base: {data.get('base')}) runs on its base's engine: set "
                f"{', '.join(own)} on expert '{data.get('base')}' instead"
            )
        return data


EXPERT_KINDS: dict[str, type[ExpertBase]] = {
    "vllm": LocalExpert,
    "remote": RemoteExpert,
    "lora": AdapterExpert,
}
"""Each expert kind's config model (``deployments/experts/<kind>.py`` serves it): the members of
:data:`ExpertConfig`. A new kind is its model here (``kind: Literal["<name>"]``) and this one line."""


def _expert_kind(value: Any) -> str | None:
    """The config model of an expert: its ``kind``, else ``lora`` with a base, ``remote`` with an
    endpoint, ``vllm`` otherwise (the union's tag is the model's name, so error places skip it)."""
    if isinstance(value, dict):
        implied = (
            "lora"
            if value.get("base") is not None
            else "remote"
            if value.get("endpoint") is not None
            else "vllm"
        )
        kind = value.get("kind") or implied
    elif isinstance(value, ExpertBase):
        kind = value.kind
    else:  # not an object: the default kind's model says so
        kind = "vllm"
    model = EXPERT_KINDS.get(kind) if isinstance(kind, str) else None
    return model.__name__ if model else None


ExpertConfig = Annotated[
    Union[tuple(Annotated[model, Tag(model.__name__)] for model in EXPERT_KINDS.values())],  # noqa: UP007
    Discriminator(
        _expert_kind,
        custom_error_type="expert_kind",
        custom_error_message=f"kind must be one of {', '.join(EXPERT_KINDS)}",
    ),
]
"""One expert, of the kind its config selects (a pydantic discriminated union)."""
EXPERT = TypeAdapter(ExpertConfig)
"""Validates one expert's config: ``EXPERT.validate_python({...})``."""


class PolicyConfig(_Strict):
    """Which routing policy picks the expert (see ``router.policy``), and its arguments."""

    name: str = Field(
        "random",
        description="A policy of router/policy.py: declared, random, fixed, trained (a router "
        "artifact, its kind read from it), or a router kind (an artifact that must be of it).",
    )
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="The policy's arguments (e.g. artifact, cost_weight; docs/concepts.md).",
    )


class SecurityConfig(_Strict):
    """What the ingress accepts: keys, sizes, caps; and what it logs. Defaults are safe to expose."""

    api_keys_env: str | None = Field(
        None,
        description="Name of the environment variable (of the router replicas) holding the accepted "
        "API keys, comma-separated; clients send 'Authorization: Bearer <key>'. Unset: no auth.",
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Larger request bodies get 413.")
    max_messages: int = Field(256, ge=1, description="Messages per request at most (400 beyond).")
    max_message_chars: int = Field(100_000, ge=1, description="Characters per message at most (400 beyond).")
    max_tokens: int = Field(4096, ge=1, description="Cap on a request's max_tokens (400 beyond).")
    max_choices: int = Field(8, ge=1, description="Cap on a request's n, the choices generated (400 beyond).")
    log_prompts: bool = Field(False, description="Log each routed prompt's last user turn (off: no text).")
    cors_origins: list[str] = Field(default_factory=list, description="Allowed CORS origins (none: off).")


class LoadConfig(_Strict):
    """Load-aware routing (``router/balance.py``): each candidate's policy score minus ``load_weight``
    x its expected wait in seconds, from what this router replica measures on the answers."""

    load_weight: float = Field(
        1.0, ge=0, description="Score given up per second of expected wait; 0: the policy's ranking as is."
    )
    wait_slack_ms: float = Field(
        50.0, ge=0, description="Expected waits up to this are noise, not queueing: no penalty."
    )
    prefer_scaling: bool = Field(
        True,
        description="An expert whose autoscaling can still add replicas keeps its traffic (no wait "
        "penalty; Serve's autoscaler sees the queue and scales) up to its max_in_flight; false: spill "
        "by expected wait at once.",
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After of a 429 when every candidate is full.")
    replicas_refresh_s: float = Field(5.0, gt=0, description="How often running replica counts are read.")


class DecisionConfig(_Strict):
    """How routing decisions run in a router replica.

    Policies that do real compute per decision (encoder routers: BERT, 1NN) run in a worker thread,
    never on the replica's event loop, and concurrent decisions are micro-batched: requests that
    arrive while a batch is scored are scored together next (``router/decisions.py``).
    """

    offload: Literal["auto", "always", "never"] = Field(
        "auto",
        description="auto: encoder routers in the worker thread, cheap policies (random, fixed, "
        "MLP at ~0.04 ms) inline on the loop; always/never: force it.",
    )
    max_batch_size: int = Field(64, ge=1, description="Decisions scored together at most.")
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        le=50,
        description="Hold a batch open this long for more requests (0: batch only "
        "what queued while the previous batch ran; an idle router adds no wait).",
    )
    max_queue_ms: float = Field(
        100.0,
        ge=0,
        description="Overload guard: a decision that would wait longer than this for "
        "the worker is made from the recent average of the policy's scores instead (the Zero router "
        "of recent traffic), so the router never becomes the bottleneck; the reply says so "
        "(x-routing-shed). 0: always wait.",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="Encoder threads (ONNX Runtime intra-op); default: the replica's CPU "
        "share, ingress.num_cpus rounded up.",
    )
    fast_tier: bool = Field(
        True,
        description="Shed decisions are made per query by a classifier each replica learns online "
        "from the policy's own decisions (router/decisions.py); false: always from the prior.",
    )
    fast_tier_after: int = Field(
        64, ge=1, description="Decisions the fast tier learns from before it decides shed requests."
    )


class IngressConfig(_Strict):
    """The ingress deployment (Serve deployment `ingress`): it routes, and is the HTTP ingress."""

    num_cpus: float = Field(0.1, gt=0, description="Ray CPUs reserved per router replica (logical).")
    resources: NodeResources = Field(
        default_factory=dict,
        description="Custom Ray resources each router replica needs, e.g. {router_node: 1}: pins the "
        "ingress to the nodes that offer them (ops/kuberay.py adds them to the CPU group).",
    )
    max_replicas_per_node: int | None = Field(
        None, ge=1, description="Router replicas per node at most: 1 spreads them, so a node loss takes one."
    )
    max_ongoing_requests: int = Field(256, ge=1, description="Requests one router replica accepts at once.")
    autoscaling: Autoscaling = Autoscaling()
    expert_timeout_s: float = Field(120.0, gt=0, description="Budget for one expert call.")
    max_attempts: int = Field(2, ge=1, description="Experts tried, best first, before giving up.")
    expert_cooldown_s: float = Field(
        5.0, ge=0, description="After a failure an expert is skipped this long (503 at once if all are)."
    )
    access_log: bool = Field(False, description="Log every request in the router replicas (costs latency).")
    security: SecurityConfig = SecurityConfig()
    decisions: DecisionConfig = DecisionConfig()
    load: LoadConfig = LoadConfig()
    env_vars: dict[str, str] = Field(
        default_factory=lambda: {
            # The router's event loop does no blocking work (encoder decisions run in a worker
            # thread, see `decisions`): run it on the replica's own event loop and its handles'
            # request router on that loop too (Ray Serve's throughput-optimized settings), which
            # saves thread hops on every request.
            "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
            "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
        },
        description="Environment of the router replicas.",
    )

    @property
    def decision_threads(self) -> int:
        """Encoder threads of a router replica: configured, or its CPU share rounded up."""
        return self.decisions.threads or max(1, math.ceil(self.num_cpus))


class RouterUserConfig(_Strict):
    """The ingress deployment's Ray Serve ``user_config`` (``deployments: [{name: ingress,
    user_config: ...}]`` in the serve config): what changes on the running router replicas in place,
    without restarting them or the experts. (A change of the app's ``args`` makes Serve redeploy
    every deployment of the app, experts included.)"""

    policy: PolicyConfig | None = Field(
        None, description="Routing policy to use instead of args' policy (unset: args' policy)."
    )


class AppConfig(_Strict):
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
    def _adapters_have_local_bases(cls, experts: list[ExpertConfig]) -> list[ExpertConfig]:
        engines = {e.name: e for e in experts if isinstance(e, LocalExpert)}
        for e in experts:
            if not isinstance(e, AdapterExpert):
                continue
            if e.base not in engines:
                raise ValueError(
                    f"expert '{e.name}': base '{e.base}' must name a local (vLLM) expert of this "
                    f"app; local experts: {', '.join(sorted(engines)) or 'none'}"
                )
            if "tools" in (e.capabilities or ()) and not engines[e.base].parses_tool_calls:
                raise ValueError(
                    f"expert '{e.name}': capabilities 'tools' needs its base '{e.base}' to parse tool "
                    "calls (engine_kwargs enable_auto_tool_choice: true and a tool_call_parser)"
                )
        return experts

    def serving(self, name: str) -> LocalExpert | None:
        """The local expert whose engine answers for expert ``name``: itself, a LoRA adapter's base;
        None for a remote expert."""
        expert = self.expert(name)
        if isinstance(expert, AdapterExpert):
            return self.expert(expert.base)  # type: ignore[return-value]  # checked: a local expert
        return expert if isinstance(expert, LocalExpert) else None

    def adapters(self, name: str) -> list[AdapterExpert]:
        """The LoRA adapter experts served by local expert ``name``'s engine."""
        return [e for e in self.experts if isinstance(e, AdapterExpert) and e.base == name]

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


def field_path(loc: tuple[str | int, ...], document: Any = None) -> str:
    """A validation error's place as a client writes it: ``experts[1].price.input_per_1m``, without
    pydantic's names for the members of a union (``literal['auto']``, ``ChatCompletionUserMessageParam``),
    which are not places in the document. Given the validated ``document``, the path follows it (a
    missing field is the last part); without it, parts that are no lower-case identifiers are left
    out (JSON keys here are snake_case; pydantic's member names are not)."""
    path, node = "", document
    for i, part in enumerate(loc):
        key_like = isinstance(part, str) and part.isidentifier() and not part[:1].isupper()  # no type name
        if document is None:
            is_place = isinstance(part, int) or key_like
        elif isinstance(part, int):
            is_place = isinstance(node, list) and 0 <= part < len(node)
        else:  # a missing key is the last part: of an object, or of a value that should be one
            is_place = (isinstance(node, dict) and part in node) or (i == len(loc) - 1 and key_like)
        if not is_place:
            continue
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
        if document is not None:
            node = node[part] if (isinstance(node, dict) and part in node) or isinstance(part, int) else None
    return path.lstrip(".")


def describe_errors(exc: ValidationError, document: Any = None) -> str:
    """One readable line per problem: ``experts[1].price.input_per_1m: must be >= 0`` (places
    follow ``document``, the validated args, where given)."""
    lines = [f"  {field_path(err['loc'], document) or '<root>'}: {err['msg']}" for err in exc.errors()]
    return "invalid expert-router configuration:\n" + "\n".join(lines)


def serve_config_app(path: str | Path, app_name: str | None = None) -> dict[str, Any]:
    """An application of a Ray Serve config file (the first one by default); a file of the wrong
    shape is a ConfigError naming what is missing."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read a YAML document: {exc}") from None
    apps = doc.get("applications") if isinstance(doc, dict) else None
    if not isinstance(apps, list):
        raise ConfigError(f"{path}: 'applications' must be a list of Ray Serve applications")
    for i, app in enumerate(apps):
        if not isinstance(app, dict):
            raise ConfigError(f"{path}: applications[{i}] must be a mapping")
        if app_name is None or app.get("name") == app_name:
            return app
    raise ConfigError(f"{path}: no application {app_name or ''} in 'applications'".replace("  ", " "))


def serve_config_args(path: str | Path, app_name: str | None = None) -> Any:
    """The ``args`` of an application in a Ray Serve config file (the first one by default)."""
    return serve_config_app(path, app_name).get("args") or {}


def served_policy(app: dict[str, Any], config: AppConfig) -> PolicyConfig:
    """The policy the router replicas of ``app`` route by: the ingress deployment's ``user_config``
    policy (a live rollout) where one is set, else the args' policy."""
    for deployment in app.get("deployments") or []:
        if isinstance(deployment, dict) and deployment.get("name") == "router":
            raise ConfigError(
                f"deployments: no deployment is named 'router'; the one that routes is "
                f"'{INGRESS_DEPLOYMENT}' (renamed 2026-12-05): rename this entry"
            )
        if isinstance(deployment, dict) and deployment.get("name") == INGRESS_DEPLOYMENT:
            try:
                rollout = RouterUserConfig.model_validate(deployment.get("user_config") or {})
            except ValidationError as exc:
                raise ConfigError(
                    describe_errors(exc).replace("\n  ", f"\n  {INGRESS_DEPLOYMENT} user_config.", 1)
                ) from None
            return rollout.policy or config.policy
    return config.policy


def load_serve_config(path: str | Path, app_name: str | None = None) -> AppConfig:
    """The AppConfig of an application in a Ray Serve config file (the first one by default)."""
    return AppConfig.parse(serve_config_args(path, app_name))
