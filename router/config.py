"""The configuration of expert-router without Ray: what every expert has (each kind's own fields are
in its module, ``deployments/experts/<kind>.py``), the routing policy and the ingress.

``deployments/config.py`` puts them together as ``AppConfig``, the ``args`` block of the application
in ``serve_config.yaml`` (Ray Serve's own config format). Everything is validated at start; mistakes
raise :class:`ConfigError` with one line per problem, naming the field that is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
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


class Strict(BaseModel):
    """A config model: unknown keys refused, frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(Strict):
    """What an expert costs, in US dollars per one million tokens."""

    input_per_1m: float = Field(0.0, ge=0, description="Dollars per million input (prompt) tokens.")
    output_per_1m: float = Field(0.0, ge=0, description="Dollars per million output (generated) tokens.")

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """Dollar cost of one request."""
        return (input_tokens * self.input_per_1m + output_tokens * self.output_per_1m) / 1e6


class Autoscaling(Strict):
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


class SamplingDefaults(Strict):
    """Generation settings an expert uses when the request does not set them."""

    max_tokens: int = Field(256, ge=1, description="Tokens generated at most.")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature (0: greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    stop: list[str] = Field(default_factory=list, description="Strings that end the answer.")


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


class Declaration(Strict):
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


@dataclass(frozen=True)
class Replica:
    """What one replica of an expert's own Serve deployment reserves (ops/kuberay.py sizes and
    labels the Ray worker groups by it)."""

    cpus: float
    gpus: float
    """0: it runs on CPU."""
    accelerator_type: str | None
    resources: Mapping[str, float]
    min_replicas: int
    max_replicas: int


class ExpertBase(Declaration):
    """What every expert has, whatever serves it. Each kind of expert (``deployments/experts/<kind>.py``)
    subclasses it with ``kind: Literal["<kind>"]``, its own fields, and what differs among the hooks
    below; the rest of the system sees experts only through them."""

    implied_by: ClassVar[str | None] = None
    """A field whose presence selects this kind when the config does not name one."""

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

    @property
    def engine(self) -> str | None:
        """The ``vllm`` expert whose engine, run by this app, answers for this one (itself, or the
        one it rides on: phase 1, load records and the engine's settings are read from it); None: no
        engine of the app's (phase 1 needs one)."""
        return None

    @property
    def replica(self) -> Replica | None:
        """What one replica of its own Serve deployment reserves; None: it has none."""
        return None

    def check_team(self, team: Mapping[str, ExpertBase]) -> None:
        """Raise ValueError when it does not fit the app's experts (``team``, by name)."""


class PolicyConfig(Strict):
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


class SecurityConfig(Strict):
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


class LoadConfig(Strict):
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


class DecisionConfig(Strict):
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


class IngressConfig(Strict):
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


class RouterUserConfig(Strict):
    """The ingress deployment's Ray Serve ``user_config`` (``deployments: [{name: ingress,
    user_config: ...}]`` in the serve config): what changes on the running router replicas in place,
    without restarting them or the experts. (A change of the app's ``args`` makes Serve redeploy
    every deployment of the app, experts included.)"""

    policy: PolicyConfig | None = Field(
        None, description="Routing policy to use instead of args' policy (unset: args' policy)."
    )


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


def served_policy(app: dict[str, Any], policy: PolicyConfig) -> PolicyConfig:
    """The policy the router replicas of ``app`` route by: the ingress deployment's ``user_config``
    policy (a live rollout) where one is set, else the args' ``policy``."""
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
            return rollout.policy or policy
    return policy
