"""The ``expert-router`` command: generate labelled tables from the experts (phase 1), import public
outcome tables, train routers (phase 2), evaluate them, or run the whole pipeline."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from router import kinds
from router.query_files import FORMATS

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
DEFAULT_INSTRUCTIONS = DEFAULT_DATA / "router_mix.jsonl.gz"


def _connect_ray(num_cpus: int = 4) -> None:
    """Join the cluster named by RAY_ADDRESS, or start a local one with room for fractional actors."""
    import os

    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def _phase1_options(args: argparse.Namespace) -> dict:
    """The phase-1 settings that `generate` and `pipeline` share."""
    return {
        "limit_per_domain": args.limit_per_domain,
        "limit": args.limit,
        "seed": args.seed,
        "max_tokens": args.max_tokens,
        "app_name": args.app,
        "skip_bad": args.skip_bad_records,
    }


def _check_inputs(args: argparse.Namespace) -> None:
    """Phase 1's config and data, checked before Ray starts: a clear error and exit status 2."""
    from deployments.config import load_serve_config
    from router.config import ConfigError
    from training.instructions import read_instructions

    try:
        load_serve_config(args.config)
        read_instructions(args.data, args.skip_bad_records)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"expert-router {args.command}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _generate(args: argparse.Namespace) -> None:
    from deployments.config import load_serve_config
    from training.generate import generate, summary

    _check_inputs(args)
    _connect_ray()
    table = generate(
        load_serve_config(args.config),
        args.data,
        args.out,
        batch_size=args.batch_size,
        actors=args.actors,
        **_phase1_options(args),
    )
    print(json.dumps({"out": str(args.out), **summary(table)}))


def _pipeline(args: argparse.Namespace) -> None:
    from training.pipeline import run_pipeline

    _check_inputs(args)
    _connect_ray()
    result = run_pipeline(
        args.config,
        args.out,
        args.data,
        router_kinds=tuple(kinds.parse(args.routers)),
        serve_router=args.serve_router,
        workers=args.workers,
        max_artifact_mb=args.max_artifact_mb,
        **_phase1_options(args),
    )
    print(json.dumps(result))
    print(
        f"serve it: serve run {result['serve_config']} (onto a running app: serve deploy, in place)",
        file=sys.stderr,
    )


def _import(args: argparse.Namespace) -> None:
    from training.importers import import_alpaca_eval, import_routellm
    from training.table import write_table

    if args.source == "routellm":
        table = import_routellm(args.benchmark, args.data, drop_contaminated=not args.keep_contaminated)
    else:
        prices = (
            dict((k.strip(), float(v)) for k, v in (p.split("=") for p in args.prices.split(",")))
            if args.prices
            else None
        )
        table = import_alpaca_eval([m.strip() for m in args.models.split(",")], args.data, prices)
    write_table(table, args.out)
    print(f"wrote {len(table)} rows ({table['query_id'].nunique()} queries) to {args.out}")


def _train(args: argparse.Namespace) -> None:
    from training.train import train

    config = json.loads(args.config) if args.config else None
    if not args.local:
        _connect_ray()
    router = train(
        args.table,
        args.router,
        args.out,
        args.quality_column,
        args.temperature,
        config,
        use_ray=not args.local,
        num_workers=args.workers,
        use_gpu=args.gpu,
        storage_path=args.storage_path,
        max_failures=args.max_failures,
    )
    print(
        json.dumps({"router": router.kind, "experts": router.experts, "out": str(args.out), **router.metrics})
    )


def _evaluate(args: argparse.Namespace) -> None:
    from training.harness import evaluate_table

    if not args.router and not args.folds:
        sys.exit(
            f"evaluate: give --router DIR (artifacts) or --folds K --routers {','.join(kinds.names())}|all"
        )
    report = evaluate_table(
        args.table,
        args.out,
        args.router or [],
        args.folds,
        kinds.parse(args.routers) if args.folds else [],
        args.quality_column,
        args.temperature,
        config=json.loads(args.config) if args.config else None,
        seed=args.seed,
        limit=args.limit,
        inner_folds=args.inner_folds,
        grid=json.loads(args.grid) if args.grid else None,
    )
    if args.json:
        compact = {n: {k: v for k, v in r.items() if k != "knob"} for n, r in report["routers"].items()}
        print(json.dumps({"routers": compact, "meta": report["meta"]}))
    else:
        print(f"report written to {args.out}")


def _calibrate(args: argparse.Namespace) -> None:
    from router.knob import calibrate, choose
    from router.trained import load_model
    from training.table import read_table, to_matrices

    router = load_model(args.router)
    m = to_matrices(read_table(args.table), args.quality_column)
    m = m.split("train") if (m.splits == "train").any() else m
    scores, costs = router.predict(m.queries)
    expert = router.experts.index(args.expert)
    weight = calibrate(scores, costs, expert, args.share, reference=router.expected_costs)
    share = float((choose(scores, costs, weight, router.expected_costs) == expert).mean())
    print(json.dumps({"cost_weight": weight, "expert": args.expert, "share": share, "queries": len(m)}))


def _export_onnx(args: argparse.Namespace) -> None:
    from router.trained import export_onnx

    bundle = export_onnx(args.router)
    sizes = {f.name: f.stat().st_size for f in sorted(bundle.iterdir())}
    print(json.dumps({"router": str(args.router), "onnx": str(bundle), "bytes": sizes}))


def _route(args: argparse.Namespace) -> None:
    from deployments.config import AppConfig
    from deployments.dry_run import QueryFileError, read_queries, route_file, summarize
    from router.config import ConfigError, serve_config_app, served_policy

    try:
        app = serve_config_app(args.config)
        config = AppConfig.parse(app.get("args") or {})
        config = config.model_copy(update={"policy": served_policy(app, config.policy)})
        queries, blank = read_queries(args.queries, config, args.format)
        records = []
        for record in route_file(config, queries):
            print(json.dumps(record), flush=False)
            records.append(record)
    except (ConfigError, QueryFileError, OSError) as exc:
        print(f"expert-router route: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if blank:
        print(f"{args.queries}: {blank} blank lines are not queries", file=sys.stderr)
    if args.summary:
        print(json.dumps({"summary": summarize(records, config)}))


def _skills(args: argparse.Namespace) -> None:
    from training.skills import build

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    meta = build(
        args.data,
        args.out,
        dims=args.dims,
        allowed=tuple(args.features),
        augmentations=tuple(args.augmentation),
    )
    print(json.dumps({"out": str(args.out), **meta}))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="expert-router", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    imp = sub.add_parser("import", help="turn a public per-query outcome table into a labelled table")
    imp_sub = imp.add_subparsers(dest="source", required=True)
    rl = imp_sub.add_parser("routellm", help="RouteLLM evals (GPT-4 vs Mixtral)")
    rl.add_argument("--benchmark", choices=["mmlu", "gsm8k", "mt_bench"], required=True)
    rl.add_argument("--keep-contaminated", action="store_true")
    ae = imp_sub.add_parser("alpaca-eval", help="AlpacaEval per-instruction preferences")
    ae.add_argument("--models", required=True, help="comma-separated model names")
    ae.add_argument("--prices", help="blended $/1M tokens per model: 'name=price,...' (default 1.0 each)")
    for q in (rl, ae):
        q.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared datasets folder")
        q.add_argument("--out", type=Path, required=True)
    imp.set_defaults(func=_import)

    gen = sub.add_parser("generate", help="phase 1: the labelled table from the config's experts (Ray Data)")
    pipe = sub.add_parser(
        "pipeline", help="generate -> train -> evaluate -> a serving config with the router"
    )
    for q in (gen, pipe):
        q.add_argument("--config", type=Path, default=Path("serve_config.yaml"), help="Serve config file")
        q.add_argument(
            "--data",
            type=Path,
            default=DEFAULT_INSTRUCTIONS,
            help="instructions with references: JSONL, JSON, Parquet or CSV; ours, Alpaca, Dolly, "
            "OpenAI chat or ShareGPT records (docs/training.md)",
        )
        q.add_argument("--limit-per-domain", type=int, help="seeded sample of N queries per domain")
        q.add_argument("--limit", type=int, help="at most N queries in all")
        q.add_argument("--max-tokens", type=int, help="answer length cap (default: each expert's)")
        q.add_argument("--seed", type=int, default=0, help="sampling of queries and of answers")
        q.add_argument("--app", help="use the experts of this running Serve app instead of deploying")
        q.add_argument(
            "--skip-bad-records",
            action="store_true",
            help="leave out --data records that lack a query or reference (named in a warning) instead of "
            "stopping",
        )
        q.add_argument("--out", type=Path, required=True)
    gen.add_argument("--batch-size", type=int, default=16, help="pairs in flight per actor")
    gen.add_argument("--actors", type=int, default=2, help="Ray Data actors calling the experts")
    gen.set_defaults(func=_generate)
    pipe.add_argument(
        "--routers", default="all", help=f"router kinds to train ({', '.join(kinds.names())}) or all"
    )
    pipe.add_argument(
        "--serve-router",
        default="best",
        help="'best' (test quality among artifacts under --max-artifact-mb) or a kind",
    )
    pipe.add_argument(
        "--max-artifact-mb",
        type=float,
        default=10.0,
        help="'best' prefers routers whose artifact is smaller (any size if none is)",
    )
    pipe.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    pipe.set_defaults(func=_pipeline)

    cal = sub.add_parser(
        "calibrate", help="the cost weight that sends a target share of traffic to an expert"
    )
    cal.add_argument("--router", type=Path, required=True, help="router artifact folder")
    cal.add_argument("--table", type=Path, required=True, help="queries to calibrate on (train split if any)")
    cal.add_argument("--expert", required=True)
    cal.add_argument("--share", type=float, required=True, help="target fraction of queries, 0..1")
    cal.add_argument("--quality-column", default="quality")
    cal.set_defaults(func=_calibrate)

    onnx = sub.add_parser(
        "export-onnx",
        help="store the ONNX export of a router's encoder in its artifact (serves with onnxruntime alone)",
    )
    onnx.add_argument("--router", type=Path, required=True, help="artifact folder of a kind with an encoder")
    onnx.set_defaults(func=_export_onnx)

    route = sub.add_parser(
        "route", help="dry run: how the config's policy routes a file of queries (no Ray, no engines)"
    )
    route.add_argument("--config", type=Path, default=Path("serve_config.yaml"), help="Serve config file")
    route.add_argument(
        "--queries",
        type=Path,
        required=True,
        help="JSONL, JSON, Parquet, CSV/TSV or plain text (a query a line), gzipped or not: each record "
        "OpenAI 'messages' (with any request fields), ShareGPT 'conversations', or an instruction/query/"
        "prompt/question/text",
    )
    route.add_argument("--format", choices=FORMATS, default="auto", help="default: by the file's name")
    route.add_argument("--summary", action="store_true", help="end with the share per expert and the cost")
    route.set_defaults(func=_route)

    skills = sub.add_parser(
        "skills", help="build the builtin skills model (artifacts/skills) from router_mix's train split"
    )
    skills.add_argument("--data", type=Path, default=DEFAULT_INSTRUCTIONS, help="router_mix.jsonl.gz")
    skills.add_argument("--out", type=Path, default=Path("artifacts/skills"))
    skills.add_argument("--dims", type=int, help="reduce the static embeddings to this size by PCA")
    from training.skills import ALLOWED_AUGMENTATIONS, ALLOWED_FEATURES, AUGMENTATIONS, FEATURE_SETS

    for flag, choices, allowed, what in (
        ("--features", FEATURE_SETS, ALLOWED_FEATURES, "feature sets (default: those within 1 ms a query)"),
        ("--augmentation", AUGMENTATIONS, ALLOWED_AUGMENTATIONS, "training augmentations"),
    ):
        help_ = f"{what} the build scores and chooses among (docs/results/declared_routing)"
        skills.add_argument(flag, nargs="+", choices=list(choices), default=list(allowed), help=help_)
    skills.set_defaults(func=_skills)

    for name, func, helptext in (
        ("train", _train, "train a router"),
        ("evaluate", _evaluate, "evaluate routers"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--table", type=Path, required=True)
        s.add_argument("--quality-column", default="quality")
        s.add_argument("--temperature", type=float, default=0.1, help="soft-label temperature")
        s.set_defaults(func=func)
        if name == "train":
            s.add_argument("--router", choices=kinds.names(), required=True)
            s.add_argument("--out", type=Path, required=True)
            s.add_argument("--config", help="JSON of router settings, e.g. '{\"epochs\": 5}'")
            s.add_argument("--local", action="store_true", help="train in this process instead of Ray Train")
            s.add_argument("--workers", type=int, default=2)
            s.add_argument("--gpu", action="store_true")
            s.add_argument(
                "--storage-path",
                help="Ray Train's run folder (checkpoints); shared storage on a multi-node cluster",
            )
            s.add_argument(
                "--max-failures",
                type=int,
                default=3,
                help="restarts from the last checkpoint after a worker dies",
            )
        else:
            s.add_argument(
                "--router", type=Path, action="append", help="a router artifact folder (repeatable)"
            )
            s.add_argument(
                "--folds", type=int, default=0, help="K-fold cross-validation instead of artifacts"
            )
            s.add_argument(
                "--routers",
                default="mlp,knn",
                help=f"kinds to cross-validate ({', '.join(kinds.names())}) or all",
            )
            s.add_argument("--out", type=Path)
            s.add_argument(
                "--config",
                help='JSON of settings per kind, e.g. \'{"pointwise": {"C": 0.1}}\'',
            )
            s.add_argument(
                "--grid",
                help="JSON of settings nested CV also chooses among, for every kind that has them, e.g. "
                '\'{"encoder": ["builtin:all-MiniLM-L6-v2", "builtin:all-mpnet-base-v2"]}\'',
            )
            s.add_argument("--json", action="store_true", help="print the report as one JSON object")
            s.add_argument("--seed", type=int, default=0)
            s.add_argument(
                "--inner-folds",
                type=int,
                default=3,
                help="nested CV: a kind's tuned settings (its grid) are chosen per outer fold by this "
                "many inner folds of the outer training part (0: the kind's defaults)",
            )
            s.add_argument(
                "--limit", type=int, default=0, help="evaluate a seeded random sample of N queries"
            )
    return p


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    args = parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
